"""Model vs readers: the paper's table with CIs, a forest plot, and the paired tests."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts, common, data
from gbmmet import constants as C
from storage.queries import FALLBACK_MARK, FALLBACK_NOTE, format_estimate

CI_CHOICES = {
    C.CI_SUBSAMPLE: "the paper's: 1,000 subsets of 90 %",
    C.CI_BCA: "bootstrap, BCa (stratified, 1,000)",
    C.CI_PERCENTILE: "bootstrap, percentile (stratified, 1,000)",
}
CUTOFF_NOTE = ("\\* The paper's cutoff is Youden's on the internal test ROC, chosen on the internal test itself, "
               "so its internal-test numbers are optimistic. The out-of-fold cutoff is chosen on the training "
               "folds only and is the honest one.")


def wide_table(long: pd.DataFrame) -> pd.DataFrame:
    """One row per cohort and rater, one column per metric: 'value (low-high)'."""
    rows: dict[tuple, dict] = {}
    for r in long.itertuples(index=False):
        row = rows.setdefault((r.cohort, r.who), {"cohort": data.cohort_name(r.cohort), "rater": r.who, "n": r.n})
        row[r.metric] = format_estimate(r.value, r.ci_low, r.ci_high) + (
            FALLBACK_MARK if r.ci_method != r.ci_choice else "")
    cols = ["cohort", "rater", "n", *[m for m in C.PAPER_METRICS if m in set(long["metric"])]]
    return pd.DataFrame(list(rows.values()), columns=cols)


ctx = common.context()
st.title("Model vs readers")
common.require(ctx, run=True, evaluated=True)
cohorts = ctx.cohorts

c1, c2 = st.columns([3, 2])
ci = c1.radio("95% CI of accuracy, precision, recall and F1", list(CI_CHOICES), format_func=CI_CHOICES.get,
              horizontal=True, key="readers-ci")
auc_delong = c2.toggle("AUC's CI from DeLong", value=True, key="readers-auc-delong",
                       help="Off: the AUC's CI comes from the same resampling as the other metrics.")
long = data.metric_table(ctx.src, ctx.run, ci, C.CI_DELONG if auc_delong else ci, cohorts, "all", C.PAPER_METRICS)
pats = common.evaluated_patients(ctx)
shown = [c for c in cohorts if c in set(pats["cohort"])]
long = long[long["cohort"].isin(shown)]
if long.empty:
    st.info("No metrics for the chosen cohorts and sites. Internal test and external cohorts are read by the "
            "readers; choose them in the sidebar.", icon=":material/info:")
    st.stop()
if set(ctx.sites) != set(data.patients(ctx.src)["site"]):
    st.caption("Metrics are computed per cohort over all its patients; the site filter chooses which cohorts "
               "are shown.")

st.subheader("The paper's table")
st.caption(f"GBM is the positive class. CI: {CI_CHOICES[ci]}; AUC: "
           f"{'DeLong' if auc_delong else CI_CHOICES[ci]}. Readers' AUC is from their calls signed by confidence.")
common.table(ctx, wide_table(long), f"paper-table-{ci}", download=long.drop(columns=["subgroup"]))
st.caption(CUTOFF_NOTE)
if (long["ci_method"] != long["ci_choice"]).any():
    st.caption(FALLBACK_NOTE)

st.subheader("Forest plot")
forest = long.assign(cohort=long["cohort"].map(data.cohort_name))
common.chart(ctx, charts.forest(forest, y="who", color="cohort", column="metric",
                                title=f"Model and readers, 95% CI ({ci}; AUC: {'DeLong' if auc_delong else ci})",
                                column_order=list(C.PAPER_METRICS)),
             f"forest-{ci}")

st.subheader("Paired tests")
comp = data.comparisons(ctx.src, ctx.run, tuple(shown))
if comp.empty:
    st.info("No paired comparisons: the lake has no reads for these cohorts (`gbmmet readers import`).",
            icon=":material/info:")
else:
    names = {"delong_auc": "DeLong: AUC, model vs reader", "mcnemar_correct": "McNemar: correct calls, assisted vs alone"}
    view = pd.DataFrame({
        "cohort": comp["cohort"].map(data.cohort_name),
        "test": comp["test"].map(lambda t: names.get(t, t)),
        "compared": comp["a"] + " vs " + comp["b"],
        "n": comp["n"],
        "estimates": [f"{a:.3f} vs {b:.3f}" for a, b in zip(comp["estimate_a"], comp["estimate_b"], strict=True)],
        "difference (95% CI)": [format_estimate(d, lo, hi) for d, lo, hi in
                                zip(comp["diff"], comp["ci_low"], comp["ci_high"], strict=True)],
        "p": [f"{p:.3g}" if p >= 0.001 else "<0.001" for p in comp["p"]],
        "note": comp["note"],
    })
    common.table(ctx, view, "paired-tests", download=comp)
