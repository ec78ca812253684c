"""``gbmmet dashboard``: serve ``dashboards/app.py`` with Streamlit, on this machine only by default."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from gbmmet.errors import ConfigError

APP = Path(__file__).resolve().parent.parent / "dashboards" / "app.py"
LOOPBACK = "127.0.0.1"


def streamlit_command(lake: str, *, host: str = LOOPBACK, port: int = 8501, run: str | None = None) -> list[str]:
    """The ``streamlit run`` command line that serves the dashboard of ``lake``."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP),
           "--server.address", host, "--server.port", str(port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--client.toolbarMode", "viewer",
           "--", "--lake", lake]
    return cmd + (["--run", run] if run else [])


def check(lake: str, host: str, port: int) -> None:
    """Refuse early, with the reason, what would fail after Streamlit started: no lake, a busy port."""
    from storage.lake import Lake

    lk = Lake(lake)
    if lk.local_root is not None and not lk.local_root.is_dir():
        raise ConfigError(f"no lake at {lake}: build the demo with `gbmmet run --preset demo --lake {lake}`, "
                          "or give yours with --lake")
    if not 1 <= port <= 65535:
        raise ConfigError(f"The 'port' parameter must be in 1..65535. Got {port!r} instead.")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc}; choose another with --port "
                              "(or --host)") from None


def serve(lake: str, *, host: str = LOOPBACK, port: int = 8501, run: str | None = None, echo=print) -> None:
    """Replace this process with Streamlit serving the dashboard (Ctrl-C stops it)."""
    check(lake, host, port)
    where = f"http://{'localhost' if host == LOOPBACK else host}:{port}"
    echo(f"dashboard of {lake}: {where}" + ("" if host == LOOPBACK else
         f"  (bound to {host}: reachable from other machines; the dashboard has no login)"))
    sys.stdout.flush()
    cmd = streamlit_command(lake, host=host, port=port, run=run)
    os.execve(cmd[0], cmd, {**os.environ, "GBMMET_LAKE": lake})
