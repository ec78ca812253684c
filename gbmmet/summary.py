"""What a department head reads first: per test cohort, the model at the leakage-free cutoff and
each reader alone and with the model (sensitivity, specificity, AUC with their CIs), the paired
differences with a verdict against the non-inferiority margin, and one sentence that follows from
those numbers. Pure functions on the rows ``storage.queries`` returns (``metric_rows``,
``difference_rows``, ``flow_rows``); the Summary page and the PDF report both call them, so they
say the same thing.

Choices:

- The model is shown at ``val_youden_ensemble`` (chosen on validation patients: no test patient
  involved). A run without it (validation patients of one diagnosis) falls back to the paper's
  cutoff, with a note saying so (``CohortSummary.cutoff_note``).
- Comparisons: the model at that cutoff minus each reader (accuracy, sensitivity, specificity),
  the model's index minus each reader (AUC), and each reader with the model minus the same reader
  alone (all four). ``auc_confidence`` stays on the Model vs readers page.
- The sentence names, per reader, the model's sensitivity and specificity against the reader's,
  then each reader's accuracy with the model against alone: each with its verdict, difference and
  interval, exactly as in the tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gbmmet import constants as C
from gbmmet.evaluation import DEFAULT_MARGIN, INCONCLUSIVE, MODEL_AT, EvaluationSettings, verdict

COHORT_NAMES = {C.TEST: "internal test", C.EXTERNAL: "external"}
METRIC_NAMES = {"recall": "sensitivity", "specificity": "specificity", "accuracy": "accuracy", "auc": "AUC"}
SUMMARY_METRICS = ("recall", "specificity", "auc")  # per rater
COMPARED = ("recall", "specificity", "accuracy", "auc")  # per comparison, in this order
MODEL_VS_READER = "model_vs_reader"
ASSISTED_VS_UNASSISTED = "assisted_vs_unassisted"
ASSISTED_SUFFIX = "+assisted"
FALLBACK_NOTE = ("This run has no validation cutoff (its validation patients were of one diagnosis), so the "
                 "model is shown at the paper's cutoff, chosen on the internal test itself: its internal-test "
                 "numbers are optimistic.")
NO_CUTOFF_NOTE = "The model has no metrics on this cohort."


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None = None
    high: float | None = None
    method: str | None = None  # what made the interval (bootstrap_bca, delong, wilson, ...)


@dataclass(frozen=True)
class RaterLine:
    """One rater on one cohort: the model at the summary's cutoff, or a reader alone / with the model."""

    who: str  # as the tables show it (storage.queries.rater_label)
    rater: str
    assisted: bool | None
    cutoff_kind: str | None
    n: int
    n_gbm: int
    sensitivity: Estimate
    specificity: Estimate
    auc: Estimate


@dataclass(frozen=True)
class Comparison:
    """One paired difference a - b (same patients) and its verdict against the margin."""

    kind: str  # model_vs_reader or assisted_vs_unassisted
    a: str  # rater keys as in ``differences``: model@<cutoff>, model, reader1+assisted
    b: str
    metric: str
    n: int
    diff: float | None
    low: float | None
    high: float | None
    ci_method: str | None
    verdict: str


@dataclass(frozen=True)
class CohortSummary:
    cohort: str
    name: str
    n: int
    n_gbm: int
    cutoff_kind: str | None
    cutoff_note: str  # empty unless the model is not at the validation cutoff
    raters: tuple[RaterLine, ...]
    comparisons: tuple[Comparison, ...]
    sentence: str


def recorded_settings(config: dict | None) -> tuple[EvaluationSettings, bool]:
    """The settings an evaluation recorded (its ``runs.config``), and whether they state a margin.
    An evaluation recorded before the margin existed (or without settings) gets the defaults."""
    settings = (config or {}).get("settings")
    if not isinstance(settings, dict):
        return EvaluationSettings(), False
    return EvaluationSettings.from_dict(settings), "margin" in settings


def summary_cutoff(kinds: Iterable[str]) -> tuple[str | None, str]:
    """The cutoff the summary shows the model at, from the kinds a cohort has, and the note to show
    (empty for the validation cutoff)."""
    kinds = set(kinds)
    if C.CUTOFF_VAL in kinds:
        return C.CUTOFF_VAL, ""
    if C.CUTOFF_PAPER in kinds:
        return C.CUTOFF_PAPER, FALLBACK_NOTE
    return None, NO_CUTOFF_NOTE


