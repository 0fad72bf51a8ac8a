"""RetryPolicy and ThrottlePolicy: pure, frozen, validated."""

from __future__ import annotations

import dataclasses
import math

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpc_throttle import RetryPolicy, ThrottlePolicy


def test_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=15.0, jitter=False)
    assert [policy.backoff(k) for k in range(1, 7)] == [1, 2, 4, 8, 15, 15]
    assert policy.backoff(10_000) == 15  # no overflow for absurd retry numbers


def test_full_jitter_draws_below_the_bound() -> None:
    policy = RetryPolicy(initial_backoff=2.0, max_backoff=15.0)
    assert policy.backoff(2, random=lambda: 0.5) == 2.0
    assert policy.backoff(2, random=lambda: 0.0) == 0.0


@given(retry=st.integers(min_value=1, max_value=200), draw=st.floats(min_value=0, max_value=0.999999))
def test_every_backoff_stays_within_zero_and_the_cap(retry: int, draw: float) -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=7.0, multiplier=3)
    assert 0 <= policy.backoff(retry, random=lambda: draw) <= 7.0


def test_policies_are_frozen_and_shareable() -> None:
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 3  # type: ignore[misc]
    assert policy.with_max_attempts(3).max_attempts == 3 and policy.max_attempts == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        ThrottlePolicy().status_codes = frozenset()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"initial_backoff": -1}, "initial_backoff"),
        ({"initial_backoff": math.nan}, "initial_backoff"),
        ({"max_backoff": math.inf}, "max_backoff"),
        ({"initial_backoff": 5, "max_backoff": 1}, "max_backoff"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": "yes"}, "jitter"),
    ],
)
def test_bad_retry_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"status_codes": "11005"}, "status_codes"),
        ({"status_codes": {1.5}}, "status_codes"),
        ({"grpc_codes": {grpc.StatusCode.INVALID_ARGUMENT}}, "grpc_codes"),
        ({"response_predicate": 3}, "response_predicate"),
        ({"error_predicate": "x"}, "error_predicate"),
    ],
)
def test_bad_throttle_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ThrottlePolicy(**kwargs)  # type: ignore[arg-type]


class _Status:
    def __init__(self, code: object) -> None:
        self.code = code


class _Body:
    def __init__(self, code: object) -> None:
        self.status = _Status(code)


def test_status_code_is_read_by_attribute_from_any_message() -> None:
    policy = ThrottlePolicy()
    assert policy.response_throttled(_Body(11005))
    assert not policy.response_throttled(_Body(10000))
    assert not policy.response_throttled(_Body("11005"))  # wrong type: not a signal
    assert not policy.response_throttled(None)
    assert ThrottlePolicy(status_codes={7}).response_throttled(_Body(7))


def test_grpc_codes_are_only_retried_when_opted_in() -> None:
    class Error(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode) -> None:
            self._code = code

        def code(self) -> grpc.StatusCode:
            return self._code

    assert not ThrottlePolicy().error_throttled(Error(grpc.StatusCode.RESOURCE_EXHAUSTED))
    opted = ThrottlePolicy(grpc_codes={grpc.StatusCode.RESOURCE_EXHAUSTED})
    assert opted.error_throttled(Error(grpc.StatusCode.RESOURCE_EXHAUSTED))
    assert not opted.error_throttled(Error(grpc.StatusCode.UNAVAILABLE))


def test_a_predicate_that_raises_treats_the_answer_as_final(caplog: pytest.LogCaptureFixture) -> None:
    def broken(response: object) -> bool:
        raise RuntimeError("bug in user code")

    assert not ThrottlePolicy(response_predicate=broken).response_throttled(_Body(11005))
    assert "response_predicate raised" in caplog.text


def test_repr_is_short_and_readable() -> None:
    assert repr(ThrottlePolicy()) == "ThrottlePolicy(status_codes={11005})"
    opted = ThrottlePolicy(grpc_codes={grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
    assert repr(opted) == "ThrottlePolicy(status_codes={11005}, grpc_codes={RESOURCE_EXHAUSTED, UNAVAILABLE})"


def test_a_body_that_raises_on_access_is_not_a_throttle_signal() -> None:
    class Broken:
        @property
        def status(self) -> object:
            raise ValueError("cannot decode")

    assert not ThrottlePolicy().response_throttled(Broken())


def test_a_client_side_message_size_error_is_never_retried() -> None:
    class Error(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.RESOURCE_EXHAUSTED

        def details(self) -> str:
            return "Received message larger than max (5000000 vs. 4194304)"

    assert not ThrottlePolicy(grpc_codes={grpc.StatusCode.RESOURCE_EXHAUSTED}).error_throttled(Error())
