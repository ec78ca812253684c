"""Every page of the dashboard under Streamlit's AppTest, on a small real lake: no exception, and
the numbers shown equal the lake's own rows, read here independently with plain SQL; the site
filter changes what is shown; an unknown or filtered-out patient is said to be so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboards import common, names
from gbmmet import constants as C
from gbmmet.pseudonym import pseudonymise
from storage import catalog
from storage.lake import Lake
from storage.queries import format_estimate
from tests.dashboards.conftest import BROKEN, RUN, unevaluated_copy

DAGGER, SECTION = "\u2020", "\u00a7"  # percentile stood in for BCa; the paper's subsampling
NAMES = {"test": "internal test", "external": "external", "val": "validation", "train": "training"}
VAL_CUT, PAPER_CUT = "model, validation cutoff", "model, paper cutoff (chosen on the internal test)"

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


def tables(at: AppTest) -> list[pd.DataFrame]:
    """Every table on the page: static ones (st.table) and scrolling ones (st.dataframe)."""
    return [t.value for t in at.table] + [d.value for d in at.dataframe]


def frame(at: AppTest, column: str) -> pd.DataFrame:
    """The one table on the page with this column."""
    found = [df for df in tables(at) if column in df.columns]
    assert len(found) == 1, [list(df.columns) for df in tables(at)]
    return found[0]


def set_sites(at: AppTest, sites: list[str]) -> None:
    at.sidebar.multiselect(key=common.SITES_KEY).set_value(sites).run()
    assert not at.exception, [e.value for e in at.exception]


def set_cohorts(at: AppTest, cohorts: list[str]) -> None:
    at.sidebar.multiselect(key=common.COHORTS_KEY).set_value(cohorts).run()
    assert not at.exception, [e.value for e in at.exception]


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
    parts += [df.to_csv() for df in tables(at)]
    return "\n".join(str(p) for p in parts)


def specs(at: AppTest) -> list[tuple[dict, dict[str, pd.DataFrame]]]:
    """Per chart on the page, its Vega-Lite spec and its datasets by name."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    return [(json.loads(c.proto.spec), {d.name: convert_arrow_bytes_to_pandas_df(d.data.data) for d in c.proto.datasets})
            for c in at.get("vega_lite_chart")]


def views(spec: dict) -> list[dict]:
    """Every single view of a spec (through layers, concatenations and facets)."""
    out, todo = [], [spec]
    while todo:
        s = todo.pop()
        todo += [*s.get("layer", []), *s.get("concat", []), *s.get("hconcat", []), *s.get("vconcat", [])]
        todo += [s["spec"]] if "spec" in s else []
        out += [s] if "mark" in s else []
    return out


def test_overview_counts_failures_and_run_record(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "overview.py")
    assert at.title[0].value == "Overview"
    n_patients = int(sql(dash_lake, "select count(*) n from patients").n[0])
    n_slices = int(sql(dash_lake, "select count(*) n from slices").n[0])  # the slices themselves
    assert metric_value(at, "Patients") == str(n_patients)
    assert metric_value(at, "ROI slices") == str(n_slices)
    assert metric_value(at, "Sites") == "2"
    assert metric_value(at, "Preprocessing failures") == "1"
    counts = frame(at, "patients GBM")
    want = sql(dash_lake, "select site, split, label, count(*) n from patients group by all")
    for r in want.itertuples():
        got = counts[(counts.site == r.site) & (counts.cohort == NAMES[r.split])][f"patients {r.label}"]
        assert got.tolist() == [r.n]
    # the one cohort order, training last
    assert counts.cohort.drop_duplicates().tolist() == ["internal test", "external", "validation", "training"]
    failures = frame(at, "what failed")
    secret = Lake(dash_lake).secret()
    assert failures.patient.tolist() == [pseudonymise(secret, "siteA", BROKEN)]
    assert failures["what failed"].tolist() == ["unreadable image"]
    assert "damaged_t1c.nii.gz" in failures.reason[0]
    record = dict(frame(at, "field").values.tolist())
    train = sql(dash_lake, "select * from runs where run_id = ? and kind = 'train'", RUN).iloc[0]
    assert record["run"] == RUN and record["backbone"] == train.backbone_id and record["mode"] == train["mode"]
    assert record["weights sha256"].replace(" ", "") == train.weights_sha256 and record["folds"] == "3"
    cut = sql(dash_lake, "select cutoff_kind, max(cutoff) c from patient_predictions where run_id = ? group by 1", RUN)
    for r in cut.itertuples():
        assert record[names.cutoff_name(r.cutoff_kind)] == f"{r.c:.3f}"
    assert "validation cutoff" in record and "paper cutoff (chosen on the internal test)" in record
    assert BROKEN not in texts(at)  # the raw id never shows; only its pseudonym
    assert {b.label for b in at.get("download_button")} == {"Download CSV", "Download PNG"}


