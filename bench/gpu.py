"""GPU check of the model's arithmetic: feature throughput, one fine-tune fold, five folds at once.

Measured on synthetic slices of the shape the project stores (uint8, 3 x 224 x 224, seeded random
values; the values do not change the speed), side by side in one run:

1. features, slices/s: ResNet-50 (the paper's architecture, torchvision, random weights: the same
   arithmetic as ImageNet's) and the project's ResNet-18 (``resnet18-random``), fp32 against
   mixed precision (``torch.autocast``, bf16; fp16 too, the dtype ``pipelines/features.py`` uses),
   channels_last, at a few batch sizes. The uint8 -> float mapping (``to_network_input``) runs on
   the device inside the timed step; "resident" batches already sit on the device, "+h2d" ones
   are copied from pinned host memory inside the timed step too. CUDA events around each step,
   warm-up first, the median step over ``--seconds`` per configuration;
2. one fine-tune fold: the calls of ``pipelines/train.py`` (``train_func_per_worker``, mode
   finetune): ``FinetuneNet`` (layer4 + head train), ``augment`` on the CPU then a copy to the
   device, Adam with the tail at a tenth of the head's rate, ``train_epoch`` / ``evaluate`` with
   the same seeds. The only addition is mixed precision: the network's forward under autocast
   (bf16; no loss scaling needed), against fp32. Seconds per epoch, slices/s, the CPU share of
   augmentation, peak device memory;
3. the folds spread over the GPUs present: one process per fold (spawn), fold i on
   ``cuda:(i % n_gpus)``, all started at once and released together once built; their training
   wall against one fold alone in a process of its own (same threads), so the ratio says how
   well one GPU is shared, or several spread. The project's Ray Train path
   (``gbmmet train --mode finetune --gpus``) makes the same placement on a cluster; this bench
   measures the arithmetic and the GPU sharing, without Ray (which the GPU machine lacks);
4. the evaluation's ensemble, as each ``gbmmet evaluate --gpus`` actor runs it: a frozen-mode
   ``FoldEnsemble`` (ResNet-50, one head per fold) moved to the device by ``FoldEnsemble.to``,
   ``predict_proba(images=)`` and ``grad_cam`` at ``forward_batch`` of the device: slices/s, and
   how far the device's probabilities and maps are from the same ensemble's on the CPU (a few
   slices): the check that the GPU path computes what the CPU path does.

Imports only the standard library, numpy, torch, torchvision and ``gbmmet.model`` /
``gbmmet.preprocess.params``. Where the machine has no GPU it says so and exits 0;
``--device cpu`` runs every section on the CPU instead (with ``--quick``: a smoke test).

    python3 bench/gpu.py [--quick] [--folds 5] [--epochs 3] [--out bench/out/gpu.json]

Prints a table last and writes every number to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue as queue_mod
import resource
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NO_GPU = "bench/gpu.py: no GPU found (torch.cuda.is_available() is False): nothing measured."
GIB = 2.0**30


@dataclass(frozen=True)
class Sizes:
    """How much each section does."""

    batches: tuple[int, ...] = (64, 256, 1024)
    seconds: float = 2.0  # timed per throughput configuration, after the warm-up
    n_train: int = 4000
    n_val: int = 1000
    epochs: int = 3
    folds: int = 5
    finetune_backbone: str = "resnet50"


QUICK = Sizes(batches=(4,), seconds=0.3, n_train=32, n_val=16, epochs=1, folds=2,
              finetune_backbone="resnet18")


def _sizes(args) -> Sizes:
    base = QUICK if args.quick else Sizes()
    if args.folds < 1:
        raise SystemExit(f"--folds must be >= 1, not {args.folds}")
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1, not {args.epochs}")
    return replace(base, folds=args.folds, epochs=args.epochs or base.epochs,
                   finetune_backbone=args.finetune_backbone or base.finetune_backbone)


def _slice_shape() -> tuple[int, int, int]:
    from gbmmet.preprocess.params import SliceParams

    p = SliceParams()
    return len(p.channels), p.size, p.size


def _images(n: int, seed: int):
    """``n`` seeded random uint8 slices (N, 3, 224, 224), as a CPU tensor."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, *_slice_shape()), dtype=np.uint8))


