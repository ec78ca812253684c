"""The verdict of a paired difference against the non-inferiority margin, the margin setting, and
the summary's sentences, on hand-made cases."""

from __future__ import annotations

import math

import pytest

from gbmmet import constants as C
from gbmmet.evaluation import (
    DEFAULT_MARGIN,
    INCONCLUSIVE,
    INFERIOR,
    NON_INFERIOR,
    SUPERIOR,
    EvaluationSettings,
    verdict,
)
from gbmmet.summary import (
    FALLBACK_NOTE,
    Comparison,
    cohort_sentence,
    flows,
    recorded_settings,
    summarise,
    summary_cutoff,
)

VAL = "model@" + C.CUTOFF_VAL
PAPER = "model@" + C.CUTOFF_PAPER


@pytest.mark.parametrize(("low", "high", "margin", "want"), [
    (0.01, 0.20, 0.10, SUPERIOR),  # the whole interval above 0
    (-0.05, 0.10, 0.10, NON_INFERIOR),  # at worst 5 points worse, inside a 10-point margin
    (-0.08, -0.01, 0.10, NON_INFERIOR),  # surely worse, but by less than the margin
    (-0.30, -0.15, 0.10, INFERIOR),  # worse by more than the margin, surely
    (-0.20, 0.05, 0.10, INCONCLUSIVE),  # could be fine, could be worse than the margin
    (-0.20, 0.05, 0.25, NON_INFERIOR),  # the same interval at a wider margin
    (-0.90, 0.90, 0.10, INCONCLUSIVE),
    (0.0, 0.10, 0.10, NON_INFERIOR),  # a lower bound at 0 is not above 0
    (-0.10, 0.05, 0.10, INCONCLUSIVE),  # a lower bound at -margin is not above it
    (-0.30, -0.10, 0.10, INCONCLUSIVE),  # an upper bound at -margin is not below it
    (0.0, 0.0, 0.10, INCONCLUSIVE),  # zero width: no measure of uncertainty
    (None, 0.1, 0.10, INCONCLUSIVE),
    (math.nan, math.nan, 0.10, INCONCLUSIVE),
])
def test_verdict_by_hand(low, high, margin, want):
    assert verdict(low, high, margin) == want


def test_verdict_refuses_a_bad_margin_or_interval():
    with pytest.raises(ValueError, match="margin"):
        verdict(-0.1, 0.1, 0)
    with pytest.raises(ValueError, match="diff_low <= diff_high"):
        verdict(0.2, 0.1, 0.1)


def test_margin_is_a_recorded_setting_with_a_default():
    assert EvaluationSettings().margin == DEFAULT_MARGIN == 0.10
    s = EvaluationSettings(margin=0.05)
    assert s.to_dict()["margin"] == 0.05 and EvaluationSettings.from_dict(s.to_dict()) == s
    old = EvaluationSettings().to_dict()
    del old["margin"]  # an evaluation recorded before the margin existed
    assert EvaluationSettings.from_dict(old).margin == DEFAULT_MARGIN
    for bad in (0, -0.1, 1):
        with pytest.raises(ValueError, match="'margin' parameter"):
            EvaluationSettings(margin=bad)
    assert recorded_settings({"settings": s.to_dict()}) == (s, True)
    assert recorded_settings({"settings": old}) == (EvaluationSettings(), False)
    assert recorded_settings(None) == (EvaluationSettings(), False)


def test_cli_default_margin_is_the_settings_default():
    from pipelines import cli

    assert cli.DEFAULT_MARGIN == DEFAULT_MARGIN
    assert cli._settings(200, 0, cli.DEFAULT_PRIMARY, 0.05).margin == 0.05
    from gbmmet.errors import ConfigError

    with pytest.raises(ConfigError, match="margin"):
        cli._settings(200, 0, cli.DEFAULT_PRIMARY, 1.5)


def test_cohort_sentence_by_hand():
    comps = [
        Comparison("model_vs_reader", VAL, "reader1", "recall", 30, -0.05, -0.20, 0.10, "newcombe", INCONCLUSIVE),
        Comparison("model_vs_reader", VAL, "reader1", "specificity", 30, 0.02, -0.06, 0.11, "newcombe", NON_INFERIOR),
        Comparison("model_vs_reader", VAL, "reader1", "accuracy", 30, 0.0, -0.1, 0.1, "newcombe", INCONCLUSIVE),
        Comparison("assisted_vs_unassisted", "reader1+assisted", "reader1", "accuracy", 30, 0.1, 0.02, 0.2,
                   "newcombe", SUPERIOR),
    ]
    assert cohort_sentence("external", 30, 20, comps, 0.1) == (
        "External (30 patients, 20 GBM), at a non-inferiority margin of 0.10: against reader1, the model's "
        "sensitivity is inconclusive (difference -0.050, 95 % CI -0.200 to 0.100) and its specificity is "
        "non-inferior (difference 0.020, 95 % CI -0.060 to 0.110); reader1's accuracy with the model is "
        "superior to reader1 alone (difference 0.100, 95 % CI 0.020 to 0.200).")
    assert cohort_sentence("internal test", 4, 2, [], 0.1, cutoff_kind=C.CUTOFF_PAPER) == (
        "Internal test (4 patients, 2 GBM), the model at the paper's cutoff (this run has no validation cutoff), "
        "at a non-inferiority margin of 0.10: no reader read these patients, so there is nothing to compare "
        "the model with.")


