"""Backbones: weights found or refused clearly, the input mapping, genuine offline weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gbmmet.model import backbones as B


def test_input_mapping_is_v_over_255_then_the_backbones_normalisation():
    _, info = B.load_backbone(B.RANDOM18)
    x = np.zeros((1, 3, 4, 4), np.uint8)
    x[0, :, 0, 0] = 255
    out = B.to_network_input(x, info)
    for c in range(3):
        assert out[0, c, 1, 1].item() == pytest.approx((0 - info.mean[c]) / info.std[c], abs=1e-6)
        assert out[0, c, 0, 0].item() == pytest.approx((1 - info.mean[c]) / info.std[c], abs=1e-6)
    with pytest.raises(TypeError, match="must be uint8"):
        B.to_network_input(x.astype(np.float32), info)


def test_auto_takes_resnet50_only_when_its_weights_are_here(tmp_path):
    name, path, reason = B.resolve(B.AUTO)
    if B.resnet50_cache_file().is_file():
        assert name == B.RESNET50
    else:
        assert name == B.EFFNET_LITE0 and "no ResNet-50 ImageNet weights on this machine" in reason
    assert name != B.RANDOM18  # random weights are never chosen for you


def test_efficientnet_lite0_has_genuine_weights_from_its_package():
    model, info = B.load_backbone(B.EFFNET_LITE0)
    assert info.feature_dim == 1280 and info.weights_sha256 == B.sha256_file(B.effnet_lite0_file())
    assert info.id.startswith("efficientnet-lite0-imagenet@")
    # pretrained filters are not random: the first conv has structured, non-zero mean filters
    w = model.net._conv_stem.weight
    assert w.shape == (32, 3, 3, 3) and w.abs().mean() > 0.05
    x = B.to_network_input(np.full((2, 3, 224, 224), 128, np.uint8), info)
    with torch.inference_mode():
        assert model(x).shape == (2, 1280)


def test_a_missing_or_wrong_weight_file_is_a_clear_error(tmp_path):
    with pytest.raises(B.MissingWeightsError, match="weight file not found: .*absent.pth"):
        B.load_backbone(B.RESNET50, tmp_path / "absent.pth")
    from torchvision.models import resnet18

    wrong = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(B.MissingWeightsError, match="does not fit the architecture"):
        B.load_backbone(B.RESNET50, wrong)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(B.MissingWeightsError, match="cannot be read"):
        B.load_backbone(B.RESNET50, garbage)


def test_resnet50_from_a_weight_file_records_its_sha256(tmp_path):
    from torchvision.models import resnet50

    path = tmp_path / "r50.pth"
    torch.manual_seed(0)
    torch.save(resnet50(weights=None).state_dict(), path)
    model, info = B.load_backbone(B.RESNET50, path)
    assert info.feature_dim == 2048 and info.weights_sha256 == B.sha256_file(path)
    assert "--weights" in info.reason and not any(p.requires_grad for p in model.parameters())
    assert not model.training  # frozen: eval mode


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="'backbone' parameter must be one of"):
        B.resolve("vgg16")


def test_forward_passes_are_small_on_the_cpu_and_large_on_a_gpu():
    from gbmmet.model.backbones import CPU_FORWARD_BATCH, GPU_FORWARD_BATCH, forward_batch

    assert forward_batch("cpu") == forward_batch(torch.device("cpu")) == CPU_FORWARD_BATCH
    assert forward_batch("cuda") == forward_batch("cuda:1") == GPU_FORWARD_BATCH > CPU_FORWARD_BATCH
