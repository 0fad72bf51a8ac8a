"""A quota-enforcing Clarifai emulator: a real gRPC server for tests and demos.

It serves the methods of Clarifai's ``V2`` service that the Clarifai SDK's
common calls need (``ListModelTypes``, ``PostModelOutputs``, ``GetModel``,
``ListApps``, ``GetApp``), with fake content, each charged to the caller's
quota, and answers over-quota calls exactly
as Clarifai documents (gRPC OK, body ``status.code`` 11005 CONN_THROTTLED).
The ``Control`` service on the same port reads and resets its counters from
another process (:mod:`.control`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2, status_pb2

from .. import _checks
from .control import Counters, add_control_service
from .quota import CountWindow, Quota, make_quota

__all__ = ["ClarifaiEmulator", "user_key"]

_log = logging.getLogger(__name__)

#: The model types ``ListModelTypes`` answers with: (id, title).
_MODEL_TYPES = (
    ("visual-classifier", "Visual Classifier"),
    ("visual-detector", "Visual Detector"),
    ("text-classifier", "Text Classifier"),
    ("text-to-text", "Text to Text"),
    ("embedder", "Embedder"),
)

#: The apps every user has, as ``ListApps`` and ``GetApp`` answer.
_APP_IDS = ("main", "staging", "archive")


def user_key(authorization: str | None) -> str:
    """Name a user as the emulator's counters do, without revealing the key.

    Args:
        authorization: The call's ``authorization`` metadata value, or None.

    Returns:
        The first 12 hex digits of its sha256, or ``"anonymous"`` for None.

    Example:
        >>> user_key(None)
        'anonymous'
    """
    if authorization is None:
        return "anonymous"
    return hashlib.sha256(authorization.encode()).hexdigest()[:12]


class _User:
    """One user's quota and tallies (guarded by the emulator's lock)."""

    __slots__ = ("admitted", "quota", "throttled", "times", "windows")

    def __init__(self, quota: Quota, windows: list[tuple[CountWindow, int]]) -> None:
        self.quota = quota
        #: The long windows, each with the status code that says it is full.
        self.windows = windows
        self.admitted = 0
        self.throttled = 0
        #: Clock time of each admitted call, in order.
        self.times: list[float] = []


class ClarifaiEmulator:
    """A local gRPC server that throttles like Clarifai's API.

    Each user (the ``authorization`` metadata value; none means
    ``"anonymous"``) gets its own quota of ``rate`` calls per second. An
    admitted call gets ``status.code`` SUCCESS; an over-quota one gets the
    documented CONN_THROTTLED body, or a RESOURCE_EXHAUSTED error with
    ``throttle_with="grpc"``. Keys are hashed, never stored, logged or shown.

    Args:
        rate: Calls per second allowed to each user.
        policy: ``"token-bucket"``, ``"fixed-window"`` or ``"sliding-window"``
            (see :func:`~grpc_throttle.testing.make_quota`).
        burst: Bucket size for ``"token-bucket"``; default one second's worth.
        throttle_with: ``"body"`` (Clarifai's answer) or ``"grpc"``.
        windows: Longer quotas each user has besides ``rate``, as
            ``(count, seconds, code)``: at most ``count`` calls in any
            ``seconds``, answered with body ``status.code`` ``code`` when full
            (Clarifai: 11003 for its hourly limit, 11004 for its monthly one).
            Checked before the per-second quota, which a refused call does
            not charge.
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one.
        max_workers: Threads serving calls.
        clock: Monotonic clock in seconds; injectable for tests.

    Example:
        >>> with ClarifaiEmulator(rate=15) as emu:  # doctest: +SKIP
        ...     channel = grpc.insecure_channel(emu.target)
        ...     # V2Stub(channel).ListModelTypes(...), then:
        ...     emu.counters().admitted
    """

    def __init__(
        self,
        *,
        rate: float = 15.0,
        policy: str = "token-bucket",
        burst: float | None = None,
        throttle_with: str = "body",
        windows: Sequence[tuple[int, float, int]] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        max_workers: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        make_quota(policy, rate, burst)  # validates rate, policy and burst
        if throttle_with not in ("body", "grpc"):
            raise ValueError(f"throttle_with must be 'body' or 'grpc', got {throttle_with!r}")
        self.windows = tuple(_check_window(w) for w in windows)
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, got {host!r}")
        if _checks.whole("port", port, 0) > 65535:
            raise ValueError(f"port must be a whole number in 0..65535, got {port!r}")
        if not callable(clock):
            raise ValueError(f"clock must be callable, got {clock!r}")
        self.rate = float(rate)
        self.policy = policy
        self.burst = burst
        self.throttle_with = throttle_with
        self.host = host
        self._max_workers = _checks.whole("max_workers", max_workers, 1)
        self._clock = clock
        self._port = port
        self._lock = threading.Lock()
        #: Users by the full sha256 hex of their key ("anonymous" for none).
        self._users: dict[str, _User] = {}
        self._server: grpc.Server | None = None
        self._pool: futures.ThreadPoolExecutor | None = None

    def start(self) -> ClarifaiEmulator:
        """Bind the port and start serving; returns ``self``.

        Raises:
            RuntimeError: Already running.
            OSError: The address cannot be bound (e.g. the port is taken).
        """
        if self._server is not None:
            raise RuntimeError(f"{self!r} is already running")
        # SO_REUSEPORT (grpc's default on Linux) would let a second server
        # share a taken port silently, splitting calls between two quotas.
        pool = futures.ThreadPoolExecutor(self._max_workers, thread_name_prefix="clarifai-emulator")
        server = grpc.server(pool, options=[("grpc.so_reuseport", 0)])
        service_pb2_grpc.add_V2Servicer_to_server(_V2Servicer(self), server)
        add_control_service(self, server)
        try:
            port = server.add_insecure_port(_address(self.host, self._port))
        except RuntimeError as exc:
            server.stop(None)
            pool.shutdown(wait=False)
            raise _bind_error(self.host, self._port) from exc
        server.start()
        self._port, self._server, self._pool = port, server, pool
        _log.info("Clarifai emulator serving on %s (%s)", self.target, self.policy)
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop serving, aborting calls still running after ``grace`` seconds."""
        server, self._server = self._server, None
        pool, self._pool = self._pool, None
        if server is not None:
            server.stop(grace).wait()
            _log.info("Clarifai emulator on %s stopped", self.target)
        if pool is not None:
            pool.shutdown(wait=False)  # grpc leaves its idle workers running

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout``); True if it timed out."""
        if self._server is None:
            return False
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> ClarifaiEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port served on (known once :meth:`start` bound it)."""
        if self._port == 0:
            raise RuntimeError("the emulator has no port yet: call start() first")
        return self._port

    @property
    def target(self) -> str:
        """The address to dial, e.g. ``"127.0.0.1:50051"``."""
        return _address(self.host, self.port)

    def counters(self) -> Counters:
        """Return a snapshot of the admitted and throttled calls."""
        with self._lock:
            per_user = {_short(k): (u.admitted, u.throttled) for k, u in sorted(self._users.items())}
        return Counters(
            admitted=sum(a for a, _ in per_user.values()),
            throttled=sum(t for _, t in per_user.values()),
            per_user=per_user,
        )

    def reset(self) -> None:
        """Forget every user: counters, admission times and quota state."""
        with self._lock:
            self._users.clear()

    def admission_times(self, user_key: str | None = None) -> list[float]:
        """Clock times of the admitted calls, in order.

        Args:
            user_key: One user (as :func:`user_key` names it); None for all.
        """
        with self._lock:
            users = [u for k, u in self._users.items() if user_key in (None, _short(k))]
            return sorted(t for u in users for t in u.times)

    def __repr__(self) -> str:
        where = self.target if self._port else "unbound"
        state = "running" if self._server is not None else "stopped"
        return f"<ClarifaiEmulator {where} {state} {self.policy} rate={_fmt(self.rate)}>"

    def _admit(self, context: grpc.ServicerContext) -> status_pb2.Status:
        """Charge the call to its user; return the status to answer with."""
        auth = next((v for k, v in context.invocation_metadata() if k == "authorization"), None)
        key = "anonymous" if auth is None else hashlib.sha256(str(auth).encode()).hexdigest()
        with self._lock:
            user = self._users.get(key)
            if user is None:
                windows = [(CountWindow(count, seconds), code) for count, seconds, code in self.windows]
                user = self._users[key] = _User(make_quota(self.policy, self.rate, self.burst), windows)
            now = self._clock()
            full = next(((w, code) for w, code in user.windows if w.full(now)), None)
            admitted = full is None and user.quota.admit(now)
            if admitted:
                user.admitted += 1
                user.times.append(now)
                for window, _ in user.windows:
                    window.add(now)
            else:
                user.throttled += 1
        req_id = uuid.uuid4().hex
        if admitted:
            return status_pb2.Status(code=status_code_pb2.SUCCESS, description="Ok", req_id=req_id)
        if full is not None:
            window, code = full
            return status_pb2.Status(
                code=code,
                description="Exceeded the usage limit",
                details=f"exceeded limit of {window.count} requests per {window.seconds:g} s",
                req_id=req_id,
            )
        details = f"exceeded limit of {_fmt(self.rate)} requests per second"
        if self.throttle_with == "grpc":
            message = f"Making too many requests: {details}"
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        return status_pb2.Status(
            code=status_code_pb2.CONN_THROTTLED,
            description="Making too many requests",
            details=details,
            req_id=req_id,
        )


