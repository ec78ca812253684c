"""The dashboard's access rules (``dashboards.access``): who sees what, from the secrets and the
environment; and ``gbmmet dashboard``'s refusal to serve beyond this machine without sign-in."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from dashboards import access
from dashboards.headless import free_port
from gbmmet import constants as C
from gbmmet.errors import ConfigError
from pipelines.cli import main
from pipelines.dashboard import check_access, streamlit_command
from storage.schemas import SCHEMAS

AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "c" * 32, "client_id": "gbmmet",
        "client_secret": "s", "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration"}
USERS = {"Alice@Hospital-A.example": ["siteA"], "bob@uni.example": "*"}


def signed_in(email: str, **claims) -> dict:
    return {"is_logged_in": True, "email": email, **claims}


def settings(**extra) -> access.Settings:
    return access.settings({"auth": AUTH, "gbmmet": {"access": USERS, **extra}}, {})


def test_without_auth_everyone_sees_every_site_as_local():
    decision = access.decide(access.settings({}, {}), {})
    assert decision.kind == access.LOCAL and decision.user == C.ACCESS_LOCAL_USER
    assert access.sites_for(decision, ["siteB", "siteA"]) == ("siteA", "siteB")


def test_an_allow_list_without_auth_does_not_turn_sign_in_on():
    assert not access.settings({"gbmmet": {"access": USERS}}, {}).sign_in


def test_signed_out_gets_the_sign_in_only():
    decision = access.decide(settings(), {"is_logged_in": False})
    assert decision.kind == access.SIGN_IN and not decision.shows_data


def test_a_user_not_on_the_list_is_refused_with_their_email_and_what_to_ask():
    decision = access.decide(settings(contact="the data manager"), signed_in("Eve@Elsewhere.example"))
    assert decision.kind == access.REFUSED and decision.user == "eve@elsewhere.example"
    assert "`eve@elsewhere.example` is not on this dashboard's allow-list" in decision.message
    assert "Ask the data manager to add" in decision.message and "[gbmmet.access]" in decision.message


def test_a_listed_user_is_allowed_their_sites_whatever_the_case_of_the_email():
    decision = access.decide(settings(), signed_in("alice@hospital-a.example"))
    assert decision.kind == access.ALLOWED and decision.user == "alice@hospital-a.example"
    assert access.sites_for(decision, ["siteA", "siteB"]) == ("siteA",)


def test_a_star_allows_every_site_of_the_lake():
    decision = access.decide(settings(), signed_in("bob@uni.example"))
    assert access.sites_for(decision, ["siteB", "siteA", "siteC"]) == ("siteA", "siteB", "siteC")


def test_a_site_the_lake_lacks_gives_nothing():
    decision = access.decide(access.settings({"auth": AUTH, "gbmmet": {"access": {"a@x.org": ["siteZ"]}}}, {}),
                             signed_in("a@x.org"))
    assert decision.kind == access.ALLOWED and access.sites_for(decision, ["siteA"]) == ()


def test_an_email_the_provider_says_is_unverified_is_refused():
    decision = access.decide(settings(), signed_in("alice@hospital-a.example", email_verified=False))
    assert decision.kind == access.REFUSED and "not verified" in decision.message


def test_a_sign_in_without_an_email_is_refused():
    decision = access.decide(settings(), {"is_logged_in": True, "sub": "12345"})
    assert decision.kind == access.REFUSED and "no e-mail address" in decision.message


def test_an_incomplete_auth_section_shows_nothing_and_says_what_is_missing():
    auth = {k: v for k, v in AUTH.items() if k != "client_secret"}
    decision = access.decide(access.settings({"auth": auth, "gbmmet": {"access": USERS}}, {}),
                             signed_in("bob@uni.example"))
    assert decision.kind == access.BROKEN and "[auth] has no client_secret" in decision.message


def test_a_redirect_uri_that_is_not_the_callback_is_a_problem():
    problems = access.auth_problems({**AUTH, "redirect_uri": "http://localhost:8501/"})
    assert problems == ["[auth] redirect_uri http://localhost:8501/ does not end with /oauth2callback"]


def test_the_environment_replaces_the_secrets_allow_list_as_json():
    s = access.settings({"auth": AUTH, "gbmmet": {"access": USERS}}, {access.ACCESS_ENV: '{"c@x.org": ["siteB"]}'})
    assert s.users == {"c@x.org": ("siteB",)}


def test_the_environment_allow_list_may_be_toml():
    s = access.settings({"auth": AUTH}, {access.ACCESS_ENV: '"c@x.org" = ["siteB", "siteA"]'})
    assert s.users == {"c@x.org": ("siteA", "siteB")}


def test_an_allow_list_that_is_not_email_to_sites_is_a_problem():
    with pytest.raises(ConfigError, match="list of site names"):
        access.parse_users({"a@x.org": [1, 2]})
    with pytest.raises(ConfigError, match="not an e-mail address"):
        access.parse_users({"siteA": ["siteA"]})
    s = access.settings({"auth": AUTH}, {access.ACCESS_ENV: "{not json"})
    assert access.decide(s, signed_in("a@x.org")).kind == access.BROKEN


def test_only_cohorts_wholly_within_the_allowed_sites_keep_their_stored_metrics():
    sites = {C.TEST: {"siteA", "siteB"}, C.EXTERNAL: {"siteB"}, C.VAL: {"siteA"}}
    assert access.whole_cohorts([C.TEST, C.EXTERNAL, C.VAL], sites, ["siteA"]) == (C.VAL,)
    assert access.whole_cohorts([C.TEST, C.EXTERNAL], sites, ["siteA", "siteB"]) == (C.TEST, C.EXTERNAL)
    assert access.whole_cohorts([C.TRAIN], sites, ["siteA"]) == ()  # no site known: not whole


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.0.1.1", True), ("::1", True),
                                           ("localhost", True), ("0.0.0.0", False), ("10.0.0.5", False),
                                           ("", False), (None, False)])
def test_loopback_addresses(host, loopback):
    assert access.is_loopback(host) is loopback


def test_an_access_log_row_fits_the_tables_schema():
    row = access.log_row("alice@x.org", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "patient", "p-1", "siteA", "r1")
    table = pa.Table.from_pylist([row], schema=SCHEMAS[C.TABLE_ACCESS_LOG])
    assert table.to_pylist()[0][C.COL_USER] == "alice@x.org"
    with pytest.raises(ValueError, match="timezone-aware"):
        access.log_row("local", datetime(2026, 1, 2), "patient", "p-1", "siteA", "r1")


# -- gbmmet dashboard ---------------------------------------------------------------------------
def write_secrets(path, text: str) -> str:
    path.write_text(text)
    return str(path)


AUTH_TOML = "[auth]\n" + "".join(f'{k} = "{v}"\n' for k, v in AUTH.items())


def test_serving_beyond_loopback_without_sign_in_is_refused(tmp_path):
    secrets = write_secrets(tmp_path / "secrets.toml", "")
    with pytest.raises(ConfigError, match="no sign-in configured"):
        check_access("0.0.0.0", secrets)


def test_no_sign_in_serves_beyond_loopback_with_a_loud_warning(tmp_path):
    said = []
    check_access("0.0.0.0", write_secrets(tmp_path / "secrets.toml", ""), no_sign_in=True, echo=said.append)
    assert said and said[0].startswith("WARNING: serving on 0.0.0.0 WITHOUT SIGN-IN")


def test_sign_in_configured_serves_beyond_loopback(tmp_path):
    secrets = write_secrets(tmp_path / "secrets.toml", AUTH_TOML + '[gbmmet.access]\n"a@x.org" = ["siteA"]\n')
    assert check_access("0.0.0.0", secrets).users == {"a@x.org": ("siteA",)}


def test_a_broken_sign_in_is_refused_before_serving(tmp_path):
    secrets = write_secrets(tmp_path / "secrets.toml", "[auth]\nclient_id = \"x\"\n")
    with pytest.raises(ConfigError, match="has no cookie_secret"):
        check_access("127.0.0.1", secrets)


def test_the_dashboard_command_passes_the_secrets_file_to_streamlit(tmp_path):
    cmd = streamlit_command("l", secrets=str(tmp_path / "s.toml"))
    assert cmd[cmd.index("--secrets.files") + 1] == str(tmp_path / "s.toml") and cmd[-2:] == ["--lake", "l"]


def test_gbmmet_dashboard_refuses_a_network_address_without_sign_in(tmp_path, capsys):
    (tmp_path / "lake").mkdir()
    secrets = write_secrets(tmp_path / "secrets.toml", "")
    assert main(["dashboard", "--lake", str(tmp_path / "lake"), "--host", "0.0.0.0", "--port", str(free_port()),
                 "--secrets", secrets]) == 2
    err = capsys.readouterr().err
    assert "no sign-in configured" in err and "--no-sign-in" in err
