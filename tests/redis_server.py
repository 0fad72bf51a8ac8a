"""A throwaway ``redis-server`` for tests and benchmarks: no persistence, loopback only.

Example:
    >>> with RedisServer() as server:
    ...     url = server.url  # redis://127.0.0.1:<free port>/0
    ...     server.stop()     # Redis "goes down"
    ...     server.start()    # and comes back on the same port
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TypeVar

__all__ = [
    "RedisCluster",
    "RedisServer",
    "free_port",
    "redis_cli_binary",
    "redis_server_binary",
    "require_redis",
    "skip_or_fail",
]

_D = TypeVar("_D", bound="Deployment")


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` on PATH, or None."""
    return shutil.which("redis-server")


def redis_cli_binary() -> str | None:
    """Path of ``redis-cli`` on PATH (Debian's redis-tools, which redis-server depends on), or None."""
    return shutil.which("redis-cli")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Deployment:
    """``with`` for a set of servers: ``start()`` on entry (``close()`` if it fails), ``close()`` on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _D) -> _D:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer(Deployment):
    """One ``redis-server`` process on a free loopback port, restartable on that port.

    Args:
        binary: Path of ``redis-server``; found on PATH by default.
        startup_timeout: Seconds to wait for the server to answer PING.
        extra_args: More ``redis-server`` arguments.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        startup_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
        config: str | None = None,
        port: int | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        found = binary or redis_server_binary()
        if found is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.binary = found
        self.startup_timeout = startup_timeout
        #: More redis-server arguments, e.g. ("--requirepass", "pw") or ("--replicaof", host, port).
        self.extra_args = tuple(extra_args)
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="grpc-throttle-redis-")
        #: With TLS (the caller passes the --tls-* arguments): how this class's own PING connects.
        self.tls = tls
        #: A config file, given first on the command line (a sentinel needs one it can rewrite).
        self._config: str | None = None
        if config is not None:
            self._config = os.path.join(self._dir.name, "redis.conf")
            with open(self._config, "w", encoding="utf-8") as file:
                file.write(config)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (on the same port as before) and wait until it answers PING."""
        if self.running:
            return
        ports = ["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]
        args = [self.binary, *([self._config] if self._config else []), *ports, "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", self._dir.name]
        args += ["--daemonize", "no", "--loglevel", "warning", *self.extra_args]
        deadline = time.monotonic() + self.startup_timeout
        while True:
            self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while time.monotonic() < deadline and self._process.poll() is None:
                if self.ping():
                    return
                time.sleep(0.02)
            self.stop()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.1)  # the port may still be held by the previous process: retry

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # in case it was paused
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def kill(self) -> None:
        """Kill the server outright (SIGKILL): a crash, with no chance to close connections."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def directory(self) -> str:
        """The server's working directory (removed by :meth:`close`)."""
        return self._dir.name

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGCONT)

    def ping(self, timeout: float = 0.2) -> bool:
        """True when the server answers PING (raw RESP, no client library)."""
        try:
            with self._connect(timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # NOAUTH: up, with a password
        except OSError:
            return False

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if self.tls is None:
            return sock
        try:
            return self.tls.wrap_socket(sock, server_hostname="127.0.0.1")
        except BaseException:
            sock.close()
            raise

    def command(self, line: bytes, timeout: float = 1.0) -> bytes:
        """One inline command's raw reply (b"" when the server does not answer)."""
        try:
            with self._connect(timeout) as sock:
                sock.sendall(line + b"\r\n")
                return sock.recv(65536)
        except OSError:
            return b""

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


class RedisCluster(Deployment):
    """A Redis Cluster on free loopback ports: three masters and no replicas by default.

    Args:
        masters: How many masters share the slots.
        replicas: Replicas per master (``redis-cli --cluster create --cluster-replicas``).
        node_timeout_ms: ``cluster-node-timeout``: how long a node may not answer
            before it counts as failing (Redis's default, 15 s, when None). A
            failover takes about this plus a second.
        startup_timeout: Seconds to wait for the cluster to form.

    Example:
        >>> with RedisCluster() as cluster:
        ...     cluster.startup_nodes  # [("127.0.0.1", port), ...]
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        replicas: int = 0,
        node_timeout_ms: int | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        cli = redis_cli_binary()
        if cli is None:
            raise FileNotFoundError("redis-cli is not on PATH")
        self.cli = cli
        self.startup_timeout = startup_timeout
        #: Replicas per master.
        self.replicas = replicas
        cluster_args: tuple[str, ...] = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        cluster_args += ("--repl-diskless-sync-delay", "0")  # a replica syncs at once, not after 5 s
        if node_timeout_ms is not None:
            cluster_args += ("--cluster-node-timeout", str(node_timeout_ms))
        # The bus port defaults to port + 10000, past 65535 for many free ports: pick it too.
        #: The nodes, one redis-server each; redis-cli picks which are masters (see CLUSTER NODES).
        self.nodes = [
            RedisServer(extra_args=(*cluster_args, "--cluster-port", str(free_port())))
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        """A URL of one node, as ``redis.cluster.RedisCluster.from_url`` takes it."""
        return self.nodes[0].url

    def start(self) -> None:
        """Start the nodes, join them into one cluster and wait for ``cluster_state:ok`` on each
        (and, with replicas, until every replica is in sync with its master)."""
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        replicas = ("--cluster-replicas", str(self.replicas)) if self.replicas else ()
        subprocess.run(
            [self.cli, "--cluster", "create", *addresses, *replicas, "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=self.startup_timeout,
        )
        deadline = time.monotonic() + self.startup_timeout
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def _ready(self) -> bool:
        if not all(b"cluster_state:ok" in node.command(b"CLUSTER INFO") for node in self.nodes):
            return False
        synced = sum(b"master_link_status:up" in node.command(b"INFO replication") for node in self.nodes)
        return synced == len(self.nodes) - len(self.nodes) // (1 + self.replicas)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def require_redis(*, cluster: bool = False, tools: Sequence[str] = ()) -> None:
    """Skip (or, under CI=true, fail) the calling test when Redis (and redis-cli for a cluster) is missing.

    ``tools``: more programs the test needs on PATH (e.g. ``openssl``).
    """
    missing = []
    if redis_server_binary() is None:
        missing.append("redis-server is not on PATH")
    if cluster and redis_cli_binary() is None:
        missing.append("redis-cli is not on PATH")
    missing += [f"{tool} is not on PATH" for tool in tools if shutil.which(tool) is None]
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("redis-py is not installed")
    skip_or_fail(missing)


def skip_or_fail(missing: Sequence[str]) -> None:
    """Skip the calling test for what is ``missing``, or fail it under CI=true (CI must install it)."""
    if not missing:
        return
    import pytest  # here, so that the benchmarks can use this module without pytest

    reason = "; ".join(missing)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI=true: the CI setup must install it", pytrace=False)
    pytest.skip(reason)
