"""The fold ensemble of a training run, and its slice call.

- ``ensemble_vote``: the paper's slice call, the majority vote of the fold models, a tie going to
  the mean probability; the patient's predictive index is the share of slices called GBM.
- ``FoldEnsemble``: a run's fold models rebuilt from their checkpoints (``from_checkpoints``,
  ``from_run_record``), with P(GBM) per fold (``predict_proba``), the vote (``vote``) and the
  ensemble's Grad-CAM (``grad_cam``). Evaluation, class activation maps and ``gbmmet predict``
  all rebuild the fold models through it.

torch is imported inside the methods: importing ``ensemble_vote`` stays cheap.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from gbmmet.model.backbones import BackboneInfo
    from gbmmet.model.train import HeadConfig

#: Training modes: heads on frozen backbone features, or the backbone's tail fine-tuned with them.
FROZEN, FINETUNE = "frozen", "finetune"
MODES = (FROZEN, FINETUNE)


def ensemble_vote(probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``probs`` (folds, slices) P(GBM) -> (share of folds voting GBM, mean P(GBM), GBM call)."""
    p = np.asarray(probs)
    share = (p >= 0.5).mean(axis=0)
    mean_p = p.mean(axis=0)
    return share, mean_p, np.where(share == 0.5, mean_p >= 0.5, share > 0.5)


def _batches(x, size: int):
    """Float or uint8 tensors of ``size`` rows of ``x`` (array or tensor); a numpy batch is copied,
    since arrays from Ray's object store are read-only."""
    import torch

    for start in range(0, len(x), size):
        part = x[start:start + size]
        yield part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))


