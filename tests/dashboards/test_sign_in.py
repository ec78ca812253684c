"""The dashboard's sign-in against a real OpenID Connect provider on loopback, in a real browser:
``oidc-provider-mock`` (a Flask app) serves discovery, the authorization form, tokens and keys on
a free port of 127.0.0.1; ``gbmmet dashboard`` is served with a secrets file whose ``[auth]``
names it and whose allow-list gives one user siteB only; Debian's Chromium (Playwright) goes
through the real redirect flow. Signed out sees only the sign-in; a user not on the list is
refused; the allowed user sees only siteB's patients, and the patient they open is in the lake's
access log under their e-mail. Screenshots of the sign-in and refused pages, and of the allowed
user's Overview, go to ``tests/screenshots/sign-in/``.

Never flaky: every step waits for the content it reads (Playwright's ``expect``, 30 s at most);
nothing waits on time."""

from __future__ import annotations

import re
import secrets
import threading
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest

from dashboards.headless import CHROMIUM, browser, served
from gbmmet import constants as C
from storage.lake import Lake
from tests.dashboards.conftest import RUN
from tests.dashboards.test_browser import LOCAL, TIMEOUT_MS, _expect, _one, main, metric, settle

SHOTS = Path(__file__).resolve().parents[1] / "screenshots" / "sign-in"
ALLOWED = "b@hospital-b.example"  # siteB only
REFUSED = "eve@elsewhere.example"

pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                 reason=f"no {CHROMIUM}: `apt-get install -y chromium` (.ci/run installs it)"),
              pytest.mark.slow]


@contextmanager
def oidc_provider():
    """``oidc-provider-mock`` on a free port of 127.0.0.1, in a thread; yields its base URL. Any
    client id and secret are accepted; the authorization form signs in whoever's e-mail is typed."""
    from oidc_provider_mock import app
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()  # returns once serve_forever has stopped (within its poll interval)
        thread.join(timeout=10)
        server.server_close()


def secrets_toml(provider: str) -> str:
    """The dashboard's secrets: sign-in at ``provider``, and an allow-list giving ``ALLOWED`` siteB."""
    return f"""
[auth]
redirect_uri = "http://127.0.0.1:{{port}}/oauth2callback"
cookie_secret = "{secrets.token_hex(32)}"
client_id = "gbmmet-dashboard"
client_secret = "{secrets.token_hex(16)}"
server_metadata_url = "{provider}/.well-known/openid-configuration"

[gbmmet]
contact = "the study's data manager"

[gbmmet.access]
"{ALLOWED}" = ["siteB"]
"""


def local_only(page) -> None:
    """Requests beyond this machine (the provider's own page asks a CDN for its stylesheet) fail at
    once rather than wait for a network there is none of."""
    page.route(re.compile(r"^https?://"),
               lambda route: route.abort() if (urlparse(route.request.url).hostname or "") not in LOCAL
               else route.continue_())


def sign_in(page, url: str, email: str) -> None:
    """Through the real flow: the app's Sign in, the provider's form, back to the app."""
    expect = _expect()
    local_only(page)
    page.goto(url, timeout=TIMEOUT_MS)
    page.get_by_role("button", name="Sign in").click()
    page.locator("input[name=sub]").fill(email)  # the provider's authorization form
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{url}/**", timeout=TIMEOUT_MS)
    expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0)


def test_sign_in_refusal_and_site_limit_against_a_real_provider(dash_lake, monkeypatch, tmp_path):
    expect = _expect()
    started = datetime.now(UTC)  # the access log's rows from here on are this test's (others wrote before)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    n_site_b = _one(dash_lake, "select count(*) n from patients where site = 'siteB'")[0]["n"]
    mine = _one(dash_lake, "select patient_id from patient_predictions where run_id = ? and site = 'siteB' "
                "and split = 'external' order by patient_id limit 1", RUN)[0]["patient_id"]
    other = _one(dash_lake, "select patient_id from patient_predictions where run_id = ? and site = 'siteA' "
                 "and split = 'test' order by patient_id limit 1", RUN)[0]["patient_id"]

    with oidc_provider() as provider:
        secrets_file = tmp_path / "secrets.toml"
        secrets_file.write_text(secrets_toml(provider))
        monkeypatch.setenv("GBMMET_SECRETS", str(secrets_file))  # `gbmmet dashboard --secrets`
        with served(dash_lake, run=RUN) as url, browser(width=1280, height=900) as page:
            # signed out: the sign-in and nothing else, whatever page the link names
            page.goto(f"{url}/patient?run={RUN}&patient={mine}", timeout=TIMEOUT_MS)
            expect(page.get_by_role("button", name="Sign in")).to_be_visible()
            expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0)
            expect(page.locator('[data-testid="stSidebar"]')).to_have_count(0)
            expect(page.locator('[data-testid="stImage"]')).to_have_count(0)
            expect(main(page)).not_to_contain_text(mine)
            page.screenshot(path=SHOTS / "sign-in.png")

            # a user not on the allow-list: refused, told who they are and what to ask for
            refused = page.context.browser.new_page(viewport={"width": 1280, "height": 900})  # cookies of its own
            sign_in(refused, url, REFUSED)
            expect(main(refused).get_by_text(f"{REFUSED} is not on this dashboard's allow-list", exact=False)
                   ).to_be_visible()
            expect(main(refused).get_by_text("Ask the study's data manager", exact=False)).to_be_visible()
            expect(refused.get_by_role("button", name="Sign out")).to_be_visible()
            expect(refused.locator('[data-testid="stSidebar"]')).to_have_count(0)
            refused.screenshot(path=SHOTS / "refused.png")

            # the allowed user: siteB only
            allowed = page.context.browser.new_page(viewport={"width": 1280, "height": 900})
            sign_in(allowed, url, ALLOWED)
            settle(allowed, "Summary")
            sidebar = allowed.locator('[data-testid="stSidebar"]')
            expect(sidebar.get_by_text(f"Signed in as {ALLOWED} · sites: siteB", exact=False)).to_be_visible()
            allowed.goto(f"{url}/overview?run={RUN}", timeout=TIMEOUT_MS)
            settle(allowed, "Overview", charts=1)
            expect(metric(allowed, "Sites")).to_have_text("1")
            expect(metric(allowed, "Patients")).to_have_text(str(n_site_b))
            expect(main(allowed)).not_to_contain_text("siteA")
            allowed.screenshot(path=SHOTS / "allowed-overview.png")
            allowed.goto(f"{url}/patient?run={RUN}&patient={other}", timeout=TIMEOUT_MS)
            settle(allowed, "Patient viewer")
            expect(main(allowed).get_by_text(f"There is no patient {other} at the sites you may see", exact=False)
                   ).to_be_visible()
            expect(allowed.locator('[data-testid="stImage"]')).to_have_count(0)
            allowed.goto(f"{url}/patient?run={RUN}&patient={mine}", timeout=TIMEOUT_MS)
            settle(allowed, "Patient viewer", charts=2, images=3)
            expect(metric(allowed, "Diagnosis")).to_be_visible()

    log = [r for r in Lake(dash_lake).read(C.TABLE_ACCESS_LOG).to_pylist() if r[C.COL_TIME] >= started]
    assert [(r[C.COL_USER], r[C.COL_PATIENT_ID], r[C.COL_SITE]) for r in log] == [(ALLOWED, mine, "siteB")]
    shots = sorted(SHOTS.glob("*.png"))
    assert [s.name for s in shots] == ["allowed-overview.png", "refused.png", "sign-in.png"] and all(s.stat().st_size > 5_000 for s in shots)
