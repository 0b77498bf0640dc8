"""Regenerates the Python stubs of ``protos/`` into this package.

The repository root is the output directory and ``protos/`` the proto path, so
``protos/intent_embed/v1/x.proto`` becomes ``intent_embed/v1/x_pb2.py`` and the generated
imports (``from intent_embed.v1 import x_pb2``) work as they are, without rewriting.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    return sorted((proto_root / "intent_embed").rglob("*.proto"))


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Runs protoc on every ``.proto`` under ``proto_root``; returns the files written."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    well_known = resources.files("grpc_tools") / "_proto"
    files = proto_files(proto_root)
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(f.relative_to(proto_root)) for f in files],
    ]
    # protoc resolves the relative file names against the proto path.
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {[f.name for f in files]}")
    written = []
    for f in files:
        stem = f.relative_to(proto_root).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            written.append(out_dir / f"{stem}{suffix}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m intent_embed.codegen",
        description="Regenerate intent_embed/v1/*_pb2*.py from protos/intent_embed/v1/*.proto.",
    )
    parser.parse_args(argv)
    for path in generate(REPO_ROOT):
        print(path.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
