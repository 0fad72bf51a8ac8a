"""The public surface: __all__ names exactly what the package exposes."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import grpc_throttle

#: The names each module imports on first use (PEP 562): an optional dependency, or generated code.
LAZY = {
    "grpc_throttle": {"RedisTokenBucket"},  # redis is optional
    "grpc_throttle.aio": {"RedisTokenBucket"},
    "grpc_throttle.testing": {"ClarifaiEmulator", "ControlClient", "Counters", "user_key"},  # generated code
}


@pytest.mark.parametrize("module_name", list(LAZY))
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
    assert lazy <= LAZY[module_name]
    for name in exported:
        assert getattr(module, name) is not None
    assert public | lazy == set(exported)


def test_version_is_a_string() -> None:
    assert isinstance(grpc_throttle.__version__, str)


#: Generated protobuf code and Clarifai's packages: a runtime too old for them must break neither the core nor
#: the import of grpc_throttle.testing.
_GENERATED = ("clarifai", "clarifai_grpc", "google.protobuf")
#: What else the core never imports: the emulator, the Clarifai channel helpers, redis (optional).
_NOT_CORE = ("grpc_throttle.testing", "grpc_throttle.client", "redis")


def _imported_after(statement: str) -> list[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    root = Path(__file__).resolve().parent.parent  # where ``tests`` imports from
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, cwd=root)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _among(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    """``modules`` that are generated code or belong to one of ``packages``."""
    return [
        m
        for m in modules
        if m.endswith(("_pb2", "_pb2_grpc")) or any(m == p or m.startswith(p + ".") for p in packages)
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "import grpc_throttle",
        "import grpc_throttle.interceptors",
        "import grpc_throttle.buckets",
        "import grpc_throttle.aio",
        "import grpc_throttle.interceptors.aio, grpc_throttle.interceptors.sync",
    ],
)
def test_the_core_imports_no_generated_or_clarifai_code(statement: str) -> None:
    assert _among(_imported_after(statement), _GENERATED + _NOT_CORE) == []


def test_the_testing_package_imports_generated_code_only_on_first_use() -> None:
    assert _among(_imported_after("import grpc_throttle.testing"), _GENERATED) == []
    assert _among(_imported_after("from grpc_throttle.testing import make_quota, TokenBucketQuota"), _GENERATED) == []
    # The check can see generated code when it is there: the emulator brings it in.
    loaded = _among(_imported_after("from grpc_throttle.testing import ClarifaiEmulator"), _GENERATED)
    assert "clarifai_grpc.grpc.api.service_pb2" in loaded
    assert "grpc_throttle.testing.control_pb2" in loaded


def test_the_test_conftest_imports_no_generated_code() -> None:
    loaded = _imported_after("import tests.conftest")
    assert "tests.conftest" in loaded
    assert _among(loaded, _GENERATED) == []