def test_overview_shows_the_lake_versions_training_and_evaluation_read(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "overview.py")
    shown = frame(at, "training read").set_index("table")
    for kind, column in (("train", "training read"), ("evaluate", "evaluation read")):
        recorded = json.loads(sql(dash_lake, "select lake_versions from runs where run_id = ? and kind = ?",
                                  RUN, kind).lake_versions[0])
        assert {t: shown.loc[t, column] for t in recorded} == {
            t: "not yet written" if v is None else str(v) for t, v in recorded.items()}
    assert shown.loc[C.TABLE_PATIENTS, "training read"] != "not yet written"


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
                assert row[names.metric_name(r.metric)].tolist() == [
                    cell(r.value, r.ci_low, r.ci_high, r.ci_method, r.ci_choice)], (r, row)
                assert row.n.tolist() == [r.n] and row.GBM.tolist() == [r.n_gbm]
                checked += 1
            assert checked == len(table) * len(C.HEADLINE_METRICS)
            notes = [c.value for c in at.caption]
            # the paper's subsampling is marked and its coverage note shown, exactly as the report prints it
            assert (subsample_note() in notes) == (ci == C.CI_SUBSAMPLE)
            assert (SECTION in table.to_csv()) == (ci == C.CI_SUBSAMPLE)
            # clinical names only, in the one cohort order, the model at the validation cutoff first
            assert {"sensitivity", "specificity", "PPV"} <= set(table.columns)
            assert not {"recall", "precision"} & set(table.columns)
            assert table.cohort.drop_duplicates().tolist() == ["internal test", "external"]
            assert table.rater.tolist()[:2] == [VAL_CUT, PAPER_CUT]


def test_model_vs_readers_differences_equal_the_lakes_rows(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "readers.py")
    want = sql(dash_lake, "select * from differences where run_id = ? and cohort in ('test', 'external')", RUN)
    shown = frame(at, "a - b (95% CI)")
    tested = frame(at, "what the test counted")
    assert len(shown) == len(tested) == len(want) > 0
    assert set(want.kind) == {"model_vs_reader", "assisted_vs_unassisted"}
    assert want.is_primary.sum() == len(set(want.cohort))  # one primary comparison per cohort
    labels = {"model@" + C.CUTOFF_PAPER: PAPER_CUT, "model@" + C.CUTOFF_VAL: VAL_CUT, "model": "model (predictive index)"}
    tests = {"mcnemar": "McNemar", "delong": "DeLong"}
    cis = {"newcombe": "Newcombe", "delong": "DeLong"}
    for r in want.itertuples():
        a = labels.get(r.a, r.a.replace("+assisted", " + model"))
        comparison = ("\u2605 " if r.is_primary else "") + f"{a} - {r.b}"
        pick = (shown.cohort == NAMES[r.cohort]) & (shown.comparison == comparison) & (
            shown.metric == names.metric_name(r.metric))
        assert pick.sum() == 1, r
        row = shown[pick].iloc[0]
        assert row["a - b (95% CI)"] == format_estimate(r.diff, r.ci_low, r.ci_high)
        assert row.p == pval(r.p) and row["Holm p"] == pval(r.p_holm)
        assert row.n == r.n and row["a vs b"] == f"{format_estimate(r.estimate_a)} vs {format_estimate(r.estimate_b)}"
        how = tested[pick.to_numpy()].iloc[0]
        assert how.test == tests.get(r.test, r.test) and how.CI == cis.get(r.ci_method, r.ci_method)
        assert how["what the test counted"] == names.readable_note(r.note) and r.note  # shown, not hidden
        assert "@" not in how["what the test counted"] and "+assisted" not in how["what the test counted"]
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
        return {C.CUTOFF_PAPER: PAPER_CUT, C.CUTOFF_VAL: VAL_CUT}[cutoff_kind]
    return rater + (" + model" if assisted is True else "")


