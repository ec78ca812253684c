"""When not to trust a call, in the dashboard: the plain-language line and the tables on small
dicts and frames (``dashboards.trust``), the risk-coverage chart, and under AppTest on the small
real lake, the Trust page and the patient viewer's trust section against the lake's own rows; a
lake without the trust columns says "not computed for this run"."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboards import charts, names
from dashboards import trust as T
from gbmmet import constants as C
from storage.queries import format_estimate
from tests.dashboards.conftest import RUN
from tests.dashboards.test_app import chart_data, frame, open_app, sql, tables, texts

SET90, SET95 = C.set_column(0.90), C.set_column(0.95)
DASH = "\u2014"


def row(**kw) -> dict:
    """A patient's trust values, nothing computed unless given."""
    return {k: kw.get(k) for k in T.PATIENT_COLUMNS} | {k: v for k, v in kw.items() if k not in T.PATIENT_COLUMNS}


# -- the patient's line -------------------------------------------------------------------------
def test_a_two_label_set_says_not_sure_and_defers():
    kind, line = T.patient_line(row(set_90="GBM|MET", ood=False, ood_score=0.4, ood_threshold=1.2))
    assert (kind, line) == (T.DEFER, f"Not sure: the 90 % set holds both GBM and MET {DASH} defer to the readers.")


def test_an_ood_patient_is_deferred_with_its_distance_and_threshold():
    kind, line = T.patient_line(row(set_90="MET", ood=True, ood_score=1.8, ood_threshold=1.2))
    assert kind == T.DEFER
    assert line == f"Outside what the model was trained on (distance 1.8 > threshold 1.2) {DASH} defer to the readers."


def test_ood_and_two_labels_give_both_reasons():
    _, line = T.patient_line(row(set_90="GBM|MET", ood=True, ood_score=2.0, ood_threshold=1.0))
    assert line.startswith("Outside what the model was trained on (distance 2 > threshold 1); and not sure: "
                           "the 90 % set holds both GBM and MET")


def test_an_empty_set_defers():
    kind, line = T.patient_line(row(set_90="", ood=False))
    assert kind == T.DEFER and "the set is empty" in line and line.endswith("defer to the readers.")


def test_one_label_inside_the_training_data_is_kept():
    assert T.patient_line(row(set_90="MET", ood=False, call_val="MET")) == (T.ONE_LABEL, "One label at 90 %: MET.")


def test_one_label_that_disagrees_with_the_call_says_so():
    kind, line = T.patient_line(row(set_90="MET", ood=False, call_val="GBM"))
    assert kind == T.DISAGREES and line.startswith("One label at 90 %: MET (but the call at the validation cutoff is GBM")


def test_the_line_reads_the_level_it_is_given():
    _, line = T.patient_line(row(set_90="MET", set_95="GBM|MET", ood=False), level=0.95)
    assert "the 95 % set holds both GBM and MET" in line


@pytest.mark.parametrize("null", [None, math.nan, pd.NA])
def test_nulls_of_an_older_lake_say_not_computed(null):
    kind, line = T.patient_line(row(**{k: null for k in T.PATIENT_COLUMNS}))
    assert kind == T.UNKNOWN and line.startswith("Not computed for this run")
    assert T.patient_line({})[0] == T.UNKNOWN  # no row at all


def test_a_set_without_a_distance_keeps_the_call_and_says_the_distance_is_missing():
    kind, line = T.patient_line(row(set_90="GBM", ood=None))
    assert kind == T.ONE_LABEL and line == "One label at 90 %: GBM; distance to the training data not computed for this run."


def test_a_distance_without_a_set_is_not_called_trusted():
    kind, line = T.patient_line(row(ood=False, ood_score=0.3, ood_threshold=1.0))
    assert kind == T.UNKNOWN and "conformal set is not computed" in line


def test_sets_are_written_as_sets():
    assert [T.set_text(s) for s in ("GBM|MET", "MET", "", None, math.nan)] == [
        "{GBM, MET}", "{MET}", "{} (empty)", T.NOT_COMPUTED, T.NOT_COMPUTED]


