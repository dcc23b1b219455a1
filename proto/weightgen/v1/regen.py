"""Regenerates the Python stubs next to weightgen.proto (``make proto``).

    python -m weightgen.v1.regen [OUT_DIR]

With OUT_DIR the stubs go there instead (tests/test_proto.py compares them to the committed ones).
Needs grpcio-tools, which is in the dev extra only.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[2]  # the directory holding weightgen/v1/*.proto
PROTO = "weightgen/v1/weightgen.proto"
GENERATED = ("weightgen_pb2.py", "weightgen_pb2.pyi", "weightgen_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Runs protoc on weightgen.proto into out_root/weightgen/v1/; returns the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        PROTO,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return [out_root / "weightgen" / "v1" / name for name in GENERATED]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT
    for path in generate(target):
        print(path)
