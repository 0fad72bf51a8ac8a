#!/usr/bin/env bash
# The minimum-versions job: the whole suite on the oldest grpcio, protobuf and
# clarifai-grpc that pyproject.toml declares (exactly those of
# .ci/min-versions.txt), on the oldest Python supported, in a venv of its own.
# .ci/run runs it after scripts/test.sh (which installs redis-server).
#
#   bash scripts/test_min_versions.sh             # the whole suite on the floors
#   bash scripts/test_min_versions.sh -k interop  # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# Python 3.10 where pyenv has it (call the interpreter itself: the pyenv shims
# of other versions do not work everywhere), else python3.
PYTHON_MIN=${PYTHON_MIN:-}
if [ -z "$PYTHON_MIN" ]; then
  for candidate in "$HOME"/.pyenv/versions/3.10*/bin/python; do
    if [ -x "$candidate" ]; then PYTHON_MIN=$candidate; break; fi
  done
fi
PYTHON_MIN=${PYTHON_MIN:-python3}

venv=$(mktemp -d)/min-venv
"$PYTHON_MIN" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c .ci/min-versions.txt -e ".[test]"
versions=$("$venv/bin/python" -c 'import importlib.metadata as m, platform; print("Python", platform.python_version(), *(f"{p} {m.version(p)}" for p in ("grpcio", "protobuf", "clarifai-grpc")))')
echo "scripts/test_min_versions.sh: $versions"
"$venv/bin/python" -m pytest -p no:cacheprovider "$@"
