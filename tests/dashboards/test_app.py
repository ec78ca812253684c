"""Every page of the dashboard under Streamlit's AppTest, on a small real lake: no exception, and
the numbers shown equal the lake's own rows, read here independently with plain SQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from gbmmet import constants as C
from gbmmet.pseudonym import pseudonymise
from storage import catalog
from storage.lake import Lake
from storage.queries import format_estimate
from tests.dashboards.conftest import BROKEN, RUN

DAGGER, SECTION = "\u2020", "\u00a7"  # percentile stood in for BCa; the paper's subsampling
HEADINGS = {"recall": "sensitivity", "precision": "PPV", "auc": "AUC", "f1": "F1", "auc_confidence": "AUC (confidence)"}
NAMES = {"test": "internal test", "external": "external", "val": "validation", "train": "training"}

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"


def open_app(monkeypatch, lake, page: str | None = None, query: dict | None = None) -> AppTest:
    monkeypatch.setenv("GBMMET_LAKE", str(lake))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update(query or {})
    at.run()
    if page:
        at.switch_page(f"views/{page}").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def sql(lake, query: str, *params) -> pd.DataFrame:
    return catalog.query(Lake(lake), query, list(params)).to_pandas()


def metric_value(at: AppTest, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert len(found) == 1, [m.label for m in at.metric]
    return found[0]


def frame(at: AppTest, column: str) -> pd.DataFrame:
    """The one table on the page with this column."""
    found = [df.value for df in at.dataframe if column in df.value.columns]
    assert len(found) == 1, [list(df.value.columns) for df in at.dataframe]
    return found[0]


def chart_data(at: AppTest) -> list[pd.DataFrame]:
    """Per chart on the page, the rows it draws (every dataset of its Vega-Lite spec)."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    return [pd.concat([convert_arrow_bytes_to_pandas_df(d.data.data) for d in c.proto.datasets], ignore_index=True)
            for c in at.get("vega_lite_chart")]


def cell(value, low, high, method, choice) -> str:
    """A metrics row as the tables show it: the estimate, its interval and the interval's marks."""
    text = format_estimate(value, low, high)
    return text + (DAGGER if text and method != choice else "") + (SECTION if text and method == C.CI_SUBSAMPLE else "")


def pval(p) -> str:
    return "" if p is None or p != p else ("<0.001" if p < 0.001 else f"{p:.3f}")


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "title", "subheader", "info", "error", "warning", "success")
             for e in getattr(at, kind)]
    parts += [df.value.to_csv() for df in at.dataframe]
    return "\n".join(str(p) for p in parts)


def test_overview_counts_failures_and_run_record(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake)
    assert at.title[0].value == "Overview"
    n_patients = int(sql(dash_lake, "select count(*) n from patients").n[0])
    n_slices = int(sql(dash_lake, "select count(*) n from slices").n[0])  # the slices themselves
    assert metric_value(at, "Patients") == str(n_patients)
    assert metric_value(at, "ROI slices") == str(n_slices)
    assert metric_value(at, "Sites") == "2"
    assert metric_value(at, "Preprocessing failures") == "1"
    counts = at.dataframe[0].value
    want = sql(dash_lake, "select site, split, label, count(*) n from patients group by all")
    for r in want.itertuples():
        got = counts[(counts.site == r.site) & (counts.split == r.split)][f"patients {r.label}"]
        assert got.tolist() == [r.n]
    failures = at.dataframe[1].value
    secret = Lake(dash_lake).secret()
    assert failures.patient_id.tolist() == [pseudonymise(secret, "siteA", BROKEN)]
    assert failures.error_kind.tolist() == ["unreadable_image"]
    assert "damaged_t1c.nii.gz" in failures.error_message[0]
    record = dict(at.dataframe[2].value.values.tolist())
    train = sql(dash_lake, "select * from runs where run_id = ? and kind = 'train'", RUN).iloc[0]
    assert record["run"] == RUN and record["backbone"] == train.backbone_id and record["mode"] == train["mode"]
    assert record["weights sha256"] == train.weights_sha256 and record["folds"] == "3"
    cut = sql(dash_lake, "select cutoff_kind, max(cutoff) c from patient_predictions where run_id = ? group by 1", RUN)
    for r in cut.itertuples():
        assert record[f"cutoff {r.cutoff_kind}"] == f"{r.c:.3f}"
    assert BROKEN not in texts(at)  # the raw id never shows; only its pseudonym
    assert {b.label for b in at.get("download_button")} == {"Download CSV", "Download PNG"}


