"""The evaluation's rules as pure functions on small arrays: the predictive index, the cutoffs, the
subgroups and what each can show, the metric rows with their intervals, paired differences with
Holm-adjusted p values, calibration rows and the patient flow (STARD). ``pipelines/evaluate.py``
only fans these out on Ray and writes the tables.

Choices, each stated once here:

- **Predictive index** (the paper): the share of a patient's slices the fold ensemble's majority
  vote calls GBM. ``soft_index``: the mean over slices of the folds' mean P(GBM).
- **Cutoffs**, both on the ensemble's predictive index, both kept:
  ``paper_youden_internal_test`` is Youden's optimum on the internal test cohort itself (the paper's
  way; optimistic there). Its interval on the internal test re-chooses the cutoff inside every
  resample, so that optimism is inside the interval; on other cohorts and in subgroups the cutoff
  is held fixed (it was not chosen on them). ``val_youden_ensemble`` is Youden's optimum on the
  validation patients' ensemble index: the same kind of score it is applied to, and no test
  patient involved.
- **Intervals**: the default is the stratified patient-level bootstrap, BCa (percentile where BCa
  is undefined, Wilson where a proportion's interval has zero width; ``ci_method`` says which); ``bootstrap_percentile``; the paper's
  ``paper_subsample90`` as a labelled reproduction (it under-covers: see ``gbmmet.stats``); DeLong
  for AUC.
- **Readers**: ``auc`` from the binary calls (the paper's figure); ``auc_confidence`` from calls
  signed by confidence (MET 5 .. GBM 5), only where every read carries a confidence.
- **Subgroups**: ``location=<v>`` keeps every metric (both classes occur there);
  ``primary=<v>`` holds only the METs of that primary, so it reports specificity alone (the share
  of those METs called MET), with its n. Subgroups with one class report the metrics defined on it.
- **Zero denominators** give NaN with a ``RuntimeWarning`` naming the metric and the group.
- **Paired differences** (a minus b, same patients): accuracy, sensitivity (recall), specificity
  at each operating point and AUC once per model; CIs by ``stats.ci_paired_difference``'s
  default (Newcombe's paired score interval for proportions, DeLong for AUC; the paired BCa
  bootstrap where the cutoff is re-chosen); p values: McNemar on all patients (accuracy), on
  GBMs (sensitivity) and on METs (specificity), DeLong for AUC; Holm-adjusted over every
  difference reported for the cohort. The primary comparison (``EvaluationSettings.primary``) is
  flagged and keeps its unadjusted p.
- **Intention to diagnose**: a patient in the manifest whom the system could not process counts
  as wrong (a GBM as a false negative, a MET as a false positive).
- **Verdicts** (``verdict``): a paired difference a - b is read against the non-inferiority margin
  the settings state (``EvaluationSettings.margin``, default 0.10): superior, non-inferior,
  inferior or inconclusive from where its confidence interval lies, never from a p value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from gbmmet import constants as C
from gbmmet import stats
from gbmmet.trust import TrustSettings

# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------
MODEL_AT = C.MODEL_RATER + "@"  # rater key of the model at a cutoff: model@<cutoff kind>
DEFAULT_MARGIN = 0.10  # the non-inferiority margin of EvaluationSettings (why: see there)


@dataclass(frozen=True)
class PrimaryComparison:
    """The comparison named before looking: reported unadjusted beside its Holm-adjusted p."""

    a: str = MODEL_AT + C.CUTOFF_VAL
    b: str = "reader1"
    metric: str = "accuracy"


@dataclass(frozen=True)
class EvaluationSettings:
    """Everything an evaluation's numbers depend on besides its inputs; recorded with the run."""

    n_resamples: int = 1000
    seed: int = 0
    level: float = 0.95
    ci_methods: tuple[str, ...] = C.CI_METHODS
    primary: PrimaryComparison = field(default_factory=PrimaryComparison)
    reliability_bins: int = 5
    decision_thresholds: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))
    calibration_c: float = 1.0  # L2 penalty of the index -> probability fit (IndexCalibrator)
    # Non-inferiority margin on the difference scale (a - b), for ``verdict``: 0.10 = 10 percentage
    # points of sensitivity, specificity or accuracy (0.10 of AUC). A default, not a clinical
    # judgement: 10 points is a margin often used for the accuracy of a diagnostic test against
    # readers; how to justify one, before the data are seen and conservatively: Ahn, Park & Lee,
    # "How to demonstrate similarity by using noninferiority and equivalence statistical testing in
    # radiology research", Radiology 2013;267(2):328-338. Set your own with ``--margin``.
    margin: float = DEFAULT_MARGIN
    # conformal sets, the out-of-distribution flag and deferral (gbmmet.trust)
    trust: TrustSettings = field(default_factory=TrustSettings)

    def __post_init__(self):
        if self.n_resamples < 100:
            raise ValueError(f"The 'n_resamples' parameter must be at least 100. Got {self.n_resamples} instead.")
        if not 0.5 < self.level < 1:
            raise ValueError(f"The 'level' parameter must be in (0.5, 1). Got {self.level} instead.")
        unknown = set(self.ci_methods) - set(C.CI_METHODS)
        if unknown:
            raise ValueError(f"The 'ci_methods' parameter must hold {list(C.CI_METHODS)}. Got {sorted(unknown)} instead.")
        if not 0 < self.margin < 1:
            raise ValueError(f"The 'margin' parameter must be in (0, 1). Got {self.margin} instead.")
        if self.primary.metric not in C.DIFFERENCE_METRICS:
            raise ValueError(f"The primary comparison's metric must be one of {list(C.DIFFERENCE_METRICS)}. "
                             f"Got {self.primary.metric!r} instead.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EvaluationSettings:
        d = dict(d)
        d["primary"] = PrimaryComparison(**d.get("primary", {}))
        d["trust"] = TrustSettings.from_dict(d.get("trust", {}))
        for k in ("ci_methods", "decision_thresholds"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# predictive index
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatientScore:
    n_slices: int
    index: float  # share of slices the ensemble's majority vote calls GBM (the paper)
    soft_index: float  # mean over slices of the folds' mean P(GBM)


def patient_scores(patient_ids: Sequence[str], slice_call, slice_mean_prob) -> dict[str, PatientScore]:
    """Per patient, from its slices: the predictive index and the soft index.

    ``slice_call``: the ensemble's call per slice (True: GBM); ``slice_mean_prob``: the folds' mean
    P(GBM) per slice; all three aligned.
    """
    pids = np.asarray(patient_ids)
    call = np.asarray(slice_call, dtype=bool)
    prob = np.asarray(slice_mean_prob, dtype=np.float64)
    if not (len(pids) == len(call) == len(prob)):
        raise ValueError(f"patient_ids, slice_call and slice_mean_prob differ in length: "
                         f"{len(pids)}, {len(call)}, {len(prob)}")
    out = {}
    uniq, inverse = np.unique(pids, return_inverse=True)
    for k, p in enumerate(uniq):
        sel = inverse == k
        out[str(p)] = PatientScore(int(sel.sum()), float(call[sel].mean()), float(prob[sel].mean()))
    return out


# ---------------------------------------------------------------------------------------------
# cutoffs
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cutoff:
    kind: str
    value: float
    chosen_on: str  # the cohort whose ensemble predictive indices chose it
    n: int
    n_gbm: int
    score: str = "ensemble predictive index"


def choose_cutoffs(by_cohort: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, Cutoff], list[str]]:
    """Both cutoffs from ``{cohort: (y, index)}``: the paper's on the internal test, the
    leakage-free one on validation. Returns the cutoffs and notes on any that could not be chosen.

    Raises:
        ValueError: no internal test cohort with both classes (the paper's cutoff is required).
    """
    out, notes = {}, []
    for kind, cohort in ((C.CUTOFF_PAPER, C.TEST), (C.CUTOFF_VAL, C.VAL)):
        y, s = by_cohort.get(cohort, (np.zeros(0, int), np.zeros(0)))
        n_gbm = int(np.sum(y))
        if n_gbm == 0 or n_gbm == len(y):
            why = (f"the {cohort} cohort has {n_gbm} GBM and {len(y) - n_gbm} MET patients: "
                   f"{kind} needs both classes")
            if kind == C.CUTOFF_PAPER:
                raise ValueError(why)
            notes.append(why + "; it is skipped")
            continue
        out[kind] = Cutoff(kind, stats.youden_cutoff(y, s), cohort, len(y), n_gbm)
    return out, notes


def recut_applies(kind: str, cohort: str, subgroup: str) -> bool:
    """Whether an interval re-chooses the cutoff in each resample: only where it was chosen."""
    return kind == C.CUTOFF_PAPER and cohort == C.TEST and subgroup == "all"


# ---------------------------------------------------------------------------------------------
# subgroups
# ---------------------------------------------------------------------------------------------
ALL_METRICS = stats.CALL_METRICS + stats.SCORE_METRICS


@dataclass(frozen=True)
class Group:
    cohort: str
    name: str  # all, location=supra, primary=lung, ...
    patients: tuple[str, ...]
    metrics: tuple[str, ...] = ALL_METRICS


def subgroups(cohort: str, patients: Iterable[str], info: dict[str, dict]) -> list[Group]:
    """The groups of one cohort: all, each location, each MET primary (METs of it only).

    ``info``: patient -> {label, location, primary_tumor}.
    """
    ps = tuple(sorted(patients))
    groups = [Group(cohort, "all", ps)]
    for v in sorted({info[p].get(C.COL_LOCATION) for p in ps} - {None, ""}):
        groups.append(Group(cohort, f"location={v}", tuple(p for p in ps if info[p].get(C.COL_LOCATION) == v)))
    mets = [p for p in ps if info[p][C.COL_LABEL] == C.MET]
    for v in sorted({info[p].get(C.COL_PRIMARY) for p in mets} - {None, ""}):
        groups.append(Group(cohort, f"primary={v}", tuple(p for p in mets if info[p].get(C.COL_PRIMARY) == v),
                            ("specificity",)))
    return groups


def defined_metrics(y: np.ndarray, wanted: Sequence[str]) -> tuple[str, ...]:
    """The metrics of ``wanted`` that a group with these labels can show: with one class, only
    those about that class (sensitivity for GBMs; specificity for METs; accuracy for both)."""
    n_gbm = int(np.sum(y))
    if 0 < n_gbm < len(y):
        return tuple(wanted)
    only = {"recall", "accuracy"} if n_gbm else {"specificity", "accuracy"}
    return tuple(m for m in wanted if m in only)


# ---------------------------------------------------------------------------------------------
# metric rows
# ---------------------------------------------------------------------------------------------
def warn_undefined(values: dict[str, float], where: str) -> None:
    """A ``RuntimeWarning`` naming each NaN metric (a zero denominator) and the group."""
    bad = [k for k, v in values.items() if v is None or (isinstance(v, float) and math.isnan(v))]
    if bad:
        warnings.warn(f"{where}: {', '.join(bad)} undefined (a zero denominator); stored as NaN",
                      RuntimeWarning, stacklevel=2)


def _intervals(y, call, score, names, settings: EvaluationSettings, seed: int,
               choose_cutoff: Callable | None) -> dict[str, dict[str, stats.Interval]]:
    """Every CI method's intervals of ``names``; a method that cannot run here is absent."""
    out: dict[str, dict[str, stats.Interval]] = {}
    n, n_gbm = len(y), int(np.sum(y))
    both = n_gbm >= 2 and n - n_gbm >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # counted in n_degenerate instead
        for method in settings.ci_methods:
            if method == C.CI_SUBSAMPLE and n >= 4:
                out[method] = stats.ci_paper_subsample(y, call, score, names=names, n_resamples=settings.n_resamples,
                                                       level=settings.level, seed=seed, choose_cutoff=choose_cutoff)
            elif method in (C.CI_BCA, C.CI_PERCENTILE) and both:
                out[method] = stats.ci_bootstrap(y, call, score, names=names,
                                                 method="BCa" if method == C.CI_BCA else "percentile",
                                                 n_resamples=settings.n_resamples, level=settings.level, seed=seed,
                                                 choose_cutoff=choose_cutoff)
    return out


def _point(y, call, score, names) -> dict[str, float]:
    m = stats.metrics(y, call, score)
    return {k: m[k] for k in names}


def metric_rows(base: dict, y, call, score, settings: EvaluationSettings, *, names: Sequence[str] = ALL_METRICS,
                seed: int = 0, choose_cutoff: Callable | None = None, where: str = "") -> list[dict]:
    """Rows of ``metrics`` for one rater on one group: each metric's value with one row per CI
    method (and DeLong for AUC), plus the confusion counts.

    ``score`` gives AUC (None: AUC from the calls). With ``choose_cutoff`` the calls are
    ``score >= choose_cutoff(y, score)``, on the group and inside every resample.
    """
    y = np.asarray(y, dtype=int)
    call = np.asarray(call, dtype=int)
    names = defined_metrics(y, names)
    if choose_cutoff is not None:
        call = (np.asarray(score) >= choose_cutoff(y, score)).astype(int)
    point = _point(y, call, score, names)
    warn_undefined(point, where or f"{base.get('subgroup', '')} ({base.get('rater', '')})")
    counts = stats.confusion(y, call)
    common = {**base, "n": len(y), "n_gbm": int(y.sum()), **counts}
    cis = _intervals(y, call, score, names, settings, seed, choose_cutoff)
    rows = []
    for name in names:
        for method in settings.ci_methods:
            iv = cis.get(method, {}).get(name)
            rows.append({**common, "metric": name, "value": point[name], "ci_low": iv.low if iv else None,
                         "ci_high": iv.high if iv else None, "ci_method": iv.method if iv else method,
                         "ci_choice": method, "n_resamples": iv.n_resamples if iv else 0,
                         "n_degenerate": iv.n_degenerate if iv else 0})
    if "auc" in names:
        rows += delong_rows(common, y, call if score is None else score, "auc", point["auc"])
    return rows


def delong_rows(common: dict, y, score, metric: str, value: float) -> list[dict]:
    """The DeLong interval of an AUC as a metrics row (none with fewer than 2 cases of a class)."""
    y = np.asarray(y, dtype=int)
    if int(y.sum()) < 2 or len(y) - int(y.sum()) < 2:
        return []
    d = stats.delong_roc_variance(y, score)
    return [{**common, "metric": metric, "value": value, "ci_low": d.ci_low, "ci_high": d.ci_high,
             "ci_method": C.CI_DELONG, "ci_choice": C.CI_DELONG, "n_resamples": 0, "n_degenerate": 0}]


def signed_confidence(calls: Sequence[str], confidence: Sequence[int | None]) -> np.ndarray | None:
    """Calls signed by confidence (GBM +c, MET -c); None unless every read has a confidence."""
    if not len(calls) or any(c is None for c in confidence):
        return None
    sign = np.array([1.0 if c == C.GBM else -1.0 for c in calls])
    return sign * np.asarray(confidence, dtype=np.float64)


def confidence_auc_rows(base: dict, y, call, signed: np.ndarray, settings: EvaluationSettings,
                        seed: int = 0) -> list[dict]:
    """``auc_confidence`` of a reader whose reads carry confidences: DeLong and the bootstrap."""
    y = np.asarray(y, dtype=int)
    if int(y.sum()) < 2 or len(y) - int(y.sum()) < 2:
        return []
    value = stats.auc_score(y, signed)
    common = {**base, "n": len(y), "n_gbm": int(y.sum()), **stats.confusion(y, call)}
    rows = []
    cis = _intervals(y, np.asarray(call, int), signed, ("auc",), settings, seed, None)
    for method in settings.ci_methods:
        iv = cis.get(method, {}).get("auc")
        rows.append({**common, "metric": C.AUC_CONFIDENCE, "value": value, "ci_low": iv.low if iv else None,
                     "ci_high": iv.high if iv else None, "ci_method": iv.method if iv else method,
                     "ci_choice": method, "n_resamples": iv.n_resamples if iv else 0,
                     "n_degenerate": iv.n_degenerate if iv else 0})
    return rows + delong_rows(common, y, signed, C.AUC_CONFIDENCE, value)


def intention_to_diagnose(y, call, y_unprocessed) -> tuple[np.ndarray, np.ndarray]:
    """Labels and calls with the patients the system could not process counted as wrong."""
    yu = np.asarray(y_unprocessed, dtype=int)
    return (np.r_[np.asarray(y, int), yu], np.r_[np.asarray(call, int), 1 - yu])


# ---------------------------------------------------------------------------------------------
# paired differences
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rater:
    """One rater's calls on patients: ``score`` for AUC (None: the calls), ``signed`` the calls
    signed by confidence where reads carry one, ``choose_cutoff`` to re-choose in resamples."""

    name: str
    patients: tuple[str, ...]
    call: np.ndarray
    score: np.ndarray | None = None
    signed: np.ndarray | None = None
    choose_cutoff: Callable | None = None

    def on(self, patients: Sequence[str]) -> Rater:
        pos = {p: i for i, p in enumerate(self.patients)}
        idx = np.array([pos[p] for p in patients], dtype=int)
        return Rater(self.name, tuple(patients), self.call[idx], None if self.score is None else self.score[idx],
                     None if self.signed is None else self.signed[idx], self.choose_cutoff)


_MCNEMAR_ON = {"accuracy": "all patients", "recall": "GBMs", "specificity": "METs"}


def paired_differences(cohort: str, a: Rater, b: Rater, label_of: dict[str, int],
                       settings: EvaluationSettings, *, seed: int = 0, kind: str = "",
                       names: Sequence[str] = C.DIFFERENCE_METRICS) -> list[dict]:
    """Rows of ``differences``: metric(a) - metric(b) for each of ``names`` on the patients both
    rated, with a paired stratified bootstrap CI and a p value (McNemar for accuracy / sensitivity
    / specificity on all / GBMs / METs; DeLong for AUC, and for ``auc_confidence`` where ``b`` has
    confidences and AUC is asked for). ``p_holm`` is filled by ``adjust_family``."""
    common = sorted(set(a.patients) & set(b.patients))
    y = np.array([label_of[p] for p in common], dtype=int)
    n_gbm = int(y.sum())
    if n_gbm < 2 or len(y) - n_gbm < 2:
        return []
    a, b = a.on(common), b.on(common)
    if a.choose_cutoff is not None:
        a = Rater(a.name, a.patients, (a.score >= a.choose_cutoff(y, a.score)).astype(int), a.score, a.signed,
                  a.choose_cutoff)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        diffs = stats.ci_paired_difference(y, (a.call, a.score), (b.call, b.score), names=tuple(names),
                                           n_resamples=settings.n_resamples, level=settings.level, seed=seed,
                                           choose_cutoff_a=a.choose_cutoff)
    base = {"cohort": cohort, "a": a.name, "b": b.name, "kind": kind, "n": len(y), "n_gbm": n_gbm}
    pa_, pb_ = _point(y, a.call, a.score, names), _point(y, b.call, b.score, names)
    rows = []
    for m in names:
        iv = diffs[m]
        row = {**base, "metric": m, "estimate_a": pa_[m], "estimate_b": pb_[m], "diff": iv.diff,
               "ci_low": iv.low, "ci_high": iv.high, "ci_method": iv.method}
        if m == "auc":
            t = stats.delong_roc_test(y, a.call if a.score is None else a.score, b.call if b.score is None else b.score)
            row.update(test="delong", statistic=t.z, p=t.p,
                       note=f"DeLong; {a.name}: {_auc_source(a)}; {b.name}: {_auc_source(b)}")
        else:
            sel = np.ones(len(y), bool) if m == "accuracy" else (y == 1 if m == "recall" else y == 0)
            res = stats.mcnemar_test(a.call[sel] == y[sel], b.call[sel] == y[sel])
            row.update(test="mcnemar", statistic=res.statistic, p=res.p,
                       note=f"McNemar on {_MCNEMAR_ON[m]} ({'exact binomial' if res.exact else 'chi-square, corrected'}); "
                            f"discordant: {res.b_only_a_right} right only by {a.name}, "
                            f"{res.c_only_b_right} right only by {b.name}")
        rows.append(row)
    if "auc" in names and b.signed is not None and a.score is not None:
        t = stats.delong_roc_test(y, a.score, b.signed)
        rows.append({**base, "metric": C.AUC_CONFIDENCE, "estimate_a": t.auc_a, "estimate_b": t.auc_b, "diff": t.diff,
                     "ci_low": t.ci_low, "ci_high": t.ci_high, "ci_method": C.CI_DELONG, "test": "delong",
                     "statistic": t.z, "p": t.p,
                     "note": f"DeLong; {a.name}: {_auc_source(a)}; {b.name}: calls signed by confidence"})
    return rows


def _auc_source(r: Rater) -> str:
    return "binary calls" if r.score is None else "predictive index"


def adjust_family(rows: list[dict], primary: PrimaryComparison) -> list[dict]:
    """Holm-adjust the p values of ``rows`` (one cohort's family) in place; flag the primary
    comparison (its unadjusted ``p`` stays beside ``p_holm``). Returns ``rows``."""
    p = np.array([r["p"] if r.get("p") is not None else np.nan for r in rows], dtype=np.float64)
    adj = stats.holm(p)
    family = int(np.isfinite(p).sum())
    for r, q in zip(rows, adj, strict=True):
        r["p_holm"] = None if not np.isfinite(q) else float(q)
        r["family_size"] = family
        r["is_primary"] = (r["a"] == primary.a and r["b"] == primary.b and r["metric"] == primary.metric)
    return rows


# ---------------------------------------------------------------------------------------------
# verdicts against the non-inferiority margin
# ---------------------------------------------------------------------------------------------
SUPERIOR = "superior"
NON_INFERIOR = "non-inferior"
INCONCLUSIVE = "inconclusive"
INFERIOR = "inferior"
VERDICTS = (SUPERIOR, NON_INFERIOR, INCONCLUSIVE, INFERIOR)


def verdict(diff_low: float | None, diff_high: float | None, margin: float) -> str:
    """What a paired difference a - b (higher is better for a) shows, from its confidence
    interval ``[diff_low, diff_high]`` and the non-inferiority margin ``margin`` (> 0):

    - ``"superior"``: the lower bound is above 0 (a is better; this implies non-inferior);
    - ``"non-inferior"``: the lower bound is above ``-margin`` (a is at worst ``margin`` worse);
    - ``"inferior"``: the upper bound is below ``-margin`` (a is worse by more than the margin);
    - ``"inconclusive"``: otherwise (the interval reaches below ``-margin`` and above it); also
      where a bound is missing (None or NaN: no interval, no conclusion) and where the interval has
      zero width (``diff_low == diff_high``: no measure of uncertainty, e.g. DeLong's variance is 0
      where two raters' scores agree on every patient, which a few patients make likely).

    Checked in that order. A bound equal to a limit does not pass it (the lower bound must be
    strictly above; the upper strictly below). With a two-sided 95 % interval the non-inferiority
    rule is a one-sided test at 2.5 %. Never "equivalent", and never from a p value: a difference
    whose interval includes 0 is not shown to be small.

    Raises:
        ValueError: ``margin`` not > 0, or ``diff_low`` above ``diff_high``.
    """
    if not margin > 0:
        raise ValueError(f"The 'margin' parameter of verdict must be > 0. Got {margin} instead.")
    if diff_low is None or diff_high is None or diff_low != diff_low or diff_high != diff_high:
        return INCONCLUSIVE
    if diff_low > diff_high:
        raise ValueError(f"The interval of verdict must have diff_low <= diff_high. Got {diff_low} > {diff_high} instead.")
    if diff_low == diff_high:
        return INCONCLUSIVE
    if diff_low > 0:
        return SUPERIOR
    if diff_low > -margin:
        return NON_INFERIOR
    if diff_high < -margin:
        return INFERIOR
    return INCONCLUSIVE


# ---------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------
def calibration_rows(cohort: str, y, p, settings: EvaluationSettings) -> tuple[list[dict], dict[str, float]]:
    """Reliability and decision-curve rows of one cohort, and its summary (Brier, calibration
    intercept and slope, n)."""
    from gbmmet import calibration as cal

    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=np.float64)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summary = cal.calibration_summary(y, p)
        reliability = cal.reliability_curve(y, p, n_bins=settings.reliability_bins)
    for r in reliability:
        rows.append({"cohort": cohort, "curve": "reliability", "x": r["mean_predicted"], "y": r["observed_rate"],
                     "n": r["n"], "treat_all": None, "treat_none": None})
    for r in cal.decision_curve(y, p, np.asarray(settings.decision_thresholds)):
        rows.append({"cohort": cohort, "curve": "decision", "x": r["threshold"], "y": r["net_benefit_model"],
                     "n": len(y), "treat_all": r["net_benefit_treat_all"], "treat_none": r["net_benefit_treat_none"]})
    return rows, {"brier": summary.brier, "calibration_intercept": summary.intercept,
                  "calibration_slope": summary.slope, "n": summary.n, "n_gbm": summary.n_gbm}