def test_site_filter_changes_the_metrics_shown(dash_lake, monkeypatch):
    """A cohort is one site here: leaving out siteB hides the external cohort's rows with a note
    and a button that shows them again; the per-site rows (Wilson CIs, from per-patient rows)
    appear and equal counts taken from the lake."""
    at = open_app(monkeypatch, dash_lake, "readers.py")
    assert set(frame(at, "F1").cohort) == {"internal test", "external"}
    assert not [df for df in tables(at) if "NPV" in df.columns]  # no filter: no per-site rows
    set_sites(at, ["siteA"])
    assert set(frame(at, "F1").cohort) == {"internal test"}
    assert any("external cohort (siteB) is not shown" in i.value and "site filter" in i.value for i in at.info)
    per_site = frame(at, "NPV")
    assert set(zip(per_site.cohort, per_site.site, strict=True)) == {("internal test", "siteA")}
    pp = sql(dash_lake, """select label, call from patient_predictions where run_id = ? and split = 'test'
                           and site = 'siteA' and cutoff_kind = ?""", RUN, C.CUTOFF_VAL)
    gbm = pp[pp.label == C.GBM]
    sens = format_estimate(*wilson_triple((gbm.call == C.GBM).sum(), len(gbm)))
    assert per_site.loc[per_site.rater == VAL_CUT, "sensitivity"].tolist() == [sens]
    assert per_site.loc[per_site.rater == VAL_CUT, "n"].tolist() == [len(pp)]
    assert any("Wilson" in c.value for c in at.caption)
    at.button(key="show-sites-external").click().run()  # "Show siteB"
    assert not at.exception
    assert at.sidebar.multiselect(key=common.SITES_KEY).value == ["siteA", "siteB"]
    assert set(frame(at, "F1").cohort) == {"internal test", "external"}

    at = open_app(monkeypatch, dash_lake, "roc.py")  # computed from per-patient rows: the filter applies
    set_sites(at, ["siteB"])
    assert [m.label for m in at.metric] == ["AUC, external"]
    assert any("internal test cohort (siteA) is not shown" in i.value for i in at.info)


def wilson_triple(k, m):
    from gbmmet.stats import wilson_interval

    return (k / m, *wilson_interval(k, m))


def test_calibration_draws_the_lakes_curves_and_summary(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "calibration.py")
    points = sql(dash_lake, "select * from calibration where run_id = ? and curve <> ?", RUN, C.CURVE_RISK_COVERAGE)
    assert set(points.cohort) == {"test", "external"} and set(points.curve) == {"reliability", "decision"}
    summary = sql(dash_lake, """select cohort, metric, value from metrics where run_id = ? and rater = 'model'
                                and metric in ('brier', 'calibration_intercept', 'calibration_slope')""", RUN)
    labels = {"brier": "Brier score", "calibration_intercept": "Calibration intercept",
              "calibration_slope": "Calibration slope"}
    assert len(summary) == 6
    table = frame(at, "Brier score").set_index("cohort")
    assert table.index.tolist() == ["internal test", "external"]
    for r in summary.itertuples():
        text = "" if r.value != r.value else f"{r.value:.3f}".replace("-0.000", "0.000")
        assert table.loc[NAMES[r.cohort], labels[r.metric]] == text
    reliability, decision, histogram = chart_data(at)
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
    # the score's distribution: patients per cohort, diagnosis and tenth of the index, as the lake has them
    pp = sql(dash_lake, """select split, label, predictive_index from patient_predictions where run_id = ?
                           and cutoff_kind = ? and split in ('test', 'external')""", RUN, C.CUTOFF_VAL)
    pp["start"] = np.minimum(np.floor(pp.predictive_index * 10 + 1e-9), 9) / 10
    want = pp.groupby([pp.split.map(NAMES), "label", "start"]).size()
    got = histogram.groupby(["cohort", "label", "start"])["patients"].sum()
    assert got.to_dict() == pytest.approx(want.to_dict())

    set_cohorts(at, [C.VAL])  # P(GBM) was fitted there: nothing to judge; its index is still shown
    assert len(at.get("vega_lite_chart")) == 1
    assert any("fitted on these patients" in c.value for c in at.caption)


