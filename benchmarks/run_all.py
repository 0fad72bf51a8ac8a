"""Runs the benchmarks one after another, each in its own interpreter.

Run: ``python benchmarks/run_all.py [--quick] [--only acquire,overhead,goodput]``;
``--quick`` is passed on to every script. Each script prints its tables and
writes ``benchmarks/results/<name>.json``; this exits non-zero if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("acquire", "overhead", "goodput", "adaptive", "scale", "sdk")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run of each benchmark")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset of: %(default)s")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    failed = []
    for name in chosen:
        command = [sys.executable, str(HERE / f"bench_{name}.py"), *(["--quick"] if args.quick else [])]
        print(f"\n$ {' '.join(command)}", flush=True)
        started = time.monotonic()
        code = subprocess.call(command)
        print(f"[bench_{name}: exit {code} after {time.monotonic() - started:.0f} s]", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
