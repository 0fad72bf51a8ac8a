"""What an operator does to a running test :class:`RedisCluster`: move a slot, kill a master, watch a failover.

Raw cluster commands, each on a short-lived connection of redis-py's plain
client (never the cluster client under test, whose slot map these change).

Example:
    >>> with RedisCluster() as cluster:
    ...     source = slot_owner(cluster, 42)
    ...     migration = migrate_slot(cluster, 42, next(m for m in masters(cluster) if m is not source))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from tests.redis_server import RedisCluster, RedisServer

__all__ = [
    "SLOT_REFRESH_LEAKS",
    "Migration",
    "key_exists",
    "masters",
    "migrate_slot",
    "node_id",
    "replica_of",
    "role",
    "slot_owner",
    "wait_for_new_owner",
]

#: The marks of a module whose tests change the slot map under a cluster client (``pytestmark``).
#: redis-py's cluster clients drop the node objects a slot refresh replaces without closing them
#: at once: the asyncio client disconnects them in tasks of their own, which a test's event loop
#: may end before, and redis-py 5.0.1 (the floors leg) leaves sync ones open too. Their sockets are
#: then collected unclosed, as a ResourceWarning during whatever test runs at the time (a CI run of
#: the floors leg failed on two). Those tests ignore ResourceWarning (every other warning still
#: fails them), and the ``collect_leaked_nodes`` fixture (conftest.py) collects the leftovers
#: before the next module.
SLOT_REFRESH_LEAKS = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.usefixtures("collect_leaked_nodes"),
]


#: Keys moved per MIGRATE, as ``redis-cli --cluster reshard`` moves them (its --cluster-pipeline).
_BATCH = 10


def _run(node: RedisServer, *args: str | int) -> Any:
    """One command's reply on ``node`` (decoded), on a connection of its own."""
    with redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True, socket_timeout=2) as client:
        return client.execute_command(*args)


@dataclass(frozen=True)
class _Line:
    """One line of ``CLUSTER NODES``: a node as some node sees it."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str
    slots: tuple[str, ...]

    def serves(self, slot: int) -> bool:
        """True when this node is a healthy master serving ``slot``."""
        if "master" not in self.flags or self.flags & {"fail", "fail?"}:
            return False
        for part in self.slots:
            if part.startswith("["):  # a slot being imported or migrated: not yet (or still) its own
                continue
            first, _, last = part.partition("-")
            if int(first) <= slot <= int(last or first):
                return True
        return False


def _lines(node: RedisServer) -> list[_Line]:
    lines = []
    for text in str(_run(node, "CLUSTER", "NODES")).splitlines():
        fields = text.split()
        port = int(fields[1].split("@", 1)[0].rsplit(":", 1)[1])
        lines.append(_Line(fields[0], port, frozenset(fields[2].split(",")), fields[3], tuple(fields[8:])))
    return lines


def _by_port(cluster: RedisCluster, port: int) -> RedisServer:
    return next(node for node in cluster.nodes if node.port == port)


def role(node: RedisServer) -> str:
    """``master`` or ``slave``, as the node says."""
    return str(_run(node, "ROLE")[0])


def key_exists(node: RedisServer, key: str) -> bool:
    """True when ``node`` itself holds ``key`` (no redirection followed)."""
    return bool(_run(node, "EXISTS", key))


def node_id(node: RedisServer) -> str:
    """The node's cluster id."""
    return str(_run(node, "CLUSTER", "MYID"))


def masters(cluster: RedisCluster) -> list[RedisServer]:
    """The running nodes that are masters (by their own account)."""
    return [node for node in cluster.nodes if node.running and role(node) == "master"]


def slot_owner(cluster: RedisCluster, slot: int, *, seen_by: RedisServer | None = None) -> RedisServer | None:
    """The master serving ``slot`` as ``seen_by`` (a running node by default) sees it, or None."""
    viewer = seen_by or next(node for node in cluster.nodes if node.running)
    owner = next((line for line in _lines(viewer) if line.serves(slot)), None)
    return None if owner is None else _by_port(cluster, owner.port)


def replica_of(cluster: RedisCluster, master: RedisServer) -> RedisServer:
    """A replica of ``master``."""
    # Asked of each replica itself: it knows its master at once, while the master's own
    # table may not list it yet (gossip), which made this flaky on a busy machine.
    wanted = node_id(master)
    for node in cluster.nodes:
        if node is master or not node.running:
            continue
        me = next(line for line in _lines(node) if "myself" in line.flags)
        if me.master_id == wanted:
            return node
    raise LookupError(f"no replica of the master on port {master.port}")


def wait_for_new_owner(cluster: RedisCluster, slot: int, old: RedisServer, timeout: float) -> RedisServer:
    """Wait until every running master agrees that a node other than ``old`` serves ``slot``; that node."""
    deadline = time.monotonic() + timeout
    while True:
        owners = {slot_owner(cluster, slot, seen_by=node) for node in masters(cluster)}
        if len(owners) == 1:
            owner = owners.pop()
            if owner is not None and owner is not old:
                return owner
        if time.monotonic() > deadline:
            raise RuntimeError(f"slot {slot} found no new owner within {timeout} s")
        time.sleep(0.05)


@dataclass(frozen=True)
class Migration:
    """When each step of :func:`migrate_slot` happened (``time.monotonic``)."""

    #: The slot went IMPORTING on the target.
    began: float
    #: The slot's keys had all moved (from here on the source answers ASK for them).
    keys_moved: float
    #: Every master had been told the target owns the slot.
    ended: float
    #: How many keys moved.
    keys: int


def migrate_slot(cluster: RedisCluster, slot: int, target: RedisServer, *, hold: float = 0.0) -> Migration:
    """Move ``slot`` to the master ``target`` step by step, as ``redis-cli --cluster reshard`` does.

    SETSLOT IMPORTING on the target, MIGRATING on the source, MIGRATE the keys in
    batches, then SETSLOT NODE on the target, the source and the other masters.

    Args:
        hold: Seconds to wait after the keys moved before the slot changes hands,
            standing for the other keys of a big slot still on their way: the
            moved keys are served through ``ASK`` meanwhile.
    """
    source = slot_owner(cluster, slot)
    if source is None or source is target:
        raise ValueError(f"slot {slot} is served by {source}, not by another master than the target")
    source_id, target_id = node_id(source), node_id(target)
    began = time.monotonic()
    try:
        _run(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        _run(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        keys = 0
        while batch := _run(source, "CLUSTER", "GETKEYSINSLOT", slot, _BATCH):
            _run(source, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *batch)
            keys += len(batch)
        keys_moved = time.monotonic()
        time.sleep(hold)
        for node in [target, source, *(m for m in masters(cluster) if m not in (target, source))]:
            _run(node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
    except BaseException:
        for node in (target, source):  # leave no half-moved slot to the session's other tests
            _run(node, "CLUSTER", "SETSLOT", slot, "STABLE")
        raise
    return Migration(began=began, keys_moved=keys_moved, ended=time.monotonic(), keys=keys)