def test_uncertainty_figures_split_the_entropy_and_say_what_is_missing():
    fig = T.uncertainty_figures(row(index_fold_sd=0.125, entropy_total=0.75, entropy_aleatoric=0.5,
                                    mutual_information=0.25, ood_score=1.8, ood_threshold=1.2, ood=True))
    assert fig == {"fold spread": "0.125", "entropy": "0.750",
                   "entropy split": "0.500 aleatoric (the slices are ambiguous) + 0.250 epistemic (the folds disagree)",
                   "distance": "1.8 (threshold 1.2)", "training data": "outside what the model was trained on",
                   "sequence contrast": T.NOT_COMPUTED}
    empty = T.uncertainty_figures(row())
    assert empty["fold spread"] == empty["entropy"] == empty["distance"] == T.NOT_COMPUTED
    assert empty["entropy split"] == ""


# -- the cohort tables ----------------------------------------------------------------------------
def metric_rows(cohort: str, values: dict[str, tuple], n: int = 20) -> pd.DataFrame:
    return pd.DataFrame([{"cohort": cohort, "metric": m, "value": v[0], "ci_low": v[1], "ci_high": v[2], "n": n}
                         for m, v in values.items()])


def test_the_metric_names_are_those_evaluation_writes():
    from gbmmet.conformal import coverage_rows
    from gbmmet.selective import deferral

    y = np.array([1, 1, 0, 0])
    written = {r["metric"] for lv in C.CONFORMAL_LEVELS for r in coverage_rows(["GBM", "GBM|MET", "MET", ""], y, lv)}
    written |= {r["metric"] for r in deferral(np.array([1, 0, 0, 1]), y, ["GBM", "GBM|MET", "MET", ""]).rows()}
    assert written == set(T.trust_metric_names())


def test_conformal_table_has_a_row_per_cohort_and_level_with_wilson_cells():
    m = metric_rows(C.TEST, {"conformal_coverage_90": (0.9, 0.7, 0.97), "conformal_two_label_90": (0.25, 0.1, 0.47),
                             "conformal_coverage_95": (1.0, 0.84, 1.0)})
    t = T.conformal_table(m, (C.TEST, C.EXTERNAL))
    p90, p95 = f"90{T.NBSP}%", f"95{T.NBSP}%"
    assert t[["cohort", "level"]].values.tolist() == [["internal test", p90], ["internal test", p95],
                                                      ["external", p90], ["external", p95]]
    first = t.iloc[0]
    assert first["coverage"] == "0.900 (0.700 to 0.970)" and first["two-label sets"] == "0.250 (0.100 to 0.470)"
    assert first["coverage of GBMs"] == T.NOT_COMPUTED and first["patients"] == "20"
    assert t.iloc[1]["coverage"] == "1.000 (0.840 to 1.000)"
    assert set(t.iloc[2][list(T.CONFORMAL_PARTS.values())]) == {T.NOT_COMPUTED} and t.iloc[2]["patients"] == ""


def test_a_rate_with_no_patients_says_undefined():
    m = metric_rows(C.EXTERNAL, {"conformal_coverage_gbm_90": (None, None, None)})
    assert T.conformal_table(m, (C.EXTERNAL,)).iloc[0]["coverage of GBMs"] == "undefined (no patients)"


def test_deferral_table_gives_share_accuracies_and_patients_kept():
    m = metric_rows(C.EXTERNAL, {"deferred_share": (0.25, 0.1, 0.5), "accuracy_kept": (0.8, 0.6, 0.9),
                                 "accuracy_all": (0.7, 0.5, 0.85)}, n=12)
    t = T.deferral_table(m, (C.EXTERNAL,))
    assert t.iloc[0].to_dict() == {"cohort": "external", "deferred": "0.250 (0.100 to 0.500)",
                                   "accuracy of the calls kept": "0.800 (0.600 to 0.900)",
                                   "accuracy of all calls": "0.700 (0.500 to 0.850)", "kept": "9 of 12"}
    assert T.deferral_table(m.iloc[:0], (C.TEST,)).iloc[0]["kept"] == T.NOT_COMPUTED
    every = metric_rows(C.TEST, {"deferred_share": (1.0, 0.5, 1.0), "accuracy_kept": (None, None, None)}, n=4)
    assert T.deferral_table(every, (C.TEST,)).iloc[0][["accuracy of the calls kept", "kept"]].tolist() == [
        "none: every call deferred", "0 of 4"]


