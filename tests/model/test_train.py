"""Folds by patient, and the head's training loop in one process (deterministic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gbmmet import constants as C
from gbmmet.model.train import (
    HeadConfig,
    assign_folds,
    checkpoint_due,
    encode_labels,
    epoch_order,
    epoch_seed,
    evaluate,
    loss_fn,
    make_head,
    train_epoch,
)


def _slices(rng, n_gbm=30, n_met=15):
    pids, labels = [], []
    for i in range(n_gbm + n_met):
        lab = C.GBM if i < n_gbm else C.MET
        for _ in range(rng.integers(3, 15)):
            pids.append(f"p{i:03d}")
            labels.append(lab)
    return np.array(pids), labels


def test_folds_are_by_patient_stratified_and_seeded(rng):
    pids, labels = _slices(rng)
    folds = assign_folds(pids, labels, 5, seed=0)
    assert set(folds) == set(pids) and set(folds.values()) == set(range(5))
    label_of = dict(zip(pids, labels, strict=True))
    for k in range(5):
        members = [p for p, f in folds.items() if f == k]
        gbm = sum(label_of[p] == C.GBM for p in members)
        assert 4 <= gbm <= 8 and 1 <= len(members) - gbm <= 5  # 30 GBM / 15 MET over 5 folds
    assert assign_folds(pids, labels, 5, seed=0) == folds
    assert assign_folds(pids, labels, 5, seed=1) != folds


def test_too_few_patients_per_class_is_a_clear_error():
    with pytest.raises(ValueError, match="5 folds need at least 5 training patients of each class"):
        assign_folds(["a", "b", "c"], [C.GBM, C.MET, C.MET], 5)


def _train(X, y, cfg):
    model = make_head(X.shape[1], cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    crit = loss_fn(cfg, y.numpy())
    losses = []
    for epoch in range(cfg.epochs):
        torch.manual_seed(epoch_seed(cfg.seed, 0, epoch))
        losses.append(train_epoch(model, opt, crit, X, y, cfg.batch_size, epoch_order(len(X), cfg.seed, 0, epoch))[0])
    return model, losses


def test_head_learns_separable_features_and_is_deterministic(rng):
    y = torch.tensor(encode_labels([C.GBM] * 80 + [C.MET] * 40))
    X = torch.tensor(rng.normal(0, 1, (120, 16)).astype(np.float32)) + y[:, None].float() * 1.5
    cfg = HeadConfig(hidden=16, epochs=100, seed=4)
    a, losses = _train(X, y, cfg)
    b, _ = _train(X, y, cfg)
    assert losses[-1] < 0.7 * losses[0]
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    loss, acc, prob = evaluate(a, loss_fn(cfg, y.numpy()), X, y)
    assert acc > 0.9 and prob.shape == (120,) and ((prob >= 0) & (prob <= 1)).all()
    # class weights counter the 2:1 imbalance: MET weighs twice GBM
    w = loss_fn(HeadConfig(class_weights=True), y.numpy()).weight
    assert w[0] / w[1] == pytest.approx(2.0)


def test_bad_head_parameters_are_refused():
    with pytest.raises(ValueError, match="'epochs' parameter must be >= 1"):
        HeadConfig(epochs=0).check()


def test_epoch_order_gives_every_rank_the_same_number_of_rows():
    parts = [epoch_order(103, 0, 1, 7, rank, 4) for rank in range(4)]
    assert {len(p) for p in parts} == {25}
    joined = torch.cat(parts)
    assert len(set(joined.tolist())) == 100  # disjoint; 3 rows sit out this epoch
    whole = epoch_order(103, 0, 1, 7)
    assert torch.equal(whole[:100], joined) and sorted(whole.tolist()) == list(range(103))
    assert not torch.equal(epoch_order(103, 0, 1, 8), whole)


def test_the_last_epoch_always_checkpoints():
    cfg = HeadConfig(epochs=7, checkpoint_every=3, checkpoint_min_s=1e9)
    assert [e for e in range(7) if checkpoint_due(e, cfg, seconds_since_last=0.0)] == [6]


def test_checkpoints_come_every_k_epochs_once_the_minimum_time_has_passed():
    cfg = HeadConfig(epochs=10, checkpoint_every=3, checkpoint_min_s=5.0)
    assert [e for e in range(10) if checkpoint_due(e, cfg, seconds_since_last=5.0)] == [2, 5, 8, 9]
    assert not checkpoint_due(2, cfg, seconds_since_last=4.9)  # due by count, too soon by time


def test_a_negative_checkpoint_interval_is_refused():
    with pytest.raises(ValueError, match="checkpoint_min_s"):
        HeadConfig(checkpoint_min_s=-1.0).check()