class FoldEnsemble:
    """The fold models of one training run, ready to predict.

    Parameters (stored as given; build one with ``from_checkpoints`` or ``from_run_record``):
        mode: ``"frozen"`` (one ``Head`` per fold on the shared backbone's features) or
            ``"finetune"`` (one ``FinetuneNet`` per fold: each has its own backbone tail).
        models: the fold models, in the order of ``folds``; put in eval mode here.
        backbone: the frozen backbone (frozen mode), or the untouched one the fold networks were
            copied from (fine-tune mode). ``None`` in frozen mode scores features only.
        info: the backbone's ``BackboneInfo`` (fine-tune mode: default, the first network's).
        folds: the fold number of each model (default 0, 1, ...).

    Raises:
        ValueError: unknown mode, no models, ``folds`` not one per model.
    """

    def __init__(self, mode: str, models: list[nn.Module], *, backbone: nn.Module | None = None,
                 info: BackboneInfo | None = None, folds: list[int] | None = None):
        if mode not in MODES:
            raise ValueError(f"The 'mode' parameter of FoldEnsemble must be one of {MODES}. Got {mode!r} instead.")
        if not models:
            raise ValueError("The 'models' parameter of FoldEnsemble must hold at least one fold model. Got none instead.")
        folds = list(range(len(models))) if folds is None else [int(k) for k in folds]
        if len(folds) != len(models):
            raise ValueError(f"The 'folds' parameter of FoldEnsemble must name one fold per model ({len(models)}). "
                             f"Got {folds!r} instead.")
        if info is None and mode == FINETUNE:
            info = models[0].info
        self.mode = mode
        self.models = [m.eval() for m in models]
        self.backbone = backbone.eval() if backbone is not None else None
        self.info = info
        self.folds = folds

    @property
    def device(self):
        """Where the fold models' weights are (``torch.device``; the CPU for a model without any)."""
        from gbmmet.model.backbones import module_device

        return module_device(self.models[0])

    @property
    def n_folds(self) -> int:
        return len(self.models)

    def to(self, device) -> FoldEnsemble:
        """Move the fold models (and the shared backbone) to ``device`` (``"cuda"``, a
        ``torch.device``); predictions and maps then run there and come back as numpy arrays.
        Returns the ensemble."""
        self.models = [m.to(device) for m in self.models]
        if self.backbone is not None and self.mode == FROZEN:  # fine-tune folds have their own
            self.backbone = self.backbone.to(device)
        return self

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoints(cls, states_or_paths, *, mode: str, head_config: dict | HeadConfig, backbone_name: str,
                         backbone_id: str, weights=None, stages: int = 1,
                         read_state: Callable[[str], dict] | None = None, folds=None,
                         features_only: bool = False) -> FoldEnsemble:
        """Rebuild the fold models from their saved states.

        Args:
            states_or_paths: per fold, the trainer's saved state (a dict with ``"model"``) or its
                checkpoint folder; a list (fold k at index k) or a mapping fold -> state or path.
            mode: the run's mode (``"frozen"`` / ``"finetune"``).
            head_config: the run's ``HeadConfig`` or its dict (``hidden``, ``dropout`` matter).
            backbone_name, backbone_id, weights: the run's backbone, its id (name@hash) and weight
                file; the backbone is loaded once and must have this id.
            stages: fine-tune mode: how many of the backbone's last stages were trained.
            read_state: path -> state dict. Needed where paths are given: the checkpoint layout is
                the trainer's (``pipelines.train.load_state`` reads local folders and URIs).
            folds: the folds to load (default all), e.g. ``[k]`` for one fold per task.
            features_only: frozen mode: do not load the backbone; the ensemble then scores
                features (``predict_proba(features=...)``) only.

        Raises:
            ConfigError: the backbone loaded here is not ``backbone_id`` (message names both), or
                the heads do not fit its features.
            ValueError: bad mode, ``features_only`` in fine-tune mode, a fold that is not there,
                a path without ``read_state``.
            MissingWeightsError: the backbone's weights cannot be found.
        """
        from gbmmet.errors import ConfigError
        from gbmmet.model.head import Head
        from gbmmet.model.train import HeadConfig

        if mode not in MODES:
            raise ValueError(f"The 'mode' parameter must be one of {MODES}. Got {mode!r} instead.")
        if features_only and mode != FROZEN:
            raise ValueError("features_only needs frozen mode: fine-tuned folds each run their own backbone tail")
        cfg = head_config if isinstance(head_config, HeadConfig) else HeadConfig(**head_config)
        items = dict(states_or_paths) if isinstance(states_or_paths, Mapping) else dict(enumerate(states_or_paths))
        items = {int(k): v for k, v in items.items()}
        chosen = sorted(items) if folds is None else [int(k) for k in folds]
        absent = [k for k in chosen if k not in items]
        if absent or not chosen:
            raise ValueError(f"The 'folds' parameter must name folds of the run {sorted(items)}. Got {folds!r} instead.")
        states = []
        for k in chosen:
            state = items[k]
            if not isinstance(state, Mapping):
                if read_state is None:
                    raise ValueError(f"fold {k} is a checkpoint path ({state}): pass read_state (path -> state dict), "
                                     "e.g. pipelines.train.load_state")
                state = read_state(str(state))
            states.append(state["model"])

        backbone = info = None
        if not features_only:
            from gbmmet.model.backbones import load_backbone

            backbone, info = load_backbone(backbone_name, weights)
            if info.id != backbone_id:
                raise ConfigError(f"the backbone loaded here is {info.id}, but the fold models were trained on "
                                  f"{backbone_id} (the weight file must be the run's)")
        if mode == FROZEN:
            models = []
            for k, weights_k in zip(chosen, states, strict=True):
                # Head's first layer is net.0: its input width is the features' width
                width = int(weights_k["net.0.weight"].shape[1])
                if info is not None and width != info.feature_dim:
                    raise ConfigError(f"fold {k}'s head takes {width} features; backbone {info.id} gives "
                                      f"{info.feature_dim}")
                head = Head(width, cfg.hidden, cfg.dropout)
                head.load_state_dict(weights_k)
                models.append(head)
        else:
            from gbmmet.model.finetune import FinetuneNet

            models = []
            for weights_k in states:
                # each fold trained its own tail: a copy of the loaded backbone, not a second load
                net = FinetuneNet(copy.deepcopy(backbone), info, Head(info.feature_dim, cfg.hidden, cfg.dropout), stages)
                net.load_trainable_state(weights_k)
                models.append(net)
        return cls(mode, models, backbone=backbone, info=info, folds=chosen)

    @classmethod
    def from_run_record(cls, record: Mapping[str, Any], read_state: Callable[[str], dict], *,
                        folds=None, features_only: bool = False) -> FoldEnsemble:
        """The ensemble of a ``runs`` row of kind ``train`` (``mode``, ``backbone_id``, ``config``
        JSON with ``head`` / ``weights_file`` / ``stages``, ``fold_checkpoints`` JSON).

        Raises what ``from_checkpoints`` raises; a backbone mismatch names the run.
        """
        import json

        from gbmmet.errors import ConfigError

        config = json.loads(record["config"])
        checkpoints = {int(k): v for k, v in json.loads(record["fold_checkpoints"]).items()}
        try:
            return cls.from_checkpoints(
                checkpoints, mode=record["mode"], head_config=config["head"],
                backbone_name=record["backbone_id"].split("@")[0], backbone_id=record["backbone_id"],
                weights=config.get("weights_file"), stages=config.get("stages") or 1, read_state=read_state,
                folds=folds, features_only=features_only)
        except ConfigError as exc:
            raise ConfigError(f"run {record.get('run_id')}: {exc}") from None

    # ------------------------------------------------------------------------------------------
    # prediction
    # ------------------------------------------------------------------------------------------
    def predict_proba(self, features=None, *, images=None, batch_size: int | None = None) -> np.ndarray:
        """P(GBM) of every slice by every fold model: float32 (folds, N).

        Give exactly one of ``features`` (backbone features (N, d), frozen mode) or ``images``
        (uint8 slices (N, 3, H, W); frozen mode runs the backbone first). Arrays or tensors.
        ``batch_size``: rows at a time (default 4096 features; images: ``forward_batch`` of the
        models' device).

        Raises:
            TypeError: neither or both given; images that are not uint8.
            ValueError: features in fine-tune mode, images to an ensemble loaded features-only.
        """
        import torch

        from gbmmet.model.backbones import forward_batch, to_network_input

        if (features is None) == (images is None):
            raise TypeError("predict_proba takes features= or images=, exactly one")
        if features is not None and self.mode == FINETUNE:
            raise ValueError("fine-tuned folds each have their own backbone tail: pass images=, not features=")
        if images is not None and self.mode == FROZEN and self.backbone is None:
            raise ValueError("this ensemble was loaded features_only: pass features=, or load it with its backbone")
        x = features if features is not None else images
        size = batch_size or (4096 if features is not None else forward_batch(self.device))
        out = []
        device = self.device
        with torch.inference_mode():
            for xb in _batches(x, size):
                xb = xb.to(device)
                if self.mode == FINETUNE:
                    logits = [net(xb) for net in self.models]
                else:
                    feats = xb.float() if features is not None else self.backbone(to_network_input(xb, self.info))
                    logits = [head(feats) for head in self.models]
                out.append(torch.stack([torch.softmax(z, 1)[:, 1] for z in logits]).cpu().numpy())
        return np.concatenate(out, axis=1).astype(np.float32) if out else np.zeros((self.n_folds, 0), np.float32)

    def vote(self, features=None, *, images=None, batch_size: int | None = None):
        """``ensemble_vote`` of ``predict_proba``: (share of folds voting GBM, mean P(GBM), GBM call)."""
        return ensemble_vote(self.predict_proba(features, images=images, batch_size=batch_size))

    def grad_cam(self, images, size: int | tuple[int, int] | None = None, *, class_name: str | None = None,
                 batch_size: int | None = None) -> np.ndarray:
        """The ensemble's Grad-CAM (``gbmmet.model.cam.grad_cam``) of uint8 slices (N, 3, H, W):
        float32 (N, H, W) in [0, 1], or resized (bilinear) to ``size`` (an int: square).

        Frozen mode: the folds share the backbone (it runs once per batch); fine-tune mode: each
        fold's map comes from its own network.

        Raises:
            ValueError: an ensemble loaded features-only.
        """
        import torch
        import torch.nn.functional as F

        from gbmmet.model.cam import grad_cam

        if self.mode == FROZEN:
            if self.backbone is None:
                raise ValueError("this ensemble was loaded features_only: Grad-CAM needs its backbone")
            pairs = [(self.backbone, head) for head in self.models]
        else:
            pairs = [(net.backbone, net.head) for net in self.models]
        from gbmmet.model.backbones import forward_batch

        maps = grad_cam(pairs, self.info, images, class_name, batch_size or forward_batch(self.device))
        if size is None:
            return maps
        hw = (size, size) if isinstance(size, int) else tuple(size)
        small = F.interpolate(torch.from_numpy(maps)[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]
        return small.clamp(0, 1).numpy()

    def __repr__(self) -> str:
        backbone = self.info.id if self.info is not None else "none (features only)"
        return f"FoldEnsemble(mode={self.mode!r}, folds={self.folds}, backbone={backbone})"
