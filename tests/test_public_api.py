"""The public surface: __all__ names exactly what the package exposes."""

from __future__ import annotations

import importlib
import types

import pytest

import grpc_throttle


@pytest.mark.parametrize("module_name", ["grpc_throttle", "grpc_throttle.aio", "grpc_throttle.testing"])
def test_all_is_sorted_and_complete(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=lambda n: (not n.isupper(), n))  # ruff's RUF022 order
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in ("annotations", "TYPE_CHECKING", "Any")
    }
    lazy = {name for name in exported if name not in public}
    assert lazy <= {"RedisTokenBucket"}  # imported on first use: redis is optional
    for name in exported:
        assert getattr(module, name) is not None
    assert public | lazy == set(exported)


def test_version_is_a_string() -> None:
    assert isinstance(grpc_throttle.__version__, str)