def _backbone(name: str):
    """``(module, BackboneInfo)``, frozen and in eval mode like ``load_backbone``'s."""
    from gbmmet.model.backbones import RANDOM18, load_backbone

    if name == "resnet18":
        return load_backbone(RANDOM18)
    import torch
    from torch import nn
    from torchvision.models import resnet50

    from gbmmet.model.backbones import IMAGENET_MEAN, IMAGENET_STD, BackboneInfo

    torch.manual_seed(0)
    model = resnet50(weights=None)
    model.fc = nn.Identity()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    info = BackboneInfo("resnet50-random", "0" * 64, 2048, IMAGENET_MEAN, IMAGENET_STD,
                        "random weights (bench: the paper's architecture)", "bench")
    return model, info


def _autocast(device, precision: str):
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# 1. features
# ---------------------------------------------------------------------------------------------
def _time_steps(step, device, seconds: float) -> tuple[list[float], float]:
    """Run ``step`` (warm-up first) for ``seconds``; returns each step's seconds and the wall.

    On CUDA each step is bracketed by events on the stream (device time per step, the CPU free
    to queue ahead); on the CPU by the clock.
    """
    import torch

    for _ in range(3 if device.type == "cuda" else 1):
        step()
    _sync(device)
    marks, times = [], []
    least = 3 if device.type == "cuda" else 1  # a smoke run on the CPU needs one
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or len(marks) + len(times) < least:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            marks.append((start, end))
        else:
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    _sync(device)
    wall = time.perf_counter() - t0
    return times or [s.elapsed_time(e) / 1000.0 for s, e in marks], wall


