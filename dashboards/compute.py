"""What the pages compute from per-patient rows (``data.patient_predictions``, ``data.reads``)
rather than read from ``metrics``: operating points with Wilson intervals, per-site rows, the
subgroups a metric cannot be shown for. Plain frames in, frames out; no Streamlit, so tested on
their own.

Intervals here are Wilson's score intervals (``gbmmet.stats.wilson_interval``, i.e. statsmodels'
``proportion_confint(method="wilson")``) of k / m: a closed form, right for the few patients of a
site or an operating point, and defined at 0 / m and m / m.
"""

from __future__ import annotations

import math

import pandas as pd

from dashboards import names
from gbmmet import constants as C
from gbmmet.stats import wilson_interval
from storage.queries import format_estimate

CALL_COLUMNS = {C.CUTOFF_VAL: "call_val", C.CUTOFF_PAPER: "call_paper"}
# (shown name, numerator, denominator) of each proportion, from a confusion matrix
RATES = (("accuracy", ("tp", "tn"), ("tp", "fp", "tn", "fn")), ("sensitivity", ("tp",), ("tp", "fn")),
         ("specificity", ("tn",), ("tn", "fp")), ("PPV", ("tp",), ("tp", "fp")), ("NPV", ("tn",), ("tn", "fn")))


def wilson(k: int, m: int) -> tuple[float, float, float]:
    """(k / m, low, high), Wilson's 95 % interval; NaNs where m is 0."""
    if m <= 0:
        return math.nan, math.nan, math.nan
    low, high = wilson_interval(k, m)
    return k / m, low, high


def calls(pats: pd.DataFrame, reads: pd.DataFrame) -> pd.DataFrame:
    """One row per patient and rater: cohort, site, patient_id, who, kind (cutoff or reader),
    gbm (the truth), called (the call was GBM). The model at each cutoff (validation first), then
    each reader alone and with the model, on the patients of ``pats`` they read."""
    base = pats[["cohort", "site", "patient_id"]].assign(gbm=(pats["label"] == C.GBM).to_numpy())
    parts = [base.assign(who=names.model_name(kind), kind="cutoff", called=(pats[col] == C.GBM).to_numpy())
             for kind, col in CALL_COLUMNS.items()]
    if not reads.empty:
        r = reads.merge(base, on="patient_id", how="inner")
        r = r.sort_values(["reader", "assisted"], kind="stable")
        parts.append(pd.DataFrame({
            "cohort": r["cohort"], "site": r["site"], "patient_id": r["patient_id"], "gbm": r["gbm"],
            "who": [names.rater_name(a, bool(b), None) for a, b in zip(r["reader"], r["assisted"], strict=True)],
            "kind": "reader", "called": (r["call"] == C.GBM).to_numpy()}))
    out = pd.concat(parts, ignore_index=True)
    return out.astype({"gbm": bool, "called": bool})


def confusion(g: pd.DataFrame) -> dict[str, int]:
    y, c = g["gbm"].to_numpy(bool), g["called"].to_numpy(bool)
    return {"tp": int((y & c).sum()), "fp": int((~y & c).sum()), "tn": int((~y & ~c).sum()), "fn": int((y & ~c).sum())}


def rates(g: pd.DataFrame) -> dict:
    """n, GBMs, the confusion counts, and each of ``RATES`` with its Wilson interval
    (``<name>``, ``<name>_low``, ``<name>_high``)."""
    cm = confusion(g)
    out: dict = {"n": len(g), "n_gbm": cm["tp"] + cm["fn"], **cm}
    for name, num, den in RATES:
        v, lo, hi = wilson(sum(cm[k] for k in num), sum(cm[k] for k in den))
        out.update({name: v, f"{name}_low": lo, f"{name}_high": hi})
    return out


