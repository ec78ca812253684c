"""Calibration: how well the model's P(GBM) matches what happened (reliability curve, Brier score,
calibration intercept and slope) and what acting on it is worth (decision curve: net benefit of the
model against calling every patient GBM and calling none), per cohort, as the lake stores them; and
the score itself: the predictive index's distribution by diagnosis, per cohort.

A page of its own rather than a section of ROC: ROC is about ranking by the predictive index at
the chosen sites (computed here from per-patient rows), calibration about a different score,
P(GBM) from a fit on the validation patients, with curves the evaluation stored per cohort.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts, common, data, names
from gbmmet import constants as C

SUMMARY = {"brier": "Brier score", "calibration_intercept": "Calibration intercept",
           "calibration_slope": "Calibration slope"}
SUMMARY_HELP = {
    "brier": "Mean squared difference between P(GBM) and the outcome (0 is perfect; 0.25 is a coin at 50 %).",
    "calibration_intercept": "Calibration-in-the-large: 0 when P(GBM) is right on average; above 0, it is too low.",
    "calibration_slope": "1 when P(GBM) is as spread as it should be; below 1, too extreme; above 1, too timid.",
}


def three(value: float | None) -> str:
    """Three decimals; empty for none; no "-0.000" for a value that rounds to zero from below."""
    if value is None or pd.isna(value):
        return ""
    text = f"{value:.3f}"
    return "0.000" if text == "-0.000" else text


def calibration_sections(ctx: common.Context, cohorts: tuple[str, ...]) -> None:
    """Summary, reliability and decision curves of the cohorts (never validation)."""
    points = data.calibration(ctx.src, ctx.run, cohorts)
    points = points[points["curve"] != C.CURVE_RISK_COVERAGE]  # the Trust page's curve, not P(GBM)'s
    summary = data.calibration_summary(ctx.src, ctx.run, cohorts)
    if points.empty:
        st.info("No calibration for these cohorts in this run: P(GBM) needs validation patients of both diagnoses "
                f"(a run evaluated before calibration was stored needs `gbmmet evaluate --lake {ctx.lake} --run "
                f"{ctx.run}` again).", icon=":material/info:")
        return
    shown = [c for c in cohorts if c in set(points["cohort"])]
    st.subheader("Summary")
    rows = []
    for cohort in shown:
        mine = summary[summary["cohort"] == cohort].set_index("metric")
        row = {"cohort": names.cohort_name(cohort)}
        row.update({label: three(mine["value"].get(metric)) for metric, label in SUMMARY.items()})
        row.update({"patients": int(mine["n"].iloc[0]) if len(mine) else None,
                    "GBM": int(mine["n_gbm"].iloc[0]) if len(mine) else None})
        rows.append(row)
    common.table(ctx, pd.DataFrame(rows), "calibration-summary", download=summary)
    st.caption(" ".join(f"{SUMMARY[m]}: {SUMMARY_HELP[m]}" for m in SUMMARY))
    if summary["value"].isna().any():
        st.caption("A blank value: undefined on this cohort (e.g. P(GBM) takes one value there, so no slope).")

    st.subheader("Reliability")
    st.caption("Patients binned by P(GBM): each point is a bin's mean P(GBM) against the share of GBM in it (size: "
               "patients in the bin). On the dashed diagonal, P(GBM) is right.")
    rel = points[points["curve"] == "reliability"]
    common.chart(ctx, charts.panels([charts.reliability(rel[rel["cohort"] == c], names.cohort_name(c))
                                     for c in shown]), "reliability")

    st.subheader("Decision curve")
    st.caption("Net benefit of calling GBM where P(GBM) is at least the threshold, against calling every patient "
               "GBM and calling none (0). The model is worth using at thresholds where its curve is above both.")
    dec = points[points["curve"] == "decision"]
    common.chart(ctx, charts.panels([charts.decision_curve(dec[dec["cohort"] == c], names.cohort_name(c))
                                     for c in shown]), "decision-curve")

    with st.expander("The curves' points"):
        view = points.assign(cohort=points["cohort"].map(names.cohort_name))
        common.table(ctx, view.round(4), "calibration-points", download=points, static=False)


ctx = common.context()
st.title("Calibration")
common.require(ctx, run=True, evaluated=True)
pats = common.evaluated_patients(ctx)
st.caption("P(GBM) is the predictive index turned into a probability by a logistic fit on the validation "
           "patients only, so it is judged on the internal test and external cohorts. Curves and summaries "
           "are the evaluation's, over all of a cohort's patients. Which single calls not to trust (conformal "
           "sets, deferral, the risk-coverage curve): the Trust page.")
visible = tuple(c for c in ctx.cohorts if c in set(pats["cohort"]) and c != C.VAL)
cohorts = common.stored_cohorts(ctx, visible)  # stored per cohort: whole cohorts only
if C.VAL in ctx.cohorts:
    st.caption("Validation: P(GBM) was fitted on these patients, so their calibration says nothing; not shown "
               "(its predictive index is, below).")
common.stored_note(ctx, visible)
if cohorts:
    calibration_sections(ctx, cohorts)
elif not visible:
    st.info("Choose the internal test or external cohort in the sidebar for P(GBM)'s calibration.",
            icon=":material/info:")

st.subheader("Score distribution")
cut = data.cutoffs(ctx.src, ctx.run)
st.caption("The predictive index of each patient of the chosen cohorts and sites, by diagnosis: patients per "
           "tenth of the index, stacked (the last bar holds an index of exactly 1). The further apart GBMs and "
           "METs lie, the better the index ranks them. Lines: the cutoffs, "
           + "; ".join(f"{'dashed' if k == C.CUTOFF_VAL else 'dotted'} the {names.cutoff_name(k)} {cut[k]:.3f}"
                       for k in names.CUTOFF_ORDER if k in cut) + ".")
dist = pats.assign(cohort=pats["cohort"].map(names.cohort_name))[["cohort", "site", "patient_id", "label",
                                                                 "predictive_index"]]
common.chart(ctx, charts.index_histogram(dist, {k: cut[k] for k in names.CUTOFF_ORDER if k in cut}),
             "index-distribution")
