"""Benchmark of ``gbmmet train`` on the demo lake, measured side by side in one run:

1. cached (frozen mode, the paper's): 5 folds x 100 epochs of the head on cached features,
   a) through Ray Train (``run_train``: what the command costs, Ray start-up included) and
   b) the same loop in this process (the arithmetic alone);
2. naive: the same head training, but the frozen backbone runs on every slice every epoch. A few
   epochs of fold 0 are timed and extrapolated to 5 x 100 (said so in the output); after those
   epochs its head is compared with the cached loop's head after the same epochs (same seeds):
   equal predictions, so the speed-up is like for like;
3. feature throughput on this CPU: ResNet-50 (the paper's architecture; random weights cost the
   same arithmetic) and EfficientNet-Lite0, eager against channels_last (and ``torch.compile``
   with ``--compile``), on all the machine's threads;
4. GPU: measured only where a GPU is present (``torch.cuda.is_available()``), with mixed precision.

    .venv/bin/python bench/train.py [--lake lake] [--naive-epochs 2] [--compile]

Needs the demo lake (``make demo``). Prints a table and writes bench/out/train.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import ROOT, save, use_ray_tmpdir


def _throughput(name: str, images, variant: str, batch: int, device: str = "cpu", seconds: float = 8.0) -> float:
    import torch

    from gbmmet.model.backbones import RANDOM18, load_backbone, to_network_input

    if name == "resnet50":
        from torch import nn
        from torchvision.models import resnet50

        from gbmmet.model.backbones import IMAGENET_MEAN, IMAGENET_STD, BackboneInfo

        model = resnet50(weights=None)
        model.fc = nn.Identity()
        info = BackboneInfo("resnet50-random", "0" * 64, 2048, IMAGENET_MEAN, IMAGENET_STD, "", "")
    else:
        model, info = load_backbone(name if name != "resnet18" else RANDOM18)
    model = model.eval().to(device)
    x = to_network_input(images[:batch], info).to(device)
    if variant in ("channels_last", "compile") and device == "cpu":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if variant == "compile":
        model = torch.compile(model)
    autocast = torch.autocast("cuda", dtype=torch.float16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        model(x)  # warm-up (and compilation)
        if device == "cuda":
            torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += len(x)
        if device == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def _inprocess_folds(X, y, slice_fold, folds, head_cfg, epochs):
    """The cached loop without Ray: every fold's head for ``epochs`` epochs; returns heads."""
    import torch

    from gbmmet.model.train import epoch_order, epoch_seed, loss_fn, make_head, train_epoch

    heads = {}
    for k in range(folds):
        tr = slice_fold != k
        Xt, yt = torch.tensor(X[tr]), torch.tensor(y[tr])
        head = make_head(X.shape[1], head_cfg)
        opt = torch.optim.Adam(head.parameters(), lr=head_cfg.lr)
        crit = loss_fn(head_cfg, y[tr])
        for epoch in range(epochs):
            torch.manual_seed(epoch_seed(head_cfg.seed, k, epoch))
            train_epoch(head, opt, crit, Xt, yt, head_cfg.batch_size, epoch_order(len(Xt), head_cfg.seed, k, epoch))
        heads[k] = head
    return heads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lake", default=str(ROOT / "lake"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--naive-epochs", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on 2 cores)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from gbmmet import constants as C
    from gbmmet.model.backbones import load_backbone, to_network_input
    from gbmmet.model.train import HeadConfig, assign_folds, encode_labels, loss_fn
    from pipelines.train import (
        _pick_feature_backbone,
        load_feature_matrix,
        load_slice_images,
        run_train,
    )
    from storage.lake import Lake

    src = Path(args.lake)
    if not (src / "features").is_dir():
        raise SystemExit(f"{src} has no features: run `make demo` (or gbmmet features --lake {src}) first")
    tmp = Path(tempfile.mkdtemp(prefix="gbmmet-bench-train-"))
    use_ray_tmpdir(tmp)
    lake_dir = tmp / "lake"
    shutil.copytree(src, lake_dir, ignore=shutil.ignore_patterns("runs", "catalog.duckdb"))
    lake = Lake(lake_dir)
    backbone_id = _pick_feature_backbone(lake, None)
    meta, X = load_feature_matrix(lake, backbone_id, C.TRAIN)
    pids = np.array(meta.column(C.COL_PATIENT_ID).to_pylist())
    y = encode_labels(meta.column(C.COL_LABEL).to_pylist())
    head_cfg = HeadConfig(epochs=args.epochs)
    fold_of = assign_folds(pids, meta.column(C.COL_LABEL).to_pylist(), args.folds, head_cfg.seed)
    slice_fold = np.array([fold_of[p] for p in pids])
    total_epochs = args.folds * args.epochs
    print(f"demo lake: {len(fold_of)} training patients, {len(pids)} slices; backbone {backbone_id}; "
          f"{args.folds} folds x {args.epochs} epochs")

    # 1a. cached, through Ray Train
    t0 = time.perf_counter()
    s = run_train(str(lake_dir), "bench", folds=args.folds, head=head_cfg, show_progress=False, echo=lambda *_: None)
    ray_s = time.perf_counter() - t0
    # 1b. cached, in this process
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    _inprocess_folds(X, y, slice_fold, args.folds, head_cfg, args.epochs)
    inproc_s = time.perf_counter() - t0

    # 2. naive: the backbone on every slice, every epoch (fold 0), then the same head check
    from gbmmet.model.train import epoch_order, epoch_seed, evaluate, make_head, train_epoch

    name = backbone_id.split("@")[0]
    backbone, info = load_backbone(name)
    if info.id != backbone_id:
        raise SystemExit(f"the lake's features are from {backbone_id}, this machine loads {info.id}")
    backbone = backbone.to(memory_format=torch.channels_last)
    torch.set_num_threads(2)
    smeta, images = load_slice_images(lake, C.TRAIN)
    assert smeta.column(C.COL_PATIENT_ID).to_pylist() == pids.tolist(), "slices and features out of step"
    tr = slice_fold != 0
    Xi, yt = torch.tensor(images[tr]), torch.tensor(y[tr])

    def through_backbone(xb):
        with torch.no_grad():
            return backbone(to_network_input(xb, info).contiguous(memory_format=torch.channels_last))

    naive_head = make_head(X.shape[1], head_cfg)
    opt = torch.optim.Adam(naive_head.parameters(), lr=head_cfg.lr)
    crit = loss_fn(head_cfg, y[tr])
    t0 = time.perf_counter()
    for epoch in range(args.naive_epochs):
        torch.manual_seed(epoch_seed(head_cfg.seed, 0, epoch))
        train_epoch(naive_head, opt, crit, Xi, yt, head_cfg.batch_size, epoch_order(len(Xi), head_cfg.seed, 0, epoch),
                    through_backbone)
    naive_epoch_s = (time.perf_counter() - t0) / args.naive_epochs
    naive_total_s = naive_epoch_s * total_epochs
    cached_head = _inprocess_folds(X, y, slice_fold, 1, head_cfg, args.naive_epochs)[0]
    held = torch.tensor(X[slice_fold == 0])
    yh = torch.tensor(y[slice_fold == 0])
    _, _, p_cached = evaluate(cached_head, crit, held, yh)
    _, _, p_naive = evaluate(naive_head, crit, held, yh)
    pred_diff = float(np.abs(p_cached - p_naive).max())

    # features: one-time cost of the cached path, measured on this machine in the same run
    t0 = time.perf_counter()
    n_feat = min(256, len(images))
    through_backbone(torch.tensor(images[:n_feat]))
    feat_rate = n_feat / (time.perf_counter() - t0)
    all_slices = lake.read(C.TABLE_FEATURES, columns=["slice_index"]).num_rows
    features_once_s = all_slices / feat_rate

    # 3. throughput per backbone and variant (all threads)
    torch.set_num_threads(2)
    sample = images[:64]
    rates = {}
    for bname in ("resnet50", "efficientnet-lite0-imagenet"):
        for variant in ("eager", "channels_last") + (("compile",) if args.compile else ()):
            rates[f"{bname} {variant}"] = _throughput(bname, sample, variant, 32)
    gpu = {}
    if torch.cuda.is_available():
        big = np.repeat(images[:64], 4, axis=0)
        for bname in ("resnet50", "efficientnet-lite0-imagenet"):
            gpu[bname] = _throughput(bname, big, "eager", 256, device="cuda")

    print()
    print(f"{'path':58s} {'seconds':>10s}")
    print(f"{'cached: 5 x 100 epochs through Ray Train (gbmmet train)':58s} {ray_s:10.1f}")
    print(f"{'cached: the same loop in one process':58s} {inproc_s:10.1f}")
    print(f"{'cached: + computing the features once (' + str(all_slices) + ' slices)':58s} {features_once_s:10.1f}")
    print(f"{'naive: backbone every epoch, measured per epoch (fold 0)':58s} {naive_epoch_s:10.1f}")
    print(f"{'naive: extrapolated to ' + str(total_epochs) + ' fold-epochs':58s} {naive_total_s:10.0f}")
    print()
    print(f"speed-up, naive / cached through Ray Train:            {naive_total_s / ray_s:7.0f}x  (target >= 50x)")
    print(f"speed-up, naive / (features once + cached Ray Train):  {naive_total_s / (ray_s + features_once_s):7.0f}x")
    print(f"speed-up, naive / cached in one process:               {naive_total_s / inproc_s:7.0f}x")
    print(f"equal predictions: after {args.naive_epochs} epochs, max |P(GBM) naive - cached| on fold 0's "
          f"held-out slices = {pred_diff:.2e}")
    print()
    print("features per second on this CPU (2 threads, batch 32):")
    for k, v in rates.items():
        print(f"  {k:42s} {v:7.1f}")
    if gpu:
        for k, v in gpu.items():
            print(f"  GPU {torch.cuda.get_device_name()} {k} fp16, batch 256: {v:8.0f}")
    else:
        print("  GPU: none on this machine (see README for the GPU check)")
    out = save("train", {
        "backbone": backbone_id, "folds": args.folds, "epochs": args.epochs,
        "cached_ray_s": ray_s, "cached_inprocess_s": inproc_s, "features_once_s": features_once_s,
        "naive_epoch_s": naive_epoch_s, "naive_total_s_extrapolated": naive_total_s,
        "naive_epochs_measured": args.naive_epochs, "speedup_vs_ray": naive_total_s / ray_s,
        "speedup_vs_inprocess": naive_total_s / inproc_s, "max_pred_diff": pred_diff,
        "features_per_s_cpu": rates, "features_per_s_gpu": gpu, "fold_seconds": s.fold_seconds,
    })
    print(f"\nwrote {out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