def test_roc_auc_and_operating_points_equal_the_lakes_metrics(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "roc.py")
    ops = frame(at, "sensitivity")
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
        got = ops[ops.cohort == name].set_index("rater")
        assert sorted(got.index) == sorted(want.index) and len(want) == 6  # 2 cutoffs, 2 readers alone and assisted
        for label, r in want.iterrows():  # "0.750 (0.301 to 0.954)": the estimate and its Wilson interval
            assert got.loc[label, "sensitivity"].split(" ")[0] == f"{r.recall:.3f}", label
            assert got.loc[label, "specificity"].split(" ")[0] == f"{r.specificity:.3f}", label
            assert got.loc[label, "sensitivity"].count(" to ") == 1
    assert any("Wilson" in c.value for c in at.caption)
    # the curve: straight segments through the ROC points in order, the area under it is the AUC shown
    (spec, data), = specs(at)
    curves = [v for v in views(spec) if v["mark"].get("type") == "line" and "order" in v["encoding"]]
    assert len(curves) == 2  # one per cohort
    for cohort, curve in zip(("test", "external"), curves, strict=True):
        assert curve["mark"]["interpolate"] == "linear" and curve["encoding"]["order"]["field"] == "step"
        pts = data[curve["data"]["name"]].sort_values("step")
        area = float(np.sum(np.diff(pts.fpr) * (pts.tpr.to_numpy()[1:] + pts.tpr.to_numpy()[:-1]) / 2))
        assert f"{area:.3f}" == metric_value(at, f"AUC, {NAMES[cohort]}")
    bars = [v["encoding"] for v in views(spec) if v["mark"].get("type") == "rule" and "x2" in v["encoding"]]
    assert bars and all(e["x"]["field"] == "fpr_low" and e["x2"]["field"] == "fpr_high" for e in bars)


