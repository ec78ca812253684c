"""Subgroups: the headline metrics by tumour location, and specificity by the metastases' primary
tumour; a note for each subgroup the chosen metric cannot be shown for."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts, common, compute, data, names
from gbmmet import constants as C

METRICS = (*C.HEADLINE_METRICS, "npv")

ctx = common.context()
st.title("Subgroups")
common.require(ctx, run=True, evaluated=True)
st.caption("By tumour location (every metric), and by primary tumour: a primary's subgroup holds only its "
           "metastases, so it shows specificity alone (the share of them called MET); choose specificity to "
           "see them. Small subgroups have wide intervals; where a CI is blank, too few patients of one "
           "diagnosis made it undefined. Metrics are per cohort, over all its sites.")
pats = common.evaluated_patients(ctx)
cohorts = tuple(c for c in ctx.cohorts if c in set(pats["cohort"]))
common.stored_note(ctx, cohorts)
cohorts = common.stored_cohorts(ctx, cohorts)  # the metrics are per cohort: whole cohorts only
if ctx.limited and not cohorts:
    st.stop()

c1, c2 = st.columns([1, 2])
metric = c1.selectbox("Metric", METRICS, index=METRICS.index("auc"), format_func=names.metric_name, key="sub-metric")
ci = c2.selectbox("95% CI", list(names.CI_CHOICES), format_func=names.ci_name, key="sub-ci",
                  help="For AUC, DeLong's is available too (below). The paper's subsampling is a reproduction "
                  "only: its intervals are far too narrow.")
auc_delong = metric == "auc" and c2.toggle("AUC: DeLong's CI", value=True, key="sub-auc-delong")
every = data.metric_table(ctx.src, ctx.run, ci, C.CI_DELONG if auc_delong else ci, cohorts, None, (metric,))
raters = list(dict.fromkeys(every["who"]))
paper = names.model_name(C.CUTOFF_PAPER)
default = [r for r in raters if r != paper] or raters
# other cohorts or metric: keep what still applies; back from another page, Streamlit has dropped
# the widget's value (not the options kept beside it): choose again
if st.session_state.get("sub-raters-options") != raters or "sub-raters" not in st.session_state:
    kept = [r for r in st.session_state.get("sub-raters", []) if r in raters]
    st.session_state["sub-raters"] = kept or default
    st.session_state["sub-raters-options"] = raters
chosen = st.multiselect("Raters", raters, key="sub-raters", help=f"The {paper} is optimistic on the internal test.")
long = every[every["who"].isin(chosen)]
if every.empty:
    st.info(f"No {names.metric_name(metric)} with this CI ({names.ci_name(C.CI_DELONG if auc_delong else ci)}) for "
            "the chosen cohorts in the lake" + (": DeLong's is computed for the internal test and external cohorts; "
                                               "turn it off for the resampling's." if auc_delong else "."),
            icon=":material/info:")
    st.stop()
if long.empty:
    st.info("Choose at least one rater.", icon=":material/info:")
    st.stop()

mname = names.metric_name(metric)
long = long.assign(group=long["subgroup"].map(names.subgroup_name))
view = pd.DataFrame({
    "cohort": long["cohort"].map(names.cohort_name), "subgroup": long["group"], "rater": long["who"],
    "n": long["n"], "GBM": long["n_gbm"],
    mname: [common.estimate_cell(v, lo, hi, m, c) for v, lo, hi, m, c in
            zip(long["value"], long["ci_low"], long["ci_high"], long["ci_method"], long["ci_choice"], strict=True)],
})
common.table(ctx, view, f"subgroups-{metric}", download=long)
common.ci_notes(long)

# the subgroups the lake has patients for but no row of this metric: say so rather than drop them silently
whole = data.patient_predictions(ctx.src, ctx.run, cohorts, ctx.allowed)  # the cohorts are whole: all theirs
info = common.visible_patients(ctx)[["patient_id", "location", "primary_tumor"]]
missing = compute.missing_subgroups(whole.merge(info, on="patient_id", how="left"), every, metric)
for r in missing.itertuples(index=False):
    st.caption(f"Not shown: {names.subgroup_name(r.subgroup)}, {names.cohort_name(r.cohort)} "
               f"({r.n} patient{'s' if r.n != 1 else ''}, {r.n_gbm} GBM): {r.why}.")

plot = long.assign(cohort=long["cohort"].map(names.cohort_name))
common.chart(ctx, charts.forest(plot, y="group", color="who", column="cohort", color_title="rater",
                                column_order=[names.cohort_name(c) for c in names.COHORT_ORDER], columns=3,
                                panel_width=180,
                                title=f"{mname} by subgroup, 95% CI "
                                      f"({names.ci_name(C.CI_DELONG if auc_delong else ci)})"),
             f"subgroups-{metric}")
