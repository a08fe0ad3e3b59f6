"""Regenerate ``service/grpc/generated/`` from ``service/grpc/protos/`` with grpcio-tools.

    python -m service.grpc.generate          # rewrite the committed stubs
    python -m service.grpc.generate --check  # exit 1 if they differ from a regeneration

The stubs are generated with ``grpcio-tools==GRPCIO_TOOLS`` (its protoc writes the
protobuf runtime version into every ``_pb2.py``: tritonclient 2.73.0's are the same
6.33.x). protoc writes top-level imports (``import model_config_pb2``); they are
rewritten to this package's. The proto files keep their own names
(``grpc_service.proto``), so the descriptors are byte for byte tritonclient's and
both can live in one process's descriptor pool.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

GRPCIO_TOOLS = "1.81.1"
HERE = Path(__file__).resolve().parent
PROTOS = HERE / "protos"
GENERATED = HERE / "generated"
FILES = ("grpc_service.proto", "model_config.proto")
PACKAGE = "service.grpc.generated"
_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.M)


def generate() -> dict[str, str]:
    """Every generated file's name and text, from a fresh protoc run."""
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *FILES,
        ]
        subprocess.run(command, check=True, cwd=PROTOS)
        texts = {}
        for path in sorted(Path(out).iterdir()):
            if path.name.endswith("_pb2_grpc.py") and "service" not in path.name:
                continue  # model_config.proto has no services: its _pb2_grpc is empty
            text = _IMPORT.sub(rf"from {PACKAGE} import \1 as \2", path.read_text())
            texts[path.name] = text
        return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    texts = generate()
    if args.check:
        stale = [
            name
            for name, text in texts.items()
            if not (GENERATED / name).exists() or (GENERATED / name).read_text() != text
        ]
        if stale:
            print(f"stale generated stubs: {', '.join(stale)}", file=sys.stderr)
            return 1
        return 0
    for name, text in texts.items():
        (GENERATED / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
