"""ROC: the model's predictive index per cohort, with the readers' operating points and both
cutoffs marked (95 % Wilson intervals on sensitivity and specificity), and the AUC with DeLong's CI.

The curve, the points and the AUC are computed here from the lake's per-patient rows
(``patient_predictions``, ``reads``) for the patients of the chosen sites; over all of a cohort's
patients they equal the stored ``metrics`` (the tests check it). The curve is drawn straight
through its points (``charts.roc_points``): patients who share an index move it diagonally, so
the area under the drawn curve is the AUC stated beside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboards import charts, common, compute, data, names
from gbmmet import constants as C
from gbmmet.stats import delong_roc_variance
from storage.queries import format_estimate

ctx = common.context()
st.title("ROC")
common.require(ctx, run=True, evaluated=True)
pats_all = common.evaluated_patients(ctx)
cut = data.cutoffs(ctx.src, ctx.run)
st.caption("Predictive index: the share of a patient's slices the folds' ensemble (majority vote) calls GBM. "
           "Cutoffs: " + "; ".join(f"{names.cutoff_name(k)} = {cut[k]:.3f}" for k in names.CUTOFF_ORDER if k in cut)
           + ". The curve joins the ROC points in order: patients who share an index make one diagonal segment "
           "(ties count one half, as in the AUC). Diamonds: the model at each cutoff; circles: the readers; bars: "
           "95 % CIs of sensitivity and specificity by Wilson's score interval. The model's calibration "
           "(P(GBM), reliability and decision curves) is on the Calibration page.")
reads_all = data.reads(ctx.src, ctx.run, tuple(pats_all["patient_id"]))
summary, panels = [], []
cohorts = [c for c in ctx.cohorts if c in set(pats_all["cohort"])]
cols = st.columns(max(len(cohorts), 1) + 1)
for k, cohort in enumerate(cohorts):
    pats = pats_all[pats_all["cohort"] == cohort]
    y = (pats["label"] == C.GBM).to_numpy(int)
    name = names.cohort_name(cohort)
    if y.all() or not y.any():
        st.warning(f"{name}: one diagnosis only among the chosen patients; no ROC.", icon=":material/warning:")
        continue
    curve = charts.roc_points(y, pats["predictive_index"])
    d = delong_roc_variance(y, pats["predictive_index"])
    auc_text = format_estimate(d.auc, d.ci_low, d.ci_high)
    cols[k].metric(f"AUC, {name}", f"{d.auc:.3f}", help=f"{auc_text}: 95% CI by DeLong's method")
    ci_text = (f"95% CI {d.ci_low:.3f} to {d.ci_high:.3f} (DeLong)" if np.isfinite([d.ci_low, d.ci_high]).all()
               else "95% CI undefined: too few patients for DeLong's")
    cols[k].caption(f"{ci_text} · {len(y)} patients, {int(y.sum())} GBM")
    points = compute.operating_points(pats, reads_all)
    summary.append(points.assign(cohort=name, auc=d.auc, auc_low=d.ci_low, auc_high=d.ci_high))
    panels.append((name, auc_text, curve, points))
if panels:
    ops = pd.concat(summary, ignore_index=True)
    who = list(dict.fromkeys(ops["who"]))  # one colour per rater on every panel
    common.chart(ctx, charts.roc_panels([charts.roc(curve, points, f"{name}: AUC {auc}", who_order=who)
                                         for name, auc, curve, points in panels]), "roc")

if summary:
    st.subheader("Operating points")
    st.caption("Sensitivity and specificity at each operating point of the chosen sites' patients, with Wilson's "
               "95 % score interval (statsmodels' proportion_confint).")
    view = pd.DataFrame({"cohort": ops["cohort"], "rater": ops["who"], "kind": ops["kind"], "n": ops["n"],
                         "GBM": ops["n_gbm"], "sensitivity": ops["sensitivity_ci"],
                         "specificity": ops["specificity_ci"]})
    common.table(ctx, view, "operating-points", download=ops)
