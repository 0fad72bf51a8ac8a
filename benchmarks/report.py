"""Runs every benchmark and writes BENCHMARKS.md at the repository root from their JSON results.

Each ``bench_*.py`` runs in its own interpreter (``--quick`` passed on); the
ones needing ``redis-server`` are skipped without it, and those not written
yet are skipped. Then every ``benchmarks/results/bench_*.json`` found becomes
one section: its tables (medians and ratios), its targets and whether each is
met, with the machine and the versions at the top.

Run: ``python benchmarks/report.py [--quick] [--only alternatives,goodput]``, or
``python benchmarks/report.py --from-results`` to rewrite BENCHMARKS.md from
the JSON already there without running anything.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _harness as h

ORDER = ("alternatives", "acquire", "overhead", "goodput", "redis", "adaptive", "scale", "redis_goodput", "sdk")
NEEDS_REDIS = ("redis", "redis_goodput")
PACKAGES = ("grpc-throttle", "grpcio", "protobuf", "clarifai-grpc", "clarifai", "tenacity", "aiolimiter", "redis")
Verdict = tuple[str, str, str, bool]  # (subject, target, measured, met)


def run_benchmarks(names: list[str], quick: bool) -> dict[str, str]:
    """Run each script; return what happened to each, for the report."""
    notes: dict[str, str] = {}
    for name in names:
        script = h.ROOT / "benchmarks" / f"bench_{name}.py"
        if not script.exists():
            continue
        if name in NEEDS_REDIS and shutil.which("redis-server") is None:
            notes[name] = "not run: no redis-server on PATH"
            continue
        command = [sys.executable, str(script), *(["--quick"] if quick else [])]
        print(f"\n$ {' '.join(command)}", flush=True)
        started = time.monotonic()
        code = subprocess.call(command, cwd=h.ROOT)
        took = time.monotonic() - started
        notes[name] = f"ran in {took:.0f} s" if code == 0 else f"FAILED (exit {code} after {took:.0f} s)"
        print(f"[bench_{name}: {notes[name]}]", flush=True)
    return notes


# -- formatting ------------------------------------------------------------------


def num(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and abs(value) >= 10000:
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return "-".join(num(float(v)) for v in value)
    return str(value)


def pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def check(subject: str, target: str, measured: str, met: bool) -> Verdict:
    return (subject, target, measured, bool(met))


def measured(target: str, r: dict[str, Any]) -> str:
    """The number a target of a goodput-like row speaks of, found by the target's wording."""
    if "throttled" in target and "throttled_share" in r:
        return pct(r["throttled_share"])
    if "lost" in target and "lost" in r:
        return f"{r['lost']:.0f}"
    if "goodput" in target:
        return next((num(r[k]) for k in ("goodput_ratio", "goodput_per_quota", "goodput") if k in r), "")
    if "wall" in target and r.get("ideal_s"):
        return f"{r['wall_s'] / r['ideal_s']:.3f}"
    return ""


# -- one renderer per benchmark: (markdown, verdicts) ------------------------------


def alternatives(d: dict[str, Any]) -> tuple[list[str], list[Verdict]]:
    from bench_alternatives import HEADERS, plot, row

    c = d["config"]
    plot(str(h.RESULTS / "alternatives.png"), d["results"], c["plot_policy"], c["rate"])  # redrawn from the JSON
    out = [
        f"Quota Q = {c['rate']:g}/s (Clarifai's documented limit), {c['calls']} `ListModelTypes` calls from "
        f"{c['threads']} threads per run, one run per client and server policy; see the script's docstring for "
        "each client's exact set-up. *goodput/quota*: successful calls ÷ max(wall, ideal) ÷ Q (finishing early by "
        "dropping calls earns nothing). *throttled*: the server's throttled answers ÷ all requests it received "
        f"(in brackets). *lost*: calls not ending in SUCCESS; a run still going after {c['budget']:g} x ideal + "
        f"{c['budget_extra']:g} s is cut: calls in flight are aborted and they and the calls never started are "
        "lost. Latencies cover the calls that finished. Ideal for the window policies: ceil(calls / Q) - 1 s for a "
        "client that cannot see where the server's second starts; one that happens to burst at the right moment can "
        "finish up to 1 s sooner (wall/ideal just under 1). Targets: bench_goodput's, for grpc-throttle's rows.",
    ]
    verdicts = []
    for policy in dict.fromkeys(r["policy"] for r in d["results"]):
        rows = [r for r in d["results"] if r["policy"] == policy]
        first = rows[0]
        out += [f"\n### {row(first)[0]}: ideal {first['ideal_s']:.1f} s, budget {first['budget_s']:.0f} s\n"]
        out.append(h.table(HEADERS[1:], [row(r)[1:] for r in rows]))
        for r in rows:
            if r["client"] == "grpc-throttle":
                verdicts += goodput_verdicts(f"grpc-throttle, {policy}", r)
    out.append(f"\n![Requests per second at the server, {c['plot_policy']}]({rel('alternatives.png')})")
    return out, verdicts


