"""The dashboard's charts: Altair (Vega-Lite) specs built from plain frames, and their PNGs.

The same spec is drawn interactively in the page (``st.altair_chart``) and rendered to PNG on the
server by vl-convert (a wheel with its own renderer: no browser, no network) for the download
button, so the file is the chart the user sees. Functions take frames and return charts; no
Streamlit here, so they are tested on their own.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from gbmmet import constants as C
from storage.queries import format_estimate

LABEL_COLOURS = alt.Scale(domain=list(C.LABELS), range=["#d62728", "#1f77b4"])
WIDTH = 220
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


def png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    """The chart as PNG bytes (vl-convert; the same Vega-Lite spec the page draws)."""
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=scale)


def counts_bar(counts: pd.DataFrame) -> alt.Chart:
    """Patients per site and split, stacked by label (``dashboards.data.counts``). Horizontal: in
    Streamlit a chart's height includes its axis labels, which rotated names would eat."""
    df = counts.assign(group=counts["site"] + " / " + counts["split"])
    groups = list(dict.fromkeys(df["group"]))
    return alt.Chart(df, title="Patients per site and split").mark_bar().encode(
        y=alt.Y("group:N", title=None, sort=groups),
        x=alt.X("patients:Q", title="patients"),
        color=alt.Color("label:N", scale=LABEL_COLOURS, title="diagnosis"),
        tooltip=["site", "split", "label", "patients", "slices"],
    ).properties(width=420, height=alt.Step(30))


def forest(df: pd.DataFrame, *, y: str, color: str, column: str, title: str,
           column_order: list[str] | None = None, color_title: str | None = None) -> alt.FacetChart:
    """Point estimates with 95 % CI bars: one row per ``y``, dodged by ``color``, one panel per
    ``column`` (in ``column_order``, else as they come). ``df`` has ``value``, ``ci_low``,
    ``ci_high`` and the three named columns."""
    df = df.assign(ci=[format_estimate(v, lo, hi) for v, lo, hi in zip(df["value"], df["ci_low"], df["ci_high"], strict=True)])
    order = list(dict.fromkeys(df[y]))
    base = alt.Chart().encode(
        y=alt.Y(f"{y}:N", sort=order, title=None, axis=alt.Axis(labelLimit=260)),
        yOffset=alt.YOffset(f"{color}:N"),
        color=alt.Color(f"{color}:N", title=color_title or color, sort=list(dict.fromkeys(df[color])),
                        scale=alt.Scale(range=PALETTE), legend=alt.Legend(orient="top")),
        tooltip=[y, color, column, alt.Tooltip("ci:N", title="estimate (95% CI)"), "n"]
        if "n" in df else [y, color, column, alt.Tooltip("ci:N", title="estimate (95% CI)")],
    )
    bars = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("ci_low:Q", scale=alt.Scale(domain=[0, 1]), title=None), x2="ci_high:Q")
    points = base.mark_point(filled=True, size=45).encode(x=alt.X("value:Q", scale=alt.Scale(domain=[0, 1])))
    columns = [c for c in (column_order or []) if c in set(df[column])] or list(dict.fromkeys(df[column]))
    return alt.layer(bars, points, data=df).properties(width=WIDTH - 70).facet(
        column=alt.Column(f"{column}:N", title=None, sort=columns)
    ).properties(title=title)


def difference_forest(df: pd.DataFrame, *, title: str, column_order: list[str] | None = None) -> alt.FacetChart:
    """Paired differences a - b with their 95 % CI bars and a line at zero: one row per
    ``comparison``, dodged by ``metric``, one panel per ``cohort`` (in ``column_order``). ``df`` has
    ``comparison``, ``metric``, ``cohort``, ``diff``, ``ci_low``, ``ci_high``, ``primary`` (yes / no)
    and ``p_holm`` (text)."""
    df = df.assign(ci=[format_estimate(v, lo, hi) for v, lo, hi in zip(df["diff"], df["ci_low"], df["ci_high"], strict=True)])
    x_scale = alt.Scale(domain=[-1, 1])
    base = alt.Chart().encode(
        y=alt.Y("comparison:N", sort=list(dict.fromkeys(df["comparison"])), title=None, axis=alt.Axis(labelLimit=320)),
        yOffset=alt.YOffset("metric:N", sort=list(dict.fromkeys(df["metric"]))),
        color=alt.Color("metric:N", sort=list(dict.fromkeys(df["metric"])), scale=alt.Scale(range=PALETTE),
                        legend=alt.Legend(orient="top")),
        tooltip=["comparison", "metric", "cohort", alt.Tooltip("ci:N", title="a - b (95% CI)"),
                 alt.Tooltip("p_holm:N", title="Holm p"), "primary"],
    )
    zero = alt.Chart().mark_rule(color="#666", strokeDash=[4, 4]).encode(x=alt.datum(0, scale=x_scale))
    bars = base.mark_rule(strokeWidth=2).encode(x=alt.X("ci_low:Q", scale=x_scale, title="a - b"), x2="ci_high:Q")
    points = base.mark_point(filled=True, size=55).encode(
        x=alt.X("diff:Q", scale=x_scale),
        shape=alt.Shape("primary:N", title="primary comparison", scale=alt.Scale(domain=["yes", "no"],
                                                                                   range=["diamond", "circle"])))
    columns = [c for c in (column_order or []) if c in set(df["cohort"])] or list(dict.fromkeys(df["cohort"]))
    return alt.layer(zero, bars, points, data=df).properties(width=WIDTH + 60).facet(
        column=alt.Column("cohort:N", title=None, sort=columns)).properties(title=title)


