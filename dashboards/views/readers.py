"""Model vs readers: the headline table with CIs and a forest plot; per-site rows where the site
filter is set; the paired differences (a - b, same patients) with their CIs, p and Holm-adjusted p,
and a forest plot of them; the patient flow."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts, common, compute, data, names
from gbmmet import constants as C
from storage.queries import format_estimate, format_p

ITD_METRICS = tuple(m + C.ITD_SUFFIX for m in ("accuracy", "recall", "specificity"))
DIFFERENCES_NOTE = (
    "a - b on the patients both rated; 95 % CI (the CI column says which, whatever is chosen above): "
    "Newcombe's score interval for paired proportions, DeLong for AUC, the paired BCa bootstrap where the "
    "paper cutoff is re-chosen in each resample (internal test). p: McNemar on all patients "
    "(accuracy), on GBMs (sensitivity), on METs (specificity); DeLong for AUC. Holm p: adjusted over every "
    "difference of the cohort (the family: {families}). ★ the primary comparison, named in the evaluation's "
    "settings before looking: its unadjusted p stands on its own. **A CI that includes 0 is not evidence of "
    "equivalence**: it says the data cannot tell the two apart, not that they are alike.")
SITE_RATES = ("accuracy", "sensitivity", "specificity", "PPV", "NPV")


def wide_table(long: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """One row per cohort and rater, one column per metric (its clinical name): 'value (low to
    high)' and its marks."""
    rows: dict[tuple, dict] = {}
    for r in long.itertuples(index=False):
        row = rows.setdefault((r.cohort, r.who), {"cohort": names.cohort_name(r.cohort), "rater": r.who, "n": r.n,
                                                  "GBM": r.n_gbm})
        row[names.metric_name(r.metric)] = common.estimate_cell(r.value, r.ci_low, r.ci_high, r.ci_method,
                                                                r.ci_choice)
    cols = ["cohort", "rater", "n", "GBM", *[names.metric_name(m) for m in metrics if m in set(long["metric"])]]
    return pd.DataFrame(list(rows.values()), columns=cols)


def difference_view(diff: pd.DataFrame) -> pd.DataFrame:
    """The differences as shown: the comparison (★ the primary one), a - b with its CI, p and
    Holm p as text. How each was tested is ``test_view``."""
    return pd.DataFrame({
        "cohort": diff["cohort"].map(names.cohort_name),
        "comparison": comparisons(diff),
        "metric": diff["metric"].map(names.metric_name),
        "n": diff["n"],
        "a vs b": [f"{format_estimate(a)} vs {format_estimate(b)}" for a, b in
                   zip(diff["estimate_a"], diff["estimate_b"], strict=True)],
        "a - b (95% CI)": [format_estimate(d, lo, hi) for d, lo, hi in
                           zip(diff["diff"], diff["ci_low"], diff["ci_high"], strict=True)],
        "p": diff["p"].map(format_p),
        "Holm p": diff["p_holm"].map(format_p),
    })


def test_view(diff: pd.DataFrame) -> pd.DataFrame:
    """How each difference was tested: its CI's method, the test, and the test's note (what it
    counted: the patients, the discordant pairs)."""
    return pd.DataFrame({
        "cohort": diff["cohort"].map(names.cohort_name),
        "comparison": comparisons(diff),
        "metric": diff["metric"].map(names.metric_name),
        "CI": diff["ci_method"].map(names.ci_name),
        "test": diff["test"].map(names.ci_name),
        "what the test counted": diff["note"].fillna("").map(names.readable_note),
    })


def comparisons(diff: pd.DataFrame) -> list[str]:
    """'a - b' by the raters' names, ★ before the primary comparison."""
    return [("★ " if p else "") + f"{names.difference_name(a)} - {names.difference_name(b)}"
            for p, a, b in zip(is_primary(diff), diff["a"], diff["b"], strict=True)]


def is_primary(diff: pd.DataFrame) -> list[bool]:
    return [bool(p) if pd.notna(p) else False for p in diff["is_primary"]]


def flow_view(flow: pd.DataFrame) -> pd.DataFrame:
    """One row per cohort and site, one column per stage (failures by kind, reads by reader)."""
    long = flow.assign(step=[flow_step(s, d) for s, d in zip(flow["stage"], flow["detail"], strict=True)],
                       cohort=flow["cohort"].map(names.cohort_name))
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


def site_view(rows: pd.DataFrame) -> pd.DataFrame:
    """``compute.site_rows`` as shown: each rate 'value (low to high)', Wilson's interval."""
    out = pd.DataFrame({"cohort": rows["cohort"].map(names.cohort_name), "site": rows["site"], "rater": rows["who"],
                        "n": rows["n"], "GBM": rows["n_gbm"]})
    for m in SITE_RATES:
        out[m] = [format_estimate(v, lo, hi) for v, lo, hi in
                  zip(rows[m], rows[f"{m}_low"], rows[f"{m}_high"], strict=True)]
    return out


def headline(ctx: common.Context, long: pd.DataFrame, shown: list[str], ci: str, auc_ci: str) -> None:
    """The stored headline metrics of the cohorts ``shown``, and their intention-to-diagnose rows."""
    st.subheader("Model and readers")
    st.caption(f"GBM is the positive class. 95% CI: {names.ci_name(ci)}; AUC: {names.ci_name(auc_ci)}. Readers' AUC "
               "is from their binary calls, as in the paper. Each cohort's metrics are over all its patients.")
    common.table(ctx, wide_table(long, C.HEADLINE_METRICS), f"headline-table-{ci}",
                 download=long.drop(columns=["subgroup"]))
    st.caption(names.CUTOFF_NOTE)
    common.ci_notes(long)

    itd = data.metric_table(ctx.src, ctx.run, ci, auc_ci, tuple(shown), "all", ITD_METRICS)
    if not itd.empty:
        st.markdown("**Intention to diagnose (ITD)**: the patients the system could not process count as wrong.")
        common.table(ctx, wide_table(itd, ITD_METRICS), f"itd-table-{ci}", download=itd.drop(columns=["subgroup"]))


