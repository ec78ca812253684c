"""Summary: what a department head decides from. Per test cohort, the model at the leakage-free
(validation) cutoff and each reader alone and with the model (sensitivity, specificity, AUC with
their CIs), the paired differences with a verdict against the evaluation's non-inferiority margin,
one sentence that follows from those numbers, n, and the patient flow; and the printable report
(the same PDF as ``gbmmet report``).

The numbers, verdicts and sentences come from ``gbmmet.summary`` through
``storage.report.collect`` (``data.report_data``): the page and the PDF cannot disagree.
"""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from dashboards import common, data
from gbmmet import constants as C
from gbmmet.summary import METRIC_NAMES, Flow
from storage.queries import FALLBACK_MARK, difference_label, format_estimate
from storage.report import estimate_text

VERDICT_HELP = ("Against the non-inferiority margin m, from the difference's 95 % CI: superior where its lower bound "
                "is above 0; non-inferior where the lower bound is above -m; inferior where the upper bound is below "
                "-m; inconclusive otherwise (and where there is no interval, or one of zero width). Never "
                "'equivalent', and never from a p value.")


def markdown_text(text: str) -> str:
    """Plain text for a markdown element: markdown's special characters escaped."""
    return re.sub(r"([\\`*_\[\]#<>|~$])", r"\\\1", text)


def rater_table(summary, ci: str) -> pd.DataFrame:
    return pd.DataFrame([{"rater": r.who, "n": r.n, "GBM": r.n_gbm, "sensitivity": estimate_text(r.sensitivity, ci),
                          "specificity": estimate_text(r.specificity, ci), "AUC": estimate_text(r.auc, C.CI_DELONG)}
                         for r in summary.raters], columns=["rater", "n", "GBM", "sensitivity", "specificity", "AUC"])


def comparison_table(summary) -> pd.DataFrame:
    return pd.DataFrame([{"a - b": f"{difference_label(c.a)} - {difference_label(c.b)}",
                          "metric": METRIC_NAMES.get(c.metric, c.metric), "n": c.n,
                          "difference (95% CI)": format_estimate(c.diff, c.low, c.high), "verdict": c.verdict}
                         for c in summary.comparisons],
                        columns=["a - b", "metric", "n", "difference (95% CI)", "verdict"])


def flow_dot(flow: Flow) -> str:
    """The cohort's patient flow (STARD) as a Graphviz graph: manifests -> preprocessed ->
    evaluated -> read, with the failures (by kind) and the unscored patients to the side."""
    def q(text: str) -> str:  # a DOT string: quotes and backslashes escaped, lines as DOT's \n
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    failed = "\n".join([f"Failed preprocessing: {flow.n_failed}"] + [f"{k}: {n}" for k, n in flow.failed])
    read = "\n".join(["Read without the model"] + [f"{r}: {n}" for r, n in flow.read]) if flow.read \
        else "Read without the model: none"
    lines = ['digraph flow {', 'rankdir=TB; bgcolor="white";',
             'node [shape=box, style="rounded", fontname="Helvetica", fontsize=11, color="#333333", fontcolor="#111111"];',
             'edge [color="#555555"];',
             f'manifest [label={q(f"In the manifests: {flow.in_manifest}")}];',
             f'pre [label={q(f"Preprocessed: {flow.preprocessed}")}];',
             f'failed [label={q(failed)}, color="{"#b2182b" if flow.n_failed else "#999999"}"];',
             f'evaluated [label={q(f"Evaluated: {flow.evaluated}")}];',
             f'read [label={q(read)}];',
             'manifest -> pre; manifest -> failed; pre -> evaluated; evaluated -> read;',
             '{rank=same; pre; failed;}']
    if flow.not_evaluated:
        lines += [f'unscored [label={q(f"Not evaluated: {flow.not_evaluated}")}];', 'pre -> unscored;',
                  '{rank=same; evaluated; unscored;}']
    return "\n".join(lines + ["}"])