def reliability(points: pd.DataFrame, title: str) -> alt.LayerChart:
    """The reliability curve (``points``: x = mean predicted P(GBM) of a bin, y = observed share of
    GBM, n = patients in the bin) against the diagonal of perfect calibration."""
    diag = alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]})).mark_line(
        strokeDash=[4, 4], color="#999").encode(x="x:Q", y="y:Q")
    tip = [alt.Tooltip("x:Q", title="mean P(GBM)", format=".3f"), alt.Tooltip("y:Q", title="observed GBM", format=".3f"),
           alt.Tooltip("n:Q", title="patients")]
    enc = {"x": alt.X("x:Q", title="predicted P(GBM), bin mean", scale=alt.Scale(domain=[0, 1])),
           "y": alt.Y("y:Q", title="observed share of GBM", scale=alt.Scale(domain=[0, 1]))}
    line = alt.Chart(points).mark_line(color="#333").encode(**enc)
    dots = alt.Chart(points).mark_point(filled=True, color="#1f77b4").encode(
        **enc, size=alt.Size("n:Q", title="patients in bin", scale=alt.Scale(range=[40, 400])), tooltip=tip)
    return alt.layer(diag, line, dots).properties(title=title, width=300, height=300)


DECISION_STRATEGIES = ["model", "treat all as GBM", "treat none"]


def decision_curve(points: pd.DataFrame, title: str) -> alt.LayerChart:
    """Net benefit against threshold probability (``points``: x threshold, y the model's net
    benefit, treat_all, treat_none) for the model, calling every patient GBM, and calling none.
    The axis stops a little below zero: treating all falls steeply at high thresholds."""
    cohort = {"cohort": points["cohort"]} if "cohort" in points else {}
    long = pd.concat([pd.DataFrame({**cohort, "threshold": points["x"], "strategy": name, "net_benefit": points[col]})
                      for name, col in zip(DECISION_STRATEGIES, ("y", "treat_all", "treat_none"), strict=True)],
                     ignore_index=True)
    top = float(pd.concat([points["y"], points["treat_all"]]).max())
    top = top + 0.05 if top == top else 1.0
    low = min(-0.05, float(points["y"].min()) - 0.02) if len(points) else -0.05
    low = max(low, -0.25)
    return alt.Chart(long).mark_line(clip=True, point=alt.OverlayMarkDef(size=20)).encode(
        x=alt.X("threshold:Q", title="threshold probability of GBM", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("net_benefit:Q", title="net benefit", scale=alt.Scale(domain=[low, top])),
        color=alt.Color("strategy:N", sort=DECISION_STRATEGIES, title=None,
                        scale=alt.Scale(domain=DECISION_STRATEGIES, range=["#1f77b4", "#d62728", "#7f7f7f"]),
                        legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=3)),
        strokeDash=alt.StrokeDash("strategy:N", sort=DECISION_STRATEGIES, title=None,
                                  scale=alt.Scale(domain=DECISION_STRATEGIES, range=[[1, 0], [6, 3], [2, 2]])),
        tooltip=["strategy", alt.Tooltip("threshold:Q", format=".2f"), alt.Tooltip("net_benefit:Q", format=".4f")],
    ).properties(title=title, width=300, height=300)


def panels(charts_: list[alt.TopLevelMixin]) -> alt.HConcatChart:
    """Charts side by side (one per cohort), one legend."""
    return alt.hconcat(*charts_).resolve_scale(color="shared", shape="shared", size="shared")


def roc_panels(panels: list[alt.LayerChart]) -> alt.HConcatChart:
    """ROC charts side by side (one per cohort), one legend."""
    return alt.hconcat(*panels).resolve_scale(color="shared", shape="shared")


