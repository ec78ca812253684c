"""ROC: the model's predictive index per cohort, with the readers' operating points and both
cutoffs marked, and the AUC with DeLong's CI.

The curve, the points and the AUC are computed here from the lake's per-patient rows
(``patient_predictions``, ``reads``) for the patients of the chosen sites; over all of a cohort's
patients they equal the stored ``metrics`` (the tests check it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboards import charts, common, data
from gbmmet import constants as C
from gbmmet.stats import delong_roc_variance, roc_curve
from storage.queries import RATER_LABELS, format_estimate


def operating_points(pats: pd.DataFrame, reads: pd.DataFrame) -> pd.DataFrame:
    """(who, kind, fpr, tpr, n) of each cutoff and each reader, alone and with the model."""
    y = (pats["label"] == C.GBM).to_numpy()
    rows = []
    for kind, col in ((C.CUTOFF_PAPER, "call_paper"), (C.CUTOFF_VAL, "call_val")):
        called = (pats[col] == C.GBM).to_numpy()
        rows.append({"who": RATER_LABELS[kind], "kind": "cutoff", "fpr": called[~y].mean(),
                     "tpr": called[y].mean(), "n": len(y)})
    truth = dict(zip(pats["patient_id"], y, strict=True))
    for (reader, assisted), g in reads[reads["patient_id"].isin(truth)].groupby(["reader", "assisted"], sort=True):
        yy = g["patient_id"].map(truth).to_numpy(bool)
        called = (g["call"] == C.GBM).to_numpy()
        if yy.all() or not yy.any():
            continue
        rows.append({"who": reader + (" + model" if assisted else ""), "kind": "reader",
                     "fpr": called[~yy].mean(), "tpr": called[yy].mean(), "n": len(yy)})
    return pd.DataFrame(rows, columns=["who", "kind", "fpr", "tpr", "n"])


ctx = common.context()
st.title("ROC")
common.require(ctx, run=True, evaluated=True)
pats_all = common.evaluated_patients(ctx)
cut = data.cutoffs(ctx.src, ctx.run)
st.caption("Predictive index: the share of a patient's slices the folds' ensemble (majority vote) calls GBM. "
           "Cutoffs: " + "; ".join(f"{RATER_LABELS.get(k, k)} = {v:.3f}" for k, v in cut.items())
           + ". Diamonds: the model at each cutoff; circles: the readers. The model's calibration "
           "(P(GBM), reliability and decision curves) is on the Calibration page.")
reads_all = data.reads(ctx.src, ctx.run, tuple(pats_all["patient_id"]))
summary, panels = [], []
cohorts = [c for c in ctx.cohorts if c in set(pats_all["cohort"])]
cols = st.columns(max(len(cohorts), 1) + 1)
for k, cohort in enumerate(cohorts):
    pats = pats_all[pats_all["cohort"] == cohort]
    y = (pats["label"] == C.GBM).to_numpy(int)
    name = data.cohort_name(cohort)
    if y.all() or not y.any():
        st.warning(f"{name}: one diagnosis only among the chosen patients; no ROC.", icon=":material/warning:")
        continue
    fpr, tpr, thr = roc_curve(y, pats["predictive_index"])
    d = delong_roc_variance(y, pats["predictive_index"])
    auc_text = format_estimate(d.auc, d.ci_low, d.ci_high)
    cols[k].metric(f"AUC, {name}", f"{d.auc:.3f}", help=f"{auc_text}: 95% CI by DeLong's method")
    cols[k].caption(f"95% CI {d.ci_low:.3f} to {d.ci_high:.3f} (DeLong) · {len(y)} patients, {int(y.sum())} GBM")
    points = operating_points(pats, reads_all)
    curve = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.where(np.isinf(thr), np.nan, thr)})
    panels.append(charts.roc(curve, points, f"{name}: AUC {auc_text}"))
    summary.append(points.assign(cohort=name, auc=d.auc, auc_low=d.ci_low, auc_high=d.ci_high))
if panels:
    common.chart(ctx, charts.roc_panels(panels), "roc")

if summary:
    st.subheader("Operating points")
    ops = pd.concat(summary, ignore_index=True)
    view = ops.assign(sensitivity=ops["tpr"].round(3), specificity=(1 - ops["fpr"]).round(3))[
        ["cohort", "who", "kind", "n", "sensitivity", "specificity"]]
    common.table(ctx, view, "operating-points", download=ops)
