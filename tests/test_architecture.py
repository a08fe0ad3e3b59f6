"""The folder tree is the architecture: which package may import which, checked statically.

Every ``import`` and ``from ... import`` of every module (at any depth, so a
lazy import inside a function counts too) is read from the source with ``ast``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"


def imports_of(path: Path) -> set[str]:
    """Absolute module names ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def offending(folder: Path, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Each module under ``folder`` that imports a forbidden package, with what it imports."""
    bad: dict[str, list[str]] = {}
    for path in modules(folder):
        hits = sorted(
            name
            for name in imports_of(path)
            if any(name == f or name.startswith(f + ".") for f in forbidden)
        )
        if hits:
            bad[str(path.relative_to(ROOT))] = hits
    return bad


def test_the_core_knows_nothing_of_http() -> None:
    assert offending(
        SERVICE / "core", ("fastapi", "starlette", "uvicorn", "service.http", "service.loadtest")
    ) == {}


def test_v2_imports_nothing_from_v1() -> None:
    assert offending(SERVICE / "http" / "v2", ("service.http.v1",)) == {}
    assert offending(SERVICE / "http" / "v1", ("service.http.v2",)) == {}


def test_the_server_never_imports_training_or_load_testing() -> None:
    """torch and models/ would drag training into the image; loadtest/ is not shipped in it."""
    served = [p for p in modules(SERVICE) if "loadtest" not in p.relative_to(SERVICE).parts]
    bad = {
        str(p.relative_to(ROOT)): hits
        for p in served
        if (
            hits := sorted(
                n
                for n in imports_of(p)
                if n.split(".")[0] in ("torch", "models") or n.startswith("service.loadtest")
            )
        )
    }
    assert bad == {}


def test_the_check_itself_sees_imports() -> None:
    """A rule that could never fire proves nothing: the reader finds these imports."""
    names = imports_of(SERVICE / "http" / "v1" / "routes.py")
    assert {"fastapi", "service.core.state", "service.http.asgi.hot"} <= names
    assert "service.http.v1.instances" in imports_of(SERVICE / "http" / "v1" / "stream.py")


@pytest.mark.parametrize("module", ["service.app", "service.cli", "service.workers"])
def test_the_server_starts_without_the_load_testing_package(module: str) -> None:
    """As in the runtime image, where ``service/loadtest`` is removed."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'service.loadtest' or name.startswith('service.loadtest.'):\n"
        "            raise ImportError('load-testing code is not in the runtime image')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"import {module}\n"
        "import service.app\n"
        "service.app.create_app()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