class _V2Servicer(service_pb2_grpc.V2Servicer):  # type: ignore[misc]
    """The emulated Clarifai methods; every other one answers UNIMPLEMENTED."""

    def __init__(self, emulator: ClarifaiEmulator) -> None:
        self._emulator = emulator

    def ListModelTypes(self, request: Any, context: grpc.ServicerContext) -> Any:
        status = self._emulator._admit(context)
        if status.code != status_code_pb2.SUCCESS:
            return service_pb2.MultiModelTypeResponse(status=status)
        types = [resources_pb2.ModelType(id=i, title=t) for i, t in _MODEL_TYPES]
        return service_pb2.MultiModelTypeResponse(status=status, model_types=types)

    def PostModelOutputs(self, request: Any, context: grpc.ServicerContext) -> Any:
        status = self._emulator._admit(context)
        if status.code != status_code_pb2.SUCCESS:
            return service_pb2.MultiOutputResponse(status=status)
        model = resources_pb2.Model(id=request.model_id or "emulated-model")
        concept = resources_pb2.Concept(id="emulated", name="emulated", value=0.99)
        outputs = [
            resources_pb2.Output(
                id=uuid.uuid4().hex,
                status=status_pb2.Status(code=status_code_pb2.SUCCESS, description="Ok"),
                model=model,
                input=item,
                data=resources_pb2.Data(concepts=[concept]),
            )
            for item in request.inputs
        ]
        return service_pb2.MultiOutputResponse(status=status, outputs=outputs)

    def GetModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        status = self._emulator._admit(context)
        if status.code != status_code_pb2.SUCCESS:
            return service_pb2.SingleModelResponse(status=status)
        ids = request.user_app_id
        version = resources_pb2.ModelVersion(id=request.version_id or "emulated-version")
        model = resources_pb2.Model(
            id=request.model_id or "emulated-model",
            user_id=ids.user_id,
            app_id=ids.app_id,
            model_type_id="text-classifier",
            model_version=version,
        )
        return service_pb2.SingleModelResponse(status=status, model=model)

    def ListApps(self, request: Any, context: grpc.ServicerContext) -> Any:
        status = self._emulator._admit(context)
        if status.code != status_code_pb2.SUCCESS:
            return service_pb2.MultiAppResponse(status=status)
        # Clarifai's pages count from 1; per_page 0 means its default of 128.
        per_page = request.per_page or 128
        start = (max(request.page, 1) - 1) * per_page
        user_id = request.user_app_id.user_id
        apps = [resources_pb2.App(id=i, user_id=user_id, name=i) for i in _APP_IDS[start : start + per_page]]
        return service_pb2.MultiAppResponse(status=status, apps=apps)

    def GetApp(self, request: Any, context: grpc.ServicerContext) -> Any:
        status = self._emulator._admit(context)
        if status.code != status_code_pb2.SUCCESS:
            return service_pb2.SingleAppResponse(status=status)
        ids = request.user_app_id
        if ids.app_id not in _APP_IDS:
            missing = status_pb2.Status(
                code=status_code_pb2.CONN_DOES_NOT_EXIST, description="Resource does not exist", req_id=status.req_id
            )
            return service_pb2.SingleAppResponse(status=missing)
        return service_pb2.SingleAppResponse(status=status, app=resources_pb2.App(id=ids.app_id, user_id=ids.user_id))


