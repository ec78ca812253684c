"""What the dashboard calls things, and in which order: cohorts, cutoffs, raters, metrics, CI
methods, subgroups, and the glossary. One place, imported by every page and chart, so a name or
the cohort order is changed once.

A module of its own (not ``common``): the charts and the loaders use it too, and they import no
page code (``common`` imports both).
"""

from __future__ import annotations

import pandas as pd

from gbmmet import constants as C

# -- cohorts ----------------------------------------------------------------------------------
# ONE order everywhere: the sidebar's choices, every table's rows, every chart's panels and legend.
COHORT_ORDER = (C.TEST, C.EXTERNAL, C.VAL)
ALL_COHORTS = (*COHORT_ORDER, C.TRAIN)  # training patients appear only in counts and the flow
COHORT_NAMES = {C.TEST: "internal test", C.EXTERNAL: "external", C.VAL: "validation", C.TRAIN: "training"}


def cohort_name(cohort: str) -> str:
    return COHORT_NAMES.get(cohort, cohort)


def cohort_rank(cohort: str) -> int:
    """The cohort's place in ``ALL_COHORTS`` (by key or display name); unknown ones last."""
    for k, c in enumerate(ALL_COHORTS):
        if cohort in (c, COHORT_NAMES[c]):
            return k
    return len(ALL_COHORTS)


def in_cohort_order(cohorts) -> list[str]:
    """The distinct cohorts (keys or display names) in the one order."""
    return sorted(dict.fromkeys(cohorts), key=cohort_rank)


def by_cohort(df: pd.DataFrame, column: str = "cohort") -> pd.DataFrame:
    """``df``'s rows in the cohort order (stable: the order within a cohort is kept)."""
    if df.empty or column not in df:
        return df
    return df.iloc[df[column].map(cohort_rank).argsort(kind="stable")].reset_index(drop=True)


# -- the model's two cutoffs, and who rated -----------------------------------------------------
CUTOFF_ORDER = (C.CUTOFF_VAL, C.CUTOFF_PAPER)
CUTOFF_NAMES = {C.CUTOFF_VAL: "validation cutoff", C.CUTOFF_PAPER: "paper cutoff (chosen on the internal test)"}
CUTOFF_NOTE = ("The validation cutoff is Youden's on the validation patients' predictive index: no test patient "
               "chose it. The paper cutoff is Youden's on the internal test itself, as in the paper: optimistic "
               "there (its internal-test interval re-chooses the cutoff in every resample, so the optimism is "
               "inside the interval); on the external cohort it is as fair as the other.")
MODEL = C.MODEL_RATER


def cutoff_name(kind: str) -> str:
    return CUTOFF_NAMES.get(kind, kind)


def model_name(kind: str) -> str:
    """The model at a cutoff, as a rater: ``model, validation cutoff``."""
    return f"{MODEL}, {cutoff_name(kind)}"


def rater_name(rater: str, assisted: bool | None, cutoff_kind: str | None) -> str:
    """How a metrics row's rater is shown: the model at each cutoff, readers alone or with the model."""
    if rater == MODEL:
        return model_name(cutoff_kind) if cutoff_kind else MODEL
    return rater + (" + model" if assisted is True else "")


def difference_name(key: str) -> str:
    """A ``differences`` rater key as shown: ``model@<cutoff>`` -> ``model, validation cutoff``;
    ``model`` -> ``model (predictive index)``; ``reader1+assisted`` -> ``reader1 + model``."""
    from storage.queries import ASSISTED_SUFFIX, MODEL_AT

    if key == MODEL:  # the AUC's comparisons: the index itself, at no cutoff
        return f"{MODEL} (predictive index)"
    if key.startswith(MODEL_AT):
        return model_name(key[len(MODEL_AT):])
    if key.endswith(ASSISTED_SUFFIX):
        return rater_name(key[: -len(ASSISTED_SUFFIX)], True, None)
    return key


def readable_note(note: str) -> str:
    """A stored test note with its rater keys named as everywhere else (``model@<cutoff>``,
    ``reader1+assisted``)."""
    import re

    from storage.queries import ASSISTED_SUFFIX, MODEL_AT

    note = re.sub(re.escape(MODEL_AT) + r"(\w+)", lambda m: model_name(m[1]), note)
    return re.sub(r"(\w+)" + re.escape(ASSISTED_SUFFIX), lambda m: rater_name(m[1], True, None), note)


# -- metrics ----------------------------------------------------------------------------------
METRIC_NAMES = {"accuracy": "accuracy", "recall": "sensitivity", "specificity": "specificity", "precision": "PPV",
                "npv": "NPV", "f1": "F1", "auc": "AUC", C.AUC_CONFIDENCE: "AUC (reader confidence)",
                "brier": "Brier score", "calibration_intercept": "calibration intercept",
                "calibration_slope": "calibration slope"}


def metric_name(metric: str) -> str:
    """``recall`` -> ``sensitivity``, ``precision`` -> ``PPV``; intention-to-diagnose variants
    keep the mark: ``recall_itd`` -> ``sensitivity (ITD)``."""
    if metric.endswith(C.ITD_SUFFIX):
        return metric_name(metric[: -len(C.ITD_SUFFIX)]) + " (ITD)"
    return METRIC_NAMES.get(metric, metric)


