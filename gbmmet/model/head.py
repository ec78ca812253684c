"""The classifier head trained on frozen backbone features (the paper's fully connected part):
Linear(d, hidden) -> ReLU -> Dropout(0.5) -> Linear(hidden, 2); outputs are logits for (MET, GBM),
so index 1 is the positive class GBM."""

from __future__ import annotations

from torch import nn

#: Output index of each class.
CLASS_INDEX = {"MET": 0, "GBM": 1}


class Head(nn.Module):
    def __init__(self, in_features: int, hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"The 'hidden' parameter of Head must be >= 1. Got {hidden!r} instead.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"The 'dropout' parameter of Head must be in [0, 1). Got {dropout!r} instead.")
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 2))

    def forward(self, features):
        return self.net(features)


class FullModel(nn.Module):
    """Backbone and head in one network (the uncached path; fine-tuning; class activation maps)."""

    def __init__(self, backbone: nn.Module, head: Head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))