def per_site(ctx: common.Context, pats: pd.DataFrame) -> None:
    """Rates computed here from the chosen sites' per-patient rows, with Wilson's intervals."""
    st.subheader("Per site")
    reads = data.reads(ctx.src, ctx.run, tuple(pats["patient_id"]))
    rows = compute.site_rows(pats, reads)
    st.caption("Computed here from the per-patient rows of the chosen sites (the model's calls at each cutoff and "
               "the readers' reads), with Wilson's 95 % score intervals: the stored metrics above are per cohort, "
               "over all its sites. The site filter chooses these rows.")
    common.table(ctx, site_view(rows), "per-site", download=rows)


def forest_plot(ctx: common.Context, long: pd.DataFrame, ci: str, auc_ci: str) -> None:
    st.subheader("Forest plot")
    forest = long.assign(cohort=long["cohort"].map(names.cohort_name), metric=long["metric"].map(names.metric_name))
    common.chart(ctx, charts.forest(forest, y="who", color="cohort", column="metric", color_title="cohort",
                                    title=f"Model and readers, 95% CI ({names.ci_name(ci)}; AUC: "
                                          f"{names.ci_name(auc_ci)})",
                                    column_order=[names.metric_name(m) for m in C.HEADLINE_METRICS],
                                    colour_scale=charts.cohort_scale(forest["cohort"])),
                 f"forest-{ci}")


def differences_section(ctx: common.Context, shown: list[str]) -> None:
    """The stored paired differences of the cohorts ``shown``: a table, how each was tested, a plot."""
    st.subheader("Paired differences")
    diff = data.differences(ctx.src, ctx.run, tuple(shown))
    if diff.empty:
        st.info("No paired differences: the lake has no reads for these cohorts (`gbmmet readers import`).",
                icon=":material/info:")
        return
    common.table(ctx, difference_view(diff), "differences", download=diff)
    families = "; ".join(f"{names.cohort_name(c)} {int(g['family_size'].max())} comparisons"
                         for c, g in diff.groupby("cohort", sort=False) if g["family_size"].notna().any())
    st.caption(DIFFERENCES_NOTE.format(families=families or "none"))
    st.markdown("**How each difference was tested**")
    common.table(ctx, test_view(diff), "difference-tests", download=diff)
    plot = diff.assign(
        comparison=[f"{names.difference_name(a)} - {names.difference_name(b)}"
                    for a, b in zip(diff["a"], diff["b"], strict=True)],
        metric=diff["metric"].map(names.metric_name), cohort=diff["cohort"].map(names.cohort_name),
        primary=["yes" if p else "no" for p in is_primary(diff)], p_holm=diff["p_holm"].map(format_p))
    common.chart(ctx, charts.difference_forest(plot, title="Paired differences a - b, 95% CI (dashed: no difference)",
                                               column_order=[names.cohort_name(c) for c in names.COHORT_ORDER]),
                 "differences")


def flow_section(ctx: common.Context) -> None:
    st.subheader("Patient flow")
    flow = data.patient_flow(ctx.src, ctx.run)
    flow = flow[flow["site"].isin(ctx.sites)]
    if flow.empty:
        st.info("No patient flow for this run at the chosen sites: re-run `gbmmet evaluate` to write it.",
                icon=":material/info:")
        return
    st.caption("STARD: patients per cohort and site at each stage, every cohort of the run (the site filter "
               "applies). In manifest: every patient with a preprocessing attempt; failed: the latest attempt "
               "failed, by kind; read: read by each reader without the model.")
    common.table(ctx, flow_view(flow), "patient-flow", download=flow)


ctx = common.context()
st.title("Model vs readers")
common.require(ctx, run=True, evaluated=True)
cohorts = ctx.cohorts

c1, c2 = st.columns([3, 2])
ci = c1.radio("95% CI of the metrics", list(names.CI_CHOICES), format_func=names.ci_name, horizontal=True,
              key="readers-ci", help="The default is the stratified patient-level bootstrap (BCa). The paper's "
              "subsampling is shown as a reproduction only: its intervals are far too narrow.")
auc_delong = c2.toggle("AUC's CI from DeLong", value=True, key="readers-auc-delong",
                       help="Off: the AUC's CI comes from the same resampling as the other metrics.")
auc_ci = C.CI_DELONG if auc_delong else ci
pats = common.evaluated_patients(ctx)
# stored metrics are per cohort, over all its patients: only cohorts whose every site the viewer may see
shown = list(common.stored_cohorts(ctx, [c for c in cohorts if c in set(pats["cohort"])]))
common.stored_note(ctx, [c for c in cohorts if c in set(pats["cohort"])])
long = data.metric_table(ctx.src, ctx.run, ci, auc_ci, cohorts, "all", C.HEADLINE_METRICS)
long = long[long["cohort"].isin(shown)]
if long.empty and not ctx.limited:
    st.info("No metrics for the chosen cohorts and sites. Internal test and external cohorts are read by the "
            "readers; choose them in the sidebar.", icon=":material/info:")
    st.stop()

if not long.empty:
    headline(ctx, long, shown, ci, auc_ci)
if ctx.limited or common.filter_is_set(ctx) or pats.groupby("cohort")["site"].nunique().gt(1).any():
    per_site(ctx, pats)
if not long.empty:
    forest_plot(ctx, long, ci, auc_ci)
if shown:
    differences_section(ctx, shown)
flow_section(ctx)