# -- confidence intervals ---------------------------------------------------------------------
SUBSAMPLE_MARK = "\u00a7"  # section sign: the paper's subsampling (storage.queries.SUBSAMPLE_MARK)
CI_CHOICES = (C.CI_BCA, C.CI_PERCENTILE, C.CI_SUBSAMPLE)  # the default first
CI_NAMES = {
    C.CI_BCA: "bootstrap BCa (default)",
    C.CI_PERCENTILE: "bootstrap percentile",
    C.CI_SUBSAMPLE: f"paper's 90 % subsampling {SUBSAMPLE_MARK}",
    C.CI_DELONG: "DeLong",
    "wilson": "Wilson",
    "newcombe": "Newcombe",
    "mcnemar": "McNemar",
}


def ci_name(method: str | None) -> str:
    return "" if method is None else CI_NAMES.get(method, method.replace("_", " "))


# -- subgroups --------------------------------------------------------------------------------
LOCATION_NAMES = {C.SUPRA: "supratentorial", C.INFRA: "infratentorial"}
PRIMARY_NAMES = {"lung": "lung", "breast": "breast", "gi": "gastrointestinal", "gu": "genitourinary",
                 "other": "other"}


def location_name(location: str | None) -> str:
    return "" if location is None or location != location else LOCATION_NAMES.get(location, location)


def primary_name(primary: str | None) -> str:
    return "" if primary is None or primary != primary else PRIMARY_NAMES.get(primary, primary)


def subgroup_name(sub: str) -> str:
    """``all`` -> ``all patients``; ``location=supra`` -> ``supratentorial``; ``primary=gi`` ->
    ``METs from gastrointestinal primary``."""
    if sub == "all":
        return "all patients"
    key, _, value = sub.partition("=")
    if key == "location":
        return location_name(value)
    if key == "primary":
        return f"METs from {primary_name(value)} primary"
    return sub


# -- the glossary, reachable from every page (the sidebar) -----------------------------------
GLOSSARY = (
    ("Predictive index", "The share of a patient's ROI slices that the folds' ensemble (majority vote of the "
     "fold models) calls GBM: 0 to 1. The model calls the patient GBM where the index is at least the cutoff."),
    ("Validation cutoff", "The cutoff on the predictive index that maximises Youden's J (sensitivity + "
     "specificity - 1) on the validation patients. No test patient chose it: the honest operating point."),
    ("Paper cutoff (chosen on the internal test)", "Youden's cutoff chosen on the internal test patients "
     "themselves, as the paper did. Optimistic on the internal test; its interval there re-chooses the cutoff "
     "in every resample."),
    ("Sensitivity, specificity", "GBM is the positive class. Sensitivity: the share of GBMs called GBM. "
     "Specificity: the share of metastases (METs) called MET."),
    ("PPV, NPV", "Positive predictive value: of the patients called GBM, the share that have a GBM. Negative "
     "predictive value: of those called MET, the share that have a MET. Both depend on how common GBM is in "
     "the cohort."),
    ("AUC", "Area under the ROC curve: the chance that a random GBM has a higher predictive index than a random "
     "MET (ties count one half). 0.5 is chance."),
    ("Bootstrap BCa (default)", "95 % CI from resampling patients with replacement, within each diagnosis, "
     "bias-corrected and accelerated. The default for every metric."),
    ("Bootstrap percentile", "The same resamples, the 2.5th and 97.5th percentiles. Marked \u2020 where it "
     "stands in for an undefined BCa interval."),
    (f"Paper's 90 % subsampling {SUBSAMPLE_MARK}", "The paper's scheme: subsets of 90 % of patients without "
     "replacement. Shown as a reproduction only: its intervals are far too narrow."),
    ("DeLong", "DeLong's method: the AUC's 95 % CI, and the test comparing two AUCs on the same patients."),
    ("Wilson", "Wilson's score interval for a proportion (e.g. sensitivity = GBMs called GBM / GBMs); used for "
     "the operating points on the ROC page and the per-site rows."),
    ("Newcombe", "Newcombe's score interval for the difference of two paired proportions (the model and a "
     "reader on the same patients)."),
    ("McNemar", "The exact test of two raters' paired calls: only the patients they disagree on count."),
    ("Holm", "Holm's adjustment of p values for the several comparisons of a cohort (the family): reject in "
     "order while p \u00d7 (remaining comparisons) stays below 0.05."),
    ("Calibration", "Whether P(GBM) (the index turned into a probability on the validation patients) matches "
     "what happened: among patients given 0.7, about 70 % should have a GBM. Brier score, calibration "
     "intercept (0 is right on average) and slope (1 is right spread)."),
    ("Net benefit", "Decision curve: true positives minus false positives weighted by the odds of the "
     "threshold probability, per patient. A model is worth using where its net benefit is above both "
     "calling every patient GBM and calling none."),
)
