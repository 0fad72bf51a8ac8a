"""Fault injection under load, short form: every fault once, small counts, each followed by its invariants.

Each test runs one scenario of ``faults_scenarios.py`` (threads, asyncio tasks
and a child process calling a real server through grpc-throttle while the
fault is injected) and fails with every invariant it broke. The long form,
``python scripts/faults.py --minutes 5``, runs the same scenarios at a larger
scale. The Redis scenarios need ``redis-server``: they skip without it, and
fail under ``CI=true``.
"""

from __future__ import annotations

import pytest

from tests.faults_scenarios import SCENARIOS, SHORT
from tests.redis_server import require_redis


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_invariants_hold_under_fault(name: str) -> None:
    run, needs_redis = SCENARIOS[name]
    if needs_redis:
        require_redis()
    checks = run(SHORT)
    broken = [str(check) for check in checks if not check.ok]
    assert checks and not broken, "invariants broken:\n" + "\n".join(broken)