def goodput_verdicts(subject: str, r: dict[str, Any]) -> list[Verdict]:
    """bench_goodput's targets, for a row that carries none of its own."""
    met = (r["wall_s"] <= 1.05 * r["ideal_s"], r["throttled_share"] <= 0.005, r["lost"] == 0)
    targets = ("wall <= 1.05 x ideal", "<= 0.5% throttled", "nothing lost")
    return [check(subject, t, measured(t, r), m) for t, m in zip(targets, met, strict=True)]


def goodput(d: dict[str, Any]) -> tuple[list[str], list[Verdict]]:
    """bench_goodput and bench_redis_goodput: one row per policy and client, medians of the runs."""
    c = d["config"]
    who = f"{c['processes']} processes x {c['threads']} threads" if "processes" in c else f"{c['threads']} threads"
    results = d.get("results", [])
    # bench_redis_goodput names its deployment and counts the most attempts in any second.
    deployed = any("deployment" in r for r in results)
    headers = ["deployment"] if deployed else []
    headers += ["server policy", "client", "wall s", "ideal s", "wall/ideal", "answered throttled", "lost"]
    headers += ["p50 s", "p99 s"] + (["most in 1 s (runs)"] if deployed else [])
    rows, verdicts = [], []
    for r in results:
        ratio = r["wall_s"] / r["ideal_s"] if r["ideal_s"] else math.nan
        cut = f" (cut in {r['cut_at_budget']})" if r.get("cut_at_budget") else ""
        throttled = f"{pct(r['throttled_share'])} ({r['sent']:.0f} sent)"
        row = [r.get("deployment", "")] if deployed else []
        row += [r["policy"], r["client"], f"{r['wall_s']:.2f}{cut}", f"{r['ideal_s']:.2f}", f"{ratio:.3f}"]
        row += [throttled, f"{r['lost']:.0f}", f"{r['p50_s']:.2f}", f"{r['p99_s']:.2f}"]
        if deployed:
            row.append(", ".join(str(run.get("most_in_1s", "—")) for run in r["runs"]))
        rows.append(row)
        where = f"{r['deployment']}, " if deployed else ""
        for target, met in r.get("targets", {}).items():
            shown = ", ".join(str(run.get("most_in_1s")) for run in r["runs"]) if "most in" in target else None
            verdicts.append(check(f"{r['client']}, {where}{r['policy']}", target, shown or measured(target, r), met))
    intro = f"Q = {c['rate']:g}/s, {c['calls']} calls from {who}, median of {c['repeat']} runs.\n"
    out = [intro, h.table(headers, rows)]
    if "bursty" in d:
        lines, more = bursty(d)
        out += lines
        verdicts += more
    return out, verdicts


