"""The dashboard's charts: Altair (Vega-Lite) specs built from plain frames, and their PNGs.

The same spec is drawn interactively in the page (``st.altair_chart``) and rendered to PNG on the
server by vl-convert (a wheel with its own renderer: no browser, no network) for the download
button, so the file is the chart the user sees. Functions take frames and return charts; no
Streamlit here, so they are tested on their own.

Colours: one colour-blind-safe palette (Okabe & Ito), defined here once; text in ``INK`` at 12 px
or more (``style``), 12.6:1 against white. Sizes: every chart fits the main column of a 1280 px
wide window with the sidebar open (about 820 px), legends below the plot.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from dashboards import names
from gbmmet import constants as C
from storage.queries import format_estimate

# Okabe & Ito (2008), the colour-blind-safe qualitative palette; yellow last (weak on white).
OKABE_ITO = {"blue": "#0072B2", "orange": "#E69F00", "green": "#009E73", "purple": "#CC79A7",
             "vermillion": "#D55E00", "sky": "#56B4E9", "black": "#000000", "yellow": "#F0E442"}
PALETTE = list(OKABE_ITO.values())
LABEL_COLOURS = alt.Scale(domain=[C.GBM, C.MET], range=[OKABE_ITO["vermillion"], OKABE_ITO["blue"]])
COHORT_COLOURS = {C.TEST: OKABE_ITO["blue"], C.EXTERNAL: OKABE_ITO["orange"], C.VAL: OKABE_ITO["green"],
                  C.TRAIN: OKABE_ITO["purple"]}
INK = "#333333"  # text: 12.6:1 against white (WCAG AA asks 4.5:1)
GRID = "#dddddd"
FONT_SIZE = 12  # the smallest text in a chart
MAIN_WIDTH = 820  # the page's main column at 1280 px with the sidebar open
WIDTH = 220


def style(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    """The dashboard's text style on a top-level chart: dark text (``INK``), at least ``FONT_SIZE``
    px, labels never cut short. Streamlit's theme would draw axis labels grey and small; a chart's
    own config wins over it. Sizes are the plot's (autosize ``pad``): Streamlit would otherwise fit
    a single view's axes and legend into its height, squashing the plot."""
    text = {"labelColor": INK, "titleColor": INK, "labelFontSize": FONT_SIZE}
    chart = chart.properties(autosize=alt.AutoSizeParams(type="pad", contains="padding"))
    return (chart.configure_axis(**text, titleFontSize=FONT_SIZE + 1, labelLimit=400, gridColor=GRID)
            .configure_legend(**text, titleFontSize=FONT_SIZE, labelLimit=0, titleLimit=0, symbolStrokeWidth=2)
            .configure_header(**text, titleFontSize=FONT_SIZE + 1, labelFontWeight="bold")
            .configure_title(color=INK, subtitleColor=INK, fontSize=FONT_SIZE + 2, anchor="start")
            .configure_text(color=INK, fontSize=FONT_SIZE))


def png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    """The chart as PNG bytes (vl-convert; the same Vega-Lite spec the page draws)."""
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=scale)


def cohort_scale(cohorts) -> alt.Scale:
    """Colours of the cohorts (keys or display names) given, in the one cohort order."""
    shown = names.in_cohort_order(cohorts)
    keys = [next((c for c in names.ALL_COHORTS if n in (c, names.cohort_name(c))), None) for n in shown]
    return alt.Scale(domain=shown, range=[COHORT_COLOURS.get(k, OKABE_ITO["black"]) for k in keys])


def bottom_legend(title: str | None = None, columns: int = 3) -> alt.Legend:
    return alt.Legend(orient="bottom", direction="horizontal", columns=columns, title=title, labelLimit=0)


def counts_bar(counts: pd.DataFrame) -> alt.Chart:
    """Patients per cohort and site, stacked by label (``dashboards.data.counts``), in the order
    given. Horizontal: names stay level and readable."""
    df = counts.assign(group=counts["split"].map(names.cohort_name) + " / " + counts["site"])
    groups = list(dict.fromkeys(df["group"]))
    return alt.Chart(df, title="Patients per cohort and site").mark_bar().encode(
        y=alt.Y("group:N", title=None, sort=groups),
        x=alt.X("patients:Q", title="patients"),
        color=alt.Color("label:N", scale=LABEL_COLOURS, title="diagnosis", legend=bottom_legend("diagnosis")),
        tooltip=["site", "split", "label", "patients", "slices"],
    ).properties(width=480, height=alt.Step(30))


