"""Ray tasks of evaluation that run the fold models: P(GBM) of slices by one fold model, and the
ensemble's Grad-CAM of a chunk of slices. Both rebuild the models with ``FoldEnsemble``."""

from __future__ import annotations

import numpy as np

from gbmmet import constants as C


def score_fold(checkpoint: str, mode: str, head: dict, backbone_name: str, backbone_id: str, weights, stages: int,
               X) -> np.ndarray:
    """Ray task: P(GBM) of every row of ``X`` (features, or uint8 slices in fine-tune mode) by one
    fold's model, read from its checkpoint."""
    import torch  # noqa: F401 - imported before match_threads_to_task, which limits it only if loaded

    from gbmmet.model.ensemble import FoldEnsemble
    from pipelines.ray_runtime import match_threads_to_task
    from pipelines.train import load_state

    match_threads_to_task()
    frozen = mode == "frozen"
    ensemble = FoldEnsemble.from_checkpoints(
        [checkpoint], mode=mode, head_config=head, backbone_name=backbone_name, backbone_id=backbone_id,
        weights=weights, stages=stages, read_state=load_state, features_only=frozen)  # frozen: X is features
    probs = ensemble.predict_proba(X, batch_size=256) if frozen else ensemble.predict_proba(images=X)
    return probs[0]


CAM_SPLITS = (C.TEST, C.EXTERNAL)
CAM_SIZE = 112


def cam_chunk(paths: list[str], mode: str, head: dict, backbone_name: str, backbone_id: str, weights,
              stages: int, images) -> np.ndarray:
    """Ray task: the ensemble's Grad-CAM of a chunk of slices, (N, 112, 112) uint8."""
    import torch  # noqa: F401 - imported before match_threads_to_task, which limits it only if loaded

    from gbmmet.model.ensemble import FoldEnsemble
    from pipelines.ray_runtime import match_threads_to_task
    from pipelines.train import load_state

    match_threads_to_task()
    ensemble = FoldEnsemble.from_checkpoints(
        paths, mode=mode, head_config=head, backbone_name=backbone_name, backbone_id=backbone_id,
        weights=weights, stages=stages, read_state=load_state)
    maps = ensemble.grad_cam(images, size=CAM_SIZE)
    return np.round(maps * 255).astype(np.uint8)
