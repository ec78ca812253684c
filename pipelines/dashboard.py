"""``gbmmet dashboard``: serve ``dashboards/app.py`` with Streamlit, on this machine only by default.

Sign-in (``dashboards.access``) is configured in a ``secrets.toml``: ``--secrets FILE`` (or
``GBMMET_SECRETS``), else the places Streamlit reads on its own. Without sign-in the dashboard
shows every site to whoever reaches it, so it is served beyond 127.0.0.1 only when told twice:
``--host`` and ``--no-sign-in`` (behind an authenticating proxy of one's own).
"""

from __future__ import annotations

import os
import socket
import sys
import tomllib
from pathlib import Path

from gbmmet.errors import ConfigError

APP = Path(__file__).resolve().parent.parent / "dashboards" / "app.py"
LOOPBACK = "127.0.0.1"
SECRETS_FILE = "secrets.toml"


def streamlit_command(lake: str, *, host: str = LOOPBACK, port: int = 8501, run: str | None = None,
                      secrets: str | None = None) -> list[str]:
    """The ``streamlit run`` command line that serves the dashboard of ``lake`` (with the secrets
    file ``secrets`` alone, where given)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP),
           "--server.address", host, "--server.port", str(port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--client.toolbarMode", "viewer"]
    if secrets:
        cmd += ["--secrets.files", str(Path(secrets).resolve())]
    cmd += ["--", "--lake", lake]
    return cmd + (["--run", run] if run else [])


def secrets_files(secrets: str | None) -> list[Path]:
    """The secrets files Streamlit reads, later ones overriding earlier ones: ``secrets`` alone
    where given; else the user's (``~/.streamlit``), the working directory's and the app's own."""
    if secrets:
        return [Path(secrets)]
    return [Path.home() / ".streamlit" / SECRETS_FILE, Path.cwd() / ".streamlit" / SECRETS_FILE,
            APP.parent / ".streamlit" / SECRETS_FILE]


def read_secrets(files: list[Path]) -> dict:
    """The secrets of ``files`` merged as Streamlit merges them (a later file's table replaces an
    earlier one's). Raises ConfigError for a file that is not TOML."""
    out: dict = {}
    for path in files:
        if not path.is_file():
            continue
        try:
            out.update(tomllib.loads(path.read_text()))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"the secrets file {path} is not TOML: {exc}") from None
    return out


def check_access(host: str, secrets: str | None, *, no_sign_in: bool = False, echo=print):
    """Refuse what would expose or break the dashboard: sign-in configured wrongly, or no sign-in
    and an address beyond this machine (unless ``no_sign_in`` says a proxy of one's own signs users
    in: then a loud warning). Returns the access settings (``dashboards.access.Settings``)."""
    from dashboards import access

    if secrets and not Path(secrets).is_file():
        raise ConfigError(f"no secrets file at {secrets} (--secrets / GBMMET_SECRETS)")
    settings = access.settings(read_secrets(secrets_files(secrets)), os.environ)
    if settings.sign_in:
        if settings.problems:
            raise ConfigError("sign-in is configured ([auth] in secrets.toml) but cannot work: "
                              + "; ".join(settings.problems) + " (docs/dashboard.md, 'Sign-in')")
        if not settings.users:
            echo(f"WARNING: sign-in is on but the allow-list ([gbmmet.access] or {access.ACCESS_ENV}) is empty: "
                 "every user who signs in is refused")
        return settings
    if access.is_loopback(host):
        return settings
    if not no_sign_in:
        raise ConfigError(f"--host {host} would show every site's patients to whoever reaches it: the dashboard has "
                          "no sign-in configured. Configure sign-in ([auth] and [gbmmet.access] in secrets.toml, "
                          "docs/dashboard.md 'Sign-in'), or serve on 127.0.0.1; behind an authenticating proxy of "
                          "your own, add --no-sign-in to serve it anyway")
    echo(f"WARNING: serving on {host} WITHOUT SIGN-IN (--no-sign-in): whoever reaches it sees every site's patients")
    return settings


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


def serve(lake: str, *, host: str = LOOPBACK, port: int = 8501, run: str | None = None, secrets: str | None = None,
          no_sign_in: bool = False, echo=print) -> None:
    """Replace this process with Streamlit serving the dashboard (Ctrl-C stops it)."""
    check(lake, host, port)
    settings = check_access(host, secrets, no_sign_in=no_sign_in, echo=echo)
    where = f"http://{'localhost' if host == LOOPBACK else host}:{port}"
    if settings.sign_in:
        how = f"sign-in required, {len(settings.users)} user(s) on the allow-list"
    else:
        how = "no sign-in: this machine only" if host == LOOPBACK else "no sign-in"
    echo(f"dashboard of {lake}: {where}  ({how})")
    sys.stdout.flush()
    cmd = streamlit_command(lake, host=host, port=port, run=run, secrets=secrets)
    os.execve(cmd[0], cmd, {**os.environ, "GBMMET_LAKE": lake})
