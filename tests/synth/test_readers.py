"""Simulated readers: unassisted operating points near the paper's, errors on the hard cases,
noisy confidence, and assisted reads that follow the actual model, for better or worse."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import rankdata

from gbmmet import constants as C
from gbmmet.errors import ConfigError
from gbmmet.synth.cohort import build_cohort
from gbmmet.synth.lesion import sample_lesion_params, typicality
from gbmmet.synth.readers import (
    K_TYPICALITY,
    AssistProfile,
    assist_profile,
    assisted_call,
    binary_auc,
    error_intercept,
    expected_assisted_accuracy,
    simulate_assisted_reads,
    simulate_reads,
)
from gbmmet.synth.render import patient_reads
from gbmmet.synth.sites import get_site

READERS = ("reader1", "reader2")


def _population(site: str, n: int, seed: int) -> list[dict]:
    """``n`` patients per class, each read by every reader (unassisted)."""
    profile = get_site(site)
    rng = np.random.default_rng(seed)
    rows = []
    for label in C.LABELS:
        for i in range(n):
            loc = C.INFRA if rng.random() < profile.infra_rate[label] else C.SUPRA
            lesion = sample_lesion_params(rng, label, loc, None)
            t = (1 if label == C.GBM else -1) * typicality(lesion, 0.5)
            for r in simulate_reads(rng, site, label, lesion, 0.5):
                rows.append({**r, "patient_id": f"{label}-{i}", "label": label, "toward_truth": t})
    return rows


@functools.lru_cache(maxsize=8)
def _population_cached(site: str, n: int, seed: int) -> tuple[dict, ...]:
    return tuple(_population(site, n, seed))


def _model_calls(rows, model: tuple[float, float], seed: int) -> dict[str, str]:
    """A model right with (sensitivity, specificity), independently of the readers."""
    rng = np.random.default_rng(seed)
    truth = dict(sorted({(r["patient_id"], r["label"]) for r in rows}))
    calls = {}
    for pid, label in truth.items():
        right = rng.random() < (model[0] if label == C.GBM else model[1])
        calls[pid] = label if right else (C.MET if label == C.GBM else C.GBM)
    return calls


def _assisted(site: str, model: tuple[float, float]):
    """(unassisted rows, assisted rows, model calls) over a simulated population at ``site``."""
    rows = list(_population_cached(site, 2500, 99))
    calls = _model_calls(rows, model, seed=22)
    assisted = simulate_assisted_reads(rows, calls, {r["patient_id"]: site for r in rows}, seed=0)
    label = {r["patient_id"]: r["label"] for r in rows}
    return rows, [{**a, "label": label[a["patient_id"]]} for a in assisted], calls


def _sens_spec(rows, reader):
    sel = [r for r in rows if r["reader_id"] == reader]
    gbm = [r["call"] == C.GBM for r in sel if r["label"] == C.GBM]
    met = [r["call"] == C.MET for r in sel if r["label"] == C.MET]
    return float(np.mean(gbm)), float(np.mean(met))


def _paper_accuracy(site, sens_spec):
    """Accuracy weighted by the paper's test-set prevalence at ``site``."""
    counts = get_site(site).paper_test_counts
    return (counts[C.GBM] * sens_spec[0] + counts[C.MET] * sens_spec[1]) / (counts[C.GBM] + counts[C.MET])