def bursty(d: dict[str, Any]) -> tuple[list[str], list[Verdict]]:
    """bench_goodput's bursty part: latency added to calls below the quota, against a bare channel."""
    c = d["config"]
    rows, verdicts = [], []
    for r in d["bursty"]:
        added = f"+{r['added_p50_ms']:.1f} / +{r['added_p90_ms']:.1f}" if "added_p50_ms" in r else "(reference)"
        latencies = [f"{r[k] * 1e3:.1f}" for k in ("p50_s", "p90_s", "p99_s")]
        rows.append([r["policy"], r["client"], *latencies, added, f"{r['throttled']} of {r['calls']}"])
        for target, met in r.get("targets", {}).items():
            shown = {"p50": f"+{r['added_p50_ms']:.1f} ms", "p90": f"+{r['added_p90_ms']:.1f} ms"}
            value = next((v for k, v in shown.items() if target.startswith(k)), f"{r['throttled']}")
            verdicts.append(check(f"{r['client']}, bursty, {r['policy']}", target, value, met))
    intro = (
        f"\n### Bursty traffic below the quota\n\nQ = {c['bursty_rate']:g}/s; bursts of {c['burst_size']} calls at "
        f"once every {c['burst_every']:g} s, {c['bursts']} bursts a run; the bare channel and grpc-throttle run at the "
        f"same time as two users; median of {c['repeat']} runs (throttled: summed).\n"
    )
    headers = ["server policy", "client", "p50 ms", "p90 ms", "p99 ms", "added p50 / p90 ms", "throttled"]
    return [intro, h.table(headers, rows)], verdicts


def acquire(d: dict[str, Any]) -> tuple[list[str], list[Verdict]]:
    medians, samples = d["median_ns"], d["samples_ns"]
    kinds = {v["name"]: v for v in d["variants"]}
    fastest = min((n for n, v in kinds.items() if v["kind"] == "peer"), key=lambda n: medians[n])
    rows = [
        [kinds[n]["library"], n, kinds[n]["kind"], f"{medians[n]:,.0f}", f"{h.percentile(samples[n], 25):,.0f}-"
         f"{h.percentile(samples[n], 75):,.0f}", f"{medians[n] / medians[fastest]:.2f}"]
        for n in sorted(medians, key=medians.get)
    ]  # fmt: skip
    headers = ["library", "operation", "kind", "median ns/op", "p25-p75", "x fastest sync peer"]
    out = [
        f"Median of {d['rounds']} interleaved rounds; every limiter set far above the load.\n",
        h.table(headers, rows),
    ]
    verdicts = [
        check(key.removeprefix("ratio "), "<= 1.00 x (no slower)", f"{value:.2f}", value <= 1.0)
        for key, value in d.items()
        if key.startswith("ratio ")
    ]
    return out, verdicts


def overhead(d: dict[str, Any]) -> tuple[list[str], list[Verdict]]:
    out, verdicts = [], []
    headers = ["load", "variant", "µs/call", "overhead", "ratio p25-p75", "CPU µs/call", "CPU overhead", "CPU µs added"]
    for mode, result in d["results"].items():
        rows = []
        for r in result["rows"]:
            bare = r["variant"].startswith("bare")
            spread = "—" if bare else num(r["wall_ratio_p25_p75"])
            over = "—" if bare else f"{r['wall_overhead'] * 100:+.1f}%"
            cpu_over = "—" if bare else f"{r['cpu_overhead'] * 100:+.1f}%"
            added = "—" if bare or "cpu_added_us" not in r else f"{r['cpu_added_us']:+.1f}"
            row = [r["shape"], r["variant"], f"{r['wall_us']:.1f}", over, spread, f"{r['cpu_us']:.1f}", cpu_over, added]
            rows.append(row)
            if "ours" in r["variant"]:
                subject = f"{r['variant']}, {r['shape']} ({mode})"
                # The fast paths (ThrottledChannel, aio.ThrottledChannel) aim at 1 % of a loopback call.
                limit = 0.01 if "ThrottledChannel" in r["variant"] else 0.03
                verdicts.append(check(subject, f"overhead <= {limit:.0%}", over, r["wall_overhead"] <= limit))
                if limit == 0.01:
                    verdicts.append(check(subject, "CPU overhead <= 1%", cpu_over, r["cpu_overhead"] <= limit))
        out += [f"\nServer in a {'separate process' if mode == 'process' else 'the same process'}:\n"]
        out.append(h.table(headers, rows))
    out += ["\nClient-side cost alone (a channel that answers at once), µs added per call:\n"]
    out.append(h.table(["answer, throttle policy", "variant", "µs added"], d["isolated_us_added"]))
    return out, verdicts