def test_model_vs_readers_table_equals_the_lakes_metrics(dash_lake, monkeypatch):
    from pipelines.report import subsample_note

    at = open_app(monkeypatch, dash_lake, "readers.py")
    assert at.radio(key="readers-ci").value == C.CI_BCA  # the default
    want = sql(dash_lake, """select cohort, rater, assisted, cutoff_kind, metric, value, ci_low, ci_high, ci_method,
                                    ci_choice, n, n_gbm
                             from metrics where run_id = ? and subgroup = 'all' and cohort in ('test', 'external')""", RUN)
    readers = sorted(set(want.rater) - {"model"})
    for ci in C.CI_METHODS:
        for delong in (True, False):
            at.radio(key="readers-ci").set_value(ci)
            at.toggle(key="readers-auc-delong").set_value(delong)
            at.run()
            assert not at.exception
            table = frame(at, "specificity")
            assert len(table) == 2 * (2 + 2 * len(readers))  # per cohort: 2 cutoffs, each reader alone and assisted
            checked = 0
            for r in want.itertuples():
                method = C.CI_DELONG if (r.metric == "auc" and delong) else ci
                if r.ci_choice != method or r.metric not in C.HEADLINE_METRICS:
                    continue
                row = table[(table.cohort == NAMES[r.cohort]) & (table.rater == who(r.rater, r.assisted, r.cutoff_kind))]
                assert row[HEADINGS.get(r.metric, r.metric)].tolist() == [
                    cell(r.value, r.ci_low, r.ci_high, r.ci_method, r.ci_choice)], (r, row)
                assert row.n.tolist() == [r.n] and row.GBM.tolist() == [r.n_gbm]
                checked += 1
            assert checked == len(table) * len(C.HEADLINE_METRICS)
            notes = [c.value for c in at.caption]
            # the paper's subsampling is marked and its coverage note shown, exactly as the report prints it
            assert (subsample_note() in notes) == (ci == C.CI_SUBSAMPLE)
            assert (SECTION in table.to_csv()) == (ci == C.CI_SUBSAMPLE)


def test_model_vs_readers_differences_equal_the_lakes_rows(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "readers.py")
    want = sql(dash_lake, "select * from differences where run_id = ? and cohort in ('test', 'external')", RUN)
    shown = frame(at, "a - b (95% CI)")
    assert len(shown) == len(want) > 0
    assert set(want.kind) == {"model_vs_reader", "assisted_vs_unassisted"}
    assert want.is_primary.sum() == len(set(want.cohort))  # one primary comparison per cohort
    labels = {"model@" + C.CUTOFF_PAPER: "model, paper cutoff*", "model@" + C.CUTOFF_VAL: "model, validation cutoff"}
    for r in want.itertuples():
        a = labels.get(r.a, r.a.replace("+assisted", " + model"))
        row = shown[(shown.cohort == NAMES[r.cohort]) & (shown.a == a) & (shown.b == r.b)
                    & (shown.metric == HEADINGS.get(r.metric, r.metric))]
        assert len(row) == 1, r
        row = row.iloc[0]
        assert row["a - b (95% CI)"] == format_estimate(r.diff, r.ci_low, r.ci_high)
        assert row.p == pval(r.p) and row["Holm p"] == pval(r.p_holm)
        assert row.primary == ("\u2605" if r.is_primary else "")
        assert row.n == r.n and row.test == r.test and row.CI == r.ci_method
    assert any("not evidence of equivalence" in c.value for c in at.caption)
    # the forest plot of the same differences, with its line at zero
    drawn = [d for d in chart_data(at) if "diff" in d.columns]
    assert len(drawn) == 1
    assert sorted(drawn[0]["diff"].round(9)) == sorted(want["diff"].round(9))


