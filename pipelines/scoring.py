"""Ray tasks of evaluation that run the fold models: P(GBM) of slices by one fold model, and the
ensemble's Grad-CAM of a chunk of slices."""

from __future__ import annotations

import numpy as np

from gbmmet import constants as C


def score_fold(checkpoint: str, mode: str, head: dict, backbone_name: str, backbone_id: str, weights, stages: int,
               X) -> np.ndarray:
    """Ray task: P(GBM) of every row of ``X`` (features, or uint8 slices in fine-tune mode) by one
    fold's model, read from its checkpoint."""
    import torch

    from gbmmet.model.train import HeadConfig, make_head
    from pipelines.ray_runtime import match_threads_to_task
    from pipelines.train import load_state

    match_threads_to_task()
    cfg = HeadConfig(**head)
    state = load_state(checkpoint)
    if mode == "frozen":
        model = make_head(X.shape[1], cfg)
        model.load_state_dict(state["model"])
        x = torch.tensor(X)
    else:
        from gbmmet.model.backbones import load_backbone
        from gbmmet.model.finetune import FinetuneNet
        from gbmmet.model.head import Head

        backbone, info = load_backbone(backbone_name, weights)
        if info.id != backbone_id:
            raise RuntimeError(f"loaded backbone {info.id}, the run used {backbone_id}")
        model = FinetuneNet(backbone, info, Head(info.feature_dim, cfg.hidden, cfg.dropout), stages=stages)
        model.load_trainable_state(state["model"])
        x = torch.tensor(X)
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), 256):
            out.append(torch.softmax(model(x[i:i + 256]), 1)[:, 1].numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


CAM_SPLITS = (C.TEST, C.EXTERNAL)
CAM_SIZE = 112


def cam_chunk(paths: list[str], mode: str, head: dict, backbone_name: str, backbone_id: str, weights,
              stages: int, images) -> np.ndarray:
    """Ray task: the ensemble's Grad-CAM of a chunk of slices, (N, 112, 112) uint8."""
    import torch
    import torch.nn.functional as F

    from gbmmet.model.backbones import load_backbone
    from gbmmet.model.cam import grad_cam
    from gbmmet.model.train import HeadConfig, make_head
    from pipelines.ray_runtime import match_threads_to_task
    from pipelines.train import load_state

    match_threads_to_task()
    cfg = HeadConfig(**head)
    backbone, info = load_backbone(backbone_name, weights)
    models = []
    for path in paths:
        state = load_state(path)
        if mode == "frozen":
            h = make_head(info.feature_dim, cfg)
            h.load_state_dict(state["model"])
            models.append((backbone, h))
        else:
            from gbmmet.model.finetune import FinetuneNet
            from gbmmet.model.head import Head

            bb, _ = load_backbone(backbone_name, weights)
            net = FinetuneNet(bb, info, Head(info.feature_dim, cfg.hidden, cfg.dropout), stages)
            net.load_trainable_state(state["model"])
            models.append((net.backbone, net.head))
    maps = torch.from_numpy(grad_cam(models, info, images))[:, None]
    small = F.interpolate(maps, size=(CAM_SIZE, CAM_SIZE), mode="bilinear", align_corners=False)[:, 0]
    return (small.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