def redis(d: dict[str, Any]) -> tuple[list[str], list[Verdict]]:
    o = d["overhead"]
    rows = [[name, f"{us:.1f}", num(o["inside_redis_us"].get(name, math.nan))] for name, us in o["median_us"].items()]
    out = [f"{o['rounds']} rounds, medians.\n", h.table(["operation", "µs per call", "µs inside Redis"], rows)]
    lease = d["lease"]
    rows = [
        [f"lease={r['lease']}" if r["lease"] > 1 else "no lease", *(num(float(r[k])) for k in LEASE_KEYS)]
        for r in lease["rows"]
    ]
    out += [f"\nOne caller paced at {lease['rate']:g}/s:\n"]
    out.append(h.table(["setting", "reserve() median µs", "mean µs", "round trips per call", "rate /s"], rows))
    ratio = o["ratio_to_evalsha"]
    verdicts = [check("RedisTokenBucket.reserve()", "<= 1.3 x an EVALSHA round trip", f"{ratio:.2f}", ratio <= 1.3)]
    if "cluster_overhead" in d:
        c = d["cluster_overhead"]
        rows = [[name, f"{us:.1f}"] for name, us in c["median_us"].items()]
        out += [f"\nOn a Redis Cluster of three masters, {c['rounds']} rounds, medians:\n"]
        out.append(h.table(["operation", "µs per call"], rows))
        ratio = c["ratio_to_evalsha"]
        target = "<= 1.3 x an EVALSHA to the owning node"
        verdicts.append(check("RedisTokenBucket.reserve() on a cluster", target, f"{ratio:.2f}", ratio <= 1.3))
    return out, verdicts


LEASE_KEYS = ("median_us", "mean_us", "trips_per_call", "rate")


def generic(d: dict[str, Any]) -> tuple[list[str], list[Verdict]]:
    """Any other benchmark: every list of records as a table, every dict of numbers as one."""
    out, verdicts = [], []

    def walk(title: str, value: Any) -> None:
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            keys = [k for k in dict.fromkeys(k for r in value for k in r) if all(scalar(r.get(k)) for r in value)]
            out.extend(
                [f"\n{title}:\n" if title else "", h.table(keys, [[num(r.get(k, "")) for k in keys] for r in value])]
            )
            for r in value:
                subject = ", ".join(str(r[k]) for k in keys[:3] if isinstance(r.get(k), str)) or title
                verdicts.extend(check(subject, t, measured(t, r), met) for t, met in (r.get("targets") or {}).items())
        elif isinstance(value, dict) and value and all(scalar(v) for v in value.values()):
            out.extend([f"\n{title}:\n", h.table(["", "value"], [[k, num(v)] for k, v in value.items()])])
        elif isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{title} / {key}" if title else key, inner)

    walk("", {k: v for k, v in d.items() if k not in ("benchmark", "machine", "config")})
    return out, verdicts


def scalar(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, (str, int, float, bool))
        or (isinstance(value, (list, tuple)) and len(value) <= 3 and all(isinstance(v, (int, float)) for v in value))
    )


Renderer = Callable[[dict[str, Any]], tuple[list[str], list[Verdict]]]
RENDERERS: dict[str, Renderer] = {"alternatives": alternatives, "acquire": acquire, "overhead": overhead}
RENDERERS |= {"goodput": goodput, "redis": redis, "redis_goodput": goodput}


def rel(name: str) -> str:
    return os.path.relpath(h.RESULTS / name, h.ROOT)


# -- the document ------------------------------------------------------------------


