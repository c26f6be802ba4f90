"""Generate the gRPC code of ``ledger.proto``: ``python -m airfed.ledger._codegen``.

The generated ``ledger_pb2.py`` (with its ``.pyi`` stub) and ``ledger_pb2_grpc.py``
are checked in;
a test regenerates them and compares.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["GENERATED", "generate"]

PROTO = Path(__file__).with_name("ledger.proto")
GENERATED = ("ledger_pb2.py", "ledger_pb2.pyi", "ledger_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on ``ledger.proto``; write the generated files to ``out_dir``."""
    from grpc_tools import protoc  # a development dependency

    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "airfed" / "ledger"
        package.mkdir(parents=True)
        shutil.copy(PROTO, package / "ledger.proto")
        code = protoc.main(
            [
                "protoc",
                f"-I{tmp}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(package / "ledger.proto"),
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed with status {code}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            target = out_dir / name
            shutil.copy(package / name, target)
            written.append(target)
        return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO.parent):
        print(path)