def test_subgroups_show_every_subgroup_of_the_lake(dash_lake, monkeypatch):
    from pipelines.report import subsample_note

    at = open_app(monkeypatch, dash_lake, "subgroups.py")
    assert at.selectbox(key="sub-ci").value == C.CI_BCA  # the default
    for metric, ci, method in (("auc", C.CI_BCA, "delong"), ("specificity", C.CI_BCA, C.CI_BCA),
                               ("accuracy", C.CI_SUBSAMPLE, C.CI_SUBSAMPLE)):
        at.selectbox(key="sub-metric").set_value(metric)
        at.selectbox(key="sub-ci").set_value(ci).run()
        assert not at.exception
        table = frame(at, names.metric_name(metric))
        want = sql(dash_lake, """select cohort, subgroup, value, ci_low, ci_high, ci_method, ci_choice, n from metrics
                                 where run_id = ? and cohort in ('test', 'external') and rater = 'model'
                                 and cutoff_kind = ? and metric = ? and ci_choice = ?""",
                   RUN, C.CUTOFF_VAL, metric, method)
        model = table[table.rater == VAL_CUT]
        assert len(model) == len(want) > 2  # all and location subgroups (and, for specificity, primaries)
        # a primary's subgroup holds its METs only: specificity alone
        assert any(want.subgroup.str.startswith("primary=")) == (metric == "specificity")
        for r in want.itertuples():
            label = {"all": "all patients", "location=supra": "supratentorial", "location=infra": "infratentorial"}.get(
                r.subgroup, "METs from " + {"gi": "gastrointestinal", "gu": "genitourinary"}.get(
                    r.subgroup.removeprefix("primary="), r.subgroup.removeprefix("primary=")) + " primary")
            row = model[(model.cohort == NAMES[r.cohort]) & (model.subgroup == label)]
            assert row[names.metric_name(metric)].tolist() == [cell(r.value, r.ci_low, r.ci_high, r.ci_method,
                                                                    r.ci_choice)]
            assert row.n.tolist() == [r.n]
        assert (subsample_note() in [c.value for c in at.caption]) == (ci == C.CI_SUBSAMPLE)
        assert "location:" not in table.to_csv()

    # validation: its infratentorial patients are METs only, its supratentorial GBMs only: no AUC, and a note says so
    set_cohorts(at, [C.VAL])
    at.selectbox(key="sub-metric").set_value("auc").run()
    assert any("DeLong's is computed for the internal test and external" in i.value for i in at.info)
    at.toggle(key="sub-auc-delong").set_value(False).run()
    by_loc = sql(dash_lake, """select location, count(*) n, count(*) filter (where label = 'GBM') g from patients
                               where split = 'val' group by 1""").set_index("location")
    notes = [c.value for c in at.caption if c.value.startswith("Not shown")]
    n, g = by_loc.loc["infra", "n"], by_loc.loc["infra", "g"]
    assert f"Not shown: infratentorial, validation ({n} patient{'s' if n != 1 else ''}, {g} GBM): only METs: AUC needs " \
           "both diagnoses." in notes
    assert any(n.startswith("Not shown: supratentorial, validation") for n in notes)


def test_patient_viewer_shows_the_patients_own_rows(dash_lake, monkeypatch):
    pp = sql(dash_lake, """select patient_id, label, predictive_index, prob_gbm, cutoff_kind, cutoff, call, n_slices
                           from patient_predictions
                           where run_id = ? and split = 'test' order by patient_id""", RUN)
    pid = pp.patient_id.iloc[-1]
    at = open_app(monkeypatch, dash_lake, "patient.py", {"run": RUN, "patient": pid})
    row = pp[pp.patient_id == pid]
    label = row.label.iloc[0]
    assert metric_value(at, "Diagnosis") == label
    assert metric_value(at, "Predictive index") == f"{row.predictive_index.iloc[0]:.3f}"
    assert metric_value(at, "P(GBM)") == f"{row.prob_gbm.iloc[0]:.3f}"
    n_slices = int(sql(dash_lake, "select count(*) n from slices where patient_id = ?", pid).n[0])
    assert metric_value(at, "ROI slices") == str(n_slices) == str(row.n_slices.iloc[0])
    images = at.image
    assert len(images) == 1 and len(images[0].value) == 3  # CE-T1 + ROI, T2, Grad-CAM
    alts = [img.alt for img in images[0].proto.imgs]
    assert len(alts) == 3 and all(pid in a for a in alts) and "Grad-CAM" in alts[2]  # alt text for screen readers
    probs = frame(at, "mean of the folds")
    sp = sql(dash_lake, "select slice_index, model, prob_gbm from slice_predictions where run_id = ? and patient_id = ?",
             RUN, pid)
    assert len(probs) == n_slices
    column = {"ensemble_mean": "mean of the folds", "ensemble_vote": "share of folds voting GBM"}
    for r in sp.itertuples():
        got = probs.loc[probs.slice == r.slice_index, column.get(r.model, r.model)].iloc[0]
        assert float(got) == pytest.approx(r.prob_gbm, abs=5e-5)
    # every call on the patient: the model at both cutoffs, then the readers; right or wrong in colour and in words
    calls = frame(at, "result")
    want = sql(dash_lake, """select reader_id, assisted, call from reads where patient_id = ?
                             and (coalesce(source, '') not like 'simulated:%' or source = ?) order by 1, 2""",
               pid, "simulated:" + RUN)
    model = [(VAL_CUT, row[row.cutoff_kind == C.CUTOFF_VAL]), (PAPER_CUT, row[row.cutoff_kind == C.CUTOFF_PAPER])]
    assert calls.rater.tolist() == [m for m, _ in model] + [r + (" + model" if a else "") for r, a in
                                                             zip(want.reader_id, want.assisted, strict=True)]
    assert calls.call.tolist() == [r.call.iloc[0] for _, r in model] + want.call.tolist()
    for call, result in zip(calls.call, calls.result, strict=True):
        assert result == (":blue-background[✓ right]" if call == label else ":orange-background[✗ wrong]")
    cut = row[row.cutoff_kind == C.CUTOFF_VAL].cutoff.iloc[0]
    assert calls.how.iloc[0] == f"index {row.predictive_index.iloc[0]:.3f} >= cutoff {cut:.3f}"
    # the index against both cutoffs, named
    index_chart = [d for d in chart_data(at) if "kind" in d.columns]
    assert sorted(index_chart[0].kind.dropna()) == sorted([PAPER_CUT.removeprefix("model, "),
                                                           VAL_CUT.removeprefix("model, ")])
    assert "location: " not in " ".join(c.value for c in at.caption)

    # a validation patient: no class activation maps are stored for val, and the page says so
    val = sql(dash_lake, "select patient_id from patient_predictions where run_id = ? and split = 'val' limit 1", RUN)
    set_cohorts(at, [C.VAL])
    at.selectbox(key="patient-id").set_value(val.patient_id[0]).run()
    assert not at.exception
    assert len(at.image[0].value) == 2
    assert any("No class activation map" in c.value for c in at.caption)


