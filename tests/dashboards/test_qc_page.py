"""The dashboard's Preprocessing QC page under AppTest, on a copy of the tiny lake: every patient
listed worst first with the flags ``storage.qc_report`` gives, the chosen patient's panels shown and
its view recorded in the access log."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from gbmmet import constants as C
from gbmmet.preprocess import qc_panels
from storage.lake import Lake
from storage.qc_report import load_qc

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"


@pytest.fixture
def lake(tiny_lake, tmp_path) -> Path:
    dest = tmp_path / "lake"
    shutil.copytree(tiny_lake[0], dest, ignore=shutil.ignore_patterns("catalog.duckdb"))
    return dest


def open_qc(monkeypatch, lake: Path) -> AppTest:
    monkeypatch.setenv("GBMMET_LAKE", str(lake))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    at.switch_page("views/qc.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_qc_page_lists_every_patient_worst_first_and_shows_the_first_ones_panels(monkeypatch, lake):
    at = open_qc(monkeypatch, lake)
    shown = [t.value for t in at.table if "flags raised" in t.value.columns]
    assert len(shown) == 1
    expected = load_qc(Lake(lake), with_panels=False)
    assert list(shown[0]["patient"]) == [p.patient_id for p in expected.patients]
    assert [int(v) for v in shown[0]["flags raised"]] == [p.badness[0] for p in expected.patients]
    assert at.selectbox(key="qc-patient").value == expected.patients[0].patient_id
    images = at.image
    assert len(images) == 1 and len(images[0].value) == len(qc_panels.PANELS)
    assert all(img.alt.startswith(expected.patients[0].patient_id) for img in images[0].proto.imgs)
    log = Lake(lake).read(C.TABLE_ACCESS_LOG).to_pylist()
    assert [(r[C.COL_PATIENT_ID], r[C.COL_PAGE]) for r in log] == [(expected.patients[0].patient_id, "qc")]


def test_choosing_a_site_in_the_sidebar_leaves_the_others_patients_out(monkeypatch, lake):
    at = open_qc(monkeypatch, lake)
    at.sidebar.multiselect(key="sidebar-sites").set_value([C.SITE_EXTERNAL]).run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(t.value for t in at.table if "flags raised" in t.value.columns)
    assert set(table["site"]) == {C.SITE_EXTERNAL}
    assert len(table) == len(load_qc(Lake(lake), [C.SITE_EXTERNAL], with_panels=False).patients)
