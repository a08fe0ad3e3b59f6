"""Project-wide rules that CI must enforce, not just remember."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_serving_path_never_imports_torch() -> None:
    code = (
        "import sys, service.app, service.cli\n"
        "import service.settings\nservice.app.create_app(service.settings.Settings())\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'models' not in sys.modules, 'the training package was imported'\n"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr


def test_ruff_is_clean() -> None:
    result = run(sys.executable, "-m", "ruff", "check", "service", "models", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr
