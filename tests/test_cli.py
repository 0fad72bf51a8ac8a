"""The ``grpc-throttle`` command end to end, in subprocesses over real sockets."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import grpc_throttle.cli
import grpc_throttle.testing

SRC = str(Path(grpc_throttle.cli.__file__).resolve().parents[2])


def environment(**changes: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_cli(*args: str, timeout: float = 120, **env: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grpc_throttle", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(**env),
        check=False,
    )


def table_row(stdout: str, label: str) -> list[str]:
    """The cells of the table row starting with ``label``."""
    for line in stdout.splitlines():
        if line.startswith(label + " "):
            return re.split(r"\s{2,}", line[len(label) :].strip())
    raise AssertionError(f"no row {label!r} in:\n{stdout}")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_demo_prints_both_runs_and_the_interceptor_loses_nothing() -> None:
    result = run_cli("demo", "--calls", "30", "--threads", "4", "--rate", "15", "--bursts", "3")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    header = next(
        line for line in result.stdout.splitlines() if "documented recipe" in line and "grpc-throttle" in line
    )
    assert header.split() == ["documented", "recipe", "grpc-throttle"]
    assert table_row(result.stdout, "calls") == ["30", "30"]
    assert table_row(result.stdout, "lost")[1] == "0"
    assert table_row(result.stdout, "succeeded")[1] == "30"
    for label in ("throttled answers (server)", "retries", "wall time (vs ideal)", "achieved rate", "latency p99"):
        assert len(table_row(result.stdout, label)) == 2
    assert "15 s" in result.stdout  # says the documented wait was scaled down
    # stderr is not a terminal: one final progress line per run, no carriage
    # returns. (gRPC's C core may log a line of its own there, e.g. a GOAWAY
    # as the emulator shuts down: only the bars are counted.)
    bars = ("documented recipe ", "grpc-throttle ")
    progress = [line for line in result.stderr.splitlines() if line.startswith(bars)]
    assert len(progress) == 2
    assert "\r" not in result.stderr
    assert "30/30" in progress[0]
    assert "30/30" in progress[1]
    # The bursty part: its own table, the bare channel beside grpc-throttle.
    bursty = result.stdout[result.stdout.index("Bursty traffic below the quota") :]
    assert "3 bursts of 10 calls" in bursty
    assert table_row(bursty, "calls") == ["30", "30"]
    assert table_row(bursty, "succeeded") == ["30", "30"]
    assert table_row(bursty, "throttled answers (server)") == ["0", "0"]
    assert all(cell.endswith(" ms") for cell in table_row(bursty, "latency p90"))


def test_demo_bursts_zero_skips_the_bursty_part() -> None:
    result = run_cli("demo", "--calls", "5", "--threads", "2", "--bursts", "0")
    assert result.returncode == 0, result.stderr
    assert "Bursty traffic" not in result.stdout


def test_demo_plot_writes_a_png(tmp_path: Path) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if os.environ.get("CI") != "true":
            pytest.skip("matplotlib is not installed (the plot extra)")
        raise
    out = tmp_path / "out.png"
    result = run_cli("demo", "--calls", "20", "--threads", "2", "--bursts", "2", "--plot", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert f"plot written to {out}" in result.stdout


@pytest.fixture
def emulator_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "grpc_throttle", "emulator", "--port", "0", "--rate", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        first = lines.get(timeout=60)
        match = re.search(r"serving on (\S+) ", first)
        assert match, f"unexpected first line {first!r}"
        yield process, match.group(1)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_emulator_serves_list_model_types_and_stops_cleanly(
    emulator_process: tuple[subprocess.Popen[str], str], stop: signal.Signals
) -> None:
    process, target = emulator_process
    result = run_cli("list-model-types", "--target", target, "--insecure", "--pat", "cli-pat", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "visual-classifier\tVisual Classifier" in lines
    assert all("\t" in line for line in lines)

    process.send_signal(stop)
    rest, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    assert "stopped" in rest
    assert "Traceback" not in errors


def test_list_model_types_needs_a_pat_only_for_the_real_api(
    emulator_process: tuple[subprocess.Popen[str], str],
) -> None:
    _, target = emulator_process
    assert run_cli("list-model-types", "--target", target, "--insecure", CLARIFAI_PAT=None).returncode == 0


def port_in_use() -> tuple[socket.socket, int]:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken, taken.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "status", "expected"),
    [
        (["demo", "--policy", "leaky-bucket"], 2, "invalid choice: 'leaky-bucket'"),
        (["demo", "--rate", "0"], 2, "--rate: must be a number > 0, got '0'"),
        (["demo", "--rate", "abc"], 2, "--rate: must be a number > 0, got 'abc'"),
        (["demo", "--rate", "nan"], 2, "--rate: must be a number > 0"),
        (["demo", "--calls", "0"], 2, "--calls: must be a whole number >= 1"),
        (["demo", "--threads", "two"], 2, "--threads: must be a whole number >= 1"),
        (["demo", "--bursts", "-1"], 2, "--bursts: must be a whole number >= 0, got '-1'"),
        (["demo", "--plot", "/no/such/folder/out.png"], 2, "does not exist"),
        (["demo", "--policy", "fixed-window", "--burst", "3"], 2, "--burst only applies"),
        (["emulator", "--port", "70000"], 2, "--port: must be a port number"),
        (["list-model-types"], 2, "pass --pat or set CLARIFAI_PAT"),
        (["list-model-types", "--insecure"], 2, "--insecure needs --target"),
        ([], 2, "required"),
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
        (["--bogus", "demo"], 2, "unknown option '--bogus'"),
        (["list-model-types", "--pat", "k", "--timeout", "1e300"], 2, "--timeout: must be at most"),
        (["list-model-types", "--pat", "k", "--timeout", "0"], 2, "--timeout: must be a number > 0"),
    ],
)
def test_bad_input_is_one_line_and_no_traceback(args: list[str], status: int, expected: str) -> None:
    result = run_cli(*args, CLARIFAI_PAT=None, CLARIFAI_GRPC_BASE=None)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr
    assert "error:" in result.stderr


def test_unreachable_target_is_one_line() -> None:
    target = f"127.0.0.1:{closed_port()}"
    result = run_cli("list-model-types", "--target", target, "--insecure", "--timeout", "5")
    assert result.returncode == 1
    assert result.stderr.startswith("grpc-throttle: error: UNAVAILABLE")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_line() -> None:
    taken, port = port_in_use()
    with taken:
        result = run_cli("emulator", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip() == f"grpc-throttle: error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_missing_matplotlib_is_one_line() -> None:
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "from grpc_throttle.cli import main\n"
        "sys.exit(main(['demo', '--plot', 'out.png']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=environment(), check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "grpc-throttle: error: --plot needs matplotlib: pip install grpc-throttle[plot]"


def test_help_works() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("demo", "emulator", "list-model-types"):
        assert command in result.stdout


def test_the_policy_choices_are_the_emulator_s() -> None:
    assert set(grpc_throttle.cli.POLICIES) == set(grpc_throttle.testing.POLICIES)


def test_main_in_process_reports_value_errors(capsys: pytest.CaptureFixture[str]) -> None:
    status = grpc_throttle.cli.main(["emulator", "--policy", "sliding-window", "--burst", "2"])
    assert status == 2
    assert (
        capsys.readouterr().err
        == "grpc-throttle: error: --burst only applies to --policy token-bucket, not sliding-window\n"
    )


def test_sigterm_stops_the_demo_like_ctrl_c() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "grpc_throttle", "demo", "--calls", "2000", "--rate", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    time.sleep(3)  # well into the first run
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].endswith("interrupted")
