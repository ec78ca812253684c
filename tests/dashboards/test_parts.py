"""The dashboard's parts on their own: charts and their PNGs, slice pictures, the CLI's checks."""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pytest

from dashboards import charts
from gbmmet import render
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
    curve = pd.DataFrame({"fpr": [0, 0, 0.5, 1], "tpr": [0, 0.5, 1, 1], "threshold": [np.nan, 0.9, 0.5, 0.1]})
    points = pd.DataFrame({"who": ["reader1"], "kind": ["reader"], "fpr": [0.2], "tpr": [0.9]})
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
             charts.panels([charts.decision_curve(dec, "internal test")])]
    for chart in built:
        png = charts.png(chart)
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
