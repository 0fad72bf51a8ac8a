"""The fault-injection harness: a server that fails on cue, one call and its outcome, a ledger of outcomes.

Shared by ``tests/test_faults.py`` (the short form, in CI) and ``scripts/faults.py``
(the long form).

- :class:`FaultServer` is a real sync grpc server that can be stopped and started
  again on its port, made to stall, and that serves three services: the echo
  service, Clarifai's ``PostModelOutputs`` (the real message shape) and
  ``/faults.Odd/Call``, whose JSON bodies are as odd as a test wants (no
  ``status``, a string ``code``, megabytes, undecodable bytes...). Every request
  is logged with its arrival time (``script.log``) and every successful
  execution counted (``script.executed``), per call id, as in ``scripted.py``.
- :func:`call_sync` and :func:`call_aio` make one call and say how it came
  back (an :class:`Outcome`); a :class:`Ledger` keeps every call's outcomes.
- :class:`Backend` builds the bucket, here or in a child process.

``faults_crowd.py`` puts the load on, and ``faults_scenarios.py`` injects the
faults and checks the invariants.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import threading
import time
import types
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import grpc.aio
from clarifai_grpc.grpc.api import resources_pb2, service_pb2
from clarifai_grpc.grpc.api.status import status_code_pb2, status_pb2

from grpc_throttle import (
    AdaptiveRate,
    RetryPolicy,
    ThrottledChannel,
    ThrottlePolicy,
    ThrottlingInterceptor,
    TokenBucket,
)
from grpc_throttle.testing import echo_pb2
from tests.scripted import ECHO_POLICY, SLOW_DOWN, Script

TESTS = Path(__file__).resolve().parent

#: A body of a few MB, under grpc's default 4 MiB receive limit, and one over it.
HUGE, OVERSIZE = 3 * 1024 * 1024, 5 * 1024 * 1024
#: Channel options: no grpc-level retries under ours, quick reconnection after a restart.
CHANNEL_OPTIONS = [
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
]
STYLES = ("blocking", "with_call", "future")


# -- the server --------------------------------------------------------------------


class FaultServer:
    """A real grpc server on a fixed loopback port, restartable and able to stall.

    Args:
        workers: Handler threads; enough that stalled handlers never queue the others
            (a queue would bunch arrivals and blur the rate check).
    """

    def __init__(self, workers: int = 64) -> None:
        #: Attempts, arrivals and executions per call id, across restarts.
        self.script = Script()
        #: Seconds every handler sleeps after logging the request (0: answer at once).
        self.stall = 0.0
        #: Monotonic times of each restart (stop, start).
        self.restarts: list[tuple[float, float]] = []
        self.port = 0
        self._workers = workers
        self._server: grpc.Server | None = None
        self._pools: list[futures.ThreadPoolExecutor] = []

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultServer:
        """Serve on the port (a free one the first time, the same one afterwards)."""
        for _ in range(100):
            pool = futures.ThreadPoolExecutor(self._workers, thread_name_prefix="fault-server")
            server = grpc.server(pool, handlers=[_Handlers(self)])
            try:
                port = server.add_insecure_port(f"127.0.0.1:{self.port}")
            except RuntimeError:
                port = 0
            if port:
                server.start()
                self.port, self._server = port, server
                self._pools.append(pool)
                return self
            server.stop(None)
            pool.shutdown(wait=False)
            time.sleep(0.05)
        raise RuntimeError(f"could not listen on 127.0.0.1:{self.port} again")

    def stop(self) -> None:
        """Stop at once: calls in flight are aborted, new ones find nobody listening."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(None).wait()

    def restart(self, down: float) -> None:
        """Stop, stay down ``down`` seconds, and start a new server on the same port."""
        stopped = time.monotonic()
        self.stop()
        time.sleep(down)
        self.start()
        self.restarts.append((stopped, time.monotonic()))

    def close(self) -> None:
        """Stop and wait for every handler thread (stalled ones included) to end."""
        self.stop()
        for pool in self._pools:
            pool.shutdown(wait=True)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handlers(grpc.GenericRpcHandler):
    """The three services, as one generic handler (no servicer base classes needed)."""

    def __init__(self, server: FaultServer) -> None:
        self._server = server
        self._methods = {
            ECHO: grpc.unary_unary_rpc_method_handler(
                self._echo, echo_pb2.EchoRequest.FromString, echo_pb2.EchoResponse.SerializeToString
            ),
            V2: grpc.unary_unary_rpc_method_handler(
                self._v2,
                service_pb2.PostModelOutputsRequest.FromString,
                service_pb2.MultiOutputResponse.SerializeToString,
            ),
            ODD: grpc.unary_unary_rpc_method_handler(self._odd, None, None),
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return self._methods.get(handler_call_details.method)

    def _decide(self, text: str, context: grpc.ServicerContext) -> tuple[bool, int]:
        """Log the request, stall if told to, apply the script; (throttled, attempt)."""
        script = self._server.script
        action, arg, attempt = script.decide(text, context)
        stall = self._server.stall
        if stall:
            time.sleep(stall)
        if action == "abort":
            context.abort(arg, f"scripted {arg.name}")
        if action == "sleep":
            time.sleep(arg)
        return action == "throttle", attempt

    def _executed(self, text: str) -> None:
        script = self._server.script
        with script.lock:
            script.executed[text.partition(":")[0]] += 1

    def _echo(self, request: Any, context: grpc.ServicerContext) -> Any:
        throttled, attempt = self._decide(request.text, context)
        return self._server.script.answer(request.text, attempt, throttled)

    def _v2(self, request: Any, context: grpc.ServicerContext) -> Any:
        text = request.model_id
        throttled, _ = self._decide(text, context)
        command = text.partition(":")[2]
        output = resources_pb2.Output(id=text)
        if throttled:
            status = status_pb2.Status(code=status_code_pb2.CONN_THROTTLED, description="Making too many requests")
            return service_pb2.MultiOutputResponse(status=status, outputs=[output])
        self._executed(text)
        if command == "huge":
            output.data.text.raw = "x" * HUGE
        if command == "nostatus":
            return service_pb2.MultiOutputResponse(outputs=[output])
        status = status_pb2.Status(code=status_code_pb2.SUCCESS, description="Ok")
        return service_pb2.MultiOutputResponse(status=status, outputs=[output])

    def _odd(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        text = request.decode()
        throttled, _ = self._decide(text, context)
        if throttled:
            return json.dumps({"text": text, "status": {"code": status_code_pb2.CONN_THROTTLED}}).encode()
        self._executed(text)
        return odd_body(text, text.partition(":")[2])


def odd_body(text: str, command: str) -> bytes:
    """The ``/faults.Odd/Call`` answer to ``command`` (JSON, except ``bad``)."""
    bodies: dict[str, dict[str, Any]] = {
        "nostatus": {"text": text},
        "nullstatus": {"text": text, "status": None},
        "strcode": {"text": text, "status": {"code": "11005"}},
        "floatcode": {"text": text, "status": {"code": 11005.0}},
        "listcode": {"text": text, "status": {"code": [11005]}},
        "nocode": {"text": text, "status": {"message": "no code at all"}},
        "raising": {"text": text, "raise": True},
        "huge": {"text": text, "status": {"code": 0}, "pad": "x" * HUGE},
        "oversize": {"text": text, "status": {"code": 0}, "pad": "x" * OVERSIZE},
    }
    if command == "bad":
        return b"\xff\xfe not json " + text.encode()
    return json.dumps(bodies.get(command, {"text": text, "status": {"code": 0}})).encode()


class RaisingStatus:
    """A decoded body whose ``status`` cannot be read (a lazily decoded message gone wrong)."""

    def __init__(self, text: str) -> None:
        self.text = text

    @property
    def status(self) -> Any:
        raise ValueError("the status field could not be decoded")


def odd_response(data: bytes) -> Any:
    """The client's deserializer for ``/faults.Odd/Call``: JSON objects as attribute objects."""
    doc = json.loads(data)  # undecodable bodies raise here, and grpc fails the call
    if doc.get("raise"):
        return RaisingStatus(doc["text"])
    return json.loads(data, object_hook=lambda d: types.SimpleNamespace(**d))


# -- the services, seen from the client ----------------------------------------------

ECHO = "/grpc_throttle.testing.Echo/Unary"
V2 = "/clarifai.api.V2/PostModelOutputs"
ODD = "/faults.Odd/Call"


class Service(NamedTuple):
    method: str
    serializer: Callable[[Any], bytes] | None
    deserializer: Callable[[bytes], Any] | None
    request: Callable[[str], Any]
    #: The call id a response answers, or None when it cannot tell.
    answers: Callable[[Any], str | None]
    #: True when the body is a "slow down" answer.
    throttled: Callable[[Any], bool]


def _odd_throttled(response: Any) -> bool:
    code = getattr(getattr(response, "status", None), "code", None)
    return isinstance(code, int) and code == status_code_pb2.CONN_THROTTLED


SERVICES = {
    "echo": Service(
        ECHO,
        echo_pb2.EchoRequest.SerializeToString,
        echo_pb2.EchoResponse.FromString,
        lambda text: echo_pb2.EchoRequest(text=text),
        lambda r: r.text,
        lambda r: r.outcome.state == SLOW_DOWN,
    ),
    "v2": Service(
        V2,
        service_pb2.PostModelOutputsRequest.SerializeToString,
        service_pb2.MultiOutputResponse.FromString,
        lambda text: service_pb2.PostModelOutputsRequest(model_id=text),
        lambda r: r.outputs[0].id if r.outputs else None,
        lambda r: r.status.code == status_code_pb2.CONN_THROTTLED,
    ),
    "odd": Service(ODD, None, odd_response, lambda text: text.encode(), lambda r: r.text, _odd_throttled),
}


def _raise(response: Any) -> bool:
    raise RuntimeError("a response_predicate with a bug")


#: Throttle policies by name (child processes get the name).
POLICIES = {
    "echo": ECHO_POLICY,
    "clarifai": ThrottlePolicy(),
    "status-codes": ThrottlePolicy(status_codes={status_code_pb2.CONN_THROTTLED, SLOW_DOWN}),
    "raising-predicate": ThrottlePolicy(response_predicate=_raise),
}


# -- outcomes ------------------------------------------------------------------------


class Outcome(NamedTuple):
    """How one call came back, as its caller saw it."""

    #: ok | throttled (a final "slow down" body) | error | cancelled | hung | crash (not a grpc error).
    kind: str
    #: The grpc status code name, or the exception's type.
    code: str
    #: Seconds from the call to its outcome.
    elapsed: float
    #: For answers: whether the body answers this very call.
    matches: bool = True
    #: For errors: raised by grpc-throttle itself (the call was not sent).
    local: bool = False


def _error_outcome(error: BaseException, started: float) -> Outcome:
    code = getattr(error, "code", None)
    name = code().name if callable(code) else type(error).__name__
    details = getattr(error, "details", None)
    text = details() if callable(details) else ""
    return Outcome("error", name, time.monotonic() - started, local=str(text or "").startswith("grpc-throttle:"))


def _answer_outcome(service: Service, call_id: str, response: Any, started: float) -> Outcome:
    elapsed = time.monotonic() - started
    try:
        answered = service.answers(response)
        throttled = service.throttled(response)
    except Exception as error:
        return Outcome("crash", f"unreadable response: {type(error).__name__}", elapsed)
    matches = answered is None or answered.partition(":")[0] == call_id
    return Outcome("throttled" if throttled else "ok", "OK", elapsed, matches)


def call_sync(method: Any, service: Service, call_id: str, command: str, style: str, timeout: float) -> Outcome:
    """One call in ``style``; a future that outlives its deadline by 2 s is "hung"."""
    request = service.request(f"{call_id}:{command}")
    started = time.monotonic()
    try:
        if style == "blocking":
            response = method(request, timeout=timeout)
        elif style == "with_call":
            response, _ = method.with_call(request, timeout=timeout)
        else:
            response = method.future(request, timeout=timeout).result(timeout=timeout + 2.0)
    except grpc.FutureTimeoutError:
        return Outcome("hung", "FutureTimeoutError", time.monotonic() - started)
    except grpc.FutureCancelledError:
        return Outcome("cancelled", "CANCELLED", time.monotonic() - started)
    except grpc.RpcError as error:
        return _error_outcome(error, started)
    except Exception as error:
        return Outcome("crash", type(error).__name__, time.monotonic() - started)
    return _answer_outcome(service, call_id, response, started)


async def call_aio(method: Any, service: Service, call_id: str, command: str, timeout: float) -> Outcome:
    """One ``grpc.aio`` call; one that outlives its deadline by 2 s is "hung"."""
    request = service.request(f"{call_id}:{command}")
    started = time.monotonic()
    try:
        response = await asyncio.wait_for(method(request, timeout=timeout), timeout + 2.0)
    except asyncio.TimeoutError:
        return Outcome("hung", "TimeoutError", time.monotonic() - started)
    except grpc.aio.AioRpcError as error:
        return _error_outcome(error, started)
    except Exception as error:
        return Outcome("crash", type(error).__name__, time.monotonic() - started)
    return _answer_outcome(service, call_id, response, started)


class Ledger:
    """Every call begun, and every outcome it came back with (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Call id -> command, for every call begun.
        self.begun: dict[str, str] = {}
        #: Call id -> outcomes (exactly one, if all is well).
        self.outcomes: dict[str, list[Outcome]] = {}

    def begin(self, call_id: str, command: str) -> None:
        with self._lock:
            self.begun[call_id] = command

    def record(self, call_id: str, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.setdefault(call_id, []).append(outcome)

    def merge(self, begun: dict[str, str], outcomes: dict[str, list[list[Any]]]) -> None:
        with self._lock:
            self.begun.update(begun)
            for call_id, seen in outcomes.items():
                self.outcomes.setdefault(call_id, []).extend(Outcome(*o) for o in seen)

    def final(self) -> dict[str, Outcome]:
        """The one outcome of each call that has exactly one."""
        with self._lock:
            return {k: v[0] for k, v in self.outcomes.items() if len(v) == 1}

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {"begun": dict(self.begun), "outcomes": {k: [list(o) for o in v] for k, v in self.outcomes.items()}}


# -- buckets and channels ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backend:
    """How to build a bucket, in this process or a child (so it travels as JSON)."""

    kind: str  # "local" or "redis"
    rate: float
    capacity: float = 1.0
    url: str = ""
    key: str = ""
    local_share: float = 0.25
    timeout: float = 0.25
    cooldown: float = 0.3
    #: Whether the rate adapts to throttled answers (the buckets' default).
    adaptive: bool = True

    def _redis_kwargs(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "rate": self.rate,
            "capacity": self.capacity,
            "on_failure": "local",
            "local_share": self.local_share,
            "timeout": self.timeout,
            "cooldown": self.cooldown,
            "adaptive": AdaptiveRate() if self.adaptive else None,
        }

    def sync_bucket(self) -> Any:
        if self.kind == "local":
            return TokenBucket(self.rate, self.capacity, adaptive=AdaptiveRate() if self.adaptive else None)
        from grpc_throttle.buckets.redis import RedisTokenBucket

        return RedisTokenBucket.from_url(self.url, **self._redis_kwargs())

    def aio_bucket(self) -> Any:
        """An asyncio Redis bucket (call inside the loop that uses it)."""
        from grpc_throttle.buckets.redis_aio import RedisTokenBucket

        return RedisTokenBucket.from_url(self.url, **self._redis_kwargs())


#: Short back-offs: retries follow quickly, so a scenario sees many of them.
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.02, max_backoff=0.05)


def sync_methods(target: str, interceptor: ThrottlingInterceptor, service: Service) -> tuple[list[Any], list[Any]]:
    """The service's method on an ``intercept_channel`` and on a ``ThrottledChannel``; and the channels."""
    channels = [
        grpc.intercept_channel(grpc.insecure_channel(target, options=CHANNEL_OPTIONS), interceptor),
        ThrottledChannel(grpc.insecure_channel(target, options=CHANNEL_OPTIONS), interceptor),
    ]
    methods = [c.unary_unary(service.method, service.serializer, service.deserializer) for c in channels]
    return methods, channels


def max_in_window(times: list[float], window: float = 1.0) -> tuple[int, float]:
    """The most arrivals in any ``window`` seconds, and when that window starts."""
    times = sorted(times)
    best, at, lo = 0, math.nan, 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        if hi - lo + 1 > best:
            best, at = hi - lo + 1, times[lo]
    return best, at
