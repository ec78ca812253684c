"""The dashboard's parts on their own: charts and their PNGs, slice pictures, the CLI's checks."""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pandas as pd
import pytest

from dashboards import charts, compute, names
from gbmmet import constants as C
from gbmmet import render
from gbmmet.stats import auc_score, delong_roc_variance, wilson_interval
from pipelines.cli import main
from pipelines.dashboard import streamlit_command

PNG = b"\x89PNG\r\n\x1a\n"


def _data(chart) -> list[dict]:
    spec = json.loads(chart.to_json())
    return [row for rows in spec.get("datasets", {}).values() for row in rows]


def test_charts_render_to_png_and_carry_the_numbers_given():
    long = pd.DataFrame({"who": ["model", "model", "reader1", "reader1"], "cohort": ["test", "external"] * 2,
                         "metric": ["auc"] * 4, "value": [0.8, 0.7, 0.9, 0.85], "ci_low": [0.6, 0.5, 0.8, None],
                         "ci_high": [0.95, 0.9, 1.0, None], "n": [30] * 4})
    forest = charts.forest(long, y="who", color="cohort", column="metric", title="t")
    rows = _data(forest)
    assert sorted(r["value"] for r in rows) == [0.7, 0.8, 0.85, 0.9]
    assert {r["ci"] for r in rows} >= {"0.800 (0.600 to 0.950)", "0.850"}  # no interval: the value alone
    curve = charts.roc_points([1, 0, 1, 0, 1], [0.9, 0.5, 0.5, 0.1, 1.0])
    points = compute.operating_points(
        pd.DataFrame({"cohort": "test", "site": "A", "patient_id": list("abcd"), "label": ["GBM", "MET"] * 2,
                      "call_val": ["GBM", "GBM", "MET", "MET"], "call_paper": ["GBM"] * 4}),
        pd.DataFrame({"reader": "reader1", "patient_id": list("abcd"), "assisted": False,
                      "call": ["GBM", "MET", "GBM", "MET"]}))
    history = pd.DataFrame({"fold": [0, 0, 1, 1], "epoch": [0, 1, 0, 1], "train_loss": [0.7, 0.5, 0.69, 0.4],
                            "train_acc": [0.5, 0.7, 0.5, 0.8], "val_loss": [0.7, 0.6, 0.7, 0.65],
                            "val_acc": [0.5, 0.6, 0.5, 0.6], "attempt": [0, 0, 0, 0]})
    counts = pd.DataFrame({"site": ["A", "A"], "split": ["test", "test"], "label": ["GBM", "MET"],
                           "patients": [3, 2], "slices": [30, 20]})
    probs = pd.DataFrame({"slice_index": [1, 1, 2, 2], "model": ["fold0", "ensemble_mean"] * 2,
                          "prob_gbm": [0.2, 0.3, 0.8, 0.7], "vote": ["MET", None, "GBM", None]})
    diffs = pd.DataFrame({"comparison": ["model - reader1", "model - reader1", "reader1 + model - reader1"],
                          "metric": ["accuracy", "AUC", "accuracy"], "cohort": ["internal test"] * 3,
                          "diff": [-0.1, 0.05, 0.0], "ci_low": [-0.3, -0.1, None], "ci_high": [0.1, 0.2, None],
                          "primary": ["yes", "no", "no"], "p_holm": ["0.400", "1.000", ""]})
    rel = pd.DataFrame({"cohort": ["test"] * 3, "x": [0.2, 0.5, 0.8], "y": [0.1, 0.5, 0.9], "n": [5, 3, 6]})
    dec = pd.DataFrame({"cohort": ["test"] * 3, "x": [0.1, 0.5, 0.9], "y": [0.4, 0.2, 0.01],
                        "treat_all": [0.44, 0.0, -4.0], "treat_none": [0.0] * 3})
    built = [forest, charts.roc_panels([charts.roc(curve, points, "internal test")]),
             charts.training_curves(history), charts.counts_bar(counts),
             charts.fold_bar(counts.rename(columns={"site": "fold"}).assign(fold=[0, 1])),
             charts.slice_probs(probs), charts.index_vs_cutoffs(0.6, {"a": 0.5, "b": 0.7}),
             charts.difference_forest(diffs, title="d"), charts.panels([charts.reliability(rel, "internal test")]),
             charts.panels([charts.decision_curve(dec, "internal test")]),
             charts.index_histogram(pd.DataFrame({"cohort": ["internal test"] * 3 + ["external"], "label": ["GBM", "MET", "GBM", "MET"],
                                                  "predictive_index": [1.0, 0.1, 0.95, 0.0]}), {"val_youden_ensemble": 0.5})]
    for chart in built:
        png = charts.png(charts.style(chart))
        assert png[:8] == PNG and len(png) > 5_000
    rows = _data(built[7])
    assert sorted(r["diff"] for r in rows) == [-0.1, 0.0, 0.05]
    assert {r["ci"] for r in rows} == {"-0.100 (-0.300 to 0.100)", "0.050 (-0.100 to 0.200)", "0.000"}
    spec = json.loads(built[7].to_json())
    assert {"datum": 0} in [{k: v for k, v in layer["encoding"]["x"].items() if k == "datum"}
                            for layer in spec["spec"]["layer"]]  # the line at zero
    rows = _data(built[8])
    assert sorted((r["x"], r["y"], r.get("n")) for r in rows) == [(0, 0, None), (0.2, 0.1, 5), (0.5, 0.5, 3),
                                                                 (0.8, 0.9, 6), (1, 1, None)]  # bins and the diagonal
    rows = _data(built[9])
    assert len(rows) == 3 * 3  # model, treat all, treat none at each threshold
    assert [r["net_benefit"] for r in rows if r["strategy"] == "treat all as GBM"] == [0.44, 0.0, -4.0]
    assert [r["net_benefit"] for r in rows if r["strategy"] == "model"] == [0.4, 0.2, 0.01]
    rows = _data(built[2])
    assert len(rows) == 4 * 4  # (loss, accuracy) x (training, held-out) per epoch and fold
    assert {(r["metric"], r["part"], r["value"]) for r in rows if r["fold"] == "1" and r["epoch"] == 1} == {
        ("loss", "training", 0.4), ("loss", "held-out", 0.65), ("accuracy", "training", 0.8),
        ("accuracy", "held-out", 0.6)}


