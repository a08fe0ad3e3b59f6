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
    assert (
        offending(
            SERVICE / "core",
            (
                "fastapi",
                "starlette",
                "uvicorn",
                "grpc",
                "service.http",
                "service.grpc",
                "service.loadtest",
            ),
        )
        == {}
    )


def test_http_and_grpc_never_import_each_other() -> None:
    """Both only translate, onto the data plane and the V2 model (``service/v2``)."""
    assert offending(SERVICE / "grpc", ("service.http", "fastapi", "starlette")) == {}
    assert offending(SERVICE / "http", ("service.grpc", "grpc")) == {}
    assert offending(SERVICE / "v2", ("service.http", "service.grpc", "fastapi", "grpc")) == {}


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
    assert {"fastapi", "service.http.v1.codec", "service.http.asgi.hot"} <= names
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
        "import service.app, service.settings\n"
        "service.app.create_app(service.settings.Settings())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_the_dataplane_knows_no_protocol() -> None:
    """gRPC and HTTP both plug into it: it imports neither."""
    assert (
        offending(SERVICE / "dataplane.py", ("fastapi", "starlette", "grpc", "service.http")) == {}
    )


def test_settings_import_nothing_of_the_core() -> None:
    """The core receives typed values; settings do not reach down into it."""
    bad = sorted(n for n in imports_of(SERVICE / "settings.py") if n.startswith("service.core"))
    assert bad == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle_inside_the_service() -> None:
    """Every import, lazy ones included, as a graph of modules: it has no cycle."""
    names = {_module_name(p): p for p in modules(SERVICE)}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        targets = set()
        for imported in imports_of(path):
            # "a.b.c" may be the module a.b.c or the name c of module a.b
            while imported and imported not in names:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)
        graph[name] = targets
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError(
                "import cycle: " + " -> ".join([*trail[trail.index(node) :], node])
            )
        if node in done:
            return
        for target in sorted(graph[node]):
            visit(target, [*trail, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
