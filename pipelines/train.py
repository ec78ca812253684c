"""``gbmmet train``: the 5-fold ensemble, one Ray Train ``TorchTrainer`` per fold.

- Folds: by patient over the training split, stratified by label (``gbmmet.model.train``); the
  fold of every patient is stored (``folds`` table). Val / test / external never enter.
- Modes: ``frozen`` (the paper; default) trains the head on the cached backbone features of the
  ``features`` table. ``finetune`` also trains the backbone's last stage (ResNet layer4; the
  Lite0 analogue) from the slices themselves, with light augmentation
  (``gbmmet.model.finetune``); the path where several GPUs pay off.
- Each fold: ``TorchTrainer(train_func_per_worker, ScalingConfig, RunConfig(storage_path=
  <lake>/runs/<run> or any URI, FailureConfig(max_failures)))``. DDP across the fold's workers
  when there are several (gloo on CPU, NCCL on GPU). Each epoch's metrics (train loss and
  accuracy, held-out fold loss and accuracy) go into the fold's history, which travels in its
  checkpoint; Ray Train hears of a fold only at checkpoints: every ``checkpoint_every`` epochs once
  ``checkpoint_min_s`` seconds passed since the last, and at the end (a report waits for the
  controller's next poll, 2 s apart by default). A restarted worker resumes from the last
  checkpoint and trains to the same number of epochs; shuffles and dropout are drawn from (seed,
  fold, epoch), so the resumed fold ends with the same weights as one never interrupted.
- Folds: all submitted at once, each a Ray Train run that waits for its workers' resources (a
  GPU group scaling up from zero included); the count that fits now is printed. Only a fold larger
  than the whole cluster (its autoscaling maximum where it has one) is refused. Frozen: the
  features go to the object store once, each fold gets its rows' indices. Fine-tune: the driver
  reads only the slices' metadata; each fold's workers read the images through Ray Data.
- Stored: per-epoch history (``train_history``), out-of-fold predictions of every training slice
  (``slice_predictions``, model ``fold<k>``; the leakage-free cutoff of evaluation uses them), the
  run record (``runs``: config, versions, git commit, seeds, backbone and why, weights hash,
  timings, checkpoint of each fold, and ``lake_versions``: the version of every table it read, all
  read from one snapshot of the lake taken when it started). Each table is one commit, replacing
  the rows an earlier attempt of the run left.
- Re-running a finished run with the same settings reuses it; an interrupted run resumes (finished
  folds are kept, a fold in progress restarts from its checkpoint); other settings under the same
  name are refused unless ``overwrite``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
import subprocess
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from gbmmet import __version__
from gbmmet import constants as C
from gbmmet.model.ensemble import MODES
from gbmmet.model.train import HeadConfig

STATE_FILE = "state.pt"
CONFIG_FILE = "train_config.json"
DONE_FILE = "done.json"


@dataclass
class TrainSummary:
    run_id: str
    mode: str
    backbone_id: str
    backbone_reason: str
    folds: int
    parallel: int  # folds at a time
    storage: str
    reused: bool = False
    fold_checkpoints: dict[int, str] = field(default_factory=dict)
    final: dict[int, dict] = field(default_factory=dict)  # fold -> last epoch's metrics
    fold_seconds: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# the Ray Train worker
# ---------------------------------------------------------------------------------------------
def _quiet_worker_logs() -> None:
    """Ray Train logs every report and checkpoint at INFO from each worker (lines per epoch);
    keep its warnings and errors."""
    import logging

    try:
        from ray.train.v2._internal.execution import context as _ctx
        from ray.train.v2._internal.execution import storage as _storage

        for name in (_ctx.__file__, _storage.__name__, "ray.train.torch.config"):
            logging.getLogger(name).setLevel(logging.WARNING)
    except Exception:  # noqa: BLE001 - another Ray version: only noisier
        pass


SLICE_META = (C.COL_PATIENT_ID, "slice_index", C.COL_LABEL)  # with the image: what fine-tune reads


def fold_rows(table, fold_of: dict[str, int], fold: int):
    """(images, labels, training rows, held-out rows) of fold ``fold`` from a slices table in any
    order: sorted by patient and slice first, as the driver sorts its copy of the metadata (the
    out-of-fold predictions are matched to it row by row)."""
    import numpy as np

    from gbmmet.model.train import encode_labels
    from storage.codec import decode_images

    t = table.sort_by([(C.COL_PATIENT_ID, "ascending"), ("slice_index", "ascending")])
    held = np.array([fold_of[p] == fold for p in t.column(C.COL_PATIENT_ID).to_pylist()], dtype=bool)
    return (decode_images(t), encode_labels(t.column(C.COL_LABEL).to_pylist()), np.flatnonzero(~held),
            np.flatnonzero(held))


def _fold_data(config: dict):
    """(X, y, training rows, held-out rows) of the worker's fold. Frozen: the features matrix the
    driver put in the object store once, and this fold's indices. Fine-tune: the training split's
    slices read through Ray Data (``datasets={"train": ...}``, unsplit: every worker of the fold
    holds the whole split, and each rank's rows come from ``epoch_order``)."""
    import pyarrow as pa
    import ray
    import ray.train

    if config["mode"] == "frozen":
        data = ray.get(config["data"])
        train_idx, val_idx = ray.get(config["split"])
        return data["X"], data["y"], train_idx, val_idx
    shard = ray.train.get_dataset_shard("train")
    table = pa.concat_tables(list(shard.iter_batches(batch_size=None, batch_format="pyarrow")))
    return fold_rows(table, config["fold_of"], config["fold"])


def worker_device(use_gpu: bool, cuda_available: bool):
    """The torch device of a training worker: its GPU where one was asked for and torch sees it;
    otherwise the CPU (a node declaring a GPU it lacks, as the GPU-shaped tests' nodes do; the
    driver says so for the fold)."""
    import ray.train.torch
    import torch

    return ray.train.torch.get_device() if use_gpu and cuda_available else torch.device("cpu")


def train_func_per_worker(config: dict) -> None:
    """Train one fold on one Ray Train worker (DDP with the fold's other workers)."""
    import numpy as np
    import ray
    import ray.train
    import ray.train.torch
    import torch
    from ray.train import Checkpoint

    from gbmmet.model.train import (
        HeadConfig,
        checkpoint_due,
        epoch_order,
        epoch_seed,
        evaluate,
        loss_fn,
        make_head,
        train_epoch,
    )

    _quiet_worker_logs()
    cfg = HeadConfig(**config["head"])
    fold, mode = config["fold"], config["mode"]
    X_all, y_all, train_idx, val_idx = _fold_data(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    device = worker_device(config.get("use_gpu", False), torch.cuda.is_available())

    # copies: arrays from the object store are read-only
    X_tr, y_tr = torch.from_numpy(X_all[train_idx]), torch.from_numpy(y_all[train_idx])
    X_va, y_va = torch.from_numpy(X_all[val_idx]), torch.from_numpy(y_all[val_idx])
    del X_all
    if mode == "frozen":
        model = make_head(X_tr.shape[1], cfg)
        params = [{"params": model.parameters(), "lr": cfg.lr}]
        transform = None
    else:
        from gbmmet.model.backbones import load_backbone
        from gbmmet.model.finetune import FinetuneNet, augment
        from gbmmet.model.head import Head

        backbone, info = load_backbone(config["backbone_name"], config.get("weights"))
        if info.id != config["backbone_id"]:
            raise RuntimeError(f"worker loaded backbone {info.id}, the run uses {config['backbone_id']}")
        torch.manual_seed(cfg.seed)
        model = FinetuneNet(backbone, info, Head(info.feature_dim, cfg.hidden, cfg.dropout), config["stages"])
        tail = [p for p in model.backbone.parameters() if p.requires_grad]
        params = [{"params": model.head.parameters(), "lr": cfg.lr},
                  {"params": tail, "lr": cfg.lr * config["tail_lr_factor"]}]
        aug = {"gen": None}

        def transform(xb):
            return augment(xb, aug["gen"]).to(device)

    criterion = loss_fn(cfg, y_all[train_idx]).to(device)
    model = model.to(device)
    opt = torch.optim.Adam(params)
    start, history, attempt = 0, [], 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location=device, weights_only=False)
        if mode == "frozen":
            model.load_state_dict(state["model"])
        else:
            model.load_trainable_state(state["model"])
        opt.load_state_dict(state["opt"])
        history, start, attempt = state["history"], state["epoch"] + 1, state["attempt"] + 1
    core = model
    if world > 1:
        model = ray.train.torch.prepare_model(model, move_to_device=False)
    y_tr, y_va = y_tr.to(device), y_va.to(device)
    if mode == "frozen":
        X_tr, X_va = X_tr.to(device), X_va.to(device)
    progress = config.get("progress")
    last_checkpoint = time.monotonic()
    for epoch in range(start, cfg.epochs):
        torch.manual_seed(epoch_seed(cfg.seed, fold, epoch, rank))  # dropout
        if mode != "frozen":
            aug["gen"] = torch.Generator().manual_seed(epoch_seed(cfg.seed, fold, epoch, rank) + 1)
        order = epoch_order(len(X_tr), cfg.seed, fold, epoch, rank, world)
        tr_loss, tr_acc = train_epoch(model, opt, criterion, X_tr, y_tr, cfg.batch_size, order, transform)
        last = epoch == cfg.epochs - 1
        row = {"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc, "attempt": attempt, "device": device.type}
        if rank == 0:
            xv = X_va if mode == "frozen" else X_va.to(device)
            va_loss, va_acc, prob = evaluate(core, criterion, xv, y_va, 4096 if mode == "frozen" else 64)
            row.update(val_loss=va_loss, val_acc=va_acc)
            history.append(row)
            if progress is not None:
                progress.put_nowait((fold, epoch))
        # Ray Train hears of the fold only at checkpoints: each epoch's metrics travel in the
        # checkpoint's history, the progress bar has its own queue. A report waits for the
        # controller's next poll (2 s apart by default), so reporting every epoch would cost
        # seconds per fold.
        due = checkpoint_due(epoch, cfg, time.monotonic() - last_checkpoint)
        if world > 1:  # rank 0's clock decides for all: every rank must report, or report() waits
            flag = torch.tensor([float(due)], device=device)
            torch.distributed.broadcast(flag, src=0)
            due = bool(flag.item())
        if due:
            last_checkpoint = time.monotonic()
            with tempfile.TemporaryDirectory() as d:
                checkpoint = None
                if rank == 0:
                    weights = core.state_dict() if mode == "frozen" else core.trainable_state()
                    state = {"model": weights, "opt": opt.state_dict(), "epoch": epoch, "history": history,
                             "attempt": attempt}
                    if last:  # the held-out fold's P(GBM): the out-of-fold predictions
                        state["oof_prob"] = np.asarray(prob, np.float32)
                    torch.save(state, os.path.join(d, STATE_FILE))
                    checkpoint = Checkpoint.from_directory(d)
                ray.train.report(row, checkpoint=checkpoint)


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except Exception:  # noqa: BLE001 - not a git checkout
        return ""


def _pick_feature_backbone(lake, wanted: str | None) -> str:
    """The features' backbone id: ``wanted`` (an id, or a name matching ``name@...``), else the only
    one in the lake (the most rows where there are several, said by the caller)."""
    import pyarrow.compute as pc

    from gbmmet.errors import ConfigError

    data = lake.dataset(C.TABLE_FEATURES)
    if data is None:
        raise ConfigError(f"no features in the lake at {lake.uri}: run `gbmmet features --lake {lake.uri}` first")
    counts = {c["values"]: c["counts"] for c in
              pc.value_counts(data.to_table(columns=["backbone"]).column("backbone")).to_pylist()}
    if wanted and wanted != "auto":
        match = [b for b in counts if b == wanted or b.split("@")[0] == wanted]
        if not match:
            raise ConfigError(f"no features for backbone {wanted!r} in {lake.uri}; the lake has {sorted(counts)}")
        return max(match, key=counts.get)
    return max(counts, key=counts.get)


def load_feature_matrix(lake, backbone_id: str, split: str | None = None):
    """Features of one backbone as (metadata table, float32 matrix), sorted by patient and slice."""
    import numpy as np
    import pyarrow.compute as pc

    expr = pc.field("backbone") == backbone_id
    if split is not None:
        expr = expr & (pc.field(C.COL_SPLIT) == split)
    t = lake.read(C.TABLE_FEATURES, filter=expr).sort_by([(C.COL_PATIENT_ID, "ascending"), ("slice_index", "ascending")])
    if t.num_rows == 0:
        return t.drop_columns(["vector"]), np.zeros((0, 0), np.float32)
    X = np.stack(t.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    return t.drop_columns(["vector"]), X


def load_slice_images(lake, split: str | None = None):
    """Slices as (metadata table, uint8 images (N, 3, H, W)), sorted by patient and slice."""
    import pyarrow.compute as pc

    from storage.codec import decode_images

    expr = pc.field(C.COL_SPLIT) == split if split is not None else None
    t = lake.read(C.TABLE_SLICES, filter=expr).sort_by([(C.COL_PATIENT_ID, "ascending"), ("slice_index", "ascending")])
    return t.drop_columns(["image"]), decode_images(t)


def fold_room(need: dict[str, float], capacity: dict[str, float]) -> str | None:
    """Why one fold can never run on a cluster of ``capacity`` (None where it can): the folds
    are all submitted at once and wait for free resources; only a fold larger than the whole
    cluster (at its autoscaling maximum) is refused."""
    short = [f"{n:g} {r} (the cluster has at most {capacity.get(r, 0.0):g})"
             for r, n in need.items() if n > 0 and capacity.get(r, 0.0) < n]
    return "a fold takes " + ", ".join(short) if short else None


def _fold_plan(folds: int, workers: int, cpus_per_worker: float, gpus_per_worker: float) -> tuple[int, str]:
    """(folds that fit at once in today's free resources, a line saying so); raises ConfigError
    where one fold cannot fit the cluster even at its largest."""
    import ray
    from ray._private.state import state as ray_state

    from gbmmet.errors import ConfigError

    need = {"CPU": workers * cpus_per_worker, "GPU": workers * gpus_per_worker}
    most = ray_state.get_max_resources_from_cluster_config()  # None without an autoscaler
    capacity = {r: float(v) for r, v in (most or ray.cluster_resources()).items()}
    why_not = fold_room(need, capacity)
    if why_not:
        raise ConfigError(f"no room for one fold: {why_not}; ask for fewer --workers or fewer resources per worker")
    free = ray.available_resources()
    now = min(int(free.get(r, 0.0) // n) for r, n in need.items() if n > 0)
    each = ", ".join(f"{n:g} {r}" for r, n in need.items() if n > 0)
    have = ", ".join(f"{free.get(r, 0.0):g} {r}" for r in need if need[r] > 0)
    return min(folds, now), (f"all {folds} submitted, {min(folds, now)} fit now (the cluster has {have} free and a "
                             f"fold takes {each}); the others wait for room"
                             + (" as the cluster scales up" if most else ""))


class _Store:
    """The run's folder under the storage path (local or any pyarrow URI): config and done files."""

    def __init__(self, root: str):
        from storage.lake import filesystem, is_remote

        self.fs, self.base = filesystem(root)
        self.root = root
        self.remote = is_remote(root)

    def run_config_storage(self) -> dict:
        """RunConfig's storage arguments: a path and its filesystem for object storage (so an
        endpoint or other options in the URI's query reach Ray Train), the path alone on disk."""
        if self.remote:
            return {"storage_path": self.base, "storage_filesystem": self.fs}
        return {"storage_path": self.base}

    def uri(self, path: str) -> str:
        """A path inside this store's filesystem as a URI that opens on its own (scheme and query)."""
        if not self.remote:
            return path
        scheme = self.root.split("://", 1)[0]
        query = self.root.partition("?")[2]
        return f"{scheme}://{path}" + (f"?{query}" if query else "")

    def read_json(self, *parts):
        import pyarrow.fs as pafs

        path = posixpath.join(self.base, *parts)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as fh:
            return json.loads(fh.read().decode())

    def write_json(self, obj, *parts) -> None:
        path = posixpath.join(self.base, *parts)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        with self.fs.open_output_stream(path) as fh:
            fh.write(json.dumps(obj, sort_keys=True, indent=1).encode())

    def remove(self) -> None:
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.base).type == pafs.FileType.Directory:
            self.fs.delete_dir(self.base)


def _data_fingerprint(meta) -> str:
    """What the run learns from: every training slice's patient, index and preprocessing hash (and
    the features' weights hash): a re-preprocessed lake is a different run."""
    import hashlib

    cols = [c for c in (C.COL_PATIENT_ID, "slice_index", "params_hash", "weights_sha256") if c in meta.column_names]
    h = hashlib.sha256()
    for row in zip(*(meta.column(c).to_pylist() for c in cols), strict=True):
        h.update(repr(row).encode())
    return h.hexdigest()[:16]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


#: Tables holding a run's rows (``run_id``): what training it again under the same name removes,
#: its evaluation included.
RUN_TABLES = (C.TABLE_FOLDS, C.TABLE_TRAIN_HISTORY, C.TABLE_SLICE_PREDICTIONS, C.TABLE_RUNS,
              C.TABLE_PATIENT_PREDICTIONS, C.TABLE_METRICS, C.TABLE_CAMS, C.TABLE_DIFFERENCES, C.TABLE_CALIBRATION,
              C.TABLE_FLOW)


def _forget_run(lake, run: str) -> None:
    """Remove run ``run``'s rows from the lake: its training, its evaluation, and the assisted reads
    simulated from its calls (one commit per table that holds any)."""
    for table in RUN_TABLES:
        lake.delete(table, {"run_id": run})
    lake.delete(C.TABLE_READS, {C.COL_READ_SOURCE: C.READ_SOURCE_SIMULATED + run})


def _store_run(lake, run: str, fold_of: dict, history_rows: list[dict], oof_rows: list[dict], record: dict) -> None:
    """Write the run's folds, history, out-of-fold predictions and then its record (one commit
    each, replacing what an earlier attempt of the run wrote), then refresh and compact."""
    import pyarrow as pa

    from storage import catalog, maintenance
    from storage.schemas import SCHEMAS

    def table(name, rows):
        return pa.Table.from_pylist(rows, schema=SCHEMAS[name])

    folds = [{"run_id": run, C.COL_PATIENT_ID: p, "fold": f} for p, f in sorted(fold_of.items())]
    lake.replace(C.TABLE_FOLDS, table(C.TABLE_FOLDS, folds), {"run_id": run})
    lake.replace(C.TABLE_TRAIN_HISTORY, table(C.TABLE_TRAIN_HISTORY, history_rows), {"run_id": run})
    lake.replace(C.TABLE_SLICE_PREDICTIONS, table(C.TABLE_SLICE_PREDICTIONS, oof_rows),
                 {"run_id": run, C.COL_SPLIT: C.TRAIN})  # out-of-fold: the training split only
    lake.replace(C.TABLE_RUNS, table(C.TABLE_RUNS, [record]), {"run_id": run, "kind": "train"})
    if lake.local_root is not None:
        catalog.refresh(lake)
    maintenance.compact_small(lake, [C.TABLE_FOLDS, C.TABLE_TRAIN_HISTORY, C.TABLE_SLICE_PREDICTIONS, C.TABLE_RUNS])


def run_train(lake_root: str, run: str, *, folds: int = 5, epochs: int = 100, workers: int = 1,
              cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, mode: str = "frozen",
              backbone: str | None = None, weights: str | None = None, head: HeadConfig | None = None,
              stages: int = 1, tail_lr_factor: float = 0.1, address: str | None = None, max_failures: int = 2,
              storage_path: str | None = None, overwrite: bool = False, replace_if_changed: bool = False,
              show_progress: bool = True, echo=print) -> TrainSummary:
    """Train the fold models of run ``run`` on the lake (see the module docstring).

    ``replace_if_changed``: where the run exists with other inputs or settings, train it again
    instead of refusing (``gbmmet run`` uses this; ``gbmmet train`` refuses unless ``overwrite``).

    Raises:
        ConfigError: bad option, no features / slices, too few patients per class for the folds,
            a run of that name with other settings, a cluster without room for one fold.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from gbmmet.errors import ConfigError
    from gbmmet.model.train import assign_folds, encode_labels
    from pipelines.ray_runtime import init_ray
    from storage.lake import Lake, uri_join

    if not run or "/" in run or run.startswith("."):
        raise ConfigError(f"bad run name {run!r}: use letters, digits, '-' or '_'")
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {MODES}. Got {mode!r} instead.")
    for name, value in (("workers", workers), ("folds", folds)):
        if value < 1:
            raise ConfigError(f"The '{name}' parameter must be >= 1. Got {value!r} instead.")
    if cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise ConfigError("cpus_per_worker must be > 0 and gpus_per_worker >= 0")
    head = head or HeadConfig(epochs=epochs)
    try:
        head.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    t_start = time.perf_counter()
    started = dt.datetime.now(dt.UTC)
    lake = Lake(lake_root)
    snap = lake.pinned()  # every read of the job: the run records these versions as what it read
    if mode == "frozen":
        backbone_id = _pick_feature_backbone(snap, backbone)
        meta, X = load_feature_matrix(snap, backbone_id, C.TRAIN)
        reason = f"cached features of {backbone_id} (gbmmet features)"
        backbone_name = backbone_id.split("@")[0]
    else:
        from gbmmet.model.backbones import load_backbone

        _, info = load_backbone(backbone or "auto", weights)  # missing weights fail here, before Ray
        backbone_id, reason, backbone_name = info.id, info.reason, info.name
        # the driver reads the slices' metadata; the images go to the workers through Ray Data
        meta_cols = [f.name for f in snap.full_schema(C.TABLE_SLICES) if f.name != "image"]
        meta = snap.read(C.TABLE_SLICES, columns=meta_cols, filter=pc.field(C.COL_SPLIT) == C.TRAIN).sort_by(
            [(C.COL_PATIENT_ID, "ascending"), ("slice_index", "ascending")])
        X = None
    if meta.num_rows == 0:
        raise ConfigError(f"no training-split {'features' if mode == 'frozen' else 'slices'} in {lake.uri}"
                          + (f" for backbone {backbone_id}" if mode == "frozen" else ""))
    pids = np.array(meta.column(C.COL_PATIENT_ID).to_pylist())
    labels = meta.column(C.COL_LABEL).to_pylist()
    try:
        fold_of = assign_folds(pids, labels, folds, head.seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    y = encode_labels(labels)
    slice_fold = np.array([fold_of[p] for p in pids])
    data_seconds = time.perf_counter() - t_start

    storage = storage_path or lake.child_uri("runs")
    store = _Store(uri_join(storage, run))
    settings = {"mode": mode, "folds": folds, "workers": workers, "backbone_id": backbone_id,
                "head": head.to_dict(), "stages": stages if mode == "finetune" else None,
                "tail_lr_factor": tail_lr_factor if mode == "finetune" else None,
                "train_patients": int(len(fold_of)), "train_slices": int(len(pids)),
                "data_sha256": _data_fingerprint(meta)}
    previous = store.read_json(CONFIG_FILE)
    if previous is not None and previous != settings and replace_if_changed:
        echo(f"train {run}: the inputs or settings changed since it was trained; training it again")
        overwrite = True
    recorded = [r for r in snap.read(C.TABLE_RUNS).to_pylist() if r["run_id"] == run and r["kind"] == "train"]
    if (previous is not None or recorded) and overwrite:
        store.remove()
        _forget_run(lake, run)
        previous, recorded = None, []
    if previous is not None and previous != settings:
        was, now = _flat(previous), _flat(settings)
        changed = [f"{k}: {was.get(k)} -> {now.get(k)}" for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
        raise ConfigError(f"run {run!r} exists in {store.root} with other settings ({'; '.join(changed)}); "
                          "choose another --run or pass --overwrite")
    if recorded and recorded[-1]["status"] == "ok" and previous == settings:
        rec = recorded[-1]
        echo(f"train {run}: already trained with these settings ({rec['finished_at']:%Y-%m-%d %H:%M}); reusing it")
        return TrainSummary(run, mode, backbone_id, rec["backbone_reason"] or "", folds, 0, store.root, reused=True,
                            fold_checkpoints={int(k): v for k, v in json.loads(rec["fold_checkpoints"]).items()},
                            seconds=rec["seconds"] or 0.0)
    store.write_json(settings, CONFIG_FILE)

    init_ray(address=address, shared=(lake_root, storage))
    todo = [k for k in range(folds) if store.read_json(f"fold{k}", DONE_FILE) is None]
    parallel, why = _fold_plan(len(todo) or 1, workers, cpus_per_worker, gpus_per_worker)
    echo(f"train {run}: {mode} mode, backbone {backbone_id} ({reason}); {folds} folds over "
         f"{len(fold_of)} patients / {len(pids)} slices; {workers} worker(s) per fold"
         + (" (DDP)" if workers > 1 else ""))
    if len(todo) < folds:
        echo(f"  resuming: folds {sorted(set(range(folds)) - set(todo))} already finished")
    echo(f"  folds: {why}")

    summary = TrainSummary(run, mode, backbone_id, reason, folds, parallel, store.root)
    from ray.util.queue import Queue

    progress_q = Queue(actor_options={"num_cpus": 0})

    if mode == "frozen":
        data, datasets = ray.put({"X": X, "y": y}), None  # once: each fold gets its rows' indices
    else:
        data = None
        datasets = {"train": snap.ray_dataset(C.TABLE_SLICES, columns=[*SLICE_META, "image", "channels", "height",
                                                                        "width"], where={C.COL_SPLIT: C.TRAIN})}

    def fit_fold(k: int):
        held = slice_fold == k
        split = ray.put((np.flatnonzero(~held), np.flatnonzero(held))) if mode == "frozen" else None
        trainer = TorchTrainer(
            train_func_per_worker,
            datasets=datasets, dataset_config=DataConfig(datasets_to_split=[]),
            train_loop_config={"head": head.to_dict(), "data": data, "split": split, "fold": k, "mode": mode,
                               "fold_of": fold_of if mode == "finetune" else None,
                               "threads": max(1, int(cpus_per_worker)), "use_gpu": gpus_per_worker > 0,
                               "backbone_name": backbone_name, "backbone_id": backbone_id, "weights": weights,
                               "stages": stages, "tail_lr_factor": tail_lr_factor, "progress": progress_q},
            # one worker per fold: no collective, so gloo, which also runs where a GPU Ray gave
            # the worker is not one torch sees; several: NCCL on GPUs (Ray Train's choice)
            torch_config=TorchConfig(backend="gloo") if workers == 1 else None,
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=gpus_per_worker > 0,
                resources_per_worker={"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}),
            run_config=RunConfig(name=f"fold{k}", **store.run_config_storage(),
                                 failure_config=FailureConfig(max_failures=max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        t0 = time.perf_counter()
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"fold {k} of run {run} ended without a checkpoint")
        if gpus_per_worker > 0 and result.metrics.get("device") != "cuda":
            echo(f"fold {k}: GPUs were asked for, but torch on its worker sees none: it trained on the CPU")
        store.write_json({"checkpoint": store.uri(result.checkpoint.path), "metrics": result.metrics,
                          "seconds": time.perf_counter() - t0}, f"fold{k}", DONE_FILE)
        return k

    _fit_all(todo, fit_fold, progress_q, head.epochs, show_progress)
    progress_q.shutdown()

    import torch

    history_rows, oof_rows = [], []
    for k in range(folds):
        done = store.read_json(f"fold{k}", DONE_FILE)
        summary.fold_checkpoints[k] = done["checkpoint"]
        summary.final[k] = done["metrics"]
        summary.fold_seconds[k] = done["seconds"]
        m = done["metrics"]
        echo(f"  fold {k}: train loss {m['train_loss']:.3f} acc {m['train_acc']:.3f}; held-out loss "
             f"{m.get('val_loss', float('nan')):.3f} acc {m.get('val_acc', float('nan')):.3f} ({done['seconds']:.0f} s)")
        state = load_state(done["checkpoint"])
        for row in state["history"]:
            history_rows.append({"run_id": run, "fold": k, **{c: row.get(c) for c in
                                 ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "attempt")}})
        held = slice_fold == k
        prob = state["oof_prob"]
        sub = meta.filter(pa.array(held))
        for i, r in enumerate(sub.to_pylist()):
            oof_rows.append({"run_id": run, C.COL_PATIENT_ID: r[C.COL_PATIENT_ID], C.COL_SITE: r[C.COL_SITE],
                             C.COL_SPLIT: r[C.COL_SPLIT], "slice_index": r["slice_index"], "model": f"fold{k}",
                             "fold": k, "prob_gbm": float(prob[i]), "vote": C.GBM if prob[i] >= 0.5 else C.MET})
    summary.seconds = time.perf_counter() - t_start
    record = {
        "run_id": run, "kind": "train", "mode": mode, "backbone_id": backbone_id, "backbone_reason": reason,
        "weights_sha256": backbone_id.split("@")[-1] if mode == "finetune" else
        str(meta.column("weights_sha256")[0]),
        "config": json.dumps({**settings, "cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus_per_worker,
                              "max_failures": max_failures, "storage": store.root, "weights_file": weights},
                             sort_keys=True),
        "seeds": json.dumps({"folds": head.seed, "head_init": head.seed,
                             "epoch": "gbmmet.model.train.epoch_seed(seed, fold, epoch, rank)"}),
        "versions": json.dumps({"gbmmet": __version__, "torch": torch.__version__, "ray": ray.__version__,
                                "numpy": np.__version__, "python": ".".join(map(str, __import__("sys").version_info[:3]))}),
        "git_commit": _git_commit(), "started_at": started, "finished_at": dt.datetime.now(dt.UTC),
        "fold_checkpoints": json.dumps({str(k): v for k, v in summary.fold_checkpoints.items()}),
        "seconds": summary.seconds,
        "timings": json.dumps({"load_data_s": round(data_seconds, 3),
                               "fold_s": {str(k): round(v, 3) for k, v in summary.fold_seconds.items()},
                               "total_s": round(summary.seconds, 3), "folds_at_a_time": parallel}),
        "status": "ok", "lake_versions": json.dumps(snap.versions(), sort_keys=True),
    }
    _store_run(lake, run, fold_of, history_rows, oof_rows, record)
    return summary


def load_state(checkpoint: str) -> dict:
    """A fold's saved state (``STATE_FILE``) from its checkpoint folder: a local path or a URI
    (object storage, with its query), as ``runs.fold_checkpoints`` records it."""
    import io

    import torch

    from storage.lake import read_bytes, uri_join

    return torch.load(io.BytesIO(read_bytes(uri_join(checkpoint, STATE_FILE))), map_location="cpu",
                      weights_only=False)


def _fit_all(todo, fit_fold, progress_q, epochs, show_progress) -> None:
    """Run ``fit_fold`` for every fold in ``todo`` at once (each waits in Ray Train until its
    workers get resources), with a progress bar of epochs fed by the workers through a Ray queue."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from pipelines.ray_runtime import _progress

    progress, task = _progress("train (fold epochs)", len(todo) * epochs)
    seen: set[tuple[int, int]] = set()
    errors = {}
    with (progress if show_progress and todo else nullcontext()), ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
        futures = {pool.submit(fit_fold, k): k for k in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            seen.update(progress_q.get_nowait_batch(progress_q.qsize()) if progress_q.qsize() else [])
            progress.update(task, completed=len(seen))
            for fut in done:
                k = futures[fut]
                try:
                    fut.result()
                    progress.update(task, completed=len(seen | {(k, e) for e in range(epochs)}))
                    seen |= {(k, e) for e in range(epochs)}
                except Exception as exc:  # noqa: BLE001 - reported for all folds at the end
                    errors[k] = exc
    if errors:
        from gbmmet.errors import RunFailed

        first = min(errors)
        raise RunFailed(f"training failed in fold(s) {sorted(errors)} (after retries); "
                          f"fold {first}: {type(errors[first]).__name__}: {errors[first]}; "
                          "finished folds are kept: re-run the same command to resume") from errors[first]
