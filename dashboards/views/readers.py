"""Model vs readers: the headline table with CIs and a forest plot; the paired differences (a - b,
same patients) with their CIs, p and Holm-adjusted p, and a forest plot of them; the patient flow."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts, common, data
from gbmmet import constants as C
from storage.queries import CUTOFF_NOTE, difference_label, format_estimate, format_p

HEADINGS = {"recall": "sensitivity", "precision": "PPV", "auc": "AUC", "f1": "F1",
            C.AUC_CONFIDENCE: "AUC (confidence)"}
ITD_METRICS = tuple(m + C.ITD_SUFFIX for m in ("accuracy", "recall", "specificity"))
DIFFERENCES_NOTE = (
    "a - b on the patients both rated; 95 % CI (the CI column says which, whatever is chosen above): "
    "Newcombe's score interval for paired proportions, DeLong for AUC, the paired BCa bootstrap where the "
    "paper's cutoff is re-chosen in each resample (internal test). p: McNemar on all patients "
    "(accuracy), on GBMs (sensitivity), on METs (specificity); DeLong for AUC. Holm p: adjusted over every "
    "difference of the cohort (the family). ★ the primary comparison, named in the evaluation's settings "
    "before looking: its unadjusted p stands on its own. **A CI that includes 0 is not evidence of "
    "equivalence**: it says the data cannot tell the two apart, not that they are alike.")


def wide_table(long: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """One row per cohort and rater, one column per metric: 'value (low to high)' and its marks."""
    rows: dict[tuple, dict] = {}
    for r in long.itertuples(index=False):
        row = rows.setdefault((r.cohort, r.who), {"cohort": data.cohort_name(r.cohort), "rater": r.who, "n": r.n,
                                                  "GBM": r.n_gbm})
        row[r.metric] = common.estimate_cell(r.value, r.ci_low, r.ci_high, r.ci_method, r.ci_choice)
    cols = ["cohort", "rater", "n", "GBM", *[m for m in metrics if m in set(long["metric"])]]
    return pd.DataFrame(list(rows.values()), columns=cols)


def difference_view(diff: pd.DataFrame) -> pd.DataFrame:
    """The differences as shown: raters by their labels, a - b with its CI, p and Holm p as text."""
    return pd.DataFrame({
        "cohort": diff["cohort"].map(data.cohort_name),
        "primary": ["★" if p else "" for p in is_primary(diff)],
        "a": diff["a"].map(difference_label),
        "b": diff["b"].map(difference_label),
        "metric": diff["metric"].map(lambda m: HEADINGS.get(m, m)),
        "n": diff["n"],
        "a, b": [f"{format_estimate(a)} vs {format_estimate(b)}" for a, b in
                 zip(diff["estimate_a"], diff["estimate_b"], strict=True)],
        "a - b (95% CI)": [format_estimate(d, lo, hi) for d, lo, hi in
                           zip(diff["diff"], diff["ci_low"], diff["ci_high"], strict=True)],
        "CI": diff["ci_method"],
        "test": diff["test"],
        "p": diff["p"].map(format_p),
        "Holm p": diff["p_holm"].map(format_p),
        "family": diff["family_size"],
    })


def is_primary(diff: pd.DataFrame) -> list[bool]:
    return [bool(p) if pd.notna(p) else False for p in diff["is_primary"]]


def flow_view(flow: pd.DataFrame) -> pd.DataFrame:
    """One row per cohort and site, one column per stage (failures by kind, reads by reader)."""
    long = flow.assign(step=[flow_step(s, d) for s, d in zip(flow["stage"], flow["detail"], strict=True)],
                       cohort=flow["cohort"].map(lambda c: "training" if c == C.TRAIN else data.cohort_name(c)))
    order = list(dict.fromkeys(long["step"]))
    wide = long.pivot_table(index=["cohort", "site"], columns="step", values="n", aggfunc="sum", fill_value=0,
                            sort=False)
    wide = wide[[c for c in order if c in wide.columns]].reset_index()
    wide.columns.name = None
    return wide


def flow_step(stage: str, detail: str | None) -> str:
    """A flow table's column: the stage, and the detail where it has one (``failed: unreadable_image``)."""
    stage = stage.replace("_", " ")
    return f"{stage}: {detail}" if isinstance(detail, str) and detail else stage