def test_patient_viewer_says_where_a_patient_it_cannot_show_is(dash_lake, monkeypatch):
    ext = sql(dash_lake, """select patient_id, site from patient_predictions where run_id = ? and split = 'external'
                            order by patient_id limit 1""", RUN).iloc[0]
    # the sidebar shows the internal test only: the external patient is named, never replaced by another
    monkeypatch.setenv("GBMMET_LAKE", str(dash_lake))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update({"run": RUN, "patient": ext.patient_id})
    at.session_state[common.COHORTS_KEY] = [C.TEST]
    at.run()
    at.switch_page("views/patient.py").run()
    assert not at.exception
    warning = " ".join(w.value for w in at.warning)
    assert f"Patient `{ext.patient_id}` is in the external cohort (site {ext.site}), which the sidebar filters out" \
           in warning
    assert at.selectbox(key="patient-id").value is None and not at.image  # no other patient shown
    assert at.query_params["patient"] == [ext.patient_id] or at.query_params["patient"] == ext.patient_id
    at.button(key="show-patient").click().run()  # "Show it"
    assert not at.exception and not [w for w in at.warning if "Patient `" in w.value]  # (Trust's line may warn)
    assert C.EXTERNAL in at.sidebar.multiselect(key=common.COHORTS_KEY).value
    assert at.selectbox(key="patient-id").value == ext.patient_id and len(at.image) == 1

    # a training patient: in the lake, never evaluated
    train = sql(dash_lake, "select patient_id from patients where split = 'train' limit 1").patient_id[0]
    at = open_app(monkeypatch, dash_lake, "patient.py", {"run": RUN, "patient": train})
    assert any(f"Patient `{train}` (training cohort" in w.value and "trained on it" in w.value for w in at.warning)
    assert at.selectbox(key="patient-id").value is None
    # an id that is nowhere
    at = open_app(monkeypatch, dash_lake, "patient.py", {"run": RUN, "patient": "p-nobody"})
    assert any("There is no patient `p-nobody` in this lake" in w.value for w in at.warning)
    assert at.selectbox(key="patient-id").value is None and not at.image


