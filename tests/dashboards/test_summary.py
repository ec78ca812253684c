"""The Summary page (AppTest) and the printable report on the small real lake: the page's numbers
equal the lake's rows read here with plain SQL, its verdicts and sentences follow
``gbmmet.evaluation.verdict``, its download is the PDF ``gbmmet report`` writes, and that PDF,
turned into text and PNG pages by poppler, holds the run, the sentences and the versions. The
pages are saved under ``tests/screenshots/report/`` (look at them)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from streamlit.testing.v1 import AppTest

from gbmmet import constants as C
from gbmmet.evaluation import DEFAULT_MARGIN, verdict
from storage import catalog
from storage.lake import Lake
from storage.queries import format_estimate
from storage.schemas import SCHEMAS
from tests.dashboards.conftest import RUN, unevaluated_copy

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
SHOTS = Path(__file__).resolve().parents[1] / "screenshots" / "report"
DAGGER = "\u2020"
NAMES = {C.TEST: "Internal test", C.EXTERNAL: "External"}
METRIC = {"recall": "sensitivity", "specificity": "specificity", "accuracy": "accuracy", "auc": "AUC"}

needs_poppler = pytest.mark.skipif(shutil.which("pdftoppm") is None,
                                   reason="no pdftoppm: `apt-get install -y poppler-utils` (.ci/run installs it)")


def sql(lake, query: str, *params) -> pd.DataFrame:
    return catalog.query(Lake(lake), query, list(params)).to_pandas()


def flat(text: str) -> str:
    return " ".join(text.split())


def open_summary(monkeypatch, lake) -> tuple[AppTest, list]:
    """The app on its default page, with the download buttons' deferred callables recorded (the
    PDF is made when the button is clicked; AppTest does not click downloads)."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    made = []
    original = MediaFileManager.add_deferred

    def record(self, fn, *args, **kwargs):
        made.append(fn)
        return original(self, fn, *args, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", record)
    monkeypatch.setenv("GBMMET_LAKE", str(lake))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at, made


def expected_clause(row, margin: float) -> str:
    """How the sentence must state one of the lake's differences (model minus reader)."""
    v = verdict(row.ci_low, row.ci_high, margin)
    return (f"{METRIC[row.metric]} is {v} (difference {row.diff:.3f}, 95 % CI {row.ci_low:.3f} to "
            f"{row.ci_high:.3f})").replace("-0.000", "0.000")


def model_differences(lake) -> pd.DataFrame:
    return sql(lake, "select * from differences where run_id = ? and kind = 'model_vs_reader' and a = ? "
               "and metric in ('recall', 'specificity') order by cohort, b, metric", RUN, "model@" + C.CUTOFF_VAL)


def test_summary_is_the_default_page_and_equals_the_lake(dash_lake, monkeypatch):
    at, made = open_summary(monkeypatch, dash_lake)
    assert at.title[0].value == "Summary"
    margin = json.loads(sql(dash_lake, "select config from runs where run_id = ? and kind = 'evaluate'",
                            RUN).config[0])["settings"]["margin"]
    assert margin == DEFAULT_MARGIN and not at.info  # recorded: no note about a default
    tables = [t.value for t in at.table] + [df.value for df in at.dataframe]  # short tables are static
    raters = [t for t in tables if "sensitivity" in t.columns]
    comps = [t for t in tables if "verdict" in t.columns]
    assert len(raters) == len(comps) == 2  # internal test, external
    sentences = [m.value for m in at.markdown if m.value.startswith(tuple(NAMES.values()))]
    assert len(sentences) == 2
    for k, cohort in enumerate((C.TEST, C.EXTERNAL)):
        n = sql(dash_lake, "select count(distinct patient_id) n, count(distinct patient_id) filter (where label = "
                "'GBM') g from patient_predictions where run_id = ? and split = ?", RUN, cohort).iloc[0]
        assert f"{NAMES[cohort]}: {n.n} patients, {n.g} GBM" in [s.value for s in at.subheader]
        # the rater table: the model at the validation cutoff and each reader, bootstrap BCa; AUC DeLong
        want = sql(dash_lake, """
            select rater, assisted, metric, value, ci_low, ci_high, ci_method, ci_choice, n from metrics
            where run_id = ? and cohort = ? and subgroup = 'all' and metric in ('recall', 'specificity', 'auc')
              and (rater <> 'model' or cutoff_kind = ?)
              and ((metric = 'auc' and ci_method = 'delong') or (metric <> 'auc' and ci_choice = 'bootstrap_bca'))
            """, RUN, cohort, C.CUTOFF_VAL)
        got = raters[k].set_index("rater")
        for r in want.itertuples():
            who = "model, validation cutoff" if r.rater == "model" else r.rater + (" + model" if r.assisted else "")
            text = format_estimate(r.value, r.ci_low, r.ci_high)
            text += DAGGER if r.metric != "auc" and r.ci_method != r.ci_choice else ""
            assert got.loc[who, METRIC[r.metric]] == text, (cohort, who, r.metric)
            assert got.loc[who, "n"] == r.n
        # the comparisons: each verdict is verdict() of the lake's interval at the recorded margin
        diff = sql(dash_lake, """
            select a, b, metric, diff, ci_low, ci_high from differences where run_id = ? and cohort = ?
              and metric in ('recall', 'specificity', 'accuracy', 'auc')
              and (a in (?, 'model') or kind = 'assisted_vs_unassisted')""", RUN, cohort, "model@" + C.CUTOFF_VAL)
        assert len(comps[k]) == len(diff)
        shown = {(row["a - b"], row["metric"]): row for row in comps[k].to_dict("records")}
        for r in diff.itertuples():
            a = {"model@" + C.CUTOFF_VAL: "model, validation cutoff", "model": "model"}.get(
                r.a, r.a.replace("+assisted", " + model"))
            row = shown[(f"{a} - {r.b}", METRIC[r.metric])]
            assert row["verdict"] == verdict(r.ci_low, r.ci_high, margin)
            assert row["difference (95% CI)"] == format_estimate(r.diff, r.ci_low, r.ci_high)
        # the sentence states the model's sensitivity and specificity against each reader, with verdicts
        sentence = sentences[k].replace("\\", "")
        assert sentence.startswith(f"{NAMES[cohort]} ({n.n} patients, {n.g} GBM)")
        diffs = model_differences(dash_lake)
        for r in diffs[diffs["cohort"] == cohort].itertuples():
            assert expected_clause(r, margin) in sentence, (cohort, r.b, r.metric)
    # the flow diagrams: the lake's counts
    dots = [g.proto.spec for g in at.get("graphviz_chart")]
    flow = sql(dash_lake, "select cohort, stage, sum(n) n from patient_flow where run_id = ? group by all", RUN)
    for cohort, dot in zip((C.TEST, C.EXTERNAL), dots, strict=True):
        counts = dict(flow[flow["cohort"] == cohort][["stage", "n"]].itertuples(index=False))
        assert f"In the manifests: {counts['in_manifest']}" in dot and f"Evaluated: {counts['evaluated']}" in dot
    # the download: the report as PDF, made on click
    assert [b.proto.label for b in at.get("download_button")][0] == "Download the report (PDF)"
    pdf = made[0]()
    assert pdf[:5] == b"%PDF-"


@needs_poppler
def test_report_command_writes_the_same_report(dash_lake, monkeypatch, tmp_path):
    from pipelines.cli import main
    from storage.report import page_count

    out = tmp_path / "report.pdf"
    assert main(["report", "--lake", str(dash_lake), "--out", str(out)]) == 0
    pdf = out.read_bytes()
    assert pdf[:5] == b"%PDF-"
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    subprocess.run(["pdftoppm", "-r", "80", "-png", str(out), str(SHOTS / "page")], check=True)
    pages = sorted(SHOTS.glob("page-*.png"))
    assert len(pages) == page_count(pdf) >= 5  # summary, headline, ROC and flow, calibration, record
    text = flat(subprocess.run(["pdftotext", "-layout", str(out), "-"], check=True, capture_output=True, text=True, encoding="utf-8").stdout)
    assert RUN in text and "sensitivity" in text and "Patient flow" in text and "Run record" in text
    versions = json.loads(sql(dash_lake, "select versions from runs where run_id = ? and kind = 'train'",
                              RUN).versions[0])
    for package, version in versions.items():
        assert f"{package} {version}" in text
    for r in model_differences(dash_lake).itertuples():
        assert expected_clause(r, DEFAULT_MARGIN) in text
    # the page's sentences are the report's, and the page's download is the same document
    at, made = open_summary(monkeypatch, dash_lake)
    for m in at.markdown:
        if m.value.startswith(tuple(NAMES.values())):
            assert flat(m.value.replace("\\", "")) in text
    page_pdf = tmp_path / "page.pdf"
    page_pdf.write_bytes(made[0]())
    page_text = flat(subprocess.run(["pdftotext", "-layout", str(page_pdf), "-"], check=True, capture_output=True,
                                    text=True, encoding="utf-8").stdout)

    def undated(t: str) -> str:  # the two were made at different minutes, maybe
        import re

        return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "", t)

    assert undated(page_text) == undated(text)


