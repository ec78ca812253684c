"""Grad-CAM (Selvaraju et al. 2017) on the backbone's last convolutional block, for an ensemble.

For each fold model: the activations A (N, K, h, w) of the last block (ResNet ``layer4``;
EfficientNet-Lite0's head convolution after batch norm), the gradient of the GBM logit with
respect to them, channel weights = the gradient's spatial mean, map = ReLU(sum_k weight_k A_k).
The class explained is each fold's own call on the slice unless one is named. The ensemble's map is the mean of the folds' maps, upsampled (bilinear) to the slice and scaled
to [0, 1] per slice. In frozen mode the folds share the backbone, so it runs once.

``gbmmet.render.overlay`` renders a map over a slice's CE-T1 channel as an RGB uint8 image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gbmmet.model.backbones import (
    CPU_FORWARD_BATCH,
    EFFNET_LITE0,
    BackboneInfo,
    module_device,
    to_network_input,
)
from gbmmet.model.head import CLASS_INDEX


def target_layer(backbone: nn.Module, info: BackboneInfo) -> nn.Module:
    if info.name == EFFNET_LITE0:
        return backbone.net._bn1
    return backbone.layer4


def _maps_one_backbone(backbone, info, heads, x, class_index):
    acts = {}

    def hook(_module, _inputs, output):
        a = output.detach().requires_grad_(True)
        acts["a"] = a
        return a

    handle = target_layer(backbone, info).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            feats = backbone(x)
            maps = []
            for head in heads:
                logits = head(feats)
                idx = logits.argmax(1) if class_index is None else torch.full((len(x),), class_index, device=x.device)
                logit = logits.gather(1, idx[:, None])[:, 0]
                (grad,) = torch.autograd.grad(logit.sum(), acts["a"], retain_graph=True)
                weights = grad.mean(dim=(2, 3), keepdim=True)
                maps.append(F.relu((weights * acts["a"]).sum(1)).detach())
    finally:
        handle.remove()
    return maps


def grad_cam(models, info: BackboneInfo, images_uint8, class_name: str | None = None,
             batch_size: int = CPU_FORWARD_BATCH) -> np.ndarray:
    """Ensemble Grad-CAM of uint8 slices (N, 3, H, W) -> (N, H, W) float32 in [0, 1].

    ``models``: (backbone, head) per fold; folds sharing one backbone object run it once.
    ``class_name``: the class whose logit is explained (``GBM`` / ``MET``); default: each fold
    model's own call on the slice (the evidence for what it decided). ``batch_size``: slices per
    forward pass (``backbones.forward_batch``). Runs where the models' weights are (a GPU, after
    ``FoldEnsemble.to``); the maps come back to the CPU.
    """
    images = torch.as_tensor(np.array(images_uint8))  # a copy: arrays from Ray are read-only
    n, _, height, width = images.shape
    class_index = None if class_name is None else CLASS_INDEX[class_name]
    groups: dict[int, tuple] = {}
    for backbone, head in models:
        groups.setdefault(id(backbone), (backbone, []))[1].append(head.eval())
    out = np.zeros((n, height, width), np.float32)
    for start in range(0, n, batch_size):
        x = to_network_input(images[start:start + batch_size].to(module_device(models[0][0])), info)
        total = None
        for backbone, heads in groups.values():
            backbone.eval()
            for m in _maps_one_backbone(backbone, info, heads, x, class_index):
                total = m if total is None else total + m
        cam = (total / len(models)).unsqueeze(1)
        cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        flat = cam.flatten(1)
        lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
        cam = torch.where(hi > lo, (cam - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(cam))
        out[start:start + len(x)] = cam.cpu().numpy()
    return out


