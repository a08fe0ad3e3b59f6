"""Print the serving requirements from pyproject.toml, one per line, for the image build.

The image installs its dependencies in a layer of their own, before the source is
copied, so that editing the code does not reinstall them. ``--variant gpu`` swaps
the ``onnxruntime`` requirement for ``onnxruntime-gpu``: the two wheels install the
same ``onnxruntime`` module and cannot both be installed.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

ONNXRUNTIME_WHEELS = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirements(pyproject: Path, extras: list[str], variant: str = "cpu") -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    own_name = project["name"]
    result: list[str] = []
    for requirement in wanted:
        match = _NAME.match(requirement)
        if match is None:
            raise ValueError(f"cannot read the requirement {requirement!r}")
        name = match.group(1)
        if name == own_name:
            raise ValueError(f"extra requirement {requirement!r} names the project itself")
        if name.lower() == "onnxruntime":
            requirement = ONNXRUNTIME_WHEELS[variant] + requirement[match.end() :]
        result.append(requirement)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="an optional extra too")
    parser.add_argument("--variant", choices=sorted(ONNXRUNTIME_WHEELS), default="cpu")
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, args.extra, args.variant)))


if __name__ == "__main__":
    main()
