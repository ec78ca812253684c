"""When not to trust a call, in the dashboard's words: the plain-language line of one patient, the
figures of its uncertainty, and the tables of a cohort's conformal coverage and deferral. Plain
dicts and frames in, text and frames out; no Streamlit, so tested on their own (the Trust page,
``views/trust.py``, and the patient viewer draw them).

What the lake holds (``storage.schemas.PATIENT_PREDICTIONS``; evaluation writes it through
``gbmmet.trust``): per patient the conformal sets at 90 % and 95 %, the fold ensemble's spread and
entropy split, the out-of-distribution (OOD) distance with its threshold, and whether the call is
deferred to the readers; per cohort the ``metrics`` rows named here (``conformal_metric``,
``DEFERRAL_METRICS``). A lake evaluated before these existed holds nulls: "not computed for this
run", never an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from dashboards import names
from gbmmet import constants as C
from gbmmet.ood import FEATURES, SEQUENCES, ood_reasons
from gbmmet.trust import DEFER, DISAGREES, NOT_COMPUTED, ONE_LABEL, UNKNOWN, explain, labels_of  # noqa: F401
from storage.queries import format_estimate

NBSP = "\u00a0"  # "90 %" kept on one line in a narrow table column
#: The per-patient columns of ``patient_predictions`` this module reads.
PATIENT_COLUMNS = C.TRUST_COLUMNS
# The conformal metrics of a level (``gbmmet.conformal.coverage_rows``), as the tables name them.
CONFORMAL_PARTS = {"conformal_coverage": "coverage", "conformal_coverage_gbm": "coverage of GBMs",
                   "conformal_coverage_met": "coverage of METs", "conformal_two_label": "two-label sets",
                   "conformal_empty": "empty sets"}
# The deferral rule's metrics (``gbmmet.selective.Deferral.rows``).
DEFERRAL_METRICS = {"deferred_share": "deferred", "accuracy_kept": "accuracy of the calls kept",
                    "accuracy_all": "accuracy of all calls"}

# The patient line's kinds: the page draws each in its own colour (and says it in words).


def conformal_metric(part: str, level: float) -> str:
    """A conformal metric's name in ``metrics``: ``("conformal_coverage", 0.9)`` ->
    ``conformal_coverage_90``."""
    return part + C.level_suffix(level)


def trust_metric_names() -> tuple[str, ...]:
    """Every ``metrics`` name the Trust page reads: the conformal parts at each level, then the
    deferral rule's."""
    return (*(conformal_metric(p, lv) for lv in C.CONFORMAL_LEVELS for p in CONFORMAL_PARTS), *DEFERRAL_METRICS)


def _missing(value) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def set_labels(set_string) -> tuple[str, ...] | None:
    """The labels of a stored set (``gbmmet.trust.labels_of``; pandas' nulls too)."""
    return None if _missing(set_string) else labels_of(set_string)


def set_text(set_string) -> str:
    """A set as a reader writes it: ``{GBM, MET}``, ``{MET}``, ``{} (empty)``, or
    ``NOT_COMPUTED``."""
    labels = set_labels(set_string)
    if labels is None:
        return NOT_COMPUTED
    return "{" + ", ".join(labels) + "}" + ("" if labels else " (empty)")


def _pct(level: float) -> str:
    return f"{round(level * 100)} %"


def patient_line(row: Mapping, level: float = C.DEFERRAL_LEVEL) -> tuple[str, str]:
    """``gbmmet.trust.explain`` of one patient's ``patient_predictions`` values (``PATIENT_COLUMNS``;
    missing keys and nulls: not computed; ``call_val``: the call at the validation cutoff)."""
    def value(key):
        v = row.get(key)
        return None if _missing(v) else v

    return explain(value(C.set_column(level)), level, value(C.COL_OOD), value(C.COL_OOD_SCORE),
                   value(C.COL_OOD_THRESHOLD), value("call_val"), distance=value(C.COL_OOD_DISTANCE),
                   contrast=value(C.COL_SEQUENCE_CONTRAST))


def _num(value, digits: int = 3) -> str:
    return NOT_COMPUTED if _missing(value) else f"{value:.{digits}f}"


def uncertainty_figures(row: Mapping) -> dict[str, str]:
    """The patient's uncertainty as shown: fold spread, entropy total with its split, the OOD
    distance against its threshold; ``NOT_COMPUTED`` where null."""
    total, alea, mi = (row.get(k) for k in (C.COL_ENTROPY_TOTAL, C.COL_ENTROPY_ALEATORIC, C.COL_MUTUAL_INFORMATION))
    split = ("" if _missing(alea) or _missing(mi)
             else f"{alea:.3f} aleatoric (the slices are ambiguous) + {mi:.3f} epistemic (the folds disagree)")
    threshold, ood, contrast = (row.get(k) for k in (C.COL_OOD_THRESHOLD, C.COL_OOD, C.COL_SEQUENCE_CONTRAST))
    score, outside = row.get(C.COL_OOD_DISTANCE), None if _missing(ood) else bool(ood)
    if _missing(score):  # evaluated before the score had two parts: the score was the distance
        score = row.get(C.COL_OOD_SCORE)
    elif outside is not None:  # the flag's feature part alone
        outside = FEATURES in ood_reasons(score, None, threshold)
    if _missing(score):
        distance = NOT_COMPUTED
    else:
        distance = f"{score:.3g}" + ("" if _missing(threshold) else f" (threshold {threshold:.3g})")
    flag = NOT_COMPUTED if outside is None else f"{'outside' if outside else 'inside'} what the model was trained on"
    sequences = (NOT_COMPUTED if _missing(contrast) else
                 f"{contrast:.3g} (T2 brighter than CE-T1, as expected)" if SEQUENCES not in ood_reasons(None, contrast, None)
                 else f"{contrast:.3g} (CE-T1 brighter than T2: check the sequences are not swapped)")
    return {"fold spread": _num(row.get(C.COL_INDEX_FOLD_SD)), "entropy": _num(total),
            "entropy split": split, "distance": distance, "training data": flag, "sequence contrast": sequences}