def test_model_vs_readers_patient_flow_equals_the_lakes_rows(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "readers.py")
    want = sql(dash_lake, "select cohort, site, stage, detail, n from patient_flow where run_id = ?", RUN)
    shown = frame(at, "in manifest").set_index(["cohort", "site"])
    assert {(NAMES[c], s) for c, s in zip(want.cohort, want.site, strict=True)} == set(shown.index)
    for r in want.itertuples():
        column = r.stage.replace("_", " ") + (f": {r.detail}" if r.detail else "")
        assert shown.loc[(NAMES[r.cohort], r.site), column] == r.n, r
    # every count shown is a row of the lake (no others): the cells sum to the lake's total
    assert int(shown.to_numpy().sum()) == int(want.n.sum())
    failed = want[want.stage == "failed"]
    assert failed.detail.tolist() == ["unreadable_image"] and failed.n.tolist() == [1]  # the damaged patient
    assert "evaluated" in shown.columns and "read: reader1" in shown.columns


def who(rater, assisted, cutoff_kind) -> str:
    """How the dashboard names a metrics row's rater."""
    if rater == "model":
        return {C.CUTOFF_PAPER: "model, paper cutoff*", C.CUTOFF_VAL: "model, validation cutoff"}[cutoff_kind]
    return rater + (" + model" if assisted is True else "")


def test_calibration_draws_the_lakes_curves_and_summary(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "calibration.py")
    points = sql(dash_lake, "select * from calibration where run_id = ?", RUN)
    assert set(points.cohort) == {"test", "external"} and set(points.curve) == {"reliability", "decision"}
    summary = sql(dash_lake, """select cohort, metric, value from metrics where run_id = ? and rater = 'model'
                                and metric in ('brier', 'calibration_intercept', 'calibration_slope')""", RUN)
    labels = {"brier": "Brier score", "calibration_intercept": "Calibration intercept",
              "calibration_slope": "Calibration slope"}
    assert len(summary) == 6
    for r in summary.itertuples():
        text = "" if r.value != r.value else f"{r.value:.3f}".replace("-0.000", "0.000")
        assert metric_value(at, f"{labels[r.metric]}, {NAMES[r.cohort]}") == text
    reliability, decision = chart_data(at)
    rel = points[points.curve == "reliability"]
    drawn = reliability[reliability.get("curve", pd.Series(dtype=str)) == "reliability"]
    key = ["cohort", "x", "y", "n"]
    assert sorted(drawn[key].itertuples(index=False, name=None)) == sorted(rel[key].itertuples(index=False, name=None))
    assert {(0, 0), (1, 1)} <= set(reliability[["x", "y"]].itertuples(index=False, name=None))  # the diagonal
    dec = points[points.curve == "decision"]
    for cohort in ("test", "external"):
        mine = dec[dec.cohort == cohort].sort_values("x")
        for strategy, col in (("model", "y"), ("treat all as GBM", "treat_all"), ("treat none", "treat_none")):
            got = decision[(decision.strategy == strategy) & (decision.cohort == cohort)].sort_values("threshold")
            assert got.threshold.tolist() == pytest.approx(mine.x.tolist()), (cohort, strategy)
            assert got.net_benefit.tolist() == pytest.approx(mine[col].tolist()), (cohort, strategy)
    assert {b.label for b in at.get("download_button")} == {"Download CSV", "Download PNG"}

    at.sidebar.multiselect[0].set_value([C.VAL]).run()  # P(GBM) was fitted there: nothing to judge
    assert not at.exception and not at.get("vega_lite_chart")
    assert any("fitted on these patients" in c.value for c in at.caption)


def test_roc_auc_and_operating_points_equal_the_lakes_metrics(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "roc.py")
    ops = at.dataframe[0].value
    for cohort, name in (("test", "internal test"), ("external", "external")):
        # the stored DeLong AUC; the page computes its own from the per-patient rows
        stored = sql(dash_lake, "select value, ci_low, ci_high from metrics where run_id = ? and cohort = ? and "
                     "subgroup = 'all' and rater = 'model' and metric = 'auc' and ci_method = 'delong' limit 1",
                     RUN, cohort).iloc[0]
        assert metric_value(at, f"AUC, {name}") == f"{stored.value:.3f}"
        assert any(f"95% CI {stored.ci_low:.3f} to {stored.ci_high:.3f}" in c.value for c in at.caption)
        m = sql(dash_lake, """select rater, assisted, cutoff_kind, metric, value from metrics where run_id = ?
                              and cohort = ? and subgroup = 'all' and metric in ('recall', 'specificity')
                              and ci_choice = ?""", RUN, cohort, C.CI_DEFAULT)
        m["who"] = [who(r, a if a is not pd.NA else None, k) for r, a, k in zip(m.rater, m.assisted, m.cutoff_kind, strict=True)]
        want = m.pivot(index="who", columns="metric", values="value")
        got = ops[ops.cohort == name].set_index("who")
        assert sorted(got.index) == sorted(want.index) and len(want) == 6  # 2 cutoffs, 2 readers alone and assisted
        for label, r in want.iterrows():
            assert got.loc[label, "sensitivity"] == round(r.recall, 3), label
            assert got.loc[label, "specificity"] == round(r.specificity, 3), label