def _num(x: float) -> str:
    text = f"{x:.3f}"
    return "0.000" if text == "-0.000" else text


def _numbers(c: Comparison, level: float) -> str:
    if c.diff is None or c.diff != c.diff:
        return "no estimate"
    if c.low is None or c.high is None or c.low != c.low or c.high != c.high:
        return f"difference {_num(c.diff)}, no interval"
    return f"difference {_num(c.diff)}, {level * 100:g} % CI {_num(c.low)} to {_num(c.high)}"


def _reader_of(key: str) -> str:
    return key[: -len(ASSISTED_SUFFIX)] if key.endswith(ASSISTED_SUFFIX) else key


def cohort_sentence(name: str, n: int, n_gbm: int, comparisons: Sequence[Comparison], margin: float,
                    level: float = 0.95, cutoff_kind: str | None = C.CUTOFF_VAL) -> str:
    """One plain-language sentence for a cohort, following from ``comparisons`` only: per reader,
    the model's sensitivity and specificity against the reader's; then each reader's accuracy with
    the model against alone; each with its verdict, difference and interval.

    For example: "External (30 patients, 20 GBM), at a non-inferiority margin of 0.10: against
    reader1, the model's sensitivity is inconclusive (difference -0.050, 95 % CI -0.200 to 0.100)
    and its specificity is non-inferior (...); reader1's accuracy with the model is superior to
    reader1 alone (...)."
    """
    head = f"{name[:1].upper()}{name[1:]} ({n} patients, {n_gbm} GBM)"
    if cutoff_kind == C.CUTOFF_PAPER:
        head += ", the model at the paper's cutoff (this run has no validation cutoff)"
    head += f", at a non-inferiority margin of {margin:.2f}"
    vs = [c for c in comparisons if c.kind == MODEL_VS_READER and c.metric in ("recall", "specificity")]
    helped = [c for c in comparisons if c.kind == ASSISTED_VS_UNASSISTED and c.metric == "accuracy"]
    clauses = []
    for reader in dict.fromkeys(c.b for c in vs):
        parts = []
        for k, c in enumerate(x for x in vs if x.b == reader):
            subject = "the model's" if k == 0 else "its"
            parts.append(f"{subject} {METRIC_NAMES[c.metric]} is {c.verdict} ({_numbers(c, level)})")
        clauses.append(f"against {reader}, " + " and ".join(parts))
    for c in helped:
        reader = _reader_of(c.a)
        to = "against" if c.verdict == INCONCLUSIVE else "to"
        clauses.append(f"{reader}'s accuracy with the model is {c.verdict} {to} {reader} alone "
                       f"({_numbers(c, level)})")
    if not clauses:
        return head + ": no reader read these patients, so there is nothing to compare the model with."
    return head + ": " + "; ".join(clauses) + "."


def _estimate(row: dict | None) -> Estimate:
    if row is None:
        return Estimate(None)
    return Estimate(row["value"], row["ci_low"], row["ci_high"], row["ci_method"])


def _rater_lines(rows: list[dict], cutoff_kind: str | None) -> list[RaterLine]:
    lines: dict[tuple, dict] = {}
    for r in rows:
        if r["rater"] == C.MODEL_RATER and r["cutoff_kind"] != cutoff_kind:
            continue
        key = (r["rater"] != C.MODEL_RATER, r["rater"], bool(r["assisted"]))
        line = lines.setdefault(key, {"row": r, "metrics": {}})
        line["metrics"][r["metric"]] = r
    out = []
    for _, line in sorted(lines.items()):
        r, m = line["row"], line["metrics"]
        out.append(RaterLine(r["who"], r["rater"], r["assisted"], r["cutoff_kind"], int(r["n"]), int(r["n_gbm"]),
                             _estimate(m.get("recall")), _estimate(m.get("specificity")), _estimate(m.get("auc"))))
    return out