def forest(df: pd.DataFrame, *, y: str, color: str, column: str, title: str,
           column_order: list[str] | None = None, color_title: str | None = None, columns: int = 3,
           colour_scale: alt.Scale | None = None, panel_width: int = 150) -> alt.FacetChart:
    """Point estimates with 95 % CI bars: one row per ``y``, dodged by ``color``, one panel per
    ``column`` (in ``column_order``, else as they come), ``columns`` panels a row. ``df`` has
    ``value``, ``ci_low``, ``ci_high`` and the three named columns."""
    df = df.assign(ci=[format_estimate(v, lo, hi) for v, lo, hi in zip(df["value"], df["ci_low"], df["ci_high"], strict=True)])
    order = list(dict.fromkeys(df[y]))
    colours = list(dict.fromkeys(df[color]))
    base = alt.Chart().encode(
        y=alt.Y(f"{y}:N", sort=order, title=None),
        yOffset=alt.YOffset(f"{color}:N", sort=colours),
        color=alt.Color(f"{color}:N", title=color_title or color, sort=colours,
                        scale=colour_scale or alt.Scale(domain=colours, range=PALETTE),
                        legend=bottom_legend(color_title or color)),
        tooltip=[y, color, column, alt.Tooltip("ci:N", title="estimate (95% CI)"), "n"]
        if "n" in df else [y, color, column, alt.Tooltip("ci:N", title="estimate (95% CI)")],
    )
    bars = base.mark_rule(strokeWidth=2).encode(
        x=alt.X("ci_low:Q", scale=alt.Scale(domain=[0, 1]), title=None), x2="ci_high:Q")
    points = base.mark_point(filled=True, size=45, opacity=1).encode(x=alt.X("value:Q", scale=alt.Scale(domain=[0, 1])))
    panels_ = [c for c in (column_order or []) if c in set(df[column])] or list(dict.fromkeys(df[column]))
    return alt.layer(bars, points, data=df).properties(width=panel_width).facet(
        facet=alt.Facet(f"{column}:N", title=None, sort=panels_), columns=columns, spacing=24,
    ).properties(title=title)


def difference_forest(df: pd.DataFrame, *, title: str, column_order: list[str] | None = None) -> alt.FacetChart:
    """Paired differences a - b with their 95 % CI bars and a line at zero: one row per
    ``comparison``, dodged by ``metric``, one panel per ``cohort`` (in ``column_order``, two a
    row). ``df`` has ``comparison``, ``metric``, ``cohort``, ``diff``, ``ci_low``, ``ci_high``,
    ``primary`` (yes / no) and ``p_holm`` (text)."""
    df = df.assign(ci=[format_estimate(v, lo, hi) for v, lo, hi in zip(df["diff"], df["ci_low"], df["ci_high"], strict=True)])
    x_scale = alt.Scale(domain=[-1, 1])
    metrics = list(dict.fromkeys(df["metric"]))
    base = alt.Chart().encode(
        y=alt.Y("comparison:N", sort=list(dict.fromkeys(df["comparison"])), title=None),
        yOffset=alt.YOffset("metric:N", sort=metrics),
        color=alt.Color("metric:N", sort=metrics, scale=alt.Scale(domain=metrics, range=PALETTE),
                        legend=bottom_legend("metric", columns=4)),
        tooltip=["comparison", "metric", "cohort", alt.Tooltip("ci:N", title="a - b (95% CI)"),
                 alt.Tooltip("p_holm:N", title="Holm p"), "primary"],
    )
    zero = alt.Chart().mark_rule(color="#555", strokeDash=[4, 4]).encode(x=alt.datum(0, scale=x_scale))
    bars = base.mark_rule(strokeWidth=2).encode(x=alt.X("ci_low:Q", scale=x_scale, title="a - b"), x2="ci_high:Q")
    points = base.mark_point(filled=True, size=55, opacity=1).encode(
        x=alt.X("diff:Q", scale=x_scale),
        shape=alt.Shape("primary:N", title="primary comparison", scale=alt.Scale(domain=["yes", "no"],
                                                                                   range=["diamond", "circle"]),
                        legend=bottom_legend("primary comparison")))
    columns = [c for c in (column_order or []) if c in set(df["cohort"])] or list(dict.fromkeys(df["cohort"]))
    return alt.layer(zero, bars, points, data=df).properties(width=200).facet(
        facet=alt.Facet("cohort:N", title=None, sort=columns), columns=2, spacing=24).properties(title=title)


