"""Fine-tune mode: the backbone's last resolution stage unfrozen and trained from the slices.

- ``tail_prefixes``: which parameters train. ResNet: ``layer4`` (the paper's backbone's last stage;
  ``stages=2`` adds ``layer3``). EfficientNet-Lite0: its last stride-2 stage, blocks 11-15 (the
  7x7 stage, like ResNet's layer4), plus ``_conv_head`` / ``_bn1``; ``stages=2`` adds blocks 8-10.
- ``FinetuneNet``: backbone + head in one module; ``train()`` keeps the frozen part in eval mode
  (its batch-norm statistics stay ImageNet's) and only the tail and head in training mode.
- ``augment``: light augmentation of uint8 slices (uint8 out), seeded: horizontal flip, a shift of up to 8
  pixels, an intensity gain of +/-10 % per channel. No rotation: slices are ROI crops whose border
  would show.
- Checkpoints keep only the trainable part (``trainable_state``), a few MB instead of the whole
  backbone; ``load_finetuned`` rebuilds the network from the backbone id and that state.
"""

from __future__ import annotations

import torch
from torch import nn

from gbmmet.model.backbones import EFFNET_LITE0, BackboneInfo, to_network_input
from gbmmet.model.head import Head

#: Backbone name -> the parameter-name prefixes of each unfrozen stage, last stage first.
_STAGES = {
    EFFNET_LITE0: (
        ("net._blocks.11.", "net._blocks.12.", "net._blocks.13.", "net._blocks.14.", "net._blocks.15.",
         "net._conv_head.", "net._bn1."),
        ("net._blocks.8.", "net._blocks.9.", "net._blocks.10."),
    ),
}
_RESNET_STAGES = (("layer4.",), ("layer3.",))


def tail_prefixes(info: BackboneInfo, stages: int = 1) -> tuple[str, ...]:
    """Parameter-name prefixes of the unfrozen part (``stages`` last resolution stages)."""
    table = _STAGES.get(info.name, _RESNET_STAGES)
    if not 1 <= stages <= len(table):
        raise ValueError(f"The 'stages' parameter must be in [1, {len(table)}] for {info.name}. Got {stages!r} instead.")
    return tuple(p for group in table[:stages] for p in group)


class FinetuneNet(nn.Module):
    """Backbone (its tail trainable) and head; input: uint8 slices, mapped inside."""

    def __init__(self, backbone: nn.Module, info: BackboneInfo, head: Head, stages: int = 1):
        super().__init__()
        self.backbone, self.head, self.info = backbone, head, info
        self.prefixes = tail_prefixes(info, stages)
        self._tail_modules = []
        for name, p in backbone.named_parameters():
            p.requires_grad_(name.startswith(self.prefixes))
        for name, module in backbone.named_modules():
            if (name + ".").startswith(self.prefixes):
                self._tail_modules.append(module)
        if not any(p.requires_grad for p in backbone.parameters()):
            raise ValueError(f"no backbone parameter matches {self.prefixes} in {info.name}")

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        for module in self._tail_modules:
            module.train(mode)
        return self

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(to_network_input(images_uint8, self.info)))

    def trainable_state(self) -> dict:
        """Head and tail tensors (weights and batch-norm buffers): what fine-tuning changed."""
        tail = {k: v for k, v in self.backbone.state_dict().items() if k.startswith(self.prefixes)}
        return {"tail": tail, "head": self.head.state_dict(), "prefixes": list(self.prefixes)}

    def load_trainable_state(self, state: dict) -> None:
        missing = self.backbone.load_state_dict(state["tail"], strict=False).unexpected_keys
        if missing:
            raise ValueError(f"fine-tuned state has keys the backbone lacks: {missing[:3]}")
        self.head.load_state_dict(state["head"])


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int = 8, gain: float = 0.1) -> torch.Tensor:
    """Light, seeded augmentation of a uint8 batch (N, C, H, W); returns uint8 (so the one input
    mapping, ``to_network_input``, still applies)."""
    x = images.float()
    n, c = x.shape[:2]
    flip = torch.rand(n, generator=generator) < 0.5
    x[flip] = x[flip].flip(-1)
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    for i in range(n):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        if dy or dx:
            x[i] = torch.roll(x[i], (dy, dx), dims=(-2, -1))
            if dy > 0:
                x[i, :, :dy] = 0
            elif dy < 0:
                x[i, :, dy:] = 0
            if dx > 0:
                x[i, :, :, :dx] = 0
            elif dx < 0:
                x[i, :, :, dx:] = 0
    g = 1.0 + (torch.rand(n, c, 1, 1, generator=generator) * 2 - 1) * gain
    return (x * g).round_().clamp_(0, 255).to(torch.uint8)
