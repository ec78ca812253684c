"""Who may see what on the dashboard: its sign-in (Streamlit's ``st.login`` against an OpenID
Connect provider) and the sites each user may see. Pure rules, no Streamlit: ``dashboards.common``
reads the settings, asks ``decide`` and draws what it says.

The settings live in ``secrets.toml`` (``.streamlit/secrets.toml``, or the file given to
``gbmmet dashboard --secrets``)::

    [auth]                      # Streamlit's OpenID Connect settings: with them, sign-in is required
    redirect_uri = "https://dashboard.example.org/oauth2callback"
    cookie_secret = "a long random string"
    client_id = "gbmmet-dashboard"
    client_secret = "..."
    server_metadata_url = "https://idp.example.org/.well-known/openid-configuration"

    [gbmmet]
    contact = "the study's data manager (dm@example.org)"   # named on the refused page

    [gbmmet.access]             # the allow-list: e-mail -> the sites it may see ("*": every site)
    "alice@hospital-a.example" = ["siteA"]
    "bob@university.example" = ["*"]

``GBMMET_ACCESS`` in the environment, where set, replaces ``[gbmmet.access]``: the same table as
JSON (``{"alice@hospital-a.example": ["siteA"]}``) or as TOML text.

Without ``[auth]`` there is no sign-in: the dashboard shows every site to whoever reaches it, so
``gbmmet dashboard`` serves it on 127.0.0.1 only (``pipelines.dashboard.check``).
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from gbmmet import constants as C
from gbmmet.errors import ConfigError

ACCESS_ENV = "GBMMET_ACCESS"
ALL_SITES = "*"
#: What Streamlit's ``st.login()`` needs in ``[auth]`` (its default provider).
AUTH_KEYS = ("redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url")
CALLBACK_PATH = "/oauth2callback"
DEFAULT_CONTACT = "the dashboard's administrator"

# What ``decide`` says.
LOCAL = "local"  # no sign-in configured: every site, to whoever reaches the dashboard
SIGN_IN = "sign_in"  # signed out: the sign-in button and nothing else
REFUSED = "refused"  # signed in, not allowed: who they are and what to ask for
ALLOWED = "allowed"  # signed in and on the allow-list: their sites
BROKEN = "broken"  # sign-in configured wrongly: nothing is shown but what is wrong


@dataclass(frozen=True)
class Settings:
    """The dashboard's access settings, as read from secrets and the environment."""

    sign_in: bool  # an ``[auth]`` section: every viewer must sign in
    users: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # e-mail (lower case) -> sites
    contact: str = DEFAULT_CONTACT
    problems: tuple[str, ...] = ()  # what is wrong with the settings (sign-in then shows nothing)


@dataclass(frozen=True)
class Decision:
    """What one viewer gets: ``kind`` (``LOCAL``, ``SIGN_IN``, ``REFUSED``, ``ALLOWED``, ``BROKEN``),
    who they are, the sites they may see (``ALLOWED``: as the allow-list names them) and, for those
    who see nothing, why and what to do (markdown)."""

    kind: str
    user: str = C.ACCESS_LOCAL_USER
    sites: tuple[str, ...] = ()
    message: str = ""

    @property
    def shows_data(self) -> bool:
        return self.kind in (LOCAL, ALLOWED)


def parse_users(raw: object) -> dict[str, tuple[str, ...]]:
    """The allow-list (``{e-mail: [site, ...]}``; ``"*"`` or ``["*"]``: every site) with e-mails
    in lower case and each user's sites sorted.

    Raises:
        ConfigError: not a table of e-mails to lists of site names.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"the allow-list must be a table of e-mail = [sites], not {type(raw).__name__}")
    out: dict[str, tuple[str, ...]] = {}
    for email, sites in raw.items():
        key = str(email).strip().lower()
        if "@" not in key:
            raise ConfigError(f"the allow-list's key {email!r} is not an e-mail address")
        if isinstance(sites, str):
            sites = [sites]
        if not isinstance(sites, list | tuple) or not all(isinstance(s, str) and s.strip() for s in sites):
            raise ConfigError(f"the allow-list gives {email!r} {sites!r}: give a list of site names, or \"*\" for "
                              "every site")
        names = sorted({s.strip() for s in sites})
        out[key] = (ALL_SITES,) if ALL_SITES in names else tuple(names)
    return out


def parse_env(text: str) -> object:
    """``GBMMET_ACCESS``'s value: a JSON object, or TOML text.

    Raises:
        ConfigError: neither.
    """
    try:
        return json.loads(text) if text.lstrip().startswith("{") else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{ACCESS_ENV} is neither a JSON object nor TOML: {exc}") from None


def auth_problems(auth: Mapping) -> list[str]:
    """What keeps ``[auth]`` from working with ``st.login()``: missing settings, a redirect URI
    that is not the app's ``/oauth2callback``."""
    problems = [f"[auth] has no {key}" for key in AUTH_KEYS if not str(auth.get(key) or "").strip()]
    redirect = str(auth.get("redirect_uri") or "")
    if redirect and not redirect.rstrip("/").endswith(CALLBACK_PATH):
        problems.append(f"[auth] redirect_uri {redirect} does not end with {CALLBACK_PATH}")
    return problems