def _layers(chart) -> list[dict]:
    """Every single view of a chart's spec (through layers, concatenations and facets)."""
    out, todo = [], [json.loads(chart.to_json())]
    while todo:
        spec = todo.pop()
        kids = [*spec.get("layer", []), *spec.get("concat", []), *spec.get("hconcat", []), *spec.get("vconcat", [])]
        if "spec" in spec:
            kids.append(spec["spec"])
        if "mark" in spec:
            out.append(spec)
        todo += kids
    return out


def _rows(chart, view: dict) -> list[dict]:
    return json.loads(chart.to_json())["datasets"][view["data"]["name"]]


@pytest.mark.parametrize("seed", range(6))
def test_roc_drawn_area_is_the_stated_auc_with_many_ties(seed):
    """Tied indices make one diagonal segment: the area under the line as drawn (trapezoids over
    the chart's own points, in their drawing order) is the Mann-Whitney AUC (ties count one half)
    and DeLong's AUC, to 1e-9. As on the demo: most external patients share the index 1.0."""
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc_curve

    rng = np.random.default_rng(seed)
    y = rng.permutation(np.r_[np.ones(15, int), np.zeros(15, int)])
    score = np.where(rng.random(30) < 0.7, 1.0, np.round(rng.random(30), 1))  # ~21 of 30 at 1.0, the rest tenths
    score[y == 0] = np.where(rng.random((y == 0).sum()) < 0.5, score[y == 0], np.round(rng.random((y == 0).sum()), 1))
    assert len(np.unique(score)) < len(score) / 2  # many ties
    points = charts.roc_points(y, score)
    fpr, tpr, _ = sk_roc_curve(y, score, drop_intermediate=False)
    assert points["fpr"].tolist() == pytest.approx(fpr.tolist()) and points["tpr"].tolist() == pytest.approx(tpr.tolist())
    ops = compute.operating_points(
        pd.DataFrame({"cohort": "test", "site": "A", "patient_id": [str(i) for i in range(30)],
                      "label": np.where(y == 1, C.GBM, C.MET), "call_val": np.where(score >= 0.5, C.GBM, C.MET),
                      "call_paper": np.where(score >= 1.0, C.GBM, C.MET)}),
        pd.DataFrame(columns=["reader", "patient_id", "assisted", "call"]))
    chart = charts.roc(points, ops, "t")
    lines = [v for v in _layers(chart) if isinstance(v["mark"], dict) and v["mark"]["type"] == "line"
             and v["encoding"]["x"]["field"] == "fpr" and "order" in v["encoding"]]
    assert len(lines) == 1  # the curve (not the chance diagonal)
    line = lines[0]
    assert line["mark"]["interpolate"] == "linear" and line["encoding"]["order"]["field"] == "step"
    drawn = sorted(_rows(chart, line), key=lambda r: r["step"])
    x, yy = np.array([r["fpr"] for r in drawn]), np.array([r["tpr"] for r in drawn])
    area = float(np.sum(np.diff(x) * (yy[1:] + yy[:-1]) / 2))
    assert (x[0], yy[0], x[-1], yy[-1]) == (0, 0, 1, 1)
    assert area == pytest.approx(auc_score(y, score), abs=1e-9)
    assert area == pytest.approx(delong_roc_variance(y, score).auc, abs=1e-9)
    assert area == pytest.approx(roc_auc_score(y, score), abs=1e-9)
    assert charts.drawn_area(points) == pytest.approx(area, abs=1e-12)