def test_subgroups_show_every_subgroup_of_the_lake(dash_lake, monkeypatch):
    from pipelines.report import subsample_note

    at = open_app(monkeypatch, dash_lake, "subgroups.py")
    assert at.selectbox(key="sub-ci").value == C.CI_BCA  # the default
    for metric, ci, method in (("auc", C.CI_BCA, "delong"), ("specificity", C.CI_BCA, C.CI_BCA),
                               ("accuracy", C.CI_SUBSAMPLE, C.CI_SUBSAMPLE)):
        at.selectbox(key="sub-metric").set_value(metric)
        at.selectbox(key="sub-ci").set_value(ci).run()
        assert not at.exception
        table = at.dataframe[0].value
        want = sql(dash_lake, """select cohort, subgroup, value, ci_low, ci_high, ci_method, ci_choice, n from metrics
                                 where run_id = ? and cohort in ('test', 'external') and rater = 'model'
                                 and cutoff_kind = ? and metric = ? and ci_choice = ?""",
                   RUN, C.CUTOFF_VAL, metric, method)
        model = table[table.rater == "model, validation cutoff"]
        assert len(model) == len(want) > 2  # all and location subgroups (and, for specificity, primaries)
        # a primary's subgroup holds its METs only: specificity alone
        assert any(want.subgroup.str.startswith("primary=")) == (metric == "specificity")
        for r in want.itertuples():
            label = "all patients" if r.subgroup == "all" else r.subgroup.replace("location=", "location: ").replace(
                "primary=", "METs from ")
            row = model[(model.cohort == NAMES[r.cohort]) & (model.subgroup == label)]
            assert row[metric].tolist() == [cell(r.value, r.ci_low, r.ci_high, r.ci_method, r.ci_choice)]
            assert row.n.tolist() == [r.n]
        assert (subsample_note() in [c.value for c in at.caption]) == (ci == C.CI_SUBSAMPLE)


def test_patient_viewer_shows_the_patients_own_rows(dash_lake, monkeypatch):
    pp = sql(dash_lake, """select patient_id, label, predictive_index, prob_gbm, cutoff_kind, call, n_slices
                           from patient_predictions
                           where run_id = ? and split = 'test' order by patient_id""", RUN)
    pid = pp.patient_id.iloc[-1]
    at = open_app(monkeypatch, dash_lake, "patient.py", {"run": RUN, "patient": pid})
    row = pp[pp.patient_id == pid]
    assert metric_value(at, "Diagnosis") == row.label.iloc[0]
    assert metric_value(at, "Predictive index") == f"{row.predictive_index.iloc[0]:.3f}"
    assert metric_value(at, "Call, validation cutoff") == row[row.cutoff_kind == C.CUTOFF_VAL].call.iloc[0]
    assert metric_value(at, "P(GBM)") == f"{row.prob_gbm.iloc[0]:.3f}"
    assert metric_value(at, "Call, paper cutoff*") == row[row.cutoff_kind == C.CUTOFF_PAPER].call.iloc[0]
    n_slices = int(sql(dash_lake, "select count(*) n from slices where patient_id = ?", pid).n[0])
    assert metric_value(at, "ROI slices") == str(n_slices) == str(row.n_slices.iloc[0])
    images = at.image
    assert len(images) == 1 and len(images[0].value) == 3  # CE-T1 + ROI, T2, Grad-CAM
    probs = at.dataframe[0].value
    sp = sql(dash_lake, "select slice_index, model, prob_gbm from slice_predictions where run_id = ? and patient_id = ?",
             RUN, pid)
    assert len(probs) == n_slices
    for r in sp.itertuples():
        assert probs.loc[probs.slice_index == r.slice_index, r.model].iloc[0] == pytest.approx(r.prob_gbm, abs=5e-5)
    reads = at.dataframe[1].value
    # imported reads and this run's simulated assisted reads (another run's simulation is not this run's)
    want = sql(dash_lake, """select reader_id, assisted, call from reads where patient_id = ?
                             and (coalesce(source, '') not like 'simulated:%' or source = ?) order by 1, 2""",
               pid, "simulated:" + RUN)
    assert reads[["reader", "assisted", "call"]].values.tolist() == want.values.tolist()
    assert reads.correct.tolist() == (want.call == row.label.iloc[0]).tolist()

    # a validation patient: no class activation maps are stored for val, and the page says so
    val = sql(dash_lake, "select patient_id from patient_predictions where run_id = ? and split = 'val' limit 1", RUN)
    at.sidebar.multiselect[0].set_value([C.VAL]).run()
    at.selectbox(key="patient-id").set_value(val.patient_id[0]).run()
    assert not at.exception
    assert len(at.image[0].value) == 2
    assert any("No class activation map" in c.value for c in at.caption)