def _cell(rows: pd.DataFrame, metric: str, undefined: str = "undefined (no patients)") -> str:
    """A metric's ``value (low to high)``; ``undefined`` where its denominator was 0."""
    hit = rows[rows["metric"] == metric]
    if hit.empty:
        return NOT_COMPUTED
    r = hit.iloc[0]
    return format_estimate(r["value"], r["ci_low"], r["ci_high"]) or undefined


def conformal_table(metrics: pd.DataFrame, cohorts) -> pd.DataFrame:
    """One row per cohort and level: coverage overall and per class, shares of two-label and
    empty sets, each ``value (low to high)`` (Wilson 95 %), ``NOT_COMPUTED`` where the lake has
    no row. ``metrics``: rows with cohort, metric, value, ci_low, ci_high, n."""
    out = []
    for cohort in cohorts:
        mine = metrics[metrics["cohort"] == cohort]
        for level in C.CONFORMAL_LEVELS:
            row = {"cohort": names.cohort_name(cohort), "level": _pct(level).replace(" ", NBSP)}
            row.update({label: _cell(mine, conformal_metric(part, level)) for part, label in CONFORMAL_PARTS.items()})
            row["patients"] = _patients(mine)
            out.append(row)
    return pd.DataFrame(out, columns=["cohort", "level", *CONFORMAL_PARTS.values(), "patients"])


def _patients(rows: pd.DataFrame) -> str:
    n = rows["n"].dropna()
    return str(int(n.iloc[0])) if len(n) else ""


def kept(rows: pd.DataFrame) -> int | None:
    """Patients whose call is kept (not deferred), from a cohort's ``deferred_share`` row."""
    hit = rows[rows["metric"] == "deferred_share"]
    if hit.empty or _missing(hit["value"].iloc[0]) or _missing(hit["n"].iloc[0]):
        return None
    return int(round(int(hit["n"].iloc[0]) * (1 - float(hit["value"].iloc[0]))))


def deferral_table(metrics: pd.DataFrame, cohorts) -> pd.DataFrame:
    """One row per cohort: the share deferred, the accuracy of the calls kept and of all calls
    (Wilson 95 %), and how many patients are kept of how many."""
    out = []
    for cohort in cohorts:
        mine = metrics[metrics["cohort"] == cohort]
        row = {"cohort": names.cohort_name(cohort)}
        row.update({label: _cell(mine, metric, "none: every call deferred" if metric == "accuracy_kept"
                                 else "undefined (no patients)") for metric, label in DEFERRAL_METRICS.items()})
        k, n = kept(mine), _patients(mine)
        row["kept"] = f"{k} of {n}" if k is not None else NOT_COMPUTED
        out.append(row)
    return pd.DataFrame(out, columns=["cohort", *DEFERRAL_METRICS.values(), "kept"])


def operating_points(metrics: pd.DataFrame) -> pd.DataFrame:
    """Where the deferral rule lands on each cohort's risk-coverage curve: x the share kept
    (1 - deferred share), y the accuracy of the calls kept; cohorts without both rows left out."""
    out = []
    for cohort, rows in metrics.groupby("cohort", sort=False):
        d = rows.set_index("metric")["value"]
        share, acc = d.get("deferred_share"), d.get("accuracy_kept")
        if not (_missing(share) or _missing(acc)):
            out.append({"cohort": cohort, "x": 1 - float(share), "y": float(acc)})
    return names.by_cohort(pd.DataFrame(out, columns=["cohort", "x", "y"]))


def deferred_patients(trust: pd.DataFrame) -> pd.DataFrame:
    """The patients whose call is deferred, with why and their set, in the frame's order
    (``trust``: rows of ``data.patient_trust``)."""
    rows = trust[trust[C.COL_DEFERRED].fillna(False).astype(bool)]
    return pd.DataFrame({"cohort": rows["cohort"].map(names.cohort_name), "site": rows["site"],
                         "patient": rows["patient_id"], "label": rows["label"],
                         f"set at {_pct(C.DEFERRAL_LEVEL)}": rows[C.set_column(C.DEFERRAL_LEVEL)].map(set_text),
                         "why": rows[C.COL_DEFER_REASON].fillna("")})
