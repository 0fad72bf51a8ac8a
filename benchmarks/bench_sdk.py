"""The official Clarifai SDK under ``clarifai_sdk.install()``: its own objects, paced and retried by grpc-throttle.

The emulator (a child process) enforces Q = ``--rate`` requests/s per user as a
token bucket of burst Q, and counts every request it receives per user. Three
workloads, each as a PAT of its own:

- ``Model.predict``: ``--calls`` calls from ``--threads`` threads on one Model;
- ``Model.async_predict``: ``--calls`` calls at once with ``asyncio.gather``;
- ``list_apps()`` children: every App from ``User.list_apps()`` makes
  ``App.model()`` calls from a thread each (objects the SDK creates itself).

For each: the calls made, their answers, the server's admitted and throttled
counts (so *server attempts = calls* shows no retry stacked on another), the
users the server saw (*authenticated*: only the PAT's own key, never
"anonymous"), and the wall time against the ideal, (requests - Q) / Q.

Targets (issue 13): 0 throttled, server attempts equal to calls, every call
authenticated, wall <= 1.25 x ideal.

Run: ``python benchmarks/bench_sdk.py [--rate 5] [--calls 40] [--threads 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from typing import Any

import _harness as h

SUCCESS = 10000


def workloads(args: argparse.Namespace, base: str) -> dict[str, Callable[[str], tuple[list[int], int]]]:
    """name -> f(pat) returning (the answers' status codes, requests the SDK made for set-up)."""
    from clarifai.client.model import Model
    from clarifai.client.user import User
    from clarifai_grpc.grpc.api import resources_pb2

    inputs = [resources_pb2.Input(data=resources_pb2.Data(text=resources_pb2.Text(raw="hello")))]

    def model(pat: str) -> Any:
        return Model(model_id="m1", user_id="me", app_id="main", pat=pat, base_url=base)  # GetModel: 1 request

    def predict(pat: str) -> tuple[list[int], int]:
        m = model(pat)
        per_thread = [args.calls // args.threads + (i < args.calls % args.threads) for i in range(args.threads)]
        with futures.ThreadPoolExecutor(args.threads) as pool:
            runs = pool.map(lambda n: [m.predict(inputs).status.code for _ in range(n)], per_thread)
            return [code for run in runs for code in run], 1

    def async_predict(pat: str) -> tuple[list[int], int]:
        m = model(pat)

        async def gather() -> list[int]:
            replies = await asyncio.gather(*[m.async_predict(inputs) for _ in range(args.calls)])
            return [reply.status.code for reply in replies]

        return asyncio.run(gather()), 1

    def children(pat: str) -> tuple[list[int], int]:
        apps = list(User(user_id="me", pat=pat, base_url=base).list_apps())  # two pages: 2 requests
        each = max(1, args.calls // (2 * len(apps)))  # App.model() is 2 requests (GetModel twice)

        def models_of(app: Any) -> list[int]:
            return [SUCCESS if app.model(model_id=f"m{i}").id == f"m{i}" else 0 for i in range(each)]

        with futures.ThreadPoolExecutor(len(apps)) as pool:
            codes = [code for run in pool.map(models_of, apps) for code in run]
        return codes, 2 + len(codes)  # each App.model() counts one call, two requests

    return {"Model.predict, threads": predict, "Model.async_predict": async_predict, "list_apps() children": children}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5.0, help="Q: the emulator's quota per user")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="accepted for run_all.py; the run is short already")
    args = parser.parse_args()
    h.clarifai_stubs()
    from grpc_throttle.client import clarifai_sdk
    from grpc_throttle.testing import ControlClient, user_key

    q = args.rate
    print(f"# bench_sdk: clarifai SDK under clarifai_sdk.install(rate={q:g}), emulator quota {q:g}/s (burst {q:g})")
    print("# targets: 0 throttled, server attempts = calls, every call authenticated, wall <= 1.25 x ideal\n")
    results = []
    with h.ServerProcess(h.serve_emulator, q, "token-bucket", None, 64) as server:
        base = f"http://{server.target}"
        clarifai_sdk.install(rate=q)
        try:
            for name, run in workloads(args, base).items():
                pat = f"bench-sdk-{uuid.uuid4().hex[:12]}"
                with ControlClient(server.target) as control:
                    control.reset()
                    started = time.monotonic()
                    codes, setup = run(pat)
                    wall = time.monotonic() - started
                    counters = control.counters()
                admitted, throttled = counters.per_user.get(user_key(f"Key {pat}"), (0, 0))
                requests = len(codes) + setup
                ideal = max(requests - q, 0) / q
                r = {
                    "workload": name,
                    "calls": len(codes),
                    "succeeded": sum(code == SUCCESS for code in codes),
                    "requests_expected": requests,
                    "server_admitted": admitted,
                    "server_throttled": throttled,
                    "users_seen": len(counters.per_user),
                    "anonymous": counters.per_user.get("anonymous", (0, 0))[0],
                    "wall_s": wall,
                    "ideal_s": ideal,
                }
                r["targets"] = {
                    "0 throttled": throttled == 0,
                    "server attempts = calls": admitted + throttled == requests,
                    "every call authenticated": r["users_seen"] == 1 and r["anonymous"] == 0,
                    "wall <= 1.25 x ideal": wall <= 1.25 * ideal,
                }
                results.append(r)
                said = ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in r["targets"].items())
                print(
                    f"  {name:<24} {r['succeeded']}/{r['calls']} ok, server {admitted} admitted + {throttled} "
                    f"throttled for {requests} requests, wall {wall:.2f} s (ideal {ideal:.2f}); {said}",
                    flush=True,
                )
        finally:
            clarifai_sdk.uninstall()
    config = {k: v for k, v in vars(args).items() if k != "quick"}
    path = h.write_json("bench_sdk", {"config": config, "results": results})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
