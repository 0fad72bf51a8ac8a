#!/usr/bin/env bash
# The minimum-versions job: the whole suite on the oldest grpcio, protobuf and
# clarifai-grpc that pyproject.toml declares, each leg in a venv of its own.
# .ci/run runs it after scripts/test.sh (which installs redis-server).
#
#   leg          Python   constraints                    why
#   floors       3.10     .ci/min-versions.txt           exactly the declared floors
#   python 3.13  3.13     .ci/min-versions-py313.txt     clarifai-grpc needs grpcio >= 1.68.0
#                                                        on 3.13; protobuf 5.28.3 there
#   oldest SDK   python3  .ci/min-versions-sdk.txt       the clarifai SDK's tests on the oldest
#                                                        SDK the clarifai-sdk extra accepts
#
# The 3.13 leg runs where that interpreter exists (~/.pyenv/versions/3.13*),
# and says so when it does not. The legs install `.[test]` without the Clarifai
# SDK (the clarifai-sdk extra): the SDK needs newer clarifai-grpc and protobuf
# than our floors. GRPC_THROTTLE_TESTS_WITHOUT_SDK=1 lets its tests skip for
# that reason alone (tests/test_clarifai_sdk.py).
#
#   bash scripts/test_min_versions.sh             # both legs, the whole suite
#   bash scripts/test_min_versions.sh -k interop  # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# The first interpreter matching a pyenv version prefix (call the interpreter
# itself: the pyenv shims of other versions do not work everywhere).
find_python() {
  local candidate
  for candidate in "$HOME"/.pyenv/versions/"$1"*/bin/python; do
    if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  return 1
}

# run_leg NAME PYTHON CONSTRAINTS EXTRAS [pytest args...]
run_leg() {
  local name=$1 python=$2 constraints=$3 extras=$4 start venv
  shift 4
  start=$(date +%s)
  venv=$(mktemp -d)/min-venv
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints" -e ".[$extras]"
  "$venv/bin/python" -m pip check
  # -c only caps what is installed: make sure every pin is what the leg runs on.
  "$venv/bin/python" - "$constraints" <<'EOF'
import importlib.metadata as m, platform, sys

pins = dict(
    line.split("#")[0].strip().split("==")
    for line in open(sys.argv[1])
    if line.split("#")[0].strip()
)
found = {name: m.version(name) for name in pins}
wrong = {name: (pins[name], found[name]) for name in pins if found[name] != pins[name]}
print("scripts/test_min_versions.sh: Python", platform.python_version(), *(f"{n} {v}" for n, v in found.items()))
if wrong:
    sys.exit(f"scripts/test_min_versions.sh: not the pinned versions (wanted, found): {wrong}")
EOF
  if [[ $extras == *clarifai-sdk* ]]; then
    "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
  else
    GRPC_THROTTLE_TESTS_WITHOUT_SDK=1 "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
  fi
  echo "scripts/test_min_versions.sh: leg '$name' passed in $(( $(date +%s) - start )) s"
}

python310=${PYTHON_MIN:-$(find_python 3.10 || echo python3)}
run_leg floors "$python310" .ci/min-versions.txt test "$@"

if python313=$(find_python 3.13); then
  run_leg "python 3.13" "$python313" .ci/min-versions-py313.txt test "$@"
else
  echo "scripts/test_min_versions.sh: no Python 3.13 under ~/.pyenv/versions; the 3.13 leg did not run" >&2
fi

# The SDK leg runs the SDK's own tests only: the rest is the main job's.
run_leg "oldest SDK" python3 .ci/min-versions-sdk.txt test,clarifai-sdk tests/test_clarifai_sdk.py
