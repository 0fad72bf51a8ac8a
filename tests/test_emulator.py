"""The Clarifai emulator, over real sockets with clarifai-grpc's own V2Stub."""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel
from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
from clarifai_grpc.grpc.api.status import status_code_pb2

import grpc_throttle.testing
from grpc_throttle.testing import ClarifaiEmulator, ControlClient, Counters, user_key

KEY_A = "Key secret-api-key-aaaa"
KEY_B = "Key secret-api-key-bbbb"


class FrozenClock:
    """A clock the test moves by hand: quota decisions become deterministic."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module", autouse=True)
def _clarifai_stub_ready() -> None:
    # clarifai-grpc's V2Stub reads a module global (wrap_response_deserializer)
    # that only its ClarifaiChannel.get_*_channel() factories set.
    ClarifaiChannel.get_insecure_grpc_channel(base="127.0.0.1", port=1).close()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def emulator(clock: FrozenClock) -> Iterator[ClarifaiEmulator]:
    with ClarifaiEmulator(rate=2, clock=clock) as emu:
        yield emu


class Client:
    """One channel to the emulator, calling as one user."""

    def __init__(self, target: str, key: str | None) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = service_pb2_grpc.V2Stub(self.channel)
        self.metadata = () if key is None else (("authorization", key),)

    def list_model_types(self) -> Any:
        request = service_pb2.ListModelTypesRequest()
        return self.stub.ListModelTypes(request, metadata=self.metadata, timeout=30)

    def predict(self, *texts: str) -> Any:
        inputs = [
            resources_pb2.Input(id=f"in-{i}", data=resources_pb2.Data(text=resources_pb2.Text(raw=t)))
            for i, t in enumerate(texts)
        ]
        request = service_pb2.PostModelOutputsRequest(model_id="general", inputs=inputs)
        return self.stub.PostModelOutputs(request, metadata=self.metadata, timeout=30)


@pytest.fixture
def connect(emulator: ClarifaiEmulator) -> Iterator[Any]:
    clients: list[Client] = []

    def make(key: str | None = KEY_A) -> Client:
        clients.append(Client(emulator.target, key))
        return clients[-1]

    yield make
    for client in clients:
        client.channel.close()


def test_admitted_answers_carry_success_and_fake_content(connect: Any) -> None:
    client = connect()
    reply = client.list_model_types()
    assert reply.status.code == status_code_pb2.SUCCESS == 10000
    assert reply.status.description == "Ok"
    assert len(reply.status.req_id) == 32
    ids = {t.id for t in reply.model_types}
    assert {"visual-classifier", "text-to-text"} <= ids

    reply = client.predict("hello", "world")
    assert reply.status.code == status_code_pb2.SUCCESS
    assert [o.input.id for o in reply.outputs] == ["in-0", "in-1"]
    assert [o.input.data.text.raw for o in reply.outputs] == ["hello", "world"]
    assert all(o.data.concepts[0].value > 0 for o in reply.outputs)


def test_sdk_methods_answer_and_are_charged_to_the_callers_quota(connect: Any, emulator: ClarifaiEmulator) -> None:
    client = connect()
    ids = resources_pb2.UserAppIDSet(user_id="me", app_id="main")
    model = client.stub.GetModel(service_pb2.GetModelRequest(user_app_id=ids, model_id="m1"), metadata=client.metadata)
    assert model.status.code == status_code_pb2.SUCCESS
    assert (model.model.id, model.model.app_id, model.model.user_id) == ("m1", "main", "me")
    listed = client.stub.ListApps(
        service_pb2.ListAppsRequest(user_app_id=ids, page=1, per_page=2), metadata=client.metadata
    )
    assert [a.id for a in listed.apps] == ["main", "staging"]
    # A third call in the same instant is over the quota of 2, whatever the method.
    app = client.stub.GetApp(service_pb2.GetAppRequest(user_app_id=ids), metadata=client.metadata)
    assert app.status.code == status_code_pb2.CONN_THROTTLED
    assert emulator.counters().per_user[user_key(KEY_A)] == (2, 1)


def test_list_apps_pages_end_with_an_empty_page(connect: Any, clock: FrozenClock) -> None:
    client = connect()
    ids = resources_pb2.UserAppIDSet(user_id="me")
    pages = []
    for page in (1, 2):
        clock.now += 10
        request = service_pb2.ListAppsRequest(user_app_id=ids, page=page, per_page=2)
        pages.append([a.id for a in client.stub.ListApps(request, metadata=client.metadata).apps])
    clock.now += 10
    missing = client.stub.GetApp(
        service_pb2.GetAppRequest(user_app_id=resources_pb2.UserAppIDSet(user_id="me", app_id="nope")),
        metadata=client.metadata,
    )
    assert pages == [["main", "staging"], ["archive"]]
    assert missing.status.code == status_code_pb2.CONN_DOES_NOT_EXIST


def test_over_quota_answer_is_exactly_the_documented_one(connect: Any) -> None:
    client = connect()
    assert client.list_model_types().status.code == status_code_pb2.SUCCESS
    assert client.predict("x").status.code == status_code_pb2.SUCCESS
    replies = [client.list_model_types(), client.predict("x")]
    for reply in replies:
        status = reply.status
        assert status.code == status_code_pb2.CONN_THROTTLED == 11005
        assert status.description == "Making too many requests"
        assert status.details == "exceeded limit of 2 requests per second"
        assert len(status.req_id) == 32
    assert replies[0].status.req_id != replies[1].status.req_id
    assert not replies[0].model_types
    assert not replies[1].outputs


@pytest.mark.parametrize(("rate", "shown"), [(15.0, "15"), (7.5, "7.5"), (3, "3")])
def test_throttled_details_format_the_rate(clock: FrozenClock, rate: float, shown: str) -> None:
    with ClarifaiEmulator(rate=rate, clock=clock) as emu:
        client = Client(emu.target, KEY_A)
        try:
            replies = [client.list_model_types() for _ in range(math.ceil(rate) + 1)]
        finally:
            client.channel.close()
    assert replies[-1].status.details == f"exceeded limit of {shown} requests per second"


def test_quota_refills_with_the_clock(connect: Any, clock: FrozenClock) -> None:
    client = connect()
    codes = [client.list_model_types().status.code for _ in range(3)]
    assert codes == [status_code_pb2.SUCCESS] * 2 + [status_code_pb2.CONN_THROTTLED]
    clock.now += 0.5  # one token at 2 per second
    codes = [client.list_model_types().status.code for _ in range(2)]
    assert codes == [status_code_pb2.SUCCESS, status_code_pb2.CONN_THROTTLED]


def test_quota_is_per_user(connect: Any, emulator: ClarifaiEmulator) -> None:
    users = {"a": connect(KEY_A), "b": connect(KEY_B), "anon": connect(None)}
    for client in users.values():
        codes = [client.list_model_types().status.code for _ in range(3)]
        assert codes == [status_code_pb2.SUCCESS] * 2 + [status_code_pb2.CONN_THROTTLED]
    assert emulator.counters() == Counters(
        admitted=6,
        throttled=3,
        per_user={user_key(KEY_A): (2, 1), user_key(KEY_B): (2, 1), "anonymous": (2, 1)},
    )


def test_one_key_on_two_channels_shares_one_quota(connect: Any) -> None:
    first, second = connect(KEY_A), connect(KEY_A)
    assert first.list_model_types().status.code == status_code_pb2.SUCCESS
    assert second.list_model_types().status.code == status_code_pb2.SUCCESS
    assert second.list_model_types().status.code == status_code_pb2.CONN_THROTTLED
    assert first.list_model_types().status.code == status_code_pb2.CONN_THROTTLED


def test_concurrent_calls_are_counted_exactly(clock: FrozenClock) -> None:
    with ClarifaiEmulator(rate=5, clock=clock, max_workers=8) as emu:
        clients = [Client(emu.target, KEY_A) for _ in range(4)]
        try:
            with futures.ThreadPoolExecutor(8) as pool:
                calls = [pool.submit(clients[i % 4].list_model_types) for i in range(80)]
                codes = [call.result().status.code for call in calls]
        finally:
            for client in clients:
                client.channel.close()
        assert emu.counters().per_user == {user_key(KEY_A): (5, 75)}
    assert codes.count(status_code_pb2.SUCCESS) == 5
    assert codes.count(status_code_pb2.CONN_THROTTLED) == 75


def test_throttle_with_grpc_aborts_resource_exhausted(clock: FrozenClock) -> None:
    with ClarifaiEmulator(rate=1, throttle_with="grpc", clock=clock) as emu:
        client = Client(emu.target, KEY_A)
        try:
            assert client.list_model_types().status.code == status_code_pb2.SUCCESS
            with pytest.raises(grpc.RpcError) as info:
                client.list_model_types()
        finally:
            client.channel.close()
        assert emu.counters().throttled == 1
    error: Any = info.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeded limit of 1 requests per second" in error.details()


def test_counters_reset_and_admission_times(connect: Any, emulator: ClarifaiEmulator, clock: FrozenClock) -> None:
    a, b = connect(KEY_A), connect(KEY_B)
    a.list_model_types()
    clock.now += 0.25
    b.list_model_types()
    a.list_model_types()
    a.list_model_types()
    assert emulator.counters().per_user == {user_key(KEY_A): (2, 1), user_key(KEY_B): (1, 0)}
    assert emulator.admission_times(user_key(KEY_A)) == [1000.0, 1000.25]
    assert emulator.admission_times() == [1000.0, 1000.25, 1000.25]
    assert emulator.admission_times("no-such-user") == []

    emulator.reset()
    assert emulator.counters() == Counters(admitted=0, throttled=0, per_user={})
    assert emulator.admission_times() == []
    # The quota starts afresh too.
    assert a.list_model_types().status.code == status_code_pb2.SUCCESS


def test_admissions_on_the_real_clock_stay_within_the_rate() -> None:
    rate = 10
    with ClarifaiEmulator(rate=rate, policy="sliding-window") as emu:
        client = Client(emu.target, KEY_A)
        try:
            for _ in range(40):
                client.list_model_types()
        finally:
            client.channel.close()
        times = emu.admission_times(user_key(KEY_A))
        counters = emu.counters()
    assert counters.admitted == len(times) >= rate
    assert counters.admitted + counters.throttled == 40
    for t in times:
        assert sum(1 for s in times if t - 1 < s <= t) <= rate


def test_control_client_in_a_subprocess(connect: Any, emulator: ClarifaiEmulator) -> None:
    for _ in range(3):
        connect(KEY_A).list_model_types()
    connect(None).list_model_types()
    script = (
        "import json, sys\n"
        "from grpc_throttle.testing import ControlClient\n"
        "with ControlClient(sys.argv[1]) as control:\n"
        "    c = control.counters()\n"
        "    control.reset()\n"
        "print(json.dumps([c.admitted, c.throttled, c.per_user]))\n"
    )
    src = str(Path(grpc_throttle.testing.__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-c", script, emulator.target],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    admitted, throttled, per_user = json.loads(result.stdout)
    assert (admitted, throttled) == (3, 1)
    assert per_user == {user_key(KEY_A): [2, 1], "anonymous": [1, 0]}
    assert emulator.counters().admitted == 0  # the subprocess reset it


def test_control_client_in_process(connect: Any, emulator: ClarifaiEmulator) -> None:
    connect(KEY_B).list_model_types()
    with ControlClient(emulator.target) as control:
        assert control.counters() == emulator.counters()
        assert control.counters().per_user == {user_key(KEY_B): (1, 0)}


def test_keys_never_appear_in_logs_counters_or_reprs(
    connect: Any, emulator: ClarifaiEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = connect(KEY_A)
    for _ in range(3):
        client.list_model_types()
    shown = caplog.text + repr(emulator) + repr(emulator.counters())
    assert "secret-api-key" not in shown
    assert user_key(KEY_A) in repr(emulator.counters())


def test_context_manager_binds_a_free_port_and_stops() -> None:
    with ClarifaiEmulator() as emu:
        assert emu.port > 0
        assert emu.target == f"127.0.0.1:{emu.port}"
        assert "running" in repr(emu)
        with pytest.raises(RuntimeError, match="already running"):
            emu.start()
    assert "stopped" in repr(emu)
    with grpc.insecure_channel(emu.target) as channel:
        stub = service_pb2_grpc.V2Stub(channel)
        with pytest.raises(grpc.RpcError):
            stub.ListModelTypes(service_pb2.ListModelTypesRequest(), timeout=5)


def test_port_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        _ = ClarifaiEmulator().port


def test_port_in_use_by_a_plain_socket_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port}.*in use"):
            ClarifaiEmulator(port=port).start()


def test_port_in_use_by_another_emulator_is_a_clear_error(emulator: ClarifaiEmulator) -> None:
    # grpc's default SO_REUSEPORT would otherwise let both bind and split calls.
    second = ClarifaiEmulator(port=emulator.port)
    with pytest.raises(OSError, match=rf"{emulator.target}.*in use"):
        second.start()
    second.stop()  # harmless when start() failed


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": -1}, "rate"),
        ({"rate": math.nan}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"rate": "15"}, "rate"),
        ({"policy": "leaky-bucket"}, "policy"),
        ({"policy": "fixed-window", "rate": 0.5}, "rate"),
        ({"burst": 0.5}, "burst"),
        ({"policy": "sliding-window", "burst": 3}, "burst"),
        ({"throttle_with": "http"}, "throttle_with"),
        ({"host": ""}, "host"),
        ({"port": -1}, "port"),
        ({"port": 65536}, "port"),
        ({"port": 80.0}, "port"),
        ({"max_workers": 0}, "max_workers"),
        ({"clock": 3.0}, "clock"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field} ") as info:
        ClarifaiEmulator(**config)
    assert repr(config[field]) in str(info.value)


def test_all_lists_the_public_names_sorted() -> None:
    module = grpc_throttle.testing
    public = {  # dir(): the emulator's names are imported on first use (PEP 562)
        name
        for name in dir(module)
        if not name.startswith("_")
        and not inspect.ismodule(getattr(module, name))
        and name not in ("annotations", "TYPE_CHECKING", "Any")
    }
    names = grpc_throttle.testing.__all__

    def isort_style(name: str) -> tuple[int, str]:  # ruff's RUF022: CONSTANTS, Classes, functions
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert names == sorted(names, key=isort_style)
    assert set(names) == public