def reliability(points: pd.DataFrame, title: str) -> alt.LayerChart:
    """The reliability curve (``points``: x = mean predicted P(GBM) of a bin, y = observed share of
    GBM, n = patients in the bin) against the diagonal of perfect calibration."""
    diag = alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]})).mark_line(
        strokeDash=[4, 4], color="#777").encode(x="x:Q", y="y:Q")
    tip = [alt.Tooltip("x:Q", title="mean P(GBM)", format=".3f"), alt.Tooltip("y:Q", title="observed GBM", format=".3f"),
           alt.Tooltip("n:Q", title="patients")]
    enc = {"x": alt.X("x:Q", title="predicted P(GBM), bin mean", scale=alt.Scale(domain=[0, 1])),
           "y": alt.Y("y:Q", title="observed share of GBM", scale=alt.Scale(domain=[0, 1]))}
    line = alt.Chart(points).mark_line(color=INK).encode(**enc)
    dots = alt.Chart(points).mark_point(filled=True, color=OKABE_ITO["blue"], opacity=1).encode(
        **enc, size=alt.Size("n:Q", title="patients in bin", scale=alt.Scale(range=[40, 400]),
                             legend=bottom_legend("patients in bin", columns=5)), tooltip=tip)
    return alt.layer(diag, line, dots).properties(title=title, width=280, height=280)


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
                        scale=alt.Scale(domain=DECISION_STRATEGIES,
                                        range=[OKABE_ITO["blue"], OKABE_ITO["vermillion"], "#555555"]),
                        legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=3, orient="bottom",
                                          direction="horizontal")),
        strokeDash=alt.StrokeDash("strategy:N", sort=DECISION_STRATEGIES, title=None,
                                  scale=alt.Scale(domain=DECISION_STRATEGIES, range=[[1, 0], [6, 3], [2, 2]])),
        tooltip=["strategy", alt.Tooltip("threshold:Q", format=".2f"), alt.Tooltip("net_benefit:Q", format=".4f")],
    ).properties(title=title, width=280, height=280)


def panels(charts_: list[alt.TopLevelMixin], columns: int = 2) -> alt.ConcatChart:
    """Charts side by side (one per cohort), ``columns`` a row, one legend."""
    return alt.concat(*charts_, columns=columns).resolve_scale(color="shared", shape="shared", size="shared")


# -- ROC ----------------------------------------------------------------------------------------
def roc_points(y_true, score) -> pd.DataFrame:
    """The points the ROC line is drawn through, in order (``step``): (0, 0), then one point per
    distinct score from the highest down (a patient is called GBM where ``score >= threshold``),
    ending at (1, 1). Patients sharing a score move the curve in one diagonal step, so the
    trapezoids under these points add up to the Mann-Whitney AUC (ties count one half), the AUC
    the page states. The points of ``sklearn.metrics.roc_curve(drop_intermediate=False)``."""
    from gbmmet.stats import roc_curve

    fpr, tpr, thr = roc_curve(y_true, score)
    return pd.DataFrame({"step": np.arange(len(fpr)), "fpr": fpr, "tpr": tpr,
                         "threshold": np.where(np.isinf(thr), np.nan, thr)})