def _metric(cohort, rater, metric, value, low, high, *, cutoff=None, assisted=None, n=30, n_gbm=20, who=None):
    return {"cohort": cohort, "subgroup": "all", "rater": rater, "assisted": assisted, "cutoff_kind": cutoff,
            "metric": metric, "value": value, "ci_low": low, "ci_high": high,
            "ci_method": C.CI_DELONG if metric == "auc" else C.CI_BCA, "n": n, "n_gbm": n_gbm,
            "who": who or (rater + (" + model" if assisted else ""))}


def _diff(cohort, kind, a, b, metric, diff, low, high, n=30):
    return {"cohort": cohort, "kind": kind, "a": a, "b": b, "metric": metric, "n": n, "diff": diff, "ci_low": low,
            "ci_high": high, "ci_method": "newcombe"}


def test_summarise_picks_the_validation_cutoff_and_the_summary_comparisons():
    ext = C.EXTERNAL
    metrics = [
        _metric(ext, "model", "recall", 0.85, 0.7, 0.95, cutoff=C.CUTOFF_VAL, who="model, validation cutoff"),
        _metric(ext, "model", "specificity", 0.7, 0.5, 0.85, cutoff=C.CUTOFF_VAL, who="model, validation cutoff"),
        _metric(ext, "model", "auc", 0.88, 0.8, 0.95, cutoff=C.CUTOFF_VAL, who="model, validation cutoff"),
        _metric(ext, "model", "recall", 0.9, 0.7, 0.95, cutoff=C.CUTOFF_PAPER, who="model, paper cutoff*"),
        _metric(ext, "reader1", "recall", 0.9, 0.75, 0.97),
        _metric(ext, "reader1", "specificity", 0.8, 0.6, 0.9),
        _metric(ext, "reader1", "recall", 0.95, 0.8, 1.0, assisted=True),
    ]
    diffs = [
        _diff(ext, "model_vs_reader", VAL, "reader1", "recall", -0.05, -0.2, 0.1),
        _diff(ext, "model_vs_reader", VAL, "reader1", "specificity", -0.2, -0.3, -0.12),
        _diff(ext, "model_vs_reader", PAPER, "reader1", "recall", 0.0, -0.1, 0.1),  # the other cutoff: left out
        _diff(ext, "model_vs_reader", "model", "reader1", "auc", 0.03, -0.05, 0.11),
        _diff(ext, "model_vs_reader", "model", "reader1", C.AUC_CONFIDENCE, 0.0, -0.1, 0.1),  # left out
        _diff(ext, "assisted_vs_unassisted", "reader1+assisted", "reader1", "accuracy", 0.05, 0.01, 0.1),
        _diff(C.TEST, "model_vs_reader", VAL, "reader1", "recall", 0.0, -0.1, 0.1),  # another cohort
    ]
    (s,) = summarise(metrics, diffs, margin=0.1)
    assert (s.cohort, s.name, s.n, s.n_gbm, s.cutoff_kind, s.cutoff_note) == (ext, "external", 30, 20, C.CUTOFF_VAL, "")
    assert [r.who for r in s.raters] == ["model, validation cutoff", "reader1", "reader1 + model"]
    model = s.raters[0]
    assert (model.sensitivity.value, model.specificity.low, model.auc.high) == (0.85, 0.5, 0.95)
    assert [(c.a, c.metric, c.verdict) for c in s.comparisons] == [
        (VAL, "recall", INCONCLUSIVE), (VAL, "specificity", INFERIOR), ("model", "auc", NON_INFERIOR),
        ("reader1+assisted", "accuracy", SUPERIOR)]
    assert s.sentence == cohort_sentence("external", 30, 20, s.comparisons, 0.1)
    assert "its specificity is inferior (difference -0.200, 95 % CI -0.300 to -0.120)" in s.sentence


def test_summarise_falls_back_to_the_papers_cutoff_with_a_note():
    metrics = [_metric(C.TEST, "model", "recall", 0.9, 0.7, 0.95, cutoff=C.CUTOFF_PAPER, n=10, n_gbm=5)]
    diffs = [_diff(C.TEST, "model_vs_reader", PAPER, "reader1", "recall", 0.0, -0.05, 0.05, n=10)]
    (s,) = summarise(metrics, diffs)
    assert s.cutoff_kind == C.CUTOFF_PAPER and s.cutoff_note == FALLBACK_NOTE
    assert [c.verdict for c in s.comparisons] == [NON_INFERIOR]
    assert "the model at the paper's cutoff" in s.sentence
    assert summary_cutoff([])[0] is None


def test_flows_sum_the_sites_of_a_cohort():
    rows = [{"cohort": C.EXTERNAL, "site": s, "stage": stage, "detail": detail, "n": n}
            for s in ("siteB", "siteC") for stage, detail, n in (
                ("in_manifest", "", 10), ("preprocessed", "", 9), ("failed", "unreadable_image", 1),
                ("evaluated", "", 8), ("read", "reader1", 8))]
    (f,) = flows(rows)
    assert (f.in_manifest, f.preprocessed, f.n_failed, f.evaluated, f.not_evaluated) == (20, 18, 2, 16, 2)
    assert f.failed == (("unreadable_image", 2),) and f.read == (("reader1", 16),)