def test_operating_points_are_where_the_rule_lands():
    m = pd.concat([metric_rows(C.EXTERNAL, {"deferred_share": (0.25, 0, 1), "accuracy_kept": (0.8, 0, 1)}),
                   metric_rows(C.TEST, {"deferred_share": (0.5, 0, 1), "accuracy_kept": (1.0, 0, 1)}),
                   metric_rows(C.VAL, {"deferred_share": (1.0, 0, 1), "accuracy_kept": (None, None, None)})])
    assert T.operating_points(m).values.tolist() == [[C.TEST, 0.5, 1.0], [C.EXTERNAL, 0.75, 0.8]]


def test_deferred_patients_lists_only_those_deferred():
    trust = pd.DataFrame({"cohort": [C.TEST, C.TEST, C.EXTERNAL], "site": ["A", "A", "B"], "patient_id": ["p", "q", "r"],
                          "label": ["GBM", "MET", "MET"], SET90: ["GBM|MET", "MET", "MET"], "deferred": [True, False, True],
                          "defer_reason": ["two labels", None, "ood"]})
    out = T.deferred_patients(trust)
    assert out["patient"].tolist() == ["p", "r"] and out["why"].tolist() == ["two labels", "ood"]
    assert out["set at 90 %"].tolist() == ["{GBM, MET}", "{MET}"] and out["cohort"].tolist() == ["internal test", "external"]


def test_risk_coverage_chart_draws_every_point_and_the_rule():
    curve = pd.DataFrame({"cohort": [C.TEST] * 3 + [C.EXTERNAL] * 2, "x": [0.2, 0.6, 1.0, 0.5, 1.0],
                          "y": [1.0, 0.9, 0.8, 0.7, 0.6], "n": [2, 6, 10, 4, 8]})
    rule = pd.DataFrame({"cohort": [C.TEST], "x": [0.6], "y": [0.9]})
    chart = charts.risk_coverage(curve, rule)
    rows = [r for rs in json.loads(chart.to_json())["datasets"].values() for r in rs]
    assert sorted((r["cohort"], r["x"], r["y"]) for r in rows if "n" in r) == sorted(
        zip(curve["cohort"].map(names.cohort_name), curve["x"], curve["y"], strict=True))
    assert [(r["cohort"], r["x"], r["y"]) for r in rows if "n" not in r] == [("internal test", 0.6, 0.9)]
    assert charts.png(charts.style(chart))[:8] == b"\x89PNG\r\n\x1a\n"


# -- the pages, on the small real lake -------------------------------------------------------------
def test_trust_page_draws_the_lakes_curve_and_tables(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "trust.py")
    set_all = [C.TEST, C.EXTERNAL, C.VAL]
    at.sidebar.multiselect(key="sidebar-cohorts").set_value(set_all).run()
    assert not at.exception, [e.value for e in at.exception]
    curve = sql(dash_lake, "select cohort, x, y, n from calibration where run_id = ? and curve = ?", RUN,
                C.CURVE_RISK_COVERAGE)
    assert len(curve) and set(curve.cohort) >= {C.TEST, C.EXTERNAL}
    drawn = pd.concat(chart_data(at))
    drawn = drawn[drawn["n"].notna()] if "n" in drawn else drawn
    got = sorted(zip(drawn["cohort"], drawn["x"].round(9), drawn["y"].round(9), strict=True))
    assert got == sorted(zip(curve.cohort.map(names.cohort_name), curve.x.round(9), curve.y.round(9), strict=True))
    stored = sql(dash_lake, """select cohort, metric, value, ci_low, ci_high, n from metrics where run_id = ?
                               and rater = 'model' and subgroup = 'all' and ci_method = ?""", RUN, C.CI_WILSON)
    table = frame(at, "coverage of GBMs")
    for r in stored[stored.metric.isin([T.conformal_metric(p, lv) for p in T.CONFORMAL_PARTS
                                        for lv in C.CONFORMAL_LEVELS])].itertuples():
        part = next(p for p in T.CONFORMAL_PARTS if r.metric in {T.conformal_metric(p, lv) for lv in C.CONFORMAL_LEVELS})
        level = f"{r.metric.rsplit('_', 1)[1]}{T.NBSP}%"
        cell = table[(table.cohort == names.cohort_name(r.cohort)) & (table.level == level)][T.CONFORMAL_PARTS[part]]
        assert cell.tolist() == [format_estimate(r.value, r.ci_low, r.ci_high) or "undefined (no patients)"], r
    deferral = frame(at, "accuracy of the calls kept")
    share = stored[stored.metric == "deferred_share"].set_index("cohort")
    for cohort, r in share.iterrows():
        got = deferral[deferral.cohort == names.cohort_name(cohort)]
        assert got["deferred"].tolist() == [format_estimate(r.value, r.ci_low, r.ci_high)]
    text = texts(at)
    assert "an external site" in text and "exchangeable" in text