def drawn_area(points: pd.DataFrame) -> float:
    """The area under a line drawn straight through ``points`` (fpr, tpr) in ``step`` order."""
    p = points.sort_values("step")
    x, y = p["fpr"].to_numpy(float), p["tpr"].to_numpy(float)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def roc(curve: pd.DataFrame, points: pd.DataFrame, title: str, who_order: list[str] | None = None) -> alt.LayerChart:
    """The model's ROC (``curve``: ``roc_points``) as straight segments through its points in
    order, with operating points (``points``: who, kind (cutoff or reader), fpr, tpr and their 95 %
    CIs fpr_low, fpr_high, tpr_low, tpr_high) as error bars, and the chance diagonal."""
    who = who_order or list(dict.fromkeys(points["who"]))
    diag = alt.Chart(pd.DataFrame({"fpr": [0, 1], "tpr": [0, 1]})).mark_line(
        strokeDash=[4, 4], color="#777").encode(x="fpr:Q", y="tpr:Q")
    x = alt.X("fpr:Q", title="1 - specificity", scale=alt.Scale(domain=[0, 1]))
    y = alt.Y("tpr:Q", title="sensitivity (GBM)", scale=alt.Scale(domain=[0, 1]))
    line = alt.Chart(curve).mark_line(interpolate="linear", color=INK, strokeWidth=2,
                                      point=alt.OverlayMarkDef(color=INK, size=16)).encode(
        x=x, y=y, order=alt.Order("step:Q"),
        tooltip=[alt.Tooltip("threshold:Q", title="index at least", format=".3f"),
                 alt.Tooltip("fpr:Q", title="1 - specificity", format=".3f"),
                 alt.Tooltip("tpr:Q", title="sensitivity", format=".3f")])
    colour = alt.Color("who:N", title="operating point (95% CI, Wilson)", sort=who,
                       scale=alt.Scale(domain=who, range=PALETTE),
                       legend=bottom_legend("operating point (95% CI: Wilson)", columns=2))
    base = alt.Chart(points)
    tips = ["who", alt.Tooltip("sensitivity_ci:N", title="sensitivity (95% CI)"),
            alt.Tooltip("specificity_ci:N", title="specificity (95% CI)"), "n"]
    xbar = base.mark_rule(strokeWidth=1.5).encode(x="fpr_low:Q", x2="fpr_high:Q", y="tpr:Q", color=colour)
    ybar = base.mark_rule(strokeWidth=1.5).encode(x="fpr:Q", y="tpr_low:Q", y2="tpr_high:Q", color=colour)
    shape = alt.Shape("kind:N", title=None, scale=alt.Scale(domain=["cutoff", "reader"], range=["diamond", "circle"]),
                      legend=bottom_legend())
    # the model's points drawn after the readers' and larger: on top where both fall on one place
    marks = alt.layer(*[alt.Chart(points[points["kind"] == kind]).mark_point(
        filled=True, opacity=1, size=size, stroke="white", strokeWidth=0.8).encode(
        x="fpr:Q", y="tpr:Q", color=colour, shape=shape, tooltip=tips) for kind, size in (("reader", 110), ("cutoff", 190))])
    return alt.layer(diag, line, xbar, ybar, marks).properties(title=title, width=300, height=300)


def roc_panels(panels_: list[alt.LayerChart]) -> alt.ConcatChart:
    """ROC charts, two a row (one per cohort), one legend below."""
    return alt.concat(*panels_, columns=2).resolve_scale(color="shared", shape="shared")


# -- the predictive index -----------------------------------------------------------------------
INDEX_EDGES = np.round(np.linspace(0, 1, 11), 1)
CUTOFF_DASHES = {C.CUTOFF_VAL: [6, 3], C.CUTOFF_PAPER: [2, 2]}


def index_histogram_rows(pats: pd.DataFrame) -> pd.DataFrame:
    """Patients per cohort, diagnosis and tenth of the predictive index (``pats``: cohort, label,
    predictive_index): ``start``, ``end`` of the tenth; an index of exactly 1 falls in the last
    tenth, 0.1 in the second."""
    k = np.clip(np.floor(pats["predictive_index"].to_numpy(float) * 10 + 1e-9), 0, 9).astype(int)
    df = pats.assign(start=INDEX_EDGES[k], end=INDEX_EDGES[k + 1])
    return df.groupby(["cohort", "label", "start", "end"], sort=True).size().rename("patients").reset_index()


def index_histogram(pats: pd.DataFrame, cutoffs: dict[str, float] | None = None) -> alt.FacetChart:
    """The predictive index's distribution by diagnosis (stacked), one panel per cohort (``pats``:
    cohort (display name), label, predictive_index), with the cutoffs (``cutoffs``: kind ->
    value) as lines: dashed the validation cutoff, dotted the paper's."""
    rows = index_histogram_rows(pats)
    cohorts = names.in_cohort_order(rows["cohort"])
    scale = alt.Scale(domain=[0, 1])
    bars = alt.Chart().mark_bar(stroke="white", strokeWidth=0.5).encode(
        x=alt.X("start:Q", title="predictive index", scale=scale, axis=alt.Axis(values=list(INDEX_EDGES))),
        x2="end:Q",
        y=alt.Y("sum(patients):Q", title="patients", stack="zero", axis=alt.Axis(tickMinStep=1)),
        color=alt.Color("label:N", scale=LABEL_COLOURS, title="diagnosis", legend=bottom_legend("diagnosis")),
        order=alt.Order("label:N", sort="ascending"),
        tooltip=["cohort", "label", alt.Tooltip("start:Q", title="index from"), alt.Tooltip("end:Q", title="to"),
                 alt.Tooltip("sum(patients):Q", title="patients")])
    rules = [alt.Chart().mark_rule(color=INK, strokeWidth=2, strokeDash=CUTOFF_DASHES.get(kind, [4, 4])).encode(
        x=alt.datum(float(v), scale=scale)) for kind, v in (cutoffs or {}).items() if v == v]
    return alt.layer(bars, *rules, data=rows).properties(width=220, height=200).facet(
        column=alt.Column("cohort:N", title=None, sort=cohorts), spacing=28).properties(
        title="Predictive index by diagnosis (patients per tenth of the index)")


