"""A real headless browser for tests: Chromium's rendered DOM of a page or a local HTML file.

Chromium comes from Debian's packages (`make browser`, which `make test` runs). Tests that need it
call `dom(...)`; without a Chromium on PATH they fail with the command that installs it (they are not
skipped: CI installs it)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    for name in NAMES:
        if path := shutil.which(name):
            return path
    pytest.fail("no Chromium on PATH: `make browser` installs Debian's chromium package", pytrace=False)


def dom(target: str | Path, wait_ms: int = 5000, timeout: float = 90.0) -> str:
    """The DOM after the page ran its scripts for up to `wait_ms` of virtual time (a URL or an HTML file)."""
    url = target if isinstance(target, str) and "://" in target else Path(target).resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no state between tests
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", f"--virtual-time-budget={wait_ms}", "--dump-dom", url]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0 or not res.stdout.strip():
        raise AssertionError(f"chromium could not render {url} (exit {res.returncode}): {res.stderr[-2000:]}")
    return res.stdout