def test_trust_page_lists_the_deferred_patients_of_the_chosen_sites(dash_lake, monkeypatch):
    at = open_app(monkeypatch, dash_lake, "trust.py")
    at.sidebar.multiselect(key="sidebar-sites").set_value(["siteB"]).run()
    want = sql(dash_lake, """select patient_id from patient_predictions where run_id = ? and cutoff_kind = ?
                             and deferred and site = 'siteB' and split in ('test', 'external') order by 1""",
               RUN, C.CUTOFF_VAL)
    shown = [df for df in tables(at) if "why" in df.columns]
    assert (sorted(shown[0]["patient"]) if shown else []) == want.patient_id.tolist()
    assert f"{len(want)} of " in texts(at)


def test_patient_viewer_says_whether_to_trust_the_call(dash_lake, monkeypatch):
    pp = sql(dash_lake, f"""select patient_id, {SET90}, {SET95}, ood, ood_score, ood_threshold, deferred, call
                            from patient_predictions where run_id = ? and cutoff_kind = ? and split = 'test'
                            order by deferred desc, patient_id""", RUN, C.CUTOFF_VAL)
    for _, r in pp.drop_duplicates("deferred").iterrows():  # one deferred and one kept, where the lake has both
        at = open_app(monkeypatch, dash_lake, "patient.py", {"run": RUN, "patient": r.patient_id})
        kind, line = T.patient_line(r.to_dict() | {"call_val": r.call})
        boxes = {T.DEFER: at.warning, T.ONE_LABEL: at.success, T.DISAGREES: at.info, T.UNKNOWN: at.info}[kind]
        assert line in [b.value for b in boxes]
        assert (kind == T.DEFER) == bool(r.deferred)  # the line agrees with the lake's deferral
        sets = {m.label: m.value for m in at.metric if m.label.startswith("Set at")}
        assert sets == {"Set at 90 %": T.set_text(r[SET90]), "Set at 95 %": T.set_text(r[SET95])}
        assert "distance to the training data" in texts(at)


def test_a_viewer_limited_to_a_site_sees_only_whole_cohorts_of_it(dash_lake, monkeypatch):
    from tests.dashboards.test_access import SITE_B, open_as, signed_in

    at = open_as(monkeypatch, dash_lake, signed_in(SITE_B), "trust.py")
    at.sidebar.multiselect(key="sidebar-cohorts").set_value([C.TEST, C.EXTERNAL, C.VAL]).run()
    assert not at.exception, [e.value for e in at.exception]
    for df in tables(at):
        assert set(df["cohort"]) == {"external"}, list(df.columns)  # internal test and validation are siteA's
    assert set(frame(at, "why")["site"]) == {"siteB"}
    assert {c for d in chart_data(at) for c in d["cohort"]} == {"external"}


