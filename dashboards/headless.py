"""Serve the dashboard on a free loopback port and open it in headless Chromium (Debian's, through
Playwright; never ``playwright install``): the browser test and ``bench/dashboard.py`` use this.
Playwright is a development dependency (``pip install -e '.[dev]'``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(lake: str | Path, *, run: str | None = None, timeout: float = 60.0):
    """``gbmmet dashboard --lake LAKE`` on a free port of 127.0.0.1; yields the base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "pipelines.cli", "dashboard", "--lake", str(lake), "--port", str(port)]
    if run:
        cmd += ["--run", run]
    log = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / f"dashboard-{port}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:  # bounded: the deadline, or the server dying
            if proc.poll() is not None:
                raise RuntimeError(f"the dashboard exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not answer within {timeout:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def browser(width: int = 1500, height: int = 2400):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = b.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            b.close()


def open_page(page, url: str, wait_for: str, timeout_ms: int = 30000) -> float:
    """Go to ``url``; wait for ``wait_for`` (a CSS selector) and for Streamlit to finish running.
    Returns the seconds until then."""
    t = time.perf_counter()
    page.goto(url, timeout=timeout_ms)
    page.wait_for_selector(wait_for, state="visible", timeout=timeout_ms)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)
    return time.perf_counter() - t