def environment() -> list[str]:
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    if shutil.which("redis-server"):
        versions.append(sh("redis-server", "--version").split(" sha")[0])
    commit, dirty = (
        sh("git", "rev-parse", "--short", "HEAD"),
        sh("git", "status", "--porcelain", "--untracked-files=no"),
    )
    cpuinfo = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    return [
        f"- Written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `benchmarks/report.py`",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs{f' ({cpu})' if cpu else ''}",
        f"- Python {platform.python_version()} ({platform.python_implementation()})",
        f"- Versions: {', '.join(versions)}",
        f"- Source: commit {commit or '?'}{' with uncommitted changes' if dirty else ''}",
    ]


def sh(*command: str) -> str:
    return subprocess.run(command, cwd=h.ROOT, capture_output=True, text=True).stdout.strip()


def section(name: str, note: str | None) -> tuple[list[str], list[Verdict], str]:
    path = h.RESULTS / f"bench_{name}.json"
    out = [f"\n## bench_{name}\n"]
    if note:
        out.append(f"This run: {note}.\n")
    if not path.exists():
        return [*out, "No results yet.\n"], [], "no results"
    d = json.loads(path.read_text())
    m = d.get("machine", {})
    is_quick = "--quick" in m.get("argv", [])
    quick = " — **a `--quick` smoke run, not the full size**" if is_quick else ""
    args = " ".join(m.get("argv", [])) or "defaults"
    out.append(f"Measured {m.get('when', '?')} (Python {m.get('python', '?')}, arguments: {args}, load average at "
               f"the end {m.get('loadavg_at_end', '?')}){quick}. From `{rel(path.name)}`.\n")  # fmt: skip
    lines, verdicts = RENDERERS.get(name, generic)(d)
    out += lines
    for png in sorted(h.RESULTS.glob("*.png")):
        if png.stem.startswith((f"bench_{name}", name)) and png.name != "alternatives.png":
            out.append(f"\n![{png.stem}]({rel(png.name)})")
    if verdicts:
        out += [
            "\nTargets:\n",
            h.table(
                ["subject", "target", "measured", "met"], [[*v[:3], "met" if v[3] else "**MISSED**"] for v in verdicts]
            ),
        ]
    return out, verdicts, m.get("when", "?").replace("T", " ")[:16] + (" (--quick)" if is_quick else "")


INTRO = (
    "Generated; do not edit by hand. Regenerate with `python benchmarks/report.py` (runs every benchmark, about an "
    "hour; `--quick` for a smoke run) or `python benchmarks/report.py --from-results` (from the JSON in "
    "`benchmarks/results/`). What each benchmark measures and how: `benchmarks/README.md` and each script's docstring."
)


def write_report(notes: dict[str, str]) -> str:
    names = [n for n in ORDER if (h.RESULTS / f"bench_{n}.json").exists() or n in notes]
    names += sorted(p.stem.removeprefix("bench_") for p in h.RESULTS.glob("bench_*.json") if p.stem[6:] not in names)
    body, summary = [], []
    for name in names:
        lines, verdicts, when = section(name, notes.get(name))
        body += lines
        met = sum(v[3] for v in verdicts)
        summary.append([f"[bench_{name}](#bench_{name})", when, f"{met} of {len(verdicts)}" if verdicts else "—"])
    table = h.table(["benchmark", "measured (UTC)", "targets met"], summary)
    head = ["# Benchmarks", "", INTRO, "", *environment(), "", table]
    text = "\n".join(head + body) + "\n"
    (h.ROOT / "BENCHMARKS.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run every benchmark as a short smoke run")
    parser.add_argument("--from-results", action="store_true", help="only rewrite BENCHMARKS.md from the JSON")
    parser.add_argument("--only", default=",".join(ORDER), help="comma-separated subset to run: %(default)s")
    args = parser.parse_args()
    chosen = [n.strip() for n in args.only.split(",") if n.strip()]
    if unknown := sorted(set(chosen) - set(ORDER)):
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    notes = {} if args.from_results else run_benchmarks(chosen, args.quick)
    write_report(notes)
    print(f"\nwrote {h.ROOT / 'BENCHMARKS.md'}")
    sys.exit(1 if any(v.startswith("FAILED") for v in notes.values()) else 0)


if __name__ == "__main__":
    main()
