"""The dashboard's sign-in, site limits and access log under Streamlit's AppTest, on the small real
lake: the sign-in configured through ``at.secrets``, the viewer through ``at.user`` (the claims
``st.user`` gives after a real sign-in: the browser test signs in for real). What a viewer limited
to one site sees is checked against the lake's own rows, read here with plain SQL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from dashboards import common
from gbmmet import constants as C
from storage import catalog
from storage.lake import Lake
from storage.schemas import SCHEMAS
from tests.dashboards.conftest import RUN
from tests.faults.test_lake import (
    make_read_only,
    make_writable,
    refuse_if_writable,
    run_without_write_override,
)

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "c" * 32, "client_id": "gbmmet",
        "client_secret": "s", "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration"}
SITE_B = "b@hospital-b.example"  # allowed siteB only
EVERY = "all@uni.example"  # allowed every site
ELSEWHERE = "z@hospital-z.example"  # allowed a site the lake does not have
USERS = {SITE_B: ["siteB"], EVERY: "*", ELSEWHERE: ["siteZ"]}


def signed_in(email: str) -> dict:
    return {"is_logged_in": True, "email": email, "email_verified": True}


def open_as(monkeypatch, lake, user: dict | None, page: str | None = None, query: dict | None = None,
            sign_in: bool = True) -> AppTest:
    """The app on ``lake`` as ``user`` (None: signed out), sign-in configured unless ``sign_in`` is
    false; then ``page``, if given."""
    monkeypatch.setenv("GBMMET_LAKE", str(lake))
    at = AppTest.from_file(str(APP), default_timeout=60)
    if sign_in:
        at.secrets["auth"] = AUTH
        at.secrets["gbmmet"] = {"access": USERS, "contact": "the study's data manager"}
    at.user = user or {"is_logged_in": False}
    at.query_params.update(query or {})
    at.run()
    if page:
        at.switch_page(f"views/{page}").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def sql(lake, query: str, *params) -> pd.DataFrame:
    return catalog.query(Lake(lake), query, list(params)).to_pandas()


def tables(at: AppTest) -> list[pd.DataFrame]:
    return [t.value for t in at.table] + [d.value for d in at.dataframe]


def frame(at: AppTest, column: str) -> pd.DataFrame:
    found = [df for df in tables(at) if column in df.columns]
    assert len(found) == 1, [list(df.columns) for df in tables(at)]
    return found[0]


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "title", "subheader", "info", "error", "warning", "success")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts + [df.to_csv() for df in tables(at)])


def access_log(lake) -> pd.DataFrame:
    """The lake's access log, oldest row first (a read gives the table's files in no set order)."""
    return Lake(lake).read(C.TABLE_ACCESS_LOG).to_pandas().sort_values(C.COL_TIME, ignore_index=True)


@pytest.fixture
def lake_copy(dash_lake, tmp_path) -> Path:
    """A copy of the small lake without its access log (other tests' patient pages wrote to it), for
    the tests that write and read the log."""
    return Path(shutil.copytree(dash_lake, tmp_path / "lake", ignore=shutil.ignore_patterns(C.TABLE_ACCESS_LOG)))


# -- who sees anything ----------------------------------------------------------------------------
def test_signed_out_sees_only_the_sign_in(dash_lake, monkeypatch):
    at = open_as(monkeypatch, dash_lake, None, query={"run": RUN})
    assert [b.label for b in at.button] == ["Sign in"]
    assert [t.value for t in at.title] == ["gbmmet"]
    assert not at.sidebar.children and not at.metric and not tables(at) and not at.get("vega_lite_chart")


def test_a_user_not_on_the_list_is_refused_with_what_to_ask_for(dash_lake, monkeypatch):
    at = open_as(monkeypatch, dash_lake, signed_in("Eve@Elsewhere.example"))
    refusal = " ".join(e.value for e in at.error)
    assert "`eve@elsewhere.example` is not on this dashboard's allow-list" in refusal
    assert "Ask the study's data manager to add" in refusal
    assert [b.label for b in at.button] == ["Sign out"]
    assert not at.sidebar.children and not at.metric and not tables(at)


def test_an_allowed_user_is_named_in_the_sidebar_with_their_sites(dash_lake, monkeypatch):
    at = open_as(monkeypatch, dash_lake, signed_in(SITE_B), "overview.py")
    assert any(f"Signed in as `{SITE_B}` · sites: siteB" in c.value for c in at.sidebar.caption)
    assert [b.label for b in at.sidebar.button] == ["Sign out"]


def test_without_sign_in_the_sidebar_says_local_only(dash_lake, monkeypatch):
    at = open_as(monkeypatch, dash_lake, None, "overview.py", sign_in=False)
    assert any("No sign-in configured: local only, served on 127.0.0.1" in c.value for c in at.sidebar.caption)


def test_a_user_whose_sites_the_lake_lacks_is_told_so_and_shown_nothing(dash_lake, monkeypatch):
    at = open_as(monkeypatch, dash_lake, signed_in(ELSEWHERE), "overview.py")
    assert any(f"has no patients at the sites you may see, `{ELSEWHERE}`" in i.value for i in at.info)
    assert not at.metric and not tables(at)
    assert at.sidebar.multiselect(key=common.SITES_KEY).options == []


# -- a viewer limited to one site ---------------------------------------------------------------
def test_the_site_choice_holds_only_the_users_sites(dash_lake, monkeypatch):
    at = open_as(monkeypatch, dash_lake, signed_in(SITE_B), "overview.py")
    sites = at.sidebar.multiselect(key=common.SITES_KEY)
    assert sites.options == ["siteB"] and sites.value == ["siteB"]


def test_overview_counts_only_the_users_sites(dash_lake, monkeypatch):
    at = open_as(monkeypatch, dash_lake, signed_in(SITE_B), "overview.py")
    n = int(sql(dash_lake, "select count(*) n from patients where site = 'siteB'").n[0])
    assert [m.value for m in at.metric if m.label == "Patients"] == [str(n)]
    assert set(frame(at, "patients GBM").site) == {"siteB"}
    assert "siteA" not in texts(at)


def test_model_vs_readers_shows_only_cohorts_wholly_at_the_users_sites(dash_lake, monkeypatch):
    at = open_as(monkeypatch, dash_lake, signed_in(SITE_B), "readers.py", {"run": RUN})
    assert set(frame(at, "F1").cohort) == {"external"}  # the external cohort is siteB's alone
    per_site = frame(at, "NPV")
    assert set(per_site.site) == {"siteB"}
    assert set(frame(at, "Holm p").cohort) == {"external"}
    assert "siteA" not in texts(at)


def test_a_cohort_spanning_a_site_the_user_may_not_see_keeps_its_stored_metrics_hidden(lake_copy, monkeypatch):
    one = sql(lake_copy, "select * from patients where split = 'external' order by patient_id limit 1")
    moved = pa.Table.from_pandas(one.assign(site="siteC"), schema=SCHEMAS[C.TABLE_PATIENTS], preserve_index=False)
    Lake(lake_copy).replace(C.TABLE_PATIENTS, moved, {C.COL_PATIENT_ID: one.patient_id.tolist()})
    at = open_as(monkeypatch, lake_copy, signed_in(SITE_B), "readers.py", {"run": RUN})
    assert not [df for df in tables(at) if "F1" in df.columns]  # the external cohort's metrics are siteC's too
    assert not [df for df in tables(at) if "Holm p" in df.columns]
    assert any("stored metrics of the external cohort are over patients of sites you may not see" in i.value
               for i in at.info)
    assert set(frame(at, "NPV").site) == {"siteB"}  # computed from the user's own patients
    assert "siteC" not in texts(at)


def test_every_page_of_a_site_limited_user_names_no_other_site(dash_lake, monkeypatch):
    for page in ("summary.py", "overview.py", "readers.py", "roc.py", "calibration.py", "subgroups.py",
                 "patient.py", "training.py"):
        at = open_as(monkeypatch, dash_lake, signed_in(SITE_B), page, {"run": RUN})
        assert "siteA" not in texts(at), page


def test_the_patient_list_holds_only_the_users_patients(dash_lake, monkeypatch):
    at = open_as(monkeypatch, dash_lake, signed_in(SITE_B), "patient.py", {"run": RUN})
    want = sql(dash_lake, """select distinct patient_id from patient_predictions where run_id = ? and site = 'siteB'
                             and split in ('test', 'external')""", RUN)
    assert {o.split(" · ")[0] for o in at.selectbox(key="patient-id").options} == set(want.patient_id)


def test_a_link_to_another_sites_patient_shows_nothing_of_it(dash_lake, monkeypatch):
    other = sql(dash_lake, """select patient_id from patient_predictions where run_id = ? and site = 'siteA'
                              and split = 'test' limit 1""", RUN).patient_id[0]
    at = open_as(monkeypatch, dash_lake, signed_in(SITE_B), "patient.py", {"run": RUN, "patient": other})
    assert any(f"There is no patient `{other}` at the sites you may see" in w.value for w in at.warning)
    assert at.selectbox(key="patient-id").value is None and not at.image and not at.metric


def test_the_report_pdf_is_offered_only_to_viewers_of_every_site(dash_lake, monkeypatch):
    limited = open_as(monkeypatch, dash_lake, signed_in(SITE_B), "summary.py", {"run": RUN})
    assert not [b for b in limited.get("download_button") if "PDF" in b.label]
    assert any("for viewers allowed every site" in c.value for c in limited.caption)
    every = open_as(monkeypatch, dash_lake, signed_in(EVERY), "summary.py", {"run": RUN})
    assert [b.label for b in every.get("download_button") if "PDF" in b.label] == ["Download the report (PDF)"]


def test_a_viewer_of_every_site_sees_what_the_dashboard_shows_without_sign_in(dash_lake, monkeypatch):
    every = open_as(monkeypatch, dash_lake, signed_in(EVERY), "readers.py", {"run": RUN})
    local = open_as(monkeypatch, dash_lake, None, "readers.py", {"run": RUN}, sign_in=False)
    assert frame(every, "F1").equals(frame(local, "F1"))
    assert every.sidebar.multiselect(key=common.SITES_KEY).options == ["siteA", "siteB"]


# -- the access log -----------------------------------------------------------------------------
def test_a_patient_shown_is_recorded_once_with_the_user_and_site(lake_copy, monkeypatch):
    pids = sql(lake_copy, """select patient_id from patient_predictions where run_id = ? and site = 'siteB'
                             group by patient_id order by patient_id limit 2""", RUN).patient_id.tolist()
    at = open_as(monkeypatch, lake_copy, signed_in(SITE_B), "patient.py", {"run": RUN, "patient": pids[0]})
    log = access_log(lake_copy)
    assert log[[C.COL_USER, C.COL_PAGE, C.COL_PATIENT_ID, C.COL_SITE, "run_id"]].values.tolist() == [
        [SITE_B, common.PATIENT_PAGE, pids[0], "siteB", RUN]]
    assert str(log[C.COL_TIME].dt.tz) == "UTC"
    slider = at.select_slider(key=f"slice-{pids[0]}")
    slider.set_value(slider.options[0]).run()  # the same patient again: no second row
    assert len(access_log(lake_copy)) == 1
    at.selectbox(key="patient-id").set_value(pids[1]).run()
    assert access_log(lake_copy)[C.COL_PATIENT_ID].tolist() == pids


def test_without_sign_in_the_viewer_is_recorded_as_local(lake_copy, monkeypatch):
    pid = sql(lake_copy, "select patient_id from patient_predictions where run_id = ? and split = 'test' limit 1",
              RUN).patient_id[0]
    open_as(monkeypatch, lake_copy, None, "patient.py", {"run": RUN, "patient": pid}, sign_in=False)
    assert access_log(lake_copy)[[C.COL_USER, C.COL_PATIENT_ID]].values.tolist() == [[C.ACCESS_LOCAL_USER, pid]]


def test_other_pages_record_nothing(lake_copy, monkeypatch):
    for page in ("summary.py", "overview.py", "readers.py", "roc.py"):
        open_as(monkeypatch, lake_copy, signed_in(EVERY), page, {"run": RUN})
    assert access_log(lake_copy).empty


def test_a_read_only_lake_gives_a_warning_and_the_patient(lake_copy):
    """In a child that file permissions bind (root's override dropped), on a lake made read-only."""
    pid = sql(lake_copy, "select patient_id from patient_predictions where run_id = ? and split = 'test' limit 1",
              RUN).patient_id[0]
    make_read_only(lake_copy)
    try:
        proc = run_without_write_override(refuse_if_writable(lake_copy) + f"""
    import json, os
    os.environ["GBMMET_LAKE"] = {str(lake_copy)!r}
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file({str(APP)!r}, default_timeout=60)
    at.query_params.update({{"run": {RUN!r}, "patient": {pid!r}}})
    at.run()
    at.switch_page("views/patient.py").run()
    print(json.dumps({{"exceptions": [e.value for e in at.exception], "warnings": [w.value for w in at.warning],
                      "patient": at.selectbox(key="patient-id").value, "images": len(at.image)}}))
    """)
    finally:
        make_writable(lake_copy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not shown["exceptions"]
    assert any("could not be recorded in the lake's access log" in w for w in shown["warnings"]), shown
    assert shown["patient"] == pid and shown["images"] == 1  # the page goes on
    assert not (lake_copy / C.TABLE_ACCESS_LOG).exists()
