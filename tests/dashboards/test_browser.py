"""The dashboard in a real headless browser: ``gbmmet dashboard`` serves the small real lake on a
free loopback port, Debian's Chromium (through Playwright) opens every page, checks what is
visible against the lake, downloads a CSV and a PNG, and saves a screenshot of each page under
``tests/screenshots/dashboard/`` (look at them)."""

from __future__ import annotations

import csv
import io
import socket
import urllib.request
from pathlib import Path

import pytest

from dashboards.headless import CHROMIUM, browser, open_page, served
from gbmmet import constants as C
from storage import catalog
from storage.lake import Lake
from tests.dashboards.conftest import RUN

SHOTS = Path(__file__).resolve().parents[1] / "screenshots" / "dashboard"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no {CHROMIUM}: `apt-get install -y chromium` (.ci/run installs it)")


def _one(lake, query, *params):
    return catalog.query(Lake(lake), query, list(params)).to_pylist()


def _metrics(page) -> dict[str, str]:
    labels = page.locator('[data-testid="stMetricLabel"]').all_inner_texts()
    values = page.locator('[data-testid="stMetricValue"]').all_inner_texts()
    return {lab.strip(): val.strip() for lab, val in zip(labels, values, strict=True)}


def _other_address() -> str | None:
    """An address of this machine other than loopback, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a route
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


def test_every_page_in_headless_chromium(dash_lake):
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    n_patients = _one(dash_lake, "select count(*) n from patients")[0]["n"]
    n_slices = _one(dash_lake, "select count(*) n from slices")[0]["n"]
    auc = {r["cohort"]: r["value"] for r in _one(
        dash_lake, "select cohort, value from metrics where run_id = ? and subgroup = 'all' and rater = 'model' "
        "and metric = 'auc' and ci_method = 'delong' and cutoff_kind = ?", RUN, C.CUTOFF_VAL)}
    last = _one(dash_lake, "select fold, val_acc from train_history where run_id = ? "
                "qualify epoch = max(epoch) over (partition by fold) order by fold", RUN)

    with served(dash_lake, run=RUN) as url, browser() as page:
        other = _other_address()
        if other:  # bound to loopback only: another address of this machine does not answer
            port = int(url.rsplit(":", 1)[1])
            with pytest.raises(OSError):
                urllib.request.urlopen(f"http://{other}:{port}/_stcore/health", timeout=3)

        open_page(page, f"{url}/?run={RUN}", '[data-testid="stMetric"]')
        m = _metrics(page)
        assert m["Patients"] == str(n_patients) and m["ROI slices"] == str(n_slices)
        assert m["Preprocessing failures"] == "1"
        assert page.get_by_text("Patients and slices per site, split and diagnosis").is_visible()
        with page.expect_download() as dl:
            page.get_by_role("button", name="Download CSV").first.click()
        rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
        assert sum(int(r["patients"]) for r in rows) == n_patients and dl.value.suggested_filename == f"{RUN}-counts.csv"
        with page.expect_download() as dl:
            page.get_by_role("button", name="Download PNG").first.click()
        assert Path(dl.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        page.screenshot(path=SHOTS / "1-overview.png", full_page=True)

        # the sidebar's navigation, as a user would click it
        page.get_by_role("link", name="Model vs readers").click()
        page.wait_for_url("**/readers**", timeout=30000)
        # the previous page's elements stay until the new page replaces them: wait for this page's own
        page.get_by_text("Patient flow").wait_for(state="visible", timeout=30000)
        page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=30000)
        assert page.get_by_text("Model and readers", exact=True).is_visible()
        assert page.get_by_text("Paired differences", exact=True).is_visible()
        assert page.get_by_text("not evidence of equivalence", exact=False).is_visible()
        page.wait_for_function("() => document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= 2",
                               timeout=30000)  # the headline forest plot and the differences'
        page.screenshot(path=SHOTS / "2-model-vs-readers.png", full_page=True)
        # the paper's subsampling, chosen: its coverage note appears
        page.get_by_text("the paper's: subsets of 90 %", exact=False).click()
        page.get_by_text("covered 29-52 %", exact=False).wait_for(state="visible", timeout=30000)

        open_page(page, f"{url}/roc?run={RUN}", ".vega-embed")
        m = _metrics(page)
        assert m["AUC, internal test"] == f"{auc['test']:.3f}" and m["AUC, external"] == f"{auc['external']:.3f}"
        page.screenshot(path=SHOTS / "3-roc.png", full_page=True)

        open_page(page, f"{url}/calibration?run={RUN}", ".vega-embed")
        page.wait_for_function("() => document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= 2",
                               timeout=30000)  # reliability and decision curves
        brier = {r["cohort"]: r["value"] for r in _one(
            dash_lake, "select cohort, value from metrics where run_id = ? and metric = 'brier'", RUN)}
        m = _metrics(page)
        assert m["Brier score, internal test"] == f"{brier['test']:.3f}"
        assert m["Brier score, external"] == f"{brier['external']:.3f}"
        page.screenshot(path=SHOTS / "3b-calibration.png", full_page=True)

        open_page(page, f"{url}/subgroups?run={RUN}", ".vega-embed")
        assert page.get_by_text("auc by subgroup", exact=False).first.is_visible()
        page.screenshot(path=SHOTS / "4-subgroups.png", full_page=True)

        test_patient = _one(dash_lake, "select patient_id, predictive_index from patient_predictions "
                            "where run_id = ? and split = 'test' order by patient_id limit 1", RUN)[0]
        open_page(page, f"{url}/patient?run={RUN}&patient={test_patient['patient_id']}", '[data-testid="stImage"]')
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
                               ".filter(i => i.complete && i.naturalWidth > 0).length === 3", timeout=30000)
        assert _metrics(page)["Predictive index"] == f"{test_patient['predictive_index']:.3f}"
        assert page.get_by_text("Grad-CAM of the ensemble over CE-T1").is_visible()
        page.screenshot(path=SHOTS / "5-patient.png", full_page=True)

        open_page(page, f"{url}/training?run={RUN}", ".vega-embed")
        m = _metrics(page)
        for r in last:
            assert m[f"Fold {r['fold']}: held-out accuracy"] == f"{r['val_acc']:.3f}"
        page.screenshot(path=SHOTS / "6-training.png", full_page=True)

        open_page(page, f"{url}/roc?run=no-such-run", '[data-testid="stAlert"]')
        assert page.get_by_text("There is no finished training run no-such-run", exact=False).is_visible()
        page.screenshot(path=SHOTS / "7-unknown-run.png", full_page=True)

    shots = sorted(SHOTS.glob("*.png"))
    assert len(shots) == 8 and all(s.stat().st_size > 10_000 for s in shots)