def test_operating_points_carry_wilson_intervals_drawn_as_error_bars():
    from statsmodels.stats.proportion import proportion_confint

    pats = pd.DataFrame({"cohort": "test", "site": "A", "patient_id": list("abcdefg"),
                         "label": ["GBM"] * 4 + ["MET"] * 3, "call_val": ["GBM", "GBM", "GBM", "MET", "GBM", "MET", "MET"],
                         "call_paper": ["GBM"] * 7})
    reads = pd.DataFrame({"reader": ["r1"] * 7 + ["r1"] * 2, "patient_id": list("abcdefg") + ["a", "e"],
                          "assisted": [False] * 7 + [True] * 2, "call": ["GBM"] * 5 + ["MET"] * 2 + ["GBM", "MET"]})
    ops = compute.operating_points(pats, reads).set_index("who")
    assert list(ops.index) == [names.model_name(C.CUTOFF_VAL), names.model_name(C.CUTOFF_PAPER), "r1", "r1 + model"]
    val = ops.loc[names.model_name(C.CUTOFF_VAL)]
    assert (val.tp, val.fn, val.tn, val.fp) == (3, 1, 2, 1)
    assert (val.tpr_low, val.tpr_high) == pytest.approx(proportion_confint(3, 4, method="wilson"))
    spec_low, spec_high = proportion_confint(2, 3, method="wilson")
    assert (val.fpr_low, val.fpr_high) == pytest.approx((1 - spec_high, 1 - spec_low))
    assert val.sensitivity_ci == f"0.750 ({val.tpr_low:.3f} to {val.tpr_high:.3f})"
    assert ops.loc[names.model_name(C.CUTOFF_PAPER)].specificity == 0  # every patient called GBM
    assert ops.loc["r1 + model"].n == 2
    chart = charts.roc(charts.roc_points([1, 0], [0.9, 0.1]), ops.reset_index(), "t")
    rules = [v["encoding"] for v in _layers(chart) if v["mark"] == {"type": "rule", "strokeWidth": 1.5}]
    assert {(e["x"]["field"], e["x2"]["field"]) for e in rules if "x2" in e} == {("fpr_low", "fpr_high")}
    assert {(e["y"]["field"], e["y2"]["field"]) for e in rules if "y2" in e} == {("tpr_low", "tpr_high")}
    # a reader who read one diagnosis only has no point on the ROC plane
    one = compute.operating_points(pats, reads[reads.patient_id.isin(["a", "b"])])
    assert "r1" not in set(one.who)


def test_site_rows_and_missing_subgroups():
    pats = pd.DataFrame({"cohort": ["external", "test", "test", "test", "test"], "site": ["B", "A", "A", "C", "C"],
                         "patient_id": list("vwxyz"), "label": ["GBM", "GBM", "MET", "GBM", "MET"],
                         "call_val": ["GBM", "GBM", "GBM", "MET", "MET"], "call_paper": ["GBM"] * 5})
    rows = compute.site_rows(pats, pd.DataFrame(columns=["reader", "patient_id", "assisted", "call"]))
    assert list(dict.fromkeys(zip(rows.cohort, rows.site, strict=True))) == [("test", "A"), ("test", "C"), ("external", "B")]
    a = rows[(rows.site == "A") & (rows.who == names.model_name(C.CUTOFF_VAL))].iloc[0]
    assert (a.n, a.n_gbm, a.sensitivity, a.specificity, a.PPV) == (2, 1, 1.0, 0.0, 0.5)
    assert math.isnan(a.NPV)  # no patient called MET
    assert (a.sensitivity_low, a.sensitivity_high) == pytest.approx(wilson_interval(1, 1))

    info = pats.assign(location=["supra", "supra", "infra", "supra", "infra"], primary_tumor=["", "", "lung", "", "gi"])
    shown = pd.DataFrame({"cohort": ["test", "test", "external"], "subgroup": ["all", "location=supra", "all"]})
    miss = compute.missing_subgroups(info, shown, "auc")
    assert miss[["cohort", "subgroup", "n", "n_gbm"]].values.tolist() == [["test", "location=infra", 2, 0],
                                                                          ["external", "location=supra", 1, 1]]
    assert miss.why.tolist() == ["only METs: AUC needs both diagnoses", "only GBMs: AUC needs both diagnoses"]
    assert set(compute.missing_subgroups(info, shown, "specificity").subgroup) == {
        "location=infra", "location=supra", "primary=lung", "primary=gi"}