def test_training_curves_and_fold_sizes_equal_the_lake(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "training.py")
    last = sql(dash_lake, """select fold, val_acc from train_history where run_id = ?
                             qualify epoch = max(epoch) over (partition by fold) order by fold""", RUN)
    for r in last.itertuples():
        assert metric_value(at, f"Fold {r.fold}: held-out accuracy") == f"{r.val_acc:.3f}"
    sizes = at.dataframe[0].value
    want = sql(dash_lake, """select fold, label, count(*) n from folds join patients using (patient_id)
                             where run_id = ? group by all""", RUN)
    for r in want.itertuples():
        assert sizes.loc[sizes.fold == r.fold, f"patients {r.label}"].tolist() == [r.n]
    assert int(sizes.filter(like="patients").to_numpy().sum()) == int(
        sql(dash_lake, "select count(*) n from patients where split = 'train'").n[0])


PAGES = ("overview.py", "readers.py", "roc.py", "calibration.py", "subgroups.py", "patient.py", "training.py")


@pytest.mark.parametrize("page", PAGES)
def test_no_lake_gives_a_message_not_a_traceback(tmp_path, monkeypatch, page):
    at = open_app(monkeypatch, tmp_path / "nowhere", page)
    assert any("There is no lake at" in i.value for i in at.info)


def test_empty_lake_unevaluated_run_and_unknown_run_give_messages(dash_lake, tiny_lake, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    for page in PAGES:
        at = open_app(monkeypatch, empty, page)
        assert any("has no patients yet" in i.value for i in at.info), page

    untrained = tmp_path / "untrained"  # patients, no training run
    shutil.copytree(tiny_lake[0], untrained, ignore=shutil.ignore_patterns("runs", "catalog.duckdb"))
    at = open_app(monkeypatch, untrained)
    assert metric_value(at, "Patients") != "0"
    assert any("no finished training run" in i.value for i in at.info)
    for page in PAGES[1:]:
        at = open_app(monkeypatch, untrained, page)
        assert any("no finished training run" in i.value for i in at.info), page

    unevaluated = tmp_path / "unevaluated"  # trained, never evaluated
    shutil.copytree(dash_lake, unevaluated, ignore=shutil.ignore_patterns("catalog.duckdb", f"{RUN}-evaluate.parquet"))
    for page in ("readers.py", "roc.py", "calibration.py", "subgroups.py", "patient.py"):
        at = open_app(monkeypatch, unevaluated, page)
        assert any("has no evaluation yet" in i.value and "gbmmet evaluate" in i.value for i in at.info), page
    assert open_app(monkeypatch, unevaluated, "training.py").metric  # training needs no evaluation

    for page in PAGES[1:]:
        at = open_app(monkeypatch, dash_lake, page, {"run": "no-such-run"})
        assert any("no finished training run `no-such-run`" in e.value and f"`{RUN}`" in e.value for e in at.error), page

    # a patient id that is SQL, from the address bar: a parameter like any other, never SQL
    at = open_app(monkeypatch, dash_lake, "patient.py", {"run": RUN, "patient": "x' or 1=1 --"})
    assert at.selectbox(key="patient-id").value != "x' or 1=1 --"