def test_an_evaluation_without_a_recorded_margin_uses_the_default_and_says_so(dash_lake, monkeypatch, tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(dash_lake, lake, ignore=shutil.ignore_patterns("catalog.duckdb", "slices", "cams", "features"))
    evaluation = {"run_id": RUN, "kind": "evaluate"}
    rec = Lake(lake).read(C.TABLE_RUNS, filter=(pc.field("run_id") == RUN) & (pc.field("kind") == "evaluate")).to_pylist()
    for r in rec:  # as evaluations were recorded before the margin was a setting
        config = json.loads(r["config"])
        del config["settings"]["margin"]
        r["config"] = json.dumps(config)
    Lake(lake).replace(C.TABLE_RUNS, pa.Table.from_pylist(rec, schema=SCHEMAS[C.TABLE_RUNS]), evaluation)
    at, _ = open_summary(monkeypatch, lake)
    assert any("recorded before the margin was a setting" in i.value and f"{DEFAULT_MARGIN:.2f}" in i.value
               for i in at.info)
    assert any(f"margin of {DEFAULT_MARGIN:.2f}" in m.value for m in at.markdown)


def test_summary_says_what_is_missing(dash_lake, tmp_path, monkeypatch):
    def page(lake, query=None):
        monkeypatch.setenv("GBMMET_LAKE", str(lake))
        at = AppTest.from_file(str(APP), default_timeout=60)
        at.query_params.update(query or {})
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.title[0].value == "Summary"
        return at

    assert any("There is no lake at" in i.value for i in page(tmp_path / "nowhere").info)
    (tmp_path / "empty").mkdir()
    assert any("has no patients yet" in i.value for i in page(tmp_path / "empty").info)
    unevaluated = unevaluated_copy(dash_lake, tmp_path / "unevaluated", "slices", "cams", "features")
    assert any("has no evaluation yet" in i.value and "gbmmet evaluate" in i.value for i in page(unevaluated).info)
    at = page(dash_lake, {"run": "no-such-run"})
    assert any("no finished training run `no-such-run`" in e.value for e in at.error)