def operating_points(pats: pd.DataFrame, reads: pd.DataFrame) -> pd.DataFrame:
    """Per rater over ``pats`` (one cohort): who, kind, n, fpr and tpr with their Wilson 95 %
    intervals (``fpr_low`` .. ``tpr_high``; fpr's from specificity's), the rates, and the intervals
    as text (``sensitivity_ci``, ``specificity_ci``). A reader who read patients of one diagnosis
    only is left out (no point on a ROC plane)."""
    rows = []
    for (who, kind), g in calls(pats, reads).groupby(["who", "kind"], sort=False):
        r = rates(g)
        if r["n_gbm"] in (0, r["n"]):
            continue
        rows.append({"who": who, "kind": kind, **r,
                     "tpr": r["sensitivity"], "tpr_low": r["sensitivity_low"], "tpr_high": r["sensitivity_high"],
                     "fpr": 1 - r["specificity"], "fpr_low": 1 - r["specificity_high"],
                     "fpr_high": 1 - r["specificity_low"]})
    cols = ["who", "kind", "n", "n_gbm", "tp", "fp", "tn", "fn", "fpr", "fpr_low", "fpr_high", "tpr", "tpr_low",
            "tpr_high"] + [f"{n}{s}" for n, _, _ in RATES for s in ("", "_low", "_high")]
    out = pd.DataFrame(rows, columns=cols)
    for name in ("sensitivity", "specificity"):
        out[f"{name}_ci"] = [format_estimate(v, lo, hi) for v, lo, hi in
                             zip(out[name], out[f"{name}_low"], out[f"{name}_high"], strict=True)]
    return out


def site_rows(pats: pd.DataFrame, reads: pd.DataFrame) -> pd.DataFrame:
    """Per cohort, site and rater, the rates over that site's patients with Wilson intervals,
    in the cohort order (raters as ``calls`` orders them)."""
    rows = [{"cohort": cohort, "site": site, "who": who, **rates(g)}
            for (cohort, site, who), g in calls(pats, reads).groupby(["cohort", "site", "who"], sort=False)]
    cols = ["cohort", "site", "who", "n", "n_gbm", "tp", "fp", "tn", "fn"] + [
        f"{n}{s}" for n, _, _ in RATES for s in ("", "_low", "_high")]
    out = pd.DataFrame(rows, columns=cols)
    return names.by_cohort(out.sort_values(["site"], kind="stable"))


def missing_subgroups(patients: pd.DataFrame, shown: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The location subgroups (and, for specificity, the METs' primaries) that ``patients`` (one
    row per evaluated patient: cohort, label, location, primary_tumor) have but ``shown`` (metrics
    rows: cohort, subgroup) does not, with their patients and GBMs and why: a subgroup of one
    diagnosis has no AUC, PPV, NPV or F1, and no sensitivity without GBMs."""
    want = []
    for cohort, g in patients.groupby("cohort", sort=False):
        for loc, h in g.groupby("location", sort=True):
            if isinstance(loc, str) and loc:
                want.append((cohort, f"location={loc}", h))
        if metric == "specificity":
            mets = g[g["label"] == C.MET]
            for prim, h in mets.groupby("primary_tumor", sort=True):
                if isinstance(prim, str) and prim:
                    want.append((cohort, f"primary={prim}", h))
    have = set(zip(shown["cohort"], shown["subgroup"], strict=True))
    rows = []
    for cohort, sub, h in want:
        if (cohort, sub) in have:
            continue
        n, n_gbm = len(h), int((h["label"] == C.GBM).sum())
        if n_gbm in (0, n):
            why = f"only {'GBMs' if n_gbm else 'METs'}: {names.metric_name(metric)} needs " + (
                "GBMs" if metric == "recall" else "METs" if metric == "specificity" else "both diagnoses")
        else:
            why = "no row in the lake for it"
        rows.append({"cohort": cohort, "subgroup": sub, "n": n, "n_gbm": n_gbm, "why": why})
    return names.by_cohort(pd.DataFrame(rows, columns=["cohort", "subgroup", "n", "n_gbm", "why"]))