def _feature_configs(device, batches) -> list[tuple[str, int, bool]]:
    """(precision, batch, copy host->device inside the step) of every configuration."""
    mid = batches[len(batches) // 2]
    configs = [(p, b, False) for p in ("fp32", "bf16") for b in batches]
    if device.type == "cuda":
        configs += [("fp16", mid, False)] + [(p, mid, True) for p in ("fp32", "bf16", "fp16")]
    return configs


def _backbone_rates(name: str, host, device, sizes: Sizes, echo=print) -> list[dict]:
    """Slices/s of one backbone in every configuration."""
    import torch

    from gbmmet.model.backbones import to_network_input

    cl = torch.channels_last
    model, info = _backbone(name)
    model = model.to(device).to(memory_format=cl)

    def step(src):
        x = src.to(device, non_blocking=True).contiguous(memory_format=cl)
        return model(to_network_input(x, info))

    rows = []
    for precision, batch, h2d in _feature_configs(device, sizes.batches):
        src = host[:batch] if h2d else host[:batch].to(device)
        cpu0 = time.process_time()
        with torch.inference_mode(), _autocast(device, precision):
            times, wall = _time_steps(lambda src=src: step(src), device, sizes.seconds)
        med = statistics.median(times)
        row = {"backbone": name, "precision": precision, "batch": batch,
               "input": "host+h2d" if h2d else "resident", "slices_per_s": batch / med,
               "slices_per_s_wall": batch * len(times) / wall, "median_step_s": med,
               "steps": len(times), "wall_s": wall, "cpu_s": time.process_time() - cpu0}
        rows.append(row)
        echo(f"  features {name} {precision} batch {batch} {row['input']}: "
             f"{row['slices_per_s']:.0f} slices/s")
    return rows


def measure_features(device, sizes: Sizes, echo=print) -> list[dict]:
    """Slices/s of each backbone and configuration (section 1)."""
    import torch

    host = _images(max(sizes.batches), seed=1)
    if device.type == "cuda":
        host = host.pin_memory()
    rows = []
    for name in ("resnet50", "resnet18"):
        rows += _backbone_rates(name, host, device, sizes, echo)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------
# 2. one fine-tune fold (what pipelines/train.py's train_func_per_worker does in finetune mode)
# ---------------------------------------------------------------------------------------------
def _mixed(model, device, precision: str):
    """``model`` with its forward under autocast and float32 logits out (the loss stays fp32)."""
    from torch import nn

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            with _autocast(device, precision):
                return self.net(x).float()

    return Mixed()


def _build_fold(spec: dict, device):
    """Data, network, optimiser and transform as ``train_func_per_worker`` builds them."""
    import numpy as np
    import torch

    from gbmmet.model.finetune import FinetuneNet, augment
    from gbmmet.model.head import Head
    from gbmmet.model.train import HeadConfig, loss_fn

    cfg = HeadConfig(epochs=spec["epochs"])
    rng = np.random.default_rng(100 + spec["fold"])
    X_tr, X_va = _images(spec["n_train"], 10 + spec["fold"]), _images(spec["n_val"], 20 + spec["fold"])
    y_np = rng.integers(0, 2, spec["n_train"]).astype(np.int64)
    y_tr, y_va = torch.tensor(y_np), torch.tensor(rng.integers(0, 2, spec["n_val"]).astype(np.int64))
    backbone, info = _backbone(spec["backbone"])
    torch.manual_seed(cfg.seed)
    model = FinetuneNet(backbone, info, Head(info.feature_dim, cfg.hidden, cfg.dropout), 1)
    tail = [p for p in model.backbone.parameters() if p.requires_grad]
    params = [{"params": model.head.parameters(), "lr": cfg.lr},
              {"params": tail, "lr": cfg.lr * 0.1}]  # the CLI's default --tail-lr-factor
    aug = {"gen": None, "s": 0.0}

    def transform(xb):
        t = time.perf_counter()
        out = augment(xb, aug["gen"])
        aug["s"] += time.perf_counter() - t
        return out.to(device)

    criterion = loss_fn(cfg, y_np).to(device)
    model = model.to(device)
    opt = torch.optim.Adam(params)
    data = (X_tr, y_tr.to(device), X_va, y_va.to(device))
    return cfg, data, _mixed(model, device, spec["precision"]), opt, criterion, transform, aug


def run_fold(spec: dict, barrier=None) -> dict:
    """Train one fine-tune fold as the pipeline does; returns its timings.

    ``spec``: fold, device, backbone, n_train, n_val, epochs, precision, threads. ``barrier``:
    waited on once the fold is built, so concurrent folds start training together.
    """
    import torch

    from gbmmet.model.train import epoch_order, epoch_seed, evaluate, train_epoch

    t_begin, cpu_begin = time.perf_counter(), time.process_time()
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    cfg, (X_tr, y_tr, X_va, y_va), net, opt, criterion, transform, aug = _build_fold(spec, device)
    fold = spec["fold"]
    setup_s = time.perf_counter() - t_begin
    if barrier is not None:
        barrier.wait()
    start, cpu0, epochs = time.time(), time.process_time(), []
    for epoch in range(cfg.epochs):
        torch.manual_seed(epoch_seed(cfg.seed, fold, epoch))  # dropout
        aug["gen"], aug["s"] = torch.Generator().manual_seed(epoch_seed(cfg.seed, fold, epoch) + 1), 0.0
        order = epoch_order(len(X_tr), cfg.seed, fold, epoch)
        t0 = time.perf_counter()
        loss, _ = train_epoch(net, opt, criterion, X_tr, y_tr, cfg.batch_size, order, transform)
        _sync(device)
        t1 = time.perf_counter()
        _, val_acc, _ = evaluate(net, criterion, X_va.to(device), y_va, 64)
        _sync(device)
        epochs.append({"epoch": epoch, "train_s": t1 - t0, "val_s": time.perf_counter() - t1,
                       "augment_s": aug["s"], "train_loss": loss, "val_acc": val_acc})
    end = time.time()
    steady = epochs[1:] or epochs  # the first epoch carries the warm-up
    train_s = statistics.median(e["train_s"] for e in steady)
    return {
        **spec, "setup_s": setup_s, "start_time": start, "end_time": end, "train_wall_s": end - start,
        "train_cpu_s": time.process_time() - cpu0, "cpu_s": time.process_time() - cpu_begin,
        "epochs_detail": epochs, "train_s_per_epoch": train_s,
        "val_s_per_epoch": statistics.median(e["val_s"] for e in steady),
        "augment_s_per_epoch": statistics.median(e["augment_s"] for e in steady),
        "train_slices_per_s": spec["n_train"] / train_s,
        "peak_mem_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def measure_finetune(device, sizes: Sizes, echo=print) -> list[dict]:
    """One fold in this process, mixed precision then fp32 (section 2)."""
    rows = []
    for precision in ("bf16", "fp32"):
        spec = _fold_spec(0, str(device), sizes, precision, threads=os.cpu_count() or 1)
        rows.append(run_fold(spec))
        r = rows[-1]
        echo(f"  fine-tune fold {precision}: {r['train_s_per_epoch']:.2f} s/epoch, "
             f"{r['train_slices_per_s']:.0f} slices/s")
    return rows


# ---------------------------------------------------------------------------------------------
# 3. the folds at once, one process each
# ---------------------------------------------------------------------------------------------
def _fold_spec(fold: int, device: str, sizes: Sizes, precision: str, threads: int) -> dict:
    return {"fold": fold, "device": device, "backbone": sizes.finetune_backbone,
            "n_train": sizes.n_train, "n_val": sizes.n_val, "epochs": sizes.epochs,
            "precision": precision, "threads": threads}


def _fold_process(spec: dict, barrier, results) -> None:
    try:
        results.put(run_fold(spec, barrier))
    except BaseException:  # noqa: BLE001 - reported to the parent, which says which fold failed
        if barrier is not None:
            barrier.abort()
        results.put({"fold": spec["fold"], "error": traceback.format_exc()})


def _run_processes(specs: list[dict], limit_s: float) -> tuple[list[dict], float, float]:
    """Each spec in its own spawned process, all at once; returns results, wall and children's CPU."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results, barrier = ctx.Queue(), ctx.Barrier(len(specs))
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_fold_process, args=(s, barrier, results)) for s in specs]
    for p in procs:
        p.start()
    out: list[dict] = []
    while len(out) < len(specs) and time.perf_counter() - t0 < limit_s:
        try:
            out.append(results.get(timeout=1.0))
        except queue_mod.Empty:
            if not any(p.is_alive() for p in procs) and results.empty():
                break
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    done = {r["fold"] for r in out}
    out += [{"fold": s["fold"], "error": "no result (process died or timed out)"}
            for s in specs if s["fold"] not in done]
    return sorted(out, key=lambda r: r["fold"]), wall, cpu


def measure_folds(device, sizes: Sizes, precision: str, echo=print) -> dict:
    """One fold alone, then ``sizes.folds`` at once over the devices present (section 3)."""
    import torch

    n_dev = torch.cuda.device_count() if device.type == "cuda" else 1
    threads = max(1, (os.cpu_count() or 1) // sizes.folds)

    def where(i):
        return f"cuda:{i % n_dev}" if device.type == "cuda" else "cpu"

    limit = 300.0  # per group of processes: a fold that hangs must not eat the device's time
    alone, alone_wall, alone_cpu = _run_processes([_fold_spec(0, where(0), sizes, precision, threads)], limit)
    echo(f"  one fold alone: {alone[0].get('train_wall_s', float('nan')):.1f} s training")
    specs = [_fold_spec(i, where(i), sizes, precision, threads) for i in range(sizes.folds)]
    folds, wall, cpu = _run_processes(specs, limit)
    ok = [r for r in folds if "error" not in r]
    train_wall = (max(r["end_time"] for r in ok) - min(r["start_time"] for r in ok)) if ok else float("nan")
    one = alone[0].get("train_wall_s", float("nan"))
    echo(f"  {sizes.folds} folds at once: {train_wall:.1f} s training")
    return {
        "precision": precision, "devices": n_dev, "threads_per_fold": threads,
        "alone": alone[0], "alone_wall_with_startup_s": alone_wall, "alone_children_cpu_s": alone_cpu,
        "folds": folds, "folds_wall_with_startup_s": wall, "folds_children_cpu_s": cpu,
        "folds_train_wall_s": train_wall, "one_fold_train_wall_s": one,
        "ratio_together_over_alone": train_wall / one,
        "speedup_over_serial": sizes.folds * one / train_wall,
        "errors": [r for r in folds + alone if "error" in r],
    }


# ---------------------------------------------------------------------------------------------
# 4. the evaluation's ensemble (what each `gbmmet evaluate --gpus` actor runs)
# ---------------------------------------------------------------------------------------------
def _ensemble(folds: int):
    """A frozen-mode ``FoldEnsemble`` on the CPU: ResNet-50 (random) and ``folds`` seeded heads."""
    import torch

    from gbmmet.model.ensemble import FoldEnsemble
    from gbmmet.model.head import Head

    backbone, info = _backbone("resnet50")
    torch.manual_seed(2)
    return FoldEnsemble("frozen", [Head(info.feature_dim) for _ in range(folds)], backbone=backbone, info=info)


def measure_ensemble(device, sizes: Sizes, echo=print) -> dict:
    """Scoring and Grad-CAM slices/s of the fold ensemble on ``device``, and the largest
    difference from the same ensemble on the CPU over a few slices (section 4)."""
    from gbmmet.model.backbones import forward_batch

    n = max(sizes.batches)
    images = _images(n, seed=3).numpy()
    few = images[:min(8, n)]
    on_cpu = _ensemble(sizes.folds)
    want_p, want_cam = on_cpu.predict_proba(images=few), on_cpu.grad_cam(few)
    ens = _ensemble(sizes.folds).to(device)
    got_p, got_cam = ens.predict_proba(images=few), ens.grad_cam(few)
    row = {"folds": sizes.folds, "forward_batch": forward_batch(device), "compared_slices": len(few),
           "max_prob_diff": float(abs(got_p - want_p).max()), "max_cam_diff": float(abs(got_cam - want_cam).max())}
    for what, step in (("score", lambda: ens.predict_proba(images=images)), ("cam", lambda: ens.grad_cam(images))):
        cpu0 = time.process_time()
        times, wall = _time_steps(step, device, sizes.seconds)
        row[f"{what}_slices_per_s"] = n / statistics.median(times)
        row[f"{what}_wall_s"], row[f"{what}_cpu_s"] = wall, time.process_time() - cpu0
        echo(f"  ensemble {what}: {row[f'{what}_slices_per_s']:.0f} slices/s")
    return row


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def environment(device) -> dict:
    import numpy as np
    import torch
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "numpy": np.__version__,
           "cuda": torch.version.cuda, "device": str(device), "cpu_count": os.cpu_count(),
           "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "torch_threads": torch.get_num_threads(), "slice_shape": list(_slice_shape()),
           "weights": "random (the same arithmetic as trained weights)"}
    if device.type == "cuda":
        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        env.update(gpu_name=props[0].name, gpu_count=len(props),
                   gpu_memory_bytes=[p.total_memory for p in props],
                   cudnn=torch.backends.cudnn.version(),
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   tf32_conv=getattr(torch.backends.cudnn, "allow_tf32", None),
                   tf32_matmul=getattr(torch.backends.cuda.matmul, "allow_tf32", None))
    return env


def _pick_device(choice: str):
    """The device to measure on, or None (after saying why) where there is none."""
    import torch

    if choice == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        print(NO_GPU)
        if choice == "cuda":
            raise SystemExit(2)  # asked for a GPU explicitly: a failure, not a skip
        return None
    return torch.device("cuda", 0)


def _gib(b) -> str:
    return f"{b / GIB:.1f}" if b else "-"


def print_table(res: dict) -> None:
    env, s = res["environment"], res["sizes"]
    dev = (f"{env['gpu_name']} x{env['gpu_count']} ({_gib(env['gpu_memory_bytes'][0])} GiB)"
           if env["device"].startswith("cuda") else "CPU (smoke run)")
    print(f"\n== GPU check: {dev}; torch {env['torch']}, {env['cpu_count']} CPUs; "
          f"slices {'x'.join(map(str, env['slice_shape']))} uint8, random weights (same arithmetic)")
    if "tf32_conv" in env:
        print(f"fp32 = torch defaults: TF32 convolutions {env['tf32_conv']}, TF32 matmul {env['tf32_matmul']}")
    print("features, slices/s (median step; uint8->float on the device included; "
          "'host+h2d' includes the host->device copy):")
    print(f"  {'backbone':9s} {'prec':5s} {'batch':>5s} {'input':9s} {'slices/s':>9s} {'wall':>9s}")
    for r in res["features"]:
        print(f"  {r['backbone']:9s} {r['precision']:5s} {r['batch']:5d} {r['input']:9s} "
              f"{r['slices_per_s']:9.0f} {r['slices_per_s_wall']:9.0f}")
    print(f"fine-tune fold ({s['finetune_backbone']}, layer4 + head; augment on the CPU as the pipeline), "
          f"{s['n_train']} train / {s['n_val']} val slices, {s['epochs']} epochs, steady epoch:")
    print(f"  {'prec':5s} {'train s':>8s} {'slices/s':>9s} {'val s':>6s} {'augment s':>9s} "
          f"{'peak GiB':>8s} {'cpu s':>7s} {'wall s':>7s}")
    for r in res["finetune"]:
        print(f"  {r['precision']:5s} {r['train_s_per_epoch']:8.2f} {r['train_slices_per_s']:9.0f} "
              f"{r['val_s_per_epoch']:6.2f} {r['augment_s_per_epoch']:9.2f} {_gib(r['peak_mem_bytes']):>8s} "
              f"{r['train_cpu_s']:7.1f} {r['train_wall_s']:7.1f}")
    f = res["folds"]
    print(f"{s['folds']} folds at once over {f['devices']} device(s), {f['precision']}, "
          f"{f['threads_per_fold']} thread(s) each: training wall {f['folds_train_wall_s']:.1f} s "
          f"vs one fold alone {f['one_fold_train_wall_s']:.1f} s: ratio {f['ratio_together_over_alone']:.2f} "
          f"({s['folds']} = no gain over one after another), {f['speedup_over_serial']:.2f}x over serial")
    print(f"  with process start-up: {f['folds_wall_with_startup_s']:.1f} s together, "
          f"{f['alone_wall_with_startup_s']:.1f} s alone; children's CPU {f['folds_children_cpu_s']:.0f} s")
    print(f"  {'fold':>4s} {'device':8s} {'train s':>8s} {'s/epoch':>8s} {'setup s':>8s} {'peak GiB':>8s}")
    for r in f["folds"]:
        if "error" in r:
            print(f"  {r['fold']:4d} FAILED: {r['error'].strip().splitlines()[-1]}")
            continue
        print(f"  {r['fold']:4d} {r['device']:8s} {r['train_wall_s']:8.1f} {r['train_s_per_epoch']:8.2f} "
              f"{r['setup_s']:8.1f} {_gib(r['peak_mem_bytes']):>8s}")
    e = res["ensemble"]
    print(f"evaluation ensemble ({e['folds']} folds, resnet50, {e['forward_batch']} slices a pass, fp32): "
          f"scoring {e['score_slices_per_s']:.0f} slices/s, Grad-CAM {e['cam_slices_per_s']:.0f} slices/s; "
          f"against the CPU on {e['compared_slices']} slices: probabilities within {e['max_prob_diff']:.1e}, "
          f"maps within {e['max_cam_diff']:.1e}")
    print(f"total {res['wall_s']:.0f} s wall, {res['cpu_s']:.0f} s CPU (this process) "
          f"+ {f['folds_children_cpu_s'] + f['alone_children_cpu_s']:.0f} s (fold processes)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=None, help="fine-tune epochs (default 3; 1 with --quick)")
    ap.add_argument("--finetune-backbone", choices=("resnet50", "resnet18"), default=None,
                    help="default resnet50 (the paper's); resnet18 with --quick")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick kernels by timing")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "gpu.json"))
    args = ap.parse_args(argv)
    sizes = _sizes(args)
    import torch

    device = _pick_device(args.device)
    if device is None:
        return 0
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    t0, cpu0 = time.perf_counter(), time.process_time()
    res = {"environment": environment(device), "sizes": asdict(sizes), "quick": args.quick}
    print(f"bench/gpu.py on {res['environment'].get('gpu_name', 'cpu')}: features")
    res["features"] = measure_features(device, sizes)
    print("fine-tune fold")
    res["finetune"] = measure_finetune(device, sizes)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the fold processes get the whole device
    print(f"{sizes.folds} folds, one process each")
    res["folds"] = measure_folds(device, sizes, "bf16")
    print("evaluation ensemble")
    res["ensemble"] = measure_ensemble(device, sizes)
    res["wall_s"], res["cpu_s"] = time.perf_counter() - t0, time.process_time() - cpu0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print_table(res)
    print(f"wrote {out}")
    return 1 if res["folds"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