def comparisons(difference_rows: Iterable[dict], cutoff_kind: str | None, margin: float) -> list[Comparison]:
    """The summary's paired differences of one cohort (``difference_rows`` of that cohort), each
    with its ``verdict``: the model at ``cutoff_kind`` minus each reader (accuracy, sensitivity,
    specificity), the model's index minus each reader (AUC), each reader with the model minus alone.
    Ordered per reader: model vs reader, then with vs without the model; metrics as ``COMPARED``."""
    out = []
    for r in difference_rows:
        if r["metric"] not in COMPARED:
            continue
        if r["kind"] == MODEL_VS_READER:
            wanted = MODEL_AT + cutoff_kind if r["metric"] != "auc" else C.MODEL_RATER
            if cutoff_kind is None or r["a"] != wanted:
                continue
        elif r["kind"] != ASSISTED_VS_UNASSISTED:
            continue
        out.append(Comparison(r["kind"], r["a"], r["b"], r["metric"], int(r["n"]), r["diff"], r["ci_low"],
                              r["ci_high"], r["ci_method"], verdict(r["ci_low"], r["ci_high"], margin)))
    order = {m: i for i, m in enumerate(COMPARED)}
    return sorted(out, key=lambda c: (c.b, c.kind != MODEL_VS_READER, order[c.metric]))


def summarise(metric_rows: Iterable[dict], difference_rows: Iterable[dict], *, margin: float = DEFAULT_MARGIN,
              level: float = 0.95, cohorts: Sequence[str] = C.TEST_COHORTS,
              names: dict[str, str] | None = None) -> list[CohortSummary]:
    """Per cohort of ``cohorts`` that has rows: n, the raters' sensitivity, specificity and AUC,
    the comparisons with their verdicts, and the sentence.

    ``metric_rows``: ``storage.queries.metric_rows`` of the run with metrics recall, specificity
    and auc (subgroup all; one CI choice); ``difference_rows``: ``storage.queries.difference_rows``.
    """
    names = {**COHORT_NAMES, **(names or {})}
    metric_rows, difference_rows = list(metric_rows), list(difference_rows)
    out = []
    for cohort in cohorts:
        rows = [r for r in metric_rows if r["cohort"] == cohort and r.get("subgroup", "all") == "all"]
        if not rows:
            continue
        kind, note = summary_cutoff(r["cutoff_kind"] for r in rows if r["rater"] == C.MODEL_RATER)
        model = [r for r in rows if r["rater"] == C.MODEL_RATER and r["cutoff_kind"] == kind]
        sized = model or rows
        n, n_gbm = int(max(r["n"] for r in sized)), int(max(r["n_gbm"] for r in sized))
        comps = comparisons((r for r in difference_rows if r["cohort"] == cohort), kind, margin)
        name = names.get(cohort, cohort)
        out.append(CohortSummary(cohort, name, n, n_gbm, kind, note, tuple(_rater_lines(rows, kind)), tuple(comps),
                                 cohort_sentence(name, n, n_gbm, comps, margin, level, kind)))
    return out


@dataclass(frozen=True)
class Flow:
    """A cohort's patient flow (STARD), summed over its sites."""

    cohort: str
    in_manifest: int
    preprocessed: int
    failed: tuple[tuple[str, int], ...]  # (error kind, patients)
    evaluated: int
    read: tuple[tuple[str, int], ...]  # (reader, patients read without the model)

    @property
    def n_failed(self) -> int:
        return sum(n for _, n in self.failed)

    @property
    def not_evaluated(self) -> int:
        """Preprocessed patients the evaluation did not score (e.g. no ROI slice)."""
        return max(self.preprocessed - self.evaluated, 0)


def flows(flow_rows: Iterable[dict], cohorts: Sequence[str] = C.TEST_COHORTS) -> list[Flow]:
    """Per cohort of ``cohorts`` with rows, its flow from ``storage.queries.flow_rows``."""
    rows = list(flow_rows)
    out = []
    for cohort in cohorts:
        mine = [r for r in rows if r["cohort"] == cohort]
        if not mine:
            continue

        def total(stage: str, rows_=mine) -> int:
            return sum(int(r["n"]) for r in rows_ if r["stage"] == stage)

        def by_detail(stage: str, rows_=mine) -> tuple[tuple[str, int], ...]:
            got: dict[str, int] = {}
            for r in rows_:
                if r["stage"] == stage:
                    got[r["detail"] or "unknown"] = got.get(r["detail"] or "unknown", 0) + int(r["n"])
            return tuple(sorted(got.items()))

        out.append(Flow(cohort, total("in_manifest"), total("preprocessed"), by_detail("failed"),
                        total("evaluated"), by_detail("read")))
    return out
