"""Slices per forward pass on the CPU (``gbmmet.model.backbones.CPU_FORWARD_BATCH``), measured
side by side in one run: CPU and wall seconds per 64 slices of 224 x 224 through EfficientNet-Lite0
(genuine weights) and ResNet-50 (the paper's architecture; random weights cost the same
arithmetic), one thread (a Ray worker of one CPU), at 1, 2, 4, 8, 16, 32 and 64 slices a pass,
each passes' outputs compared with the 64-slice pass (float32 rounding only).

    .venv/bin/python bench/forward_batch.py [--repeats 3]

Prints a table (ratio to 64 a pass) and writes bench/out/forward_batch.json.
"""

from __future__ import annotations

import argparse
import time

from _common import save

BATCHES = (1, 2, 4, 8, 16, 32, 64)
SLICES = 64


def _model(name: str):
    from gbmmet.model.backbones import EFFNET_LITE0, load_backbone

    if name == "resnet50":
        from torch import nn
        from torchvision.models import resnet50

        net = resnet50()
        net.fc = nn.Identity()
        return net.eval()
    model, _ = load_backbone(EFFNET_LITE0)
    return model.eval()


def measure(name: str, repeats: int) -> list[dict]:
    """One row per batch size: the best of ``repeats`` CPU and wall seconds for ``SLICES`` slices."""
    import torch

    torch.manual_seed(0)
    x = torch.randn(SLICES, 3, 224, 224)
    model = _model(name)
    rows, reference = [], None
    with torch.inference_mode():
        model(x[:2])  # warm-up
        reference = model(x)
        for batch in BATCHES:
            cpu, wall = [], []
            for _ in range(repeats):
                c, w = time.process_time(), time.perf_counter()
                out = torch.cat([model(x[i:i + batch]) for i in range(0, SLICES, batch)])
                cpu.append(time.process_time() - c)
                wall.append(time.perf_counter() - w)
            rows.append({"backbone": name, "batch": batch, "cpu_s": min(cpu), "wall_s": min(wall),
                         "max_abs_diff_vs_64": float((out - reference).abs().max())})
    return rows


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from gbmmet.model.backbones import CPU_FORWARD_BATCH

    rows = []
    print(f"CPU seconds per {SLICES} slices, one thread, by slices per forward pass "
          f"(CPU_FORWARD_BATCH = {CPU_FORWARD_BATCH}):")
    print(f"{'backbone':<16}{'batch':>6}{'CPU s':>8}{'wall s':>8}{'vs 64':>8}{'max |diff|':>12}")
    for name in ("efficientnet-lite0", "resnet50"):
        mine = measure(name, args.repeats)
        base = mine[-1]["cpu_s"]
        for r in mine:
            r["cpu_ratio_vs_64"] = r["cpu_s"] / base
            print(f"{name:<16}{r['batch']:>6}{r['cpu_s']:>8.2f}{r['wall_s']:>8.2f}{r['cpu_ratio_vs_64']:>7.2f}x"
                  f"{r['max_abs_diff_vs_64']:>12.1e}")
        rows += mine
    print(f"written {save('forward_batch', {'rows': rows, 'slices': SLICES, 'threads': 1})}")


if __name__ == "__main__":
    main()
