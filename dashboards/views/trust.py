"""Trust: when not to trust the model's call. The risk-coverage curve (accuracy of the calls kept as
the least certain are deferred), the conformal sets' coverage per class at 90 % and 95 %, and the
deferral rule (defer when the 90 % set is not one label, or the patient lies outside the training
data): the share deferred and the accuracy of the calls kept, internal against external, with
Wilson intervals; and the patients of the chosen sites whose call is deferred.

A page of its own rather than a section of Calibration: calibration asks whether P(GBM) is right on
average; this page asks which single calls to hand back to a radiologist. The curve and the tables
are the evaluation's, per cohort (whole cohorts only, as every stored number); the list of patients
is computed from per-patient rows, so the site filter applies.
"""

from __future__ import annotations

import streamlit as st

from dashboards import charts, common, data
from dashboards import trust as T
from gbmmet import constants as C

ctx = common.context()
st.title("Trust")
common.require(ctx, run=True, evaluated=True)
pats = common.evaluated_patients(ctx)
st.caption("When not to trust a call: how accuracy rises as the least certain calls are handed to the readers, "
           "how often the conformal sets hold the right diagnosis, and what the deferral rule (defer where the "
           f"{round(C.DEFERRAL_LEVEL * 100)} % set is not one label, or the patient lies outside the training data) "
           "keeps and costs.")
visible = tuple(c for c in ctx.cohorts if c in set(pats["cohort"]))
cohorts = common.stored_cohorts(ctx, visible)  # stored per cohort: whole cohorts only
common.stored_note(ctx, visible)
metrics = data.trust_metrics(ctx.src, ctx.run, cohorts)
points = data.calibration(ctx.src, ctx.run, cohorts)
curve = points[points["curve"] == C.CURVE_RISK_COVERAGE]

if cohorts and curve.empty and metrics.empty:
    st.info(f"Conformal sets, the OOD flag and deferral are {T.NOT_COMPUTED}: it was evaluated before they were "
            f"stored. `gbmmet evaluate --lake {ctx.lake} --run {ctx.run}` again computes them.",
            icon=":material/info:")
elif cohorts:
    st.subheader("Risk-coverage")
    if curve.empty:
        st.info(f"The risk-coverage curve is {T.NOT_COMPUTED}.", icon=":material/info:")
    else:
        st.caption("Patients ordered by their total predictive entropy, most certain first: each point is the "
                   "accuracy of the calls (at the validation cutoff) of the patients kept when the rest are "
                   "deferred. A curve that rises to the left means the uncertainty points at the wrong calls. "
                   "Diamonds: where the deferral rule lands.")
        common.chart(ctx, charts.risk_coverage(curve, T.operating_points(metrics)), "risk-coverage")

    st.subheader("Conformal sets")
    st.caption("Each patient gets a set of labels: one (the model is sure enough), both (it is not), or none "
               "(the patient is unlike both classes). Coverage: the share of patients whose set holds their "
               "diagnosis. At 90 %, about 9 patients in 10 should be covered, in each class. That promise holds "
               "when the patients are exchangeable with those the sets were calibrated on: an external site (another "
               "scanner, another population) can break it, so its coverage is measured here, not promised. "
               "Intervals: Wilson 95 %.")
    common.table(ctx, T.conformal_table(metrics, cohorts), "conformal-coverage", download=metrics)

    st.subheader("Deferral to the readers")
    st.caption(f"The rule: defer where the {round(C.DEFERRAL_LEVEL * 100)} % set is not one label (both, or "
               "empty) or the out-of-distribution flag is up. The calls kept are those the model makes alone; "
               "their accuracy against that of all calls is what deferring buys, the share deferred what it costs "
               "the readers. Intervals: Wilson 95 %.")
    common.table(ctx, T.deferral_table(metrics, cohorts), "deferral", download=metrics)
elif not visible:
    st.info("Choose a cohort in the sidebar.", icon=":material/info:")

st.subheader("Patients deferred")
trust = data.patient_trust(ctx.src, ctx.run, ctx.cohorts, ctx.sites)
if trust[C.COL_DEFERRED].isna().all():
    st.caption(f"Which patients are deferred: {T.NOT_COMPUTED}.")
else:
    deferred = T.deferred_patients(trust)
    st.caption(f"{len(deferred)} of {len(trust)} patients of the chosen cohorts and sites are deferred to the readers. "
               "Open one in the Patient viewer (its id) for its sets, uncertainty and distance to the training data.")
    if len(deferred):
        common.table(ctx, deferred, "deferred-patients",
                     download=trust[trust[C.COL_DEFERRED].fillna(False).astype(bool)])