def slice_probs(df: pd.DataFrame, cutoff_line: float = 0.5) -> alt.LayerChart:
    """P(GBM) per slice for each fold model and the soft ensemble (``data.patient_slice_probs``)."""
    folds = df[df["model"].str.startswith("fold")]
    ens = df[df["model"] == "ensemble_mean"].assign(model="mean of the folds")
    fold_names = sorted(set(folds["model"]))
    domain = [*fold_names, "mean of the folds"]
    x = alt.X("slice_index:O", title="slice", axis=alt.Axis(labelAngle=0))
    y = alt.Y("prob_gbm:Q", title="P(GBM)", scale=alt.Scale(domain=[0, 1]))
    colour = alt.Color("model:N", title="model", sort=domain,
                       scale=alt.Scale(domain=domain, range=[*PALETTE[1:1 + len(fold_names)], OKABE_ITO["black"]]),
                       legend=bottom_legend("model", columns=len(domain)))
    tip = ["model", "slice_index", alt.Tooltip("prob_gbm:Q", format=".3f")]
    lines = alt.Chart(folds).mark_line(point=True, opacity=0.8).encode(x=x, y=y, color=colour, tooltip=tip)
    mean = alt.Chart(ens).mark_line(strokeWidth=3, point=True).encode(x=x, y=y, color=colour, tooltip=tip)
    rule = alt.Chart(pd.DataFrame({"p": [cutoff_line]})).mark_rule(strokeDash=[3, 3], color="#555").encode(y="p:Q")
    return alt.layer(lines, mean, rule).properties(
        title="P(GBM) per slice (dashed: a fold's vote threshold)", width=680, height=300)


def index_vs_cutoffs(index: float, cutoffs: dict[str, float]) -> alt.LayerChart:
    """The patient's predictive index on [0, 1] (the black dot, labelled) against each cutoff
    (``cutoffs``: display name -> cutoff; dashed lines across the strip)."""
    scale = alt.Scale(domain=[0, 1])
    band = alt.Scale(domain=[0, 1])
    order = list(cutoffs)
    cut = pd.DataFrame({"cutoff": list(cutoffs.values()), "kind": order, "y0": 0.0, "y1": 1.0})
    rules = alt.Chart(cut).mark_rule(strokeWidth=3, strokeDash=[6, 3]).encode(
        x=alt.X("cutoff:Q", scale=scale, title="predictive index (share of slices called GBM)"),
        y=alt.Y("y0:Q", scale=band, axis=None), y2="y1:Q",
        color=alt.Color("kind:N", title=None, sort=order, scale=alt.Scale(domain=order, range=PALETTE[1:]),
                        legend=bottom_legend(columns=1)),
        tooltip=[alt.Tooltip("kind:N", title="cutoff"), alt.Tooltip("cutoff:Q", format=".3f")])
    dot = pd.DataFrame({"index": [index], "y": [0.35], "label_y": [0.78],
                        "label": [f"this patient: {index:.3f}"]})
    point = alt.Chart(dot).mark_point(filled=True, size=260, color=OKABE_ITO["black"], opacity=1).encode(
        x=alt.X("index:Q", scale=scale), y=alt.Y("y:Q", scale=band, axis=None),
        tooltip=[alt.Tooltip("index:Q", title="predictive index", format=".3f")])
    label = alt.Chart(dot).mark_text(fontSize=FONT_SIZE + 1, fontWeight="bold", color=INK,
                                     align="right" if index > 0.8 else "left" if index < 0.2 else "center").encode(
        x=alt.X("index:Q", scale=scale), y=alt.Y("label_y:Q", scale=band, axis=None), text="label:N")
    return alt.layer(rules, point, label).properties(width=680, height=90)