def test_training_curves_and_fold_sizes_equal_the_lake(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "training.py")
    last = sql(dash_lake, """select fold, val_acc from train_history where run_id = ?
                             qualify epoch = max(epoch) over (partition by fold) order by fold""", RUN)
    for r in last.itertuples():
        assert metric_value(at, f"Fold {r.fold}: held-out accuracy") == f"{r.val_acc:.3f}"
    sizes = frame(at, "patients GBM")
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
    at = open_app(monkeypatch, untrained, "overview.py")
    assert metric_value(at, "Patients") != "0"
    assert any("no finished training run" in i.value for i in at.info)
    for page in PAGES[1:]:
        at = open_app(monkeypatch, untrained, page)
        assert any("no finished training run" in i.value for i in at.info), page

    unevaluated = unevaluated_copy(dash_lake, tmp_path / "unevaluated")  # trained, never evaluated
    for page in ("readers.py", "roc.py", "calibration.py", "subgroups.py", "patient.py"):
        at = open_app(monkeypatch, unevaluated, page)
        assert any("has no evaluation yet" in i.value and "gbmmet evaluate" in i.value for i in at.info), page
    assert open_app(monkeypatch, unevaluated, "training.py").metric  # training needs no evaluation

    for page in PAGES[1:]:
        at = open_app(monkeypatch, dash_lake, page, {"run": "no-such-run"})
        assert any("no finished training run `no-such-run`" in e.value and f"`{RUN}`" in e.value for e in at.error), page

    # a patient id that is SQL, from the address bar: a parameter like any other, never SQL
    at = open_app(monkeypatch, dash_lake, "patient.py", {"run": RUN, "patient": "x' or 1=1 --"})
    assert at.selectbox(key="patient-id").value is None
    assert any("There is no patient `x' or 1=1 --`" in w.value for w in at.warning)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_has_the_glossary_and_the_one_cohort_order(dash_lake, monkeypatch, page):
    at = open_app(monkeypatch, dash_lake, page)
    glossary = [e for e in at.sidebar.expander if e.label == "Glossary"]
    assert len(glossary) == 1
    text = " ".join(m.value for m in glossary[0].markdown)
    for term in ("Predictive index", "Validation cutoff", "Paper cutoff (chosen on the internal test)",
                 "Bootstrap BCa (default)", "Paper's 90 % subsampling", "DeLong", "Holm", "Newcombe", "Wilson",
                 "Calibration", "Net benefit", "PPV, NPV"):
        assert f"**{term}" in text, term
    cohorts = at.sidebar.multiselect(key=common.COHORTS_KEY)
    assert list(cohorts.options) == ["internal test", "external", "validation"]
    set_cohorts(at, [C.VAL, C.EXTERNAL, C.TEST])  # chosen in another order: shown in the one order
    if page == "patient.py":
        return
    for df in tables(at):
        if "cohort" in df.columns:
            shown = [c for c in df.cohort.drop_duplicates() if c]
            assert shown == names.in_cohort_order(shown), (page, list(df.columns), shown)
    labels = [m.label for m in at.metric if m.label.startswith("AUC, ")]
    assert labels == sorted(labels, key=lambda m: names.cohort_rank(m.removeprefix("AUC, ")))
    for spec, _ in specs(at):
        for facet in [v for v in (spec.get("facet", {}).get("column"), spec.get("facet")) if isinstance(v, dict)]:
            if facet.get("field") == "cohort" and isinstance(facet.get("sort"), list):
                assert facet["sort"] == names.in_cohort_order(facet["sort"]), page


def test_the_tab_icon_is_drawn_here_not_fetched():
    """A Material icon as the page's icon makes the browser fetch the tab's icon from Google's font
    server (st.navigation sets it from the page, so the app's own icon is set after it); the browser
    test records every request and fails on any to another host."""
    text = APP.read_text()
    assert "page_icon=common.page_icon()" in text and text.index("st.navigation(") < text.rindex("st.set_page_config(")


def test_subgroups_keep_their_raters_after_a_visit_to_another_page(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "subgroups.py")
    assert "Choose at least one rater" not in texts(at)
    at.switch_page("views/overview.py").run()
    at.switch_page("views/subgroups.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Choose at least one rater" not in texts(at) and at.multiselect(key="sub-raters").value