@pytest.fixture(scope="module")
def untrusted_lake(dash_lake, tmp_path_factory):
    """The dash lake as a run evaluated before the trust columns: nulls there, no trust rows."""
    import shutil

    import pyarrow as pa

    from storage import catalog
    from storage.lake import Lake

    dest = tmp_path_factory.mktemp("untrusted") / "lake"
    shutil.copytree(dash_lake, dest, ignore=shutil.ignore_patterns("catalog.duckdb"))
    lake = Lake(dest)
    pp = lake.read(C.TABLE_PATIENT_PREDICTIONS)
    for col in T.PATIENT_COLUMNS:
        pp = pp.set_column(pp.schema.get_field_index(col), col, pa.nulls(len(pp), pp.schema.field(col).type))
    lake.replace(C.TABLE_PATIENT_PREDICTIONS, pp, {"run_id": RUN})
    lake.delete(C.TABLE_METRICS, {"run_id": RUN, "metric": list(T.trust_metric_names())})
    lake.delete(C.TABLE_CALIBRATION, {"run_id": RUN, "curve": C.CURVE_RISK_COVERAGE})
    catalog.refresh(lake)
    return dest


def test_a_lake_without_trust_columns_says_not_computed(untrusted_lake, monkeypatch):
    at = open_app(monkeypatch, untrusted_lake, "trust.py")
    assert any(T.NOT_COMPUTED in i.value and "gbmmet evaluate" in i.value for i in at.info)
    assert not at.get("vega_lite_chart")
    pid = sql(untrusted_lake, "select patient_id from patient_predictions where split = 'test' limit 1").patient_id[0]
    at = open_app(monkeypatch, untrusted_lake, "patient.py", {"run": RUN, "patient": pid})
    assert any(i.value.startswith("Not computed for this run") for i in at.info)
    assert not [m for m in at.metric if m.label.startswith("Set at")]


def test_trust_and_patient_pages_in_headless_chromium(dash_lake):
    """The Trust page and a deferred patient's trust section in a real browser at 1280 px: nothing
    cut off, text dark enough; screenshots ``trust.png`` and ``patient-trust.png`` (look at them)."""
    from dashboards.headless import CHROMIUM, browser, served
    from tests.dashboards.test_browser import SHOTS, WIDTH, _expect, check_page, goto, main

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}")
    SHOTS.mkdir(parents=True, exist_ok=True)
    expect = _expect()
    pid = sql(dash_lake, """select patient_id from patient_predictions where run_id = ? and split = 'test'
                            order by deferred desc, patient_id limit 1""", RUN).patient_id[0]
    with served(dash_lake, run=RUN) as url, browser(width=WIDTH, height=900) as page:
        goto(page, f"{url}/trust?run={RUN}", "Trust", charts=1)
        expect(main(page).get_by_text("coverage of GBMs")).to_be_visible()
        check_page(page, "trust")
        goto(page, f"{url}/patient?run={RUN}&patient={pid}", "Patient viewer", charts=2, images=1)
        expect(main(page).get_by_text("Trust this call?")).to_be_visible()
        check_page(page, "patient-trust")


def test_uncertainty_figures_show_the_distance_part_and_a_negative_contrast_as_swapped():
    fig = T.uncertainty_figures(row(ood_score=2.0, ood_threshold=1.2, ood=True, ood_distance=0.9,
                                    sequence_contrast=-40.0))
    assert fig["distance"] == "0.9 (threshold 1.2)"
    assert fig["training data"] == "inside what the model was trained on"  # only the contrast flagged it
    assert fig["sequence contrast"] == "-40 (CE-T1 brighter than T2: check the sequences are not swapped)"
    assert T.uncertainty_figures(row(sequence_contrast=55.0))["sequence contrast"] == (
        "55 (T2 brighter than CE-T1, as expected)")


def test_a_patient_flagged_for_its_sequences_is_told_so():
    kind, line = T.patient_line(row(set_90="GBM", ood=True, ood_score=2.0, ood_threshold=1.2, ood_distance=0.9,
                                    sequence_contrast=-40.0))
    assert kind == T.DEFER
    assert "swapped or mislabelled" in line and "distance" not in line