# ---------------------------------------------------------------------------------------------
# patient flow (STARD)
# ---------------------------------------------------------------------------------------------
FLOW_STAGES = ("in_manifest", "preprocessed", "failed", "evaluated", "read")


def latest_attempts(attempts: Iterable[dict]) -> dict[str, dict]:
    """Each patient's latest preprocessing attempt (by ``started_at``; an undated one counts as
    oldest; among equal times the later row wins)."""
    latest: dict[str, dict] = {}
    for r in attempts:
        p = r[C.COL_PATIENT_ID]
        mine, theirs = r.get("started_at"), latest.get(p, {}).get("started_at")
        if p not in latest or theirs is None or (mine is not None and mine >= theirs):
            latest[p] = r
    return latest


def patient_flow(attempts: Iterable[dict], evaluated: set[str], read_by: dict[str, set[str]]) -> list[dict]:
    """Counts per cohort, site and stage: patients in the manifests (every patient with an
    attempt), preprocessed (latest attempt ok), failed (by error kind), evaluated, and read by each
    reader (unassisted). ``attempts``: preprocess_runs rows (patient_id, site, split, status,
    error_kind, started_at); a patient's latest attempt decides."""
    latest = latest_attempts(attempts)
    counts: dict[tuple, int] = {}

    def add(split, site, stage, detail=""):
        k = (split or "unknown", site or "unknown", stage, detail)
        counts[k] = counts.get(k, 0) + 1

    for p, r in latest.items():
        split, site = r.get(C.COL_SPLIT), r.get(C.COL_SITE)
        add(split, site, "in_manifest")
        if r["status"] == "ok":
            add(split, site, "preprocessed")
        else:
            add(split, site, "failed", r.get("error_kind") or "unknown")
        if p in evaluated:
            add(split, site, "evaluated")
        for reader, ps in sorted(read_by.items()):
            if p in ps:
                add(split, site, "read", reader)
    order = {s: i for i, s in enumerate(FLOW_STAGES)}
    return [{"cohort": k[0], C.COL_SITE: k[1], "stage": k[2], "detail": k[3], "n": n}
            for k, n in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1], order[kv[0][2]], kv[0][3]))]


def unprocessed_labels(attempts: Iterable[dict], cohort: str) -> np.ndarray:
    """Labels (1 GBM) of the cohort's patients whose latest attempt failed (intention to diagnose)."""
    latest = latest_attempts(attempts)
    return np.array([r.get(C.COL_LABEL) == C.GBM for r in latest.values()
                     if r["status"] != "ok" and r.get(C.COL_SPLIT) == cohort and r.get(C.COL_LABEL)], dtype=int)
