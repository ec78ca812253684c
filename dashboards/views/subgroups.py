"""Subgroups: the headline metrics by tumour location, and specificity by the metastases' primary
tumour."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts, common, data
from gbmmet import constants as C

METRICS = (*C.HEADLINE_METRICS, "npv")


def subgroup_name(sub: str) -> str:
    if sub == "all":
        return "all patients"
    key, _, value = sub.partition("=")
    return {"location": f"location: {value}", "primary": f"METs from {value}"}.get(key, sub)


ctx = common.context()
st.title("Subgroups")
common.require(ctx, run=True, evaluated=True)
st.caption("By tumour location (every metric), and by primary tumour: a primary's subgroup holds only its "
           "metastases, so it shows specificity alone (the share of them called MET); choose specificity to "
           "see them. Small subgroups have wide intervals; where a CI is blank, too few patients of one "
           "diagnosis made it undefined.")
pats = common.evaluated_patients(ctx)
cohorts = tuple(c for c in ctx.cohorts if c in set(pats["cohort"]))

c1, c2, c3 = st.columns([1, 2, 3])
metric = c1.selectbox("Metric", METRICS, index=METRICS.index("auc"), key="sub-metric")
ci = c2.selectbox("95% CI", list(common.CI_NAMES), format_func=common.CI_NAMES.get, key="sub-ci",
                  help="For AUC, DeLong's is available too (below). The paper's subsampling is a reproduction "
                  "only: its intervals are far too narrow.")
auc_delong = metric == "auc" and c2.toggle("AUC: DeLong's CI", value=True, key="sub-auc-delong")
long = data.metric_table(ctx.src, ctx.run, ci, C.CI_DELONG if auc_delong else ci, cohorts, None, (metric,))
raters = list(dict.fromkeys(long["who"]))
default = [r for r in raters if not r.endswith("*")] or raters
chosen = c3.multiselect("Raters", raters, default=default, key="sub-raters",
                        help="The model at the paper's cutoff (*) is optimistic on the internal test.")
long = long[long["who"].isin(chosen)]
if long.empty:
    st.info("Choose at least one rater.", icon=":material/info:")
    st.stop()

long = long.assign(group=long["subgroup"].map(subgroup_name))
view = pd.DataFrame({
    "cohort": long["cohort"].map(data.cohort_name), "subgroup": long["group"], "rater": long["who"],
    "n": long["n"], "GBM": long["n_gbm"],
    metric: [common.estimate_cell(v, lo, hi, m, c) for v, lo, hi, m, c in
             zip(long["value"], long["ci_low"], long["ci_high"], long["ci_method"], long["ci_choice"], strict=True)],
})
common.table(ctx, view, f"subgroups-{metric}", download=long)
common.ci_notes(long)
plot = long.assign(cohort=long["cohort"].map(data.cohort_name))
common.chart(ctx, charts.forest(plot, y="group", color="who", column="cohort", color_title="rater",
                                title=f"{metric} by subgroup, 95% CI "
                                      f"({common.ci_name(C.CI_DELONG if auc_delong else ci)})"),
             f"subgroups-{metric}")