def test_names_are_clinical_and_the_cohort_order_is_one():
    assert names.COHORT_ORDER == (C.TEST, C.EXTERNAL, C.VAL)
    assert [names.cohort_name(c) for c in names.COHORT_ORDER] == ["internal test", "external", "validation"]
    assert names.in_cohort_order(["validation", "external", "internal test"]) == ["internal test", "external", "validation"]
    df = pd.DataFrame({"cohort": [C.VAL, C.TRAIN, C.EXTERNAL, C.TEST, C.EXTERNAL], "k": range(5)})
    assert names.by_cohort(df).k.tolist() == [3, 2, 4, 0, 1]
    assert [names.metric_name(m) for m in ("recall", "precision", "npv", "specificity", "recall_itd")] == [
        "sensitivity", "PPV", "NPV", "specificity", "sensitivity (ITD)"]
    assert [names.ci_name(m) for m in (C.CI_BCA, C.CI_SUBSAMPLE, C.CI_DELONG, C.CI_PERCENTILE)] == [
        "bootstrap BCa (default)", "paper's 90 % subsampling \u00a7", "DeLong", "bootstrap percentile"]
    assert names.model_name(C.CUTOFF_VAL) == "model, validation cutoff"
    assert names.model_name(C.CUTOFF_PAPER) == "model, paper cutoff (chosen on the internal test)"
    assert names.difference_name("model@paper_youden_internal_test") == "model, paper cutoff (chosen on the internal test)"
    assert names.difference_name("reader1+assisted") == "reader1 + model"
    assert names.difference_name("model") == "model (predictive index)"
    assert names.readable_note("discordant: 0 right only by model@val_youden_ensemble, 1 right only by "
                               "reader2+assisted") == ("discordant: 0 right only by model, validation cutoff, 1 right "
                                                       "only by reader2 + model")
    assert [names.subgroup_name(s) for s in ("all", "location=supra", "location=infra", "primary=gi")] == [
        "all patients", "supratentorial", "infratentorial", "METs from gastrointestinal primary"]
    terms = " ".join(t for t, _ in names.GLOSSARY)
    for word in ("Predictive index", "Validation cutoff", "Paper cutoff", "Bootstrap BCa", "subsampling", "DeLong",
                 "Holm", "Newcombe", "Wilson", "Calibration", "Net benefit"):
        assert word in terms


