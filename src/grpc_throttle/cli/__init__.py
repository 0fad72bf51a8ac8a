"""The ``grpc-throttle`` command: a demo, the emulator, and a real API call.

``grpc-throttle demo`` races Clarifai's documented retry recipe against the
interceptor on the embedded emulator; ``grpc-throttle emulator`` serves the
emulator; ``grpc-throttle list-model-types`` calls Clarifai (or the emulator)
through a throttled channel. Every failure is one ``error:`` line on stderr,
exit status 2 for bad usage and 1 for everything else.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, NoReturn

import grpc

__all__ = ["main"]

PROG = "grpc-throttle"

#: The emulator's quota policies (grpc_throttle.testing.POLICIES, kept here so
#: that ``--help`` works without the ``clarifai`` extra).
POLICIES = ("token-bucket", "fixed-window", "sliding-window")


class UsageError(Exception):
    """Bad command-line input found after parsing; exits with status 2."""


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line, not the usage block and a traceback."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0].startswith("-") and words[0] not in ("-h", "--help"):
        parser.error(f"unknown option {words[0]!r} (options go after the command)")
    args = parser.parse_args(words)
    # SIGTERM (a service manager, `kill`) stops a command as Ctrl-C does.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result: int = args.run(args)
        return result
    except UsageError as exc:
        return _fail(str(exc), 2)
    except ValueError as exc:
        return _fail(str(exc), 2)
    except ImportError as exc:
        return _fail(_import_message(exc), 1)
    except grpc.RpcError as exc:
        return _fail(_rpc_message(exc), 1)
    except OSError as exc:
        return _fail(_os_message(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _build_parser() -> _Parser:
    parser = _Parser(prog=PROG, description="Keep gRPC clients inside an API's rate limit.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", help="race the documented retry recipe against grpc-throttle on a local emulator"
    )
    demo.add_argument("--calls", type=_count, default=150, help="calls per run (default 150)")
    demo.add_argument("--threads", type=_count, default=8, help="client threads per run (default 8)")
    demo.add_argument("--rate", type=_rate, default=15.0, help="the quota, requests/s (default 15)")
    demo.add_argument("--policy", choices=POLICIES, default="token-bucket", help="the emulator's quota policy")
    demo.add_argument("--burst", type=_rate, default=None, help="token-bucket size (default: one second's worth)")
    demo.add_argument(
        "--recipe-wait",
        type=_seconds,
        default=1.0,
        help="the recipe's sleep after a throttled answer; Clarifai documents 15 s (default 1)",
    )
    demo.add_argument(
        "--bursts", type=_whole, default=12, help="bursts in the bursty part below the quota; 0 skips it (default 12)"
    )
    demo.add_argument("--plot", metavar="FILE.png", help="draw requests/s over time (needs matplotlib)")
    demo.set_defaults(run=_demo)

    emulator = commands.add_parser("emulator", help="serve the Clarifai emulator until interrupted")
    emulator.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    emulator.add_argument("--port", type=_port, default=50051, help="port; 0 picks a free one (default 50051)")
    emulator.add_argument("--rate", type=_rate, default=15.0, help="quota per user, requests/s (default 15)")
    emulator.add_argument("--policy", choices=POLICIES, default="token-bucket", help="quota policy")
    emulator.add_argument("--burst", type=_rate, default=None, help="token-bucket size (default: the rate)")
    emulator.add_argument(
        "--grpc-errors", action="store_true", help="refuse with RESOURCE_EXHAUSTED instead of body code 11005"
    )
    emulator.set_defaults(run=_emulator)

    listing = commands.add_parser("list-model-types", help="list Clarifai's model types through the interceptor")
    listing.add_argument("--pat", help="personal access token (default: $CLARIFAI_PAT)")
    listing.add_argument("--target", help="host:port (default: $CLARIFAI_GRPC_BASE or api.clarifai.com:443)")
    listing.add_argument(
        "--insecure", action="store_true", help="plaintext, e.g. to the emulator (PAT optional, --pat only)"
    )
    listing.add_argument("--user-id", help="user id, for keys that need one")
    listing.add_argument("--app-id", help="app id, for keys that need one")
    listing.add_argument("--rate", type=_rate, default=15.0, help="requests/s to stay under (default 15)")
    listing.add_argument("--timeout", type=_timeout, default=10.0, help="seconds for the call, retries included")
    listing.set_defaults(run=_list_model_types)
    return parser


# -- commands ------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    config = demo.DemoConfig(
        calls=args.calls,
        threads=args.threads,
        rate=args.rate,
        policy=args.policy,
        burst=args.burst,
        recipe_wait=args.recipe_wait,
        bursts=args.bursts,
    )
    if args.burst is not None and args.policy != "token-bucket":
        raise UsageError(f"--burst only applies to --policy token-bucket, not {args.policy}")
    if args.plot is not None:
        from . import plot

        plot.check(args.plot)
    runs = demo.run_demo(config, out=sys.stdout, err=sys.stderr)
    if args.plot is not None:
        plot.draw(args.plot, runs, config)
        print(f"plot written to {args.plot}")
    return 0


def _emulator(args: argparse.Namespace) -> int:
    if args.burst is not None and args.policy != "token-bucket":
        raise UsageError(f"--burst only applies to --policy token-bucket, not {args.policy}")
    from ..testing import ClarifaiEmulator

    emulator = ClarifaiEmulator(
        rate=args.rate,
        policy=args.policy,
        burst=args.burst,
        throttle_with="grpc" if args.grpc_errors else "body",
        host=args.host,
        port=args.port,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _check_port_free(args.host, args.port)
        emulator.start()
        burst = f", burst {args.burst:g}" if args.burst is not None else ""
        answer = "RESOURCE_EXHAUSTED" if args.grpc_errors else "status 11005"
        print(
            f"Clarifai emulator serving on {emulator.target} ({args.policy}, {args.rate:g} req/s per user{burst}; "
            f"over quota: {answer}); Ctrl-C to stop",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        emulator.stop(grace=1.0)
    print("Clarifai emulator stopped", flush=True)
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Raise a clear OSError if ``host:port`` is taken, before grpc logs its own."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does
            probe.bind(address)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _list_model_types(args: argparse.Namespace) -> int:
    from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc

    from .. import client

    if args.insecure:
        if not args.target:
            raise UsageError("--insecure needs --target host:port")
        channel = client.clarifai_insecure_channel(args.target, args.pat, rate=args.rate, bucket=_bucket(args))
    else:
        if not (args.pat or os.environ.get("CLARIFAI_PAT")):
            raise UsageError("no personal access token: pass --pat or set CLARIFAI_PAT")
        channel = client.clarifai_channel(args.pat, base=args.target, rate=args.rate, bucket=_bucket(args))
    request = service_pb2.ListModelTypesRequest()
    if args.user_id or args.app_id:
        request.user_app_id.CopyFrom(resources_pb2.UserAppIDSet(user_id=args.user_id or "", app_id=args.app_id or ""))
    with channel:
        reply = service_pb2_grpc.V2Stub(channel).ListModelTypes(request, timeout=args.timeout)
    status = reply.status
    if status.code != 10000:  # SUCCESS
        detail = f": {status.details}" if status.details else ""
        raise _ApiError(f"the API answered status {status.code} ({status.description}{detail})")
    for model_type in reply.model_types:
        print(f"{model_type.id}\t{model_type.title}")
    return 0


def _bucket(args: argparse.Namespace) -> Any:
    from ..buckets import TokenBucket

    # One short-lived call: a bucket of its own, whatever the process shares.
    return TokenBucket(args.rate)


class _ApiError(OSError):
    """The API refused the call in its answer's body."""


# -- argument types ------------------------------------------------------------


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


#: The longest --timeout: grpc keeps deadlines in a 64-bit count of nanoseconds.
_MAX_TIMEOUT = 365 * 86400.0


def _timeout(text: str) -> float:
    value = _rate(text)
    if value > _MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be at most {_MAX_TIMEOUT:g} seconds (a year), got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def _count(text: str) -> int:
    return _at_least(text, 1)


def _whole(text: str) -> int:
    return _at_least(text, 0)


def _at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 0..65535, got {text!r}")
    return value


# -- error lines ---------------------------------------------------------------


def _fail(message: str, status: int) -> int:
    line = " ".join(message.split()) or "failed"
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return status


def _import_message(exc: ImportError) -> str:
    if (exc.name or "").startswith("clarifai_grpc") or "clarifai" in str(exc):
        return "this command needs clarifai-grpc: pip install grpc-throttle[clarifai]"
    return str(exc)


def _os_message(exc: OSError) -> str:
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return exc.strerror or str(exc)


def _rpc_message(exc: grpc.RpcError) -> str:
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    text = code.name if isinstance(code, grpc.StatusCode) else "the call failed"
    if details:
        text += f": {details}"[:300]
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        text += " (is the target reachable?)"
    return text