def roc(curve: pd.DataFrame, points: pd.DataFrame, title: str) -> alt.LayerChart:
    """The model's ROC (``curve``: fpr, tpr, threshold) with operating points (``points``: fpr, tpr,
    who, kind: reader or cutoff) and the chance diagonal."""
    diag = alt.Chart(pd.DataFrame({"fpr": [0, 1], "tpr": [0, 1]})).mark_line(
        strokeDash=[4, 4], color="#999").encode(x="fpr:Q", y="tpr:Q")
    line = alt.Chart(curve).mark_line(interpolate="step-after", color="#333").encode(
        x=alt.X("fpr:Q", title="1 - specificity", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("tpr:Q", title="sensitivity (GBM)", scale=alt.Scale(domain=[0, 1])),
        tooltip=[alt.Tooltip("threshold:Q", format=".3f"), alt.Tooltip("fpr:Q", format=".3f"),
                 alt.Tooltip("tpr:Q", format=".3f")])
    marks = alt.Chart(points).mark_point(filled=True, size=110).encode(
        x="fpr:Q", y="tpr:Q",
        color=alt.Color("who:N", title="operating point", scale=alt.Scale(range=PALETTE)),
        shape=alt.Shape("kind:N", title=None, scale=alt.Scale(domain=["cutoff", "reader"],
                                                                range=["diamond", "circle"])),
        tooltip=["who", "kind", alt.Tooltip("fpr:Q", format=".3f"), alt.Tooltip("tpr:Q", format=".3f")])
    return alt.layer(diag, line, marks).properties(title=title, width=300, height=300)


def slice_probs(df: pd.DataFrame, cutoff_line: float = 0.5) -> alt.LayerChart:
    """P(GBM) per slice for each fold model and the soft ensemble (``data.patient_slice_probs``)."""
    folds = df[df["model"].str.startswith("fold")]
    ens = df[df["model"] == "ensemble_mean"]
    x = alt.X("slice_index:O", title="slice")
    y = alt.Y("prob_gbm:Q", title="P(GBM)", scale=alt.Scale(domain=[0, 1]))
    tip = ["model", "slice_index", alt.Tooltip("prob_gbm:Q", format=".3f")]
    lines = alt.Chart(folds).mark_line(point=True, opacity=0.6).encode(
        x=x, y=y, color=alt.Color("model:N", title="model"), tooltip=tip)
    mean = alt.Chart(ens).mark_line(color="black", strokeWidth=3).encode(x=x, y=y, tooltip=tip)
    rule = alt.Chart(pd.DataFrame({"p": [cutoff_line]})).mark_rule(strokeDash=[3, 3], color="#888").encode(y="p:Q")
    return alt.layer(lines, mean, rule).properties(
        title="P(GBM) per slice (black: mean of the folds; dashed: a fold's vote threshold)",
        width=560, height=220)


def index_vs_cutoffs(index: float, cutoffs: dict[str, float]) -> alt.LayerChart:
    """The patient's predictive index on [0, 1] against each cutoff."""
    cut = pd.DataFrame({"cutoff": list(cutoffs.values()), "kind": list(cutoffs)})
    rules = alt.Chart(cut).mark_rule(strokeWidth=2, strokeDash=[5, 3]).encode(
        x=alt.X("cutoff:Q", scale=alt.Scale(domain=[0, 1]), title="predictive index (share of slices called GBM)"),
        color=alt.Color("kind:N", title="cutoff", scale=alt.Scale(range=PALETTE)),
        tooltip=["kind", alt.Tooltip("cutoff:Q", format=".3f")])
    point = alt.Chart(pd.DataFrame({"index": [index]})).mark_point(filled=True, size=160, color="black").encode(
        x="index:Q", tooltip=[alt.Tooltip("index:Q", format=".3f")])
    return alt.layer(rules, point).properties(width=560, height=90)


def training_curves(history: pd.DataFrame) -> alt.FacetChart:
    """Loss and accuracy per epoch and fold, training (solid) and held-out (dashed)."""
    long = []
    for metric, tr, va in (("loss", "train_loss", "val_loss"), ("accuracy", "train_acc", "val_acc")):
        for part, col in (("training", tr), ("held-out", va)):
            long.append(pd.DataFrame({"fold": history["fold"].astype(str), "epoch": history["epoch"],
                                      "metric": metric, "part": part, "value": history[col]}))
    df = pd.concat(long, ignore_index=True)
    return alt.Chart(df).mark_line().encode(
        x=alt.X("epoch:Q"), y=alt.Y("value:Q", title=None),
        color=alt.Color("fold:N"), strokeDash=alt.StrokeDash("part:N", title=None, sort=["training", "held-out"]),
        tooltip=["fold", "epoch", "part", alt.Tooltip("value:Q", format=".4f")],
    ).properties(width=330, height=230).facet(column=alt.Column("metric:N", title=None, sort=["loss", "accuracy"])
                                              ).resolve_scale(y="independent")


def fold_bar(sizes: pd.DataFrame) -> alt.Chart:
    """Held-out patients per fold, stacked by label (``data.fold_sizes``)."""
    df = sizes.assign(fold="fold " + sizes["fold"].astype(str))
    folds = list(dict.fromkeys(df["fold"]))
    return alt.Chart(df, title="Patients per fold").mark_bar().encode(
        y=alt.Y("fold:N", title=None, sort=folds), x=alt.X("patients:Q"),
        color=alt.Color("label:N", scale=LABEL_COLOURS, title="diagnosis"),
        tooltip=["fold", "label", "patients", "slices"]).properties(width=420, height=alt.Step(30))
