"""Regenerate the Python code for the .proto sources.

Two sets: our own under protos/ (generated into src/), and gRPC's interop test
protos copied under tests/interop/grpc_testing/ (generated next to them, with
the repository root as the import root, so they import as ``tests.interop...``).

Usage:
    python scripts/gen_protos.py          # write the generated files
    python scripts/gen_protos.py --check  # fail (exit 1) if they are stale

Needs exactly grpcio-tools 1.62.3 (``TOOLS``), in an environment of its own
(it wants protobuf < 5): ``scripts/test.sh`` makes one. Its protobuf gencode
(4.25) carries no runtime-version check and loads on protobuf 4.25 to 7.x, so
the generated code sets no floor on the users' protobuf; newer grpcio-tools
would (gencode refuses a runtime older than itself).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: (import root, folder holding the sources, where the output goes), all under ROOT.
SETS = (
    (Path("protos"), Path("protos"), Path("src")),
    (Path("."), Path("tests/interop/grpc_testing"), Path(".")),
)


#: The one grpcio-tools that generates the checked-in code.
TOOLS = "1.62.3"


def generate(out_root: Path) -> list[Path]:
    """Write every set's generated files under ``out_root``; their paths relative to it."""
    import importlib.metadata

    try:
        found = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        found = "none"
    if found != TOOLS:
        raise SystemExit(
            f"gen_protos: needs grpcio-tools=={TOOLS} (found {found}); "
            f"run it from a venv of its own: pip install grpcio-tools=={TOOLS}"
        )
    from grpc_tools import protoc  # imported here: only this script needs it

    generated: list[Path] = []
    for include, folder, out in SETS:
        sources = sorted((ROOT / folder).rglob("*.proto"))
        if not sources:
            raise SystemExit(f"gen_protos: no .proto files under {ROOT / folder}")
        out_dir = out_root / out
        out_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "grpc_tools.protoc",
            f"-I{ROOT / include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *(str(s) for s in sources),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("gen_protos: protoc failed")
        for src in sources:
            stem = src.relative_to(ROOT / include).with_suffix("")
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
                generated.append(out / stem.parent / (stem.name + suffix))
    return generated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail on a diff instead of writing")
    args = parser.parse_args()
    if not args.check:
        files = generate(ROOT)
        print(f"gen_protos: wrote {len(files)} files")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        stale = [f for f in files if (Path(tmp) / f).read_bytes() != _read(ROOT / f)]
    if stale:
        for f in stale:
            print(f"gen_protos: {f} differs from protos/ (run scripts/gen_protos.py)", file=sys.stderr)
        return 1
    print(f"gen_protos: {len(files)} generated files are up to date")
    return 0


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


if __name__ == "__main__":
    sys.exit(main())
