"""Finding (or installing) the browser the page and docs tests drive: a support module,
imported by ``tests/http/ui/test_page.py`` and ``tests/http/openapi/test_docs.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def find_or_install_chromium() -> str | None:
    """Debian's chromium: found on the PATH, or installed with apt-get when we may."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
        check=True,
        env=env,
    )
    return shutil.which("chromium")