def flow_alt(flow: Flow, name: str) -> str:
    """The flow diagram in words (for screen readers)."""
    failed = ", ".join(f"{k} {n}" for k, n in flow.failed)
    read = ", ".join(f"{r} {n}" for r, n in flow.read) or "none"
    return (f"Patient flow, {name}: {flow.in_manifest} in the manifests; {flow.preprocessed} preprocessed; "
            f"{flow.n_failed} failed preprocessing{f' ({failed})' if failed else ''}; {flow.evaluated} evaluated; "
            f"read without the model: {read}.")


ctx = common.context()
st.title("Summary")
common.require(ctx, run=True, evaluated=True)
ci = st.radio("95% CI of sensitivity and specificity", list(common.CI_NAMES), format_func=common.CI_NAMES.get,
              horizontal=True, key="summary-ci",
              help="The default is the stratified patient-level bootstrap (BCa). AUC: DeLong. The paired "
                   "differences' CIs do not depend on this choice.")
report = data.report_data(ctx.src, ctx.run, ci)
margin = f"{report.margin:.2f}"
st.caption(f"Run `{ctx.run}`. The model at its validation cutoff (Youden on the validation patients: no test "
           "patient used) against each reader, alone and with the model's result, per test cohort over all its "
           f"patients (the site filter does not apply here). Verdicts: the difference's 95% CI against the "
           f"non-inferiority margin of {margin} ({report.margin * 100:g} percentage points) stated in the "
           "evaluation's settings.", help=VERDICT_HELP)
if not report.margin_recorded:
    st.info(f"This evaluation was recorded before the margin was a setting: the default {margin} is used. "
            f"`gbmmet evaluate --lake {ctx.lake} --run {ctx.run} --margin M` records one.", icon=":material/info:")
if ctx.limited:  # the report is every test cohort's, every site's
    st.caption("The printable report covers every site of the lake: it is for viewers allowed every site.")
else:
    st.download_button("Download the report (PDF)", lambda: data.report_pdf(ctx.src, ctx.run, ci),
                       file_name=common.file_name(ctx, f"report-{ci}", "pdf"), mime="application/pdf",
                       key="report-pdf", on_click="ignore", icon=":material/picture_as_pdf:",
                       help="Summary, headline table, ROC, calibration, patient flow and the run's record, both "
                            "test cohorts: the same file as `gbmmet report`.")

chosen = [s.cohort for s in report.summaries if s.cohort in ctx.cohorts]
hidden = common.stored_note(ctx, chosen)
whole = common.stored_cohorts(ctx, chosen)  # over all a cohort's patients: whole cohorts only
shown = [s for s in report.summaries if s.cohort in whole]
if hidden and not shown:  # the note said why
    st.stop()
if not shown:
    st.info("Choose the internal test or external cohort in the sidebar: the summary is about the cohorts the "
            "readers read.", icon=":material/info:")
    st.stop()
flows = {f.cohort: f for f in report.flows}
for s in shown:
    st.subheader(f"{s.name[:1].upper()}{s.name[1:]}: {s.n} patients, {s.n_gbm} GBM")
    with st.container(border=True):
        st.markdown(markdown_text(s.sentence))
    if s.cutoff_note:
        st.warning(s.cutoff_note, icon=":material/warning:")
    common.table(ctx, rater_table(s, ci), f"summary-{s.cohort}-{ci}")
    if s.comparisons:
        common.table(ctx, comparison_table(s), f"summary-differences-{s.cohort}")
    if s.cohort in flows:
        st.markdown("**Patient flow**")
        st.graphviz_chart(flow_dot(flows[s.cohort]), alt=flow_alt(flows[s.cohort], s.name))
if any(FALLBACK_MARK in v for s in shown for v in rater_table(s, ci).to_numpy().ravel().astype(str)):
    st.caption(f"{FALLBACK_MARK} another interval than the one chosen: the percentile interval of the same resamples "
               "where BCa was undefined, or Wilson's where the bootstrap interval had zero width.")
st.caption("Differences a - b on the patients both rated: Newcombe's paired score interval for proportions, "
           "DeLong for AUC (the model's index against the reader's calls), the paired BCa bootstrap where the "
           "paper's cutoff is re-chosen. Every comparison with its p values is on the Model vs readers page.")