ctx = common.context()
st.title("Model vs readers")
common.require(ctx, run=True, evaluated=True)
cohorts = ctx.cohorts

c1, c2 = st.columns([3, 2])
ci = c1.radio("95% CI of the metrics", list(common.CI_NAMES), format_func=common.CI_NAMES.get, horizontal=True,
              key="readers-ci", help="The default is the stratified patient-level bootstrap (BCa). The paper's "
              "subsampling is shown as a reproduction only: its intervals are far too narrow.")
auc_delong = c2.toggle("AUC's CI from DeLong", value=True, key="readers-auc-delong",
                       help="Off: the AUC's CI comes from the same resampling as the other metrics.")
auc_ci = C.CI_DELONG if auc_delong else ci
long = data.metric_table(ctx.src, ctx.run, ci, auc_ci, cohorts, "all", C.HEADLINE_METRICS)
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

st.subheader("Model and readers")
st.caption(f"GBM is the positive class; sensitivity is recall, PPV precision. 95% CI: {common.ci_name(ci)}; AUC: "
           f"{common.ci_name(auc_ci)}. Readers' AUC is from their binary calls, as in the paper.")
common.table(ctx, wide_table(long, C.HEADLINE_METRICS).rename(columns=HEADINGS), f"headline-table-{ci}",
             download=long.drop(columns=["subgroup"]))
st.caption(common.md(CUTOFF_NOTE))
common.ci_notes(long)

itd = data.metric_table(ctx.src, ctx.run, ci, auc_ci, tuple(shown), "all", ITD_METRICS)
if not itd.empty:
    st.markdown("**Intention to diagnose**: the patients the system could not process count as wrong.")
    common.table(ctx, wide_table(itd, ITD_METRICS), f"itd-table-{ci}", download=itd.drop(columns=["subgroup"]))

st.subheader("Forest plot")
forest = long.assign(cohort=long["cohort"].map(data.cohort_name), metric=long["metric"].map(lambda m: HEADINGS.get(m, m)))
common.chart(ctx, charts.forest(forest, y="who", color="cohort", column="metric",
                                title=f"Model and readers, 95% CI ({common.ci_name(ci)}; AUC: {common.ci_name(auc_ci)})",
                                column_order=[HEADINGS.get(m, m) for m in C.HEADLINE_METRICS]),
             f"forest-{ci}")

st.subheader("Paired differences")
diff = data.differences(ctx.src, ctx.run, tuple(shown))
if diff.empty:
    st.info("No paired differences: the lake has no reads for these cohorts (`gbmmet readers import`).",
            icon=":material/info:")
else:
    common.table(ctx, difference_view(diff), "differences", download=diff)
    st.caption(DIFFERENCES_NOTE)
    plot = diff.assign(
        comparison=[f"{difference_label(a)} - {difference_label(b)}" for a, b in zip(diff["a"], diff["b"], strict=True)],
        metric=diff["metric"].map(lambda m: HEADINGS.get(m, m)), cohort=diff["cohort"].map(data.cohort_name),
        primary=["yes" if p else "no" for p in is_primary(diff)], p_holm=diff["p_holm"].map(format_p))
    common.chart(ctx, charts.difference_forest(plot, title="Paired differences a - b, 95% CI (dashed: no difference)",
                                               column_order=[data.cohort_name(c) for c in C.SPLITS]),
                 "differences")

st.subheader("Patient flow")
flow = data.patient_flow(ctx.src, ctx.run)
flow = flow[flow["site"].isin(ctx.sites)]
if flow.empty:
    st.info("No patient flow for this run at the chosen sites: re-run `gbmmet evaluate` to write it.",
            icon=":material/info:")
else:
    st.caption("STARD: patients per cohort and site at each stage, every cohort of the run (the site filter "
               "applies). In manifest: every patient with a preprocessing attempt; failed: the latest attempt "
               "failed, by kind; read: read by each reader without the model.")
    common.table(ctx, flow_view(flow), "patient-flow", download=flow)