def _luminance(hex_colour: str) -> float:
    rgb = [int(hex_colour.lstrip("#")[k:k + 2], 16) / 255 for k in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_chart_text_contrast_size_and_palette():
    styled = json.loads(charts.style(charts.counts_bar(pd.DataFrame(
        {"site": ["A"], "split": ["test"], "label": ["GBM"], "patients": [3], "slices": [30]}))).to_json())
    config = styled["config"]
    for part in ("axis", "legend", "header"):
        colour = config[part]["labelColor"]
        assert (1.05) / (_luminance(colour) + 0.05) >= 4.5, (part, colour)  # WCAG AA against white
        assert config[part]["labelFontSize"] >= 12 and config[part]["titleColor"] == colour
    assert config["axis"]["titleFontSize"] >= 12 and config["title"]["fontSize"] >= 12
    assert styled["autosize"]["type"] == "pad"  # the given size is the plot's; axes and legend come on top
    okabe_ito = {"#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"}
    assert set(charts.PALETTE) == okabe_ito and set(charts.COHORT_COLOURS.values()) <= okabe_ito
    assert set(json.loads(charts.LABEL_COLOURS.to_json())["range"]) <= okabe_ito
    rows = charts.index_histogram_rows(pd.DataFrame({"cohort": "x", "label": ["GBM", "GBM", "MET", "MET"],
                                                     "predictive_index": [1.0, 0.1, 0.0, 0.95]}))
    assert sorted(zip(rows.label, rows.start, rows.end, rows.patients, strict=True)) == [
        ("GBM", 0.1, 0.2, 1), ("GBM", 0.9, 1.0, 1), ("MET", 0.0, 0.1, 1), ("MET", 0.9, 1.0, 1)]


def test_roi_rectangle_in_the_crop_by_hand():
    # a 20 x 10 voxel box: its long side (columns) spans the 224-pixel crop, the short one is centred
    assert render.roi_rect(10, 29, 0, 9, 224) == (0, 56, 223, 167)
    assert render.roi_rect(0, 9, 5, 44, 224) == (84, 0, 139, 223)  # 10 wide, 40 high
    img = render.draw_rect(np.zeros((8, 8, 3), np.uint8), (1, 2, 6, 5), colour=(255, 0, 0), width=1)
    red = img[..., 0] == 255
    assert red[2, 1:7].all() and red[5, 1:7].all() and red[2:6, 1].all() and red[2:6, 6].all()
    assert red.sum() == 2 * 6 + 2 * 2 and not red[3:5, 2:6].any()  # the outline only


def test_overlay_of_a_stored_map_is_at_the_slice_size():
    image = np.full((2, 224, 224), 100, np.uint8)
    cam = np.zeros((112, 112), np.uint8)
    cam[:56] = 255  # the top half lit
    rgb = render.overlay(image, render.resize_map(cam, 224, 224))
    assert rgb.shape == (224, 224, 3)
    assert rgb[10, 10, 0] > rgb[200, 10, 0] and (rgb[200, 10] == 100).all()  # untouched where the map is 0


def test_dashboard_command_checks_before_serving(tmp_path, capsys):
    cmd = streamlit_command("some/lake")
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"  # this machine only, unless told
    assert cmd[cmd.index("--server.headless") + 1] == "true" and cmd[-2:] == ["--lake", "some/lake"]
    assert streamlit_command("l", host="0.0.0.0", port=9000, run="r")[-4:] == ["--lake", "l", "--run", "r"]

    assert main(["dashboard", "--lake", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "no lake at" in err and "nowhere" in err and "gbmmet run --preset demo" in err
    (tmp_path / "lake").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["dashboard", "--lake", str(tmp_path / "lake"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}" in err and "--port" in err
    assert main(["dashboard", "--lake", str(tmp_path / "lake"), "--port", "70000"]) == 2


def test_difference_labels_and_p_values():
    from storage.queries import difference_label, format_p

    assert difference_label("model@val_youden_ensemble") == "model, validation cutoff"
    assert difference_label("model@paper_youden_internal_test") == "model, paper cutoff*"
    assert difference_label("reader1+assisted") == "reader1 + model"
    assert difference_label("reader1") == "reader1"
    assert [format_p(p) for p in (0.0004, 0.0123, 1.0, None, float("nan"))] == ["<0.001", "0.012", "1.000", "", ""]


def test_subsample_note_is_the_reports():
    from dashboards.common import estimate_cell, subsample_note
    from gbmmet import constants as C
    from gbmmet.stats import SUBSAMPLE_COVERAGE_NOTE
    from pipelines.report import subsample_note as report_note

    assert subsample_note() == report_note() and SUBSAMPLE_COVERAGE_NOTE in subsample_note()
    assert estimate_cell(0.8, 0.7, 0.9, C.CI_SUBSAMPLE, C.CI_SUBSAMPLE) == "0.800 (0.700 to 0.900)\u00a7"
    assert estimate_cell(0.8, 0.7, 0.9, C.CI_PERCENTILE, C.CI_BCA) == "0.800 (0.700 to 0.900)\u2020"
    assert estimate_cell(0.8, 0.7, 0.9, C.CI_BCA, C.CI_BCA) == "0.800 (0.700 to 0.900)"
    assert estimate_cell(None, None, None, C.CI_SUBSAMPLE, C.CI_SUBSAMPLE) == ""


@pytest.mark.parametrize("value,low,high,text", [(0.8, 0.6, 0.95, "0.800 (0.600 to 0.950)"),
                                                 (-0.1, -0.3, 0.05, "-0.100 (-0.300 to 0.050)"),
                                                 (0.8, None, None, "0.800"), (None, None, None, ""),
                                                 (float("nan"), 0.1, 0.2, "")])
def test_format_estimate(value, low, high, text):
    from storage.queries import format_estimate

    assert format_estimate(value, low, high) == text