def training_curves(history: pd.DataFrame) -> alt.FacetChart:
    """Loss and accuracy per epoch and fold, training (solid) and held-out (dashed)."""
    long = []
    for metric, tr, va in (("loss", "train_loss", "val_loss"), ("accuracy", "train_acc", "val_acc")):
        for part, col in (("training", tr), ("held-out", va)):
            long.append(pd.DataFrame({"fold": history["fold"].astype(str), "epoch": history["epoch"],
                                      "metric": metric, "part": part, "value": history[col]}))
    df = pd.concat(long, ignore_index=True)
    folds = sorted(set(df["fold"]), key=lambda f: (len(f), f))
    return alt.Chart(df).mark_line().encode(
        x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1, format="d")), y=alt.Y("value:Q", title=None),
        color=alt.Color("fold:N", sort=folds, scale=alt.Scale(domain=folds, range=PALETTE),
                        legend=bottom_legend("fold", columns=len(folds))),
        strokeDash=alt.StrokeDash("part:N", title=None, sort=["training", "held-out"], legend=bottom_legend()),
        tooltip=["fold", "epoch", "part", alt.Tooltip("value:Q", format=".4f")],
    ).properties(width=320, height=230).facet(column=alt.Column("metric:N", title=None, sort=["loss", "accuracy"])
                                              ).resolve_scale(y="independent")


def fold_bar(sizes: pd.DataFrame) -> alt.Chart:
    """Held-out patients per fold, stacked by label (``data.fold_sizes``)."""
    df = sizes.assign(fold="fold " + sizes["fold"].astype(str))
    folds = list(dict.fromkeys(df["fold"]))
    return alt.Chart(df, title="Patients per fold").mark_bar().encode(
        y=alt.Y("fold:N", title=None, sort=folds), x=alt.X("patients:Q"),
        color=alt.Color("label:N", scale=LABEL_COLOURS, title="diagnosis", legend=bottom_legend("diagnosis")),
        tooltip=["fold", "label", "patients", "slices"]).properties(width=480, height=alt.Step(30))


# -- when not to trust a call ---------------------------------------------------------------------
def risk_coverage(curve: pd.DataFrame, rule: pd.DataFrame | None = None) -> alt.LayerChart:
    """Accuracy of the calls kept against the share of patients kept, most certain first, one line
    per cohort (``curve``: cohort, x, y, n, the lake's ``risk_coverage`` rows); where ``rule`` (cohort,
    x, y) is given, a diamond per cohort where the deferral rule lands. Colour and dash both tell
    the cohorts apart."""
    df = curve.assign(cohort=curve["cohort"].map(names.cohort_name))
    shown = names.in_cohort_order(df["cohort"])
    scale = cohort_scale(shown)
    dashes = alt.Scale(domain=shown, range=[[1, 0], [6, 3], [2, 2], [8, 2, 2, 2]][:len(shown)])
    low = min(0.5, float(df["y"].min()) - 0.05) if len(df) else 0.5
    enc = {"x": alt.X("x:Q", title="share of patients kept (most certain first)", scale=alt.Scale(domain=[0, 1])),
           "y": alt.Y("y:Q", title="accuracy of the calls kept", scale=alt.Scale(domain=[max(low, 0), 1]))}
    lines = alt.Chart(df).mark_line(point=alt.OverlayMarkDef(size=40, filled=True)).encode(
        **enc, color=alt.Color("cohort:N", scale=scale, sort=shown, title="cohort", legend=bottom_legend("cohort")),
        strokeDash=alt.StrokeDash("cohort:N", scale=dashes, sort=shown, title="cohort"),
        tooltip=["cohort", alt.Tooltip("x:Q", title="share kept", format=".2f"),
                 alt.Tooltip("y:Q", title="accuracy kept", format=".3f"), alt.Tooltip("n:Q", title="patients kept")])
    layers = [lines]
    if rule is not None and len(rule):
        marks = rule.assign(cohort=rule["cohort"].map(names.cohort_name))
        layers.append(alt.Chart(marks).mark_point(shape="diamond", size=160, filled=True, stroke=INK,
                                                  strokeWidth=1, opacity=1).encode(
            **enc, color=alt.Color("cohort:N", scale=scale, sort=shown, legend=None),
            tooltip=["cohort", alt.Tooltip("x:Q", title="kept by the deferral rule", format=".2f"),
                     alt.Tooltip("y:Q", title="accuracy kept", format=".3f")]))
    return alt.layer(*layers).properties(title="Risk-coverage: accuracy as the least certain calls are deferred",
                                         width=480, height=300)