def _check_window(window: Any) -> tuple[int, float, int]:
    if not isinstance(window, tuple) or len(window) != 3:
        raise ValueError(f"windows must hold (count, seconds, code) tuples, got {window!r}")
    count, seconds, code = window
    CountWindow(count, seconds)  # validates count and seconds, naming them
    if _checks.whole("window code", code, 1) == status_code_pb2.SUCCESS:
        raise ValueError(f"a window's code must not be SUCCESS ({status_code_pb2.SUCCESS}), got {code!r}")
    return int(count), float(seconds), int(code)


def _short(key: str) -> str:
    return key if key == "anonymous" else key[:12]


def _fmt(rate: float) -> str:
    """``15`` for 15.0, ``7.5`` for 7.5: how Clarifai prints its limit."""
    return str(int(rate)) if rate.is_integer() else repr(rate)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _bind_error(host: str, port: int) -> OSError:
    """Say why grpc could not bind: it only raises "Failed to bind" itself."""
    address = _address(host, port)
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        family, kind, proto, _, sockaddr = info
        with socket.socket(family, kind, proto) as probe:
            probe.bind(sockaddr)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        code = exc.errno if exc.errno is not None else errno.EADDRNOTAVAIL
        return OSError(code, f"ClarifaiEmulator cannot listen on {address}: {reason}")
    return OSError(errno.EADDRINUSE, f"ClarifaiEmulator cannot listen on {address}")