def settings(secrets: Mapping, environ: Mapping[str, str]) -> Settings:
    """The access settings from the secrets (``st.secrets``' contents) and the environment; what
    is wrong is collected in ``problems``, never raised."""
    auth = secrets.get("auth")
    ours = secrets.get("gbmmet") or {}
    problems: list[str] = []
    if not isinstance(ours, Mapping):
        problems.append("[gbmmet] must be a table")
        ours = {}
    raw = ours.get("access", {})
    users: dict[str, tuple[str, ...]] = {}
    try:
        if environ.get(ACCESS_ENV, "").strip():
            raw = parse_env(environ[ACCESS_ENV])
        users = parse_users(raw)
    except ConfigError as exc:
        problems.append(str(exc))
    contact = str(ours.get("contact") or "").strip() or DEFAULT_CONTACT
    if not isinstance(auth, Mapping):
        return Settings(sign_in=False, users=users, contact=contact, problems=tuple(problems))
    return Settings(sign_in=True, users=users, contact=contact, problems=tuple(auth_problems(auth) + problems))


def _verified(user: Mapping) -> bool:
    """False only where the provider says the e-mail address is not verified."""
    value = user.get("email_verified")
    return not (value is False or (isinstance(value, str) and value.strip().lower() == "false"))


def decide(s: Settings, user: Mapping) -> Decision:
    """What the viewer ``user`` (``st.user``'s claims: ``is_logged_in``, ``email``,
    ``email_verified``) may see under the settings ``s``."""
    if not s.sign_in:
        return Decision(LOCAL)
    if s.problems:
        return Decision(BROKEN, message="Sign-in is configured, but not completely, so nothing is shown: "
                        + "; ".join(s.problems) + f". Tell {s.contact}.")
    if not user.get("is_logged_in"):
        return Decision(SIGN_IN, user="", message="Sign in to see the dashboard.")
    email = str(user.get("email") or "").strip().lower()
    if not email:
        return Decision(REFUSED, user="", message="Your sign-in gave no e-mail address, so this dashboard cannot "
                        f"tell whether you may see it. Ask {s.contact} to have the identity provider release "
                        "your e-mail address (the `email` scope) to the dashboard.")
    if not _verified(user):
        return Decision(REFUSED, user=email, message=f"Your identity provider says `{email}` is not verified. "
                        f"Verify it with the provider, or ask {s.contact}.")
    if email not in s.users:
        return Decision(REFUSED, user=email, message=f"`{email}` is not on this dashboard's allow-list. Ask "
                        f"{s.contact} to add `{email}` to the allow-list (`[gbmmet.access]`) with the sites you "
                        "need to see.")
    return Decision(ALLOWED, user=email, sites=s.users[email])


def sites_for(decision: Decision, lake_sites: Iterable[str]) -> tuple[str, ...]:
    """The lake's sites the viewer may see, sorted: every one without sign-in or for ``"*"``;
    else those the allow-list names (a site it names that the lake lacks is left out)."""
    lake_sites = sorted(set(lake_sites))
    if decision.kind == LOCAL or (decision.kind == ALLOWED and ALL_SITES in decision.sites):
        return tuple(lake_sites)
    if decision.kind != ALLOWED:
        return ()
    return tuple(s for s in lake_sites if s in set(decision.sites))


def whole_cohorts(cohorts: Iterable[str], cohort_sites: Mapping[str, Iterable[str]],
                  allowed: Iterable[str]) -> tuple[str, ...]:
    """The cohorts all of whose sites are ``allowed`` (in the order given): those whose stored,
    cohort-level numbers (metrics, differences, calibration, the summary) a viewer may see. A
    cohort with no site at all is not one of them."""
    ok = set(allowed)
    return tuple(c for c in cohorts if (sites := set(cohort_sites.get(c, ()))) and sites <= ok)


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, ``localhost``)."""
    if not host:
        return False
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def log_row(user: str, when: datetime, page: str, patient_id: str, site: str | None, run: str | None) -> dict:
    """One row of the access log (``storage.schemas.ACCESS_LOG``): ``user`` saw ``patient_id``
    (of ``site``, in ``run``'s evaluation) on ``page`` at ``when`` (timezone-aware)."""
    if when.tzinfo is None:
        raise ValueError("the access log's time must be timezone-aware")
    return {C.COL_USER: user or C.ACCESS_LOCAL_USER, C.COL_TIME: when, C.COL_PAGE: page,
            C.COL_PATIENT_ID: patient_id, C.COL_SITE: site, "run_id": run}
