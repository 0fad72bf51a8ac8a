"""Fault injection, long form: the scenarios of tests/test_faults.py at a larger scale, for a bounded time.

    python scripts/faults.py --minutes 5                   # every scenario, round after round, ~5 minutes
    python scripts/faults.py --minutes 2 --only server_restart redis_outage
    python scripts/faults.py --scale short --rounds 1      # one round at the CI scale

Each round runs every scenario once (more threads, tasks and processes than in
CI: see ``LONG`` in tests/faults_scenarios.py); no new scenario starts once the
time is up, and every scenario bounds its own run, so the script stops by
itself. It prints one line per scenario as it goes, then a table with one row
per invariant, and exits 1 if any invariant was broken in any round (a Redis
scenario without ``redis-server`` counts as broken).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # grpc's INFO lines on every GOAWAY would drown the table
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from faults_scenarios import LONG, SCENARIOS, SHORT, Check
from redis_server import redis_server_binary


def _run(name: str, scale: object) -> tuple[list[Check], float]:
    run, needs_redis = SCENARIOS[name]
    started = time.monotonic()
    if needs_redis and redis_server_binary() is None:
        return [Check(name, "redis-server available", False, "redis-server is not on PATH")], 0.0
    try:
        checks = run(scale)  # type: ignore[arg-type]
    except Exception as error:  # a scenario that crashes is a broken run, reported like the rest
        checks = [Check(name, "the scenario ran to its end", False, f"{type(error).__name__}: {error}")]
    return checks, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="stop starting scenarios after this (default 5)")
    parser.add_argument("--rounds", type=int, default=0, help="at most this many rounds (default: until time is up)")
    parser.add_argument("--scale", choices=("long", "short"), default="long")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--verbose", action="store_true", help="print every check, not only the broken ones")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    scale = LONG if args.scale == "long" else SHORT
    names = args.only or list(SCENARIOS)
    deadline = time.monotonic() + args.minutes * 60
    #: (scenario, invariant) -> [held, broken, a detail of the last broken run or of the last run]
    table: dict[tuple[str, str], list[object]] = collections.defaultdict(lambda: [0, 0, ""])
    rounds = 0
    print(f"fault injection: {len(names)} scenarios, scale {args.scale} {scale}, {args.minutes:g} min", flush=True)
    while time.monotonic() < deadline and (not args.rounds or rounds < args.rounds):
        rounds += 1
        for name in names:
            if time.monotonic() >= deadline:
                break
            checks, took = _run(name, scale)
            broken = [c for c in checks if not c.ok]
            print(f"round {rounds} {name}: {len(checks) - len(broken)}/{len(checks)} held ({took:.1f}s)", flush=True)
            for check in checks:
                row = table[(check.scenario, check.invariant)]
                if check.ok:
                    row[0] = int(row[0]) + 1  # type: ignore[call-overload]
                    row[2] = row[2] if row[1] else check.detail
                else:
                    row[1] = int(row[1]) + 1  # type: ignore[call-overload]
                    row[2] = check.detail
                if args.verbose or not check.ok:
                    print(f"    {check}", flush=True)
    _print_table(table)
    failed = sum(1 for held, broken, _ in table.values() if broken)
    print(f"\n{rounds} round(s); {len(table)} invariants checked; {failed} broken at least once")
    return 1 if failed else 0


def _print_table(table: dict[tuple[str, str], list[object]]) -> None:
    width_s = max((len(s) for s, _ in table), default=8)
    width_i = max((len(i) for _, i in table), default=9)
    print(f"\n{'scenario':<{width_s}}  {'invariant':<{width_i}}  held  broken  detail (last broken, else last)")
    print(f"{'-' * width_s}  {'-' * width_i}  ----  ------  {'-' * 30}")
    for (scenario, invariant), (held, broken, detail) in table.items():
        text = str(detail) if len(str(detail)) <= 160 else str(detail)[:157] + "..."
        print(f"{scenario:<{width_s}}  {invariant:<{width_i}}  {held!s:>4}  {broken!s:>6}  {text}")


if __name__ == "__main__":
    sys.exit(main())