def _auc(score, positive):
    """Mann-Whitney AUC of ``score`` for ``positive``."""
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    ranks = rankdata(score)
    n1, n0 = positive.sum(), (~positive).sum()
    return (ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


# -- unassisted reads ------------------------------------------------------------------------


@pytest.mark.parametrize("site", [C.SITE_INTERNAL, C.SITE_EXTERNAL])
def test_unassisted_operating_points_match_the_profile(site):
    rows = _population_cached(site, 2500, 99)
    assert not any(r["assisted"] for r in rows)
    for reader, prof in get_site(site).readers.items():
        sens, spec = _sens_spec(rows, reader)
        assert abs(sens - prof.unassisted[0]) < 0.025, (reader, sens, prof.unassisted)
        assert abs(spec - prof.unassisted[1]) < 0.025, (reader, spec, prof.unassisted)


def test_paper_reader_aucs_are_reproduced_internally():
    rows = _population(C.SITE_INTERNAL, 2500, seed=7)
    assert binary_auc(*_sens_spec(rows, "reader1")) == pytest.approx(0.889, abs=0.02)
    assert binary_auc(*_sens_spec(rows, "reader2")) == pytest.approx(0.768, abs=0.02)


def test_errors_fall_on_atypical_cases_not_coin_flips():
    rows = _population(C.SITE_INTERNAL, 1500, seed=3)
    for reader in READERS:
        sel = [r for r in rows if r["reader_id"] == reader]
        wrong = np.array([r["toward_truth"] for r in sel if r["call"] != r["label"]])
        right = np.array([r["toward_truth"] for r in sel if r["call"] == r["label"]])
        pooled_sd = np.concatenate([wrong, right]).std()
        # misread patients look much less like their true class than correctly read ones
        assert right.mean() - wrong.mean() > 0.8 * pooled_sd
        # the less typical half of the patients holds most of the errors
        t = np.array([r["toward_truth"] for r in sel])
        err = np.array([r["call"] != r["label"] for r in sel])
        atypical = t < np.median(t)
        assert err[atypical].sum() > 2.5 * err[~atypical].sum()


def test_confidence_is_lower_on_errors():
    rows = _population(C.SITE_INTERNAL, 1000, seed=11)
    wrong = np.mean([r["confidence"] for r in rows if r["call"] != r["label"]])
    right = np.mean([r["confidence"] for r in rows if r["call"] == r["label"]])
    assert set(r["confidence"] for r in rows) <= {1, 2, 3, 4, 5}
    assert right > wrong + 0.5


def test_the_same_lesion_gets_different_confidences():
    rng = np.random.default_rng(4)
    lesion = sample_lesion_params(rng, C.GBM, C.SUPRA, None)
    confidences = {r["confidence"] for _ in range(200)
                   for r in simulate_reads(rng, C.SITE_INTERNAL, C.GBM, lesion, 0.5) if r["reader_id"] == "reader2"}
    assert len(confidences) >= 3


def test_confidence_ranks_errors_worse_than_the_true_error_probability():
    rows = [r for r in _population(C.SITE_INTERNAL, 1500, seed=12) if r["reader_id"] == "reader2"]
    prof = get_site(C.SITE_INTERNAL).readers["reader2"]
    intercept = {label: error_intercept(C.SITE_INTERNAL, label, 1 - target, 0.5)
                 for label, target in zip((C.GBM, C.MET), prof.unassisted, strict=True)}
    p_err = [1 / (1 + np.exp(-(intercept[r["label"]] - K_TYPICALITY * r["toward_truth"]))) for r in rows]
    wrong = [r["call"] != r["label"] for r in rows]
    auc_true = _auc(p_err, wrong)
    auc_confidence = _auc([-r["confidence"] for r in rows], wrong)
    assert 0.6 < auc_confidence < auc_true - 0.03, (auc_confidence, auc_true)


def test_paper_preset_reads_are_unassisted_and_land_near_the_papers_aucs():
    specs = build_cohort("paper", seed=0)
    for cohort, targets in ((C.TEST, (0.889, 0.768)), (C.EXTERNAL, (0.857, 0.708))):
        sel = [s for s in specs if s.split == cohort]
        label = {s.patient_id: s.label for s in sel}
        reads = [{**r, "label": label[r["patient_id"]]} for s in sel for r in patient_reads(s)]
        assert reads and not any(r["assisted"] for r in reads)
        for reader, target in zip(READERS, targets, strict=True):
            # 100-143 patients: sampling sd of a binary AUC is about 0.03-0.04
            auc = binary_auc(*_sens_spec(reads, reader))
            assert abs(auc - target) < 0.09, (cohort, reader, auc)


# -- assisted reads --------------------------------------------------------------------------

PROFILE = AssistProfile(follow_unsure=0.8, follow_sure=0.1, sure_from=4)


def test_an_agreeing_model_keeps_the_call_and_raises_confidence():
    assert assisted_call(C.GBM, 2, C.GBM, PROFILE, u=0.0) == (C.GBM, 3)
    assert assisted_call(C.MET, 5, C.MET, PROFILE, u=0.0) == (C.MET, 5)


def test_an_unsure_reader_adopts_a_disagreeing_model_when_u_is_below_follow_unsure():
    assert assisted_call(C.GBM, 2, C.MET, PROFILE, u=0.5)[0] == C.MET
    assert assisted_call(C.GBM, 2, C.MET, PROFILE, u=0.9)[0] == C.GBM


def test_a_sure_reader_keeps_the_call_when_u_is_above_follow_sure():
    assert assisted_call(C.GBM, 4, C.MET, PROFILE, u=0.5) == (C.GBM, 3)
    assert assisted_call(C.GBM, 4, C.MET, PROFILE, u=0.05)[0] == C.MET


@pytest.mark.parametrize("site", [C.SITE_INTERNAL, C.SITE_EXTERNAL])
def test_assist_profile_reproduces_the_papers_assisted_accuracy_or_clips(site):
    profile = get_site(site)
    for reader, prof in profile.readers.items():
        assist_profile.cache_clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = assist_profile(site, reader)
        assert got.follow_sure == pytest.approx(0.2 * got.follow_unsure)
        expected = expected_assisted_accuracy(site, reader, got, profile.paper_model)
        if caught:  # unreachable: clipped, short of the paper
            assert got.follow_unsure == 1.0 and expected < _paper_accuracy(site, prof.assisted)
        else:
            assert 0.0 < got.follow_unsure < 1.0
            assert expected == pytest.approx(_paper_accuracy(site, prof.assisted), abs=1e-6)


def test_assistance_fixes_some_errors_and_adds_others():
    rows, assisted, _ = _assisted(C.SITE_INTERNAL, get_site(C.SITE_INTERNAL).paper_model)
    before = {(r["reader_id"], r["patient_id"]): r["call"] == r["label"] for r in rows}
    for reader in READERS:
        after = [(before[(a["reader_id"], a["patient_id"])], a["call"] == a["label"])
                 for a in assisted if a["reader_id"] == reader]
        fixed = sum(not b and a for b, a in after)
        added = sum(b and not a for b, a in after)
        assert fixed > 0 and added > 0, (reader, fixed, added)
        assert fixed > added


def test_assisted_readers_agree_with_the_model_more_often():
    rows, assisted, calls = _assisted(C.SITE_INTERNAL, get_site(C.SITE_INTERNAL).paper_model)
    for reader in READERS:
        alone = np.mean([r["call"] == calls[r["patient_id"]] for r in rows if r["reader_id"] == reader])
        helped = np.mean([a["call"] == calls[a["patient_id"]] for a in assisted if a["reader_id"] == reader])
        assert helped > alone + 0.05, (reader, alone, helped)


@pytest.mark.parametrize("site", [C.SITE_INTERNAL, C.SITE_EXTERNAL])
def test_with_the_papers_model_assisted_accuracy_is_near_the_papers(site):
    profile = get_site(site)
    _, assisted, _ = _assisted(site, profile.paper_model)
    for reader, prof in profile.readers.items():
        got = _paper_accuracy(site, _sens_spec(assisted, reader))
        assert got == pytest.approx(_paper_accuracy(site, prof.assisted), abs=0.03), (reader, got)


def test_with_a_coin_flip_model_assisted_readers_get_worse():
    rows, assisted, _ = _assisted(C.SITE_INTERNAL, (0.5, 0.5))
    for reader in READERS:
        alone = _paper_accuracy(C.SITE_INTERNAL, _sens_spec(rows, reader))
        helped = _paper_accuracy(C.SITE_INTERNAL, _sens_spec(assisted, reader))
        assert helped < alone - 0.05, (reader, alone, helped)


def test_assisted_reads_are_deterministic_by_seed_and_per_read():
    rows = list(_population_cached(C.SITE_EXTERNAL, 100, 5))
    calls = _model_calls(rows, (0.5, 0.5), seed=1)
    sites = {r["patient_id"]: C.SITE_EXTERNAL for r in rows}
    first = simulate_assisted_reads(rows, calls, sites, seed=3)
    assert simulate_assisted_reads(rows, calls, sites, seed=3) == first
    # a read's outcome does not depend on the other rows or their order
    assert simulate_assisted_reads(rows[::-1], calls, sites, seed=3) == first[::-1]
    assert simulate_assisted_reads(rows, calls, sites, seed=4) != first


def test_patients_without_a_model_call_are_skipped():
    rows = list(_population_cached(C.SITE_EXTERNAL, 100, 5))
    some = {r["patient_id"] for r in rows[:10]}
    calls = {pid: C.GBM for pid in some}
    out = simulate_assisted_reads(rows, calls, {r["patient_id"]: C.SITE_EXTERNAL for r in rows}, seed=0)
    assert {a["patient_id"] for a in out} == some
    assert all(a["assisted"] is True for a in out)


def test_an_unknown_reader_raises_naming_reader_site_and_known_readers():
    row = {"reader_id": "dr_who", "patient_id": "p1", "call": C.GBM, "confidence": 3}
    with pytest.raises(ValueError, match=r"'dr_who'.*'siteA'.*\['reader1', 'reader2'\]"):
        simulate_assisted_reads([row], {"p1": C.MET}, {"p1": C.SITE_INTERNAL}, seed=0)


# -- in the lake -----------------------------------------------------------------------------


def _write(lake, table, rows):
    from storage.schemas import SCHEMAS

    names = SCHEMAS[table].names
    lake.append(table, pa.Table.from_pylist([{n: r.get(n) for n in names} for r in rows]))


def test_simulate_assisted_writes_one_source_per_run_from_its_calls(tmp_path):
    from pipelines.readers import simulate_assisted
    from storage.lake import Lake

    lake = Lake(tmp_path / "lake")
    rows = [r for r in _population_cached(C.SITE_INTERNAL, 100, 5)][:40]
    pids = sorted({r["patient_id"] for r in rows})
    _write(lake, C.TABLE_PATIENTS, [{C.COL_PATIENT_ID: p, C.COL_SITE: C.SITE_INTERNAL, C.COL_SPLIT: C.TEST,
                                     C.COL_LABEL: p.split("-")[0]} for p in pids])
    _write(lake, C.TABLE_READS, [{**r, C.COL_READ_SOURCE: "import:reads.csv"} for r in rows])
    preds = [{"run_id": "r1", C.COL_PATIENT_ID: p, "cutoff_kind": C.CUTOFF_PAPER, C.COL_CALL: C.GBM} for p in pids]
    _write(lake, C.TABLE_PATIENT_PREDICTIONS, preds)

    with pytest.raises(ConfigError, match="no patient predictions"):
        simulate_assisted(str(tmp_path / "lake"), "r1", cutoff_kind="no_such_cutoff")
    for _ in range(2):  # a second simulation of the run replaces the first
        summary = simulate_assisted(str(tmp_path / "lake"), "r1", cutoff_kind=C.CUTOFF_PAPER)
    reads = lake.read(C.TABLE_READS).to_pylist()
    simulated = [r for r in reads if r[C.COL_ASSISTED]]
    assert summary.rows == len(simulated) == len(rows) and summary.source == C.READ_SOURCE_SIMULATED + "r1"
    assert {r[C.COL_READ_SOURCE] for r in simulated} == {C.READ_SOURCE_SIMULATED + "r1"}
