"""Folds and the head's training loop for one process (Ray Train runs it on each worker).

- ``assign_folds``: K folds over the training split by patient, stratified by label
  (StratifiedGroupKFold on slices grouped by patient), seeded.
- ``HeadConfig``: the paper's head training (Adam 1e-3, batch 64, 100 epochs, cross-entropy,
  dropout 0.5; class weights optional, since the training set is 2:1 GBM:MET).
- ``epoch_order`` / ``epoch_seed`` / ``train_epoch`` / ``evaluate``: one epoch, its shuffle and
  its dropout drawn from (seed, fold, epoch) alone, so a run repeats, and a run resumed from a
  checkpoint ends with the same weights as one never interrupted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from gbmmet.model.head import CLASS_INDEX, Head


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 256
    dropout: float = 0.5
    lr: float = 1e-3
    batch_size: int = 64
    epochs: int = 100
    class_weights: bool = False
    seed: int = 0
    # A checkpoint (the only time Ray Train hears of a fold) every ``checkpoint_every`` epochs once
    # ``checkpoint_min_s`` seconds have passed since the last, and always at the end: a frozen
    # head's 100 epochs take seconds and report once; a fine-tune's long epochs every 10.
    checkpoint_every: int = 10
    checkpoint_min_s: float = 30.0

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> HeadConfig:
        for name in ("hidden", "batch_size", "epochs", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"The '{name}' parameter must be >= 1. Got {getattr(self, name)!r} instead.")
        if not self.checkpoint_min_s >= 0:
            raise ValueError(f"The 'checkpoint_min_s' parameter must be >= 0. Got {self.checkpoint_min_s!r} instead.")
        if not self.lr > 0:
            raise ValueError(f"The 'lr' parameter must be > 0. Got {self.lr!r} instead.")
        return self


def checkpoint_due(epoch: int, cfg: HeadConfig, seconds_since_last: float) -> bool:
    """Whether epoch ``epoch`` (0-based) ends with a checkpoint: always the last; otherwise every
    ``cfg.checkpoint_every`` epochs, once ``cfg.checkpoint_min_s`` seconds passed since the last."""
    if epoch == cfg.epochs - 1:
        return True
    return (epoch + 1) % cfg.checkpoint_every == 0 and seconds_since_last >= cfg.checkpoint_min_s


def assign_folds(patient_ids, labels, n_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Fold (0..n_folds-1) of every patient: by patient, stratified by label.

    ``patient_ids`` and ``labels`` are per slice (a patient's slices share its label).

    Raises:
        ValueError: fewer patients of a class than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    pids = np.asarray(patient_ids)
    y = np.asarray(labels)
    per_class = {lab: len(set(pids[y == lab])) for lab in set(y)}
    if n_folds < 2 or min(per_class.values(), default=0) < n_folds:
        raise ValueError(f"{n_folds} folds need at least {n_folds} training patients of each class; "
                         f"have {per_class}")
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds: dict[str, int] = {}
    for k, (_, held) in enumerate(cv.split(pids, y, groups=pids)):
        for pid in set(pids[held]):
            folds[str(pid)] = k
    return folds


def encode_labels(labels) -> np.ndarray:
    return np.array([CLASS_INDEX[lab] for lab in labels], dtype=np.int64)


def make_head(in_features: int, cfg: HeadConfig) -> Head:
    torch.manual_seed(cfg.seed)
    return Head(in_features, cfg.hidden, cfg.dropout)


def loss_fn(cfg: HeadConfig, y_train: np.ndarray) -> nn.Module:
    if not cfg.class_weights:
        return nn.CrossEntropyLoss()
    counts = np.bincount(y_train, minlength=2).astype(np.float64)
    weights = counts.sum() / (2.0 * np.maximum(counts, 1.0))
    return nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))


def epoch_seed(seed: int, fold: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch of one fold (and one DDP rank): a resumed run redraws the same."""
    return (seed * 1_000_003 + fold * 10_007 + epoch * 101 + rank) % (2**63 - 1)


def epoch_order(n: int, seed: int, fold: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's rows for one epoch: one shared shuffle, cut into ``world`` equal parts.

    Every rank gets the same number of rows (the last ``n % world`` of the shuffle sit out this
    epoch), so every rank runs the same number of steps, which DDP needs.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, fold, epoch)))
    if world == 1:
        return order
    per = n // world
    return order[rank * per:(rank + 1) * per]


def train_epoch(model: nn.Module, opt, criterion, X: torch.Tensor, y: torch.Tensor, batch_size: int,
                order: torch.Tensor, transform=None) -> tuple[float, float]:
    """One pass over ``X[order]`` in batches; returns mean loss and accuracy.

    ``transform`` maps a batch of ``X`` to the model's input (augmentation in fine-tune mode).
    Dropout draws from torch's global generator: seed it per epoch (``epoch_seed``) for runs
    that repeat and resume exactly.
    """
    model.train()
    total, correct, n = 0.0, 0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        xb = X[idx] if transform is None else transform(X[idx])
        opt.zero_grad()
        logits = model(xb)
        loss = criterion(logits, y[idx])
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == y[idx]).sum())
        n += len(idx)
    return total / max(n, 1), correct / max(n, 1)


@torch.no_grad()
def evaluate(model: nn.Module, criterion, X: torch.Tensor, y: torch.Tensor,
             batch_size: int = 4096) -> tuple[float, float, np.ndarray]:
    """Loss, accuracy and P(GBM) per row, in eval mode (batched: images need it)."""
    model.eval()
    if len(X) == 0:
        return float("nan"), float("nan"), np.zeros(0, np.float32)
    logits = torch.cat([model(X[i:i + batch_size]) for i in range(0, len(X), batch_size)]).cpu()
    y = y.cpu()
    prob = torch.softmax(logits, 1)[:, CLASS_INDEX["GBM"]].numpy().astype(np.float32)
    return float(criterion.cpu()(logits, y)), float((logits.argmax(1) == y).float().mean()), prob
