"""Fine-tune mode's pieces: which layers train, frozen batch-norm stays in eval, seeded
augmentation, and the saved trainable state rebuilding the same network."""

from __future__ import annotations

import pytest
import torch

from gbmmet.model.backbones import EFFNET_LITE0, RANDOM18, load_backbone
from gbmmet.model.finetune import FinetuneNet, augment, tail_prefixes
from gbmmet.model.head import Head


def _net(seed=0):
    backbone, info = load_backbone(RANDOM18, seed=seed)
    torch.manual_seed(seed)
    return FinetuneNet(backbone, info, Head(info.feature_dim, 8), stages=1)


def test_only_the_last_stage_and_head_train_and_frozen_batchnorm_stays_in_eval():
    net = _net().train()
    trainable = {n for n, p in net.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("layer4.") for n in trainable)
    assert all(p.requires_grad for p in net.head.parameters())
    assert not net.backbone.layer1[0].bn1.training and net.backbone.layer4[0].bn1.training
    assert net.head.training
    assert tail_prefixes(net.info, 2) == ("layer4.", "layer3.")
    with pytest.raises(ValueError, match="'stages' parameter must be in \\[1, 2\\]"):
        tail_prefixes(net.info, 3)


def test_efficientnet_tail_is_its_last_stride2_stage():
    backbone, info = load_backbone(EFFNET_LITE0)
    net = FinetuneNet(backbone, info, Head(info.feature_dim, 8))
    names = {n.split(".")[2] if n.startswith("net._blocks.") else n.split(".")[1]
             for n, p in net.backbone.named_parameters() if p.requires_grad}
    assert names == {"11", "12", "13", "14", "15", "_conv_head", "_bn1"}


def test_augment_is_seeded_uint8_and_light(rng):
    x = torch.tensor(rng.integers(0, 256, (6, 3, 32, 32), dtype="uint8"))
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    # a constant image stays within +/-10 % (gain) after flip and shift of the interior
    flat = torch.full((4, 3, 32, 32), 100, dtype=torch.uint8)
    out = augment(flat, torch.Generator().manual_seed(0))[:, :, 8:24, 8:24].float()
    assert out.min() >= 89 and out.max() <= 111


def test_trainable_state_rebuilds_the_same_network(rng):
    net = _net(seed=0)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    x = torch.tensor(rng.integers(0, 256, (4, 3, 64, 64), dtype="uint8"))
    net.train()
    loss = net(x).sum()
    loss.backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        want = net(x)
    other = _net(seed=0)
    other.load_trainable_state(net.trainable_state())
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x), want)
    fresh = _net(seed=0).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), want)
