"""``gbmmet features``: frozen-backbone features of every slice, computed once and cached in the
lake's ``features`` table (partitioned by backbone id).

A Ray Data pipeline: the ``slices`` table's data files at the version the driver pinned are read
by the cluster's workers (only the patients to do, only the columns needed; the driver lists the
files and reads no image), then ``map_batches`` hands ``batch_size`` slices at a time to a pool of
actors (``Embedder``), each of which loads the backbone once and keeps it: one actor per GPU with
``gpus`` (``num_gpus`` each, as many as the cluster's GPUs allow), else one per CPU of the cluster.
The device is chosen inside the actor (CUDA where torch sees it, else CPU: eval mode with
inference_mode, mixed precision on GPU, channels_last on CPU). A patient whose features exist for
this backbone and the same preprocessing hash is skipped.

Actors make nothing visible: each stages the features of every patient in its batch (``Lake.stage``,
one file per patient and batch) and returns one row per patient: its slice count, the staged file,
or the error that failed that patient (an image that cannot be decoded fails its patient only).
The driver collects the rows, and once all of a patient's slices are back (or any failed) holds it
for a commit in batches (``BatchSettings``: every so many patients or seconds, and at the end or on
Ctrl-C), each commit replacing those patients' earlier features of this backbone. A killed driver
leaves only invisible staged files; the same command redoes the patients not committed.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

from gbmmet import constants as C

_MODEL_CACHE: dict = {}
#: Models this process has loaded (an actor loads one; the tests count them).
_LOADS = 0

#: The slices table's columns the pipeline reads (site and split, its partition columns, from the
#: data files' folders).
READ_COLUMNS = [C.COL_PATIENT_ID, C.COL_SITE, C.COL_SPLIT, C.COL_LABEL, "slice_index", "channels", "height", "width",
                "image", "params_hash"]


@dataclass
class FeaturesSummary:
    backbone_id: str
    reason: str
    computed: list[str] = field(default_factory=list)  # pseudonymised ids
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    slices: int = 0
    seconds: float = 0.0
    commits: int = 0  # Delta commits of the features table this run made (one per batch)
    batch_size: int = 64  # slices per map_batches batch (an actor's call)
    # slices per forward pass of the backbone, as the actors ran it (backbones.forward_batch of the
    # device each had: 4 on the CPU, 64 on a GPU; an actor on a "GPU" torch cannot see runs on the
    # CPU); the largest where actors differ, 0 where nothing was computed
    forward_batch: int = 0
    workers: int = 0  # processes that computed features (Ray Data actors; 1: this process)
    model_loads: int = 0  # backbones those processes loaded (one each)

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds else float("nan")


def _model(name: str, weights: str | None, device: str):
    global _LOADS
    key = (name, weights, device)
    if key not in _MODEL_CACHE:
        import torch

        from gbmmet.model.backbones import load_backbone

        model, info = load_backbone(name, weights)
        model = model.to(device)
        if device == "cpu":
            model = model.to(memory_format=torch.channels_last)
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = (model, info)
        _LOADS += 1
    return _MODEL_CACHE[key]


def embed(images, name: str, weights: str | None = None, batch_size: int | None = None, device: str | None = None):
    """Features (N, D) float32 of uint8 slices with the backbone (loaded once per process),
    ``batch_size`` slices per forward pass (default ``backbones.forward_batch`` of the device)."""
    import numpy as np
    import torch

    from gbmmet.model.backbones import default_device, forward_batch, to_network_input

    device = device or default_device()
    batch_size = batch_size or forward_batch(device)
    model, info = _model(name, weights, device)
    out = []
    # Mixed precision on GPU (the throughput target there); full float32 on CPU.
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.startswith("cuda") else torch.autocast(
        "cpu", enabled=False)
    with torch.inference_mode(), autocast:
        for start in range(0, len(images), batch_size):
            x = to_network_input(images[start:start + batch_size], info).to(device)
            if device == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32), info


#: The rows an ``Embedder`` returns: one per patient of its batch.
def _result_schema():
    import pyarrow as pa

    return pa.schema([
        pa.field(C.COL_PATIENT_ID, pa.string()),
        pa.field("slices", pa.int64()),
        pa.field("staged", pa.string()),  # storage.lake.Staged as JSON; null where the patient failed
        pa.field("error", pa.string()),  # "Type: message"; null where it did not
        pa.field("worker", pa.string()),  # the Ray actor (or "local")
        pa.field("loads", pa.int64()),  # models that worker had loaded
        pa.field("forward_batch", pa.int64()),  # slices per forward pass on that worker's device
    ])


class Embedder:
    """The ``map_batches`` callable: loads the backbone once (per actor), then for each batch of
    slices (several patients, or part of one) stages every patient's features and returns a row
    per patient (``_result_schema``). A patient whose slices cannot be decoded or embedded fails
    alone: its row carries the error and the batch goes on."""

    def __init__(self, lake_root: str, version: int | None, name: str, weights: str | None):
        import torch  # noqa: F401 - imported before match_threads_to_task, which limits it only if loaded

        from gbmmet.model.backbones import default_device
        from pipelines.ray_runtime import match_threads_to_task
        from storage.lake import Lake

        match_threads_to_task()
        self.lake, self.version = Lake(lake_root), version
        self.name, self.weights = name, weights
        self.device = default_device()
        _, self.info = _model(name, weights, self.device)
        self.worker = "local"
        try:
            import ray

            if ray.is_initialized():
                self.worker = ray.get_runtime_context().get_actor_id() or "local"
        except Exception:  # noqa: BLE001 - outside Ray
            pass

    def __call__(self, batch):
        import numpy as np
        import pyarrow as pa

        from gbmmet.model.backbones import forward_batch
        from storage.codec import decode_images

        pids = batch.column(C.COL_PATIENT_ID).to_pylist()
        rows: dict[str, list[int]] = {}
        for i, pid in enumerate(pids):
            rows.setdefault(pid, []).append(i)
        parts = {pid: batch.take(idx).sort_by("slice_index") for pid, idx in rows.items()}
        errors: dict[str, str] = {}
        images: dict[str, np.ndarray] = {}
        for pid, part in parts.items():
            try:
                images[pid] = decode_images(part)
            except Exception as exc:  # noqa: BLE001 - one bad patient fails alone
                errors[pid] = self._error(pid, part, "cannot decode its images", exc)
        vectors: dict[str, np.ndarray] = {}
        by_shape: dict[tuple, list[str]] = {}
        for pid, im in images.items():
            by_shape.setdefault(im.shape[1:], []).append(pid)
        for group in by_shape.values():  # one forward pass per image shape, patients together
            try:
                out, _ = embed(np.concatenate([images[p] for p in group]), self.name, self.weights,
                               device=self.device)
                ends = np.cumsum([len(images[p]) for p in group])
                vectors.update(zip(group, np.split(out, ends[:-1]), strict=True))
            except Exception:  # noqa: BLE001 - again patient by patient, to fail only the bad one
                for p in group:
                    try:
                        vectors[p] = embed(images[p], self.name, self.weights, device=self.device)[0]
                    except Exception as exc:  # noqa: BLE001
                        errors[p] = self._error(p, parts[p], "the backbone failed on its slices", exc)
        staged: dict[str, str] = {}
        for pid, vec in vectors.items():
            try:
                staged[pid] = json.dumps(asdict(self._stage(pid, parts[pid], vec)))
            except Exception as exc:  # noqa: BLE001
                errors[pid] = self._error(pid, parts[pid], "cannot stage its features", exc)
        return pa.table({
            C.COL_PATIENT_ID: list(parts),
            "slices": [parts[p].num_rows for p in parts],
            "staged": [staged.get(p) for p in parts],
            "error": [errors.get(p) for p in parts],
            "worker": [self.worker] * len(parts),
            "loads": [_LOADS] * len(parts),
            "forward_batch": [forward_batch(self.device)] * len(parts),
        }, schema=_result_schema())

    def _error(self, pid: str, part, what: str, exc: BaseException) -> str:
        idx = part.column("slice_index").to_pylist()
        return (f"{type(exc).__name__}: patient {pid} {what} (slices {min(idx)}..{max(idx)} of the lake's "
                f"{C.TABLE_SLICES} table, version {self.version}): {exc}")

    def _stage(self, pid: str, part, vectors):
        import pyarrow as pa

        out = pa.table({
            C.COL_PATIENT_ID: part.column(C.COL_PATIENT_ID),
            C.COL_SITE: part.column(C.COL_SITE),
            C.COL_SPLIT: part.column(C.COL_SPLIT),
            C.COL_LABEL: part.column(C.COL_LABEL),
            "slice_index": part.column("slice_index"),
            "weights_sha256": [self.info.weights_sha256] * part.num_rows,
            "params_hash": part.column("params_hash"),
            "vector": pa.array(list(vectors), type=pa.list_(pa.float32())),
        })
        return self.lake.stage(C.TABLE_FEATURES, out, {"backbone": self.info.id})


class _Batches:
    """Features staged for finished patients, held by the driver until committed together
    (``flush``): one commit of the ``features`` table per batch, replacing the batch's patients'
    earlier features of the backbone."""

    def __init__(self, lake, backbone_id: str, settings):
        self.lake, self.backbone_id, self.settings = lake, backbone_id, settings
        self.held: list[tuple[str, list]] = []  # (patient, its storage.lake.Staged files)
        self.first: float | None = None  # time.monotonic() when the held batch's first patient finished
        self.commits = 0

    def add(self, pid: str, staged: list) -> None:
        if self.first is None:
            self.first = time.monotonic()
        self.held.append((pid, staged))

    def wait_s(self) -> float:
        """Seconds until the held batch is due by time (``inf`` while nothing is held)."""
        return float("inf") if self.first is None else max(0.0, self.first + self.settings.seconds - time.monotonic())

    def flush_if_due(self) -> None:
        if len(self.held) >= self.settings.patients or self.wait_s() <= 0:
            self.flush()

    def flush(self) -> None:
        """Commit what is held (nothing: no commit). Taken out first: a commit that fails leaves
        its patients uncommitted, for the next run to redo."""
        held, self.held, self.first = self.held, [], None
        if held:
            self.lake.commit(C.TABLE_FEATURES, [s for _, files in held for s in files],
                             where={"backbone": self.backbone_id, C.COL_PATIENT_ID: [p for p, _ in held]})
            self.commits += 1


class _Collector:
    """The driver's side: the rows the ``Embedder`` returns, gathered per patient; a patient is
    finished once all its slices are back (``expected``), failed if any part of it failed."""

    def __init__(self, expected: dict[str, int], batches: _Batches, progress, task):
        self.expected, self.batches, self.progress, self.task = expected, batches, progress, task
        self.got: dict[str, int] = {}
        self.staged: dict[str, list] = {}
        self.errors: dict[str, str] = {}
        self.done: list[str] = []
        self.failed: dict[str, str] = {}
        self.loads: dict[str, int] = {}  # worker -> models it loaded
        self.forward_batches: set[int] = set()  # slices per forward pass, as the workers ran them

    def add(self, table) -> None:
        from storage.lake import Staged

        for r in table.to_pylist():
            pid = r[C.COL_PATIENT_ID]
            self.loads[r["worker"]] = max(self.loads.get(r["worker"], 0), r["loads"])
            self.forward_batches.add(r["forward_batch"])
            self.got[pid] = self.got.get(pid, 0) + r["slices"]
            if r["error"] is not None:
                self.errors.setdefault(pid, r["error"])
            else:
                self.staged.setdefault(pid, []).append(Staged(**json.loads(r["staged"])))
            if self.got[pid] == self.expected[pid]:
                self._finish(pid)
        self.batches.flush_if_due()

    def _finish(self, pid: str) -> None:
        if pid in self.errors:
            self.failed[pid] = self.errors[pid]
        else:
            self.done.append(pid)
            self.batches.add(pid, self.staged.pop(pid, []))
        self.progress.update(self.task, advance=1, failed=len(self.failed))

    def missing(self) -> None:
        """Fail the patients whose slices did not all come back (the dataset ended without them)."""
        for pid, n in self.expected.items():
            if pid not in self.failed and pid not in self.done:
                self.failed[pid] = (f"RuntimeError: {self.got.get(pid, 0)} of patient {pid}'s {n} slices came "
                                    f"back from the features pipeline")

    def not_finished(self) -> list[str]:
        return [p for p in self.expected if p not in self.failed and p not in self.done]


def _dataset(snap, todo: dict, skipped: bool, *, lake_uri: str, name: str, weights: str | None, batch_size: int,
             gpus: float):
    """The Ray Data pipeline: the pinned slices of the patients of ``todo`` (all of them where
    nothing is ``skipped``), read by the cluster's workers one data file per task, through a pool
    of ``Embedder`` actors. Returns it and the pool's size.

    The read is ``Lake.ray_dataset``: tasks of no CPU (the actors hold the cluster's CPUs, and a
    read is short), one per data file."""
    import pyarrow.compute as pc
    import ray.data

    from pipelines.ray_runtime import pool_size

    ds = snap.ray_dataset(C.TABLE_SLICES, columns=READ_COLUMNS,
                          filter=pc.field(C.COL_PATIENT_ID).isin(sorted(todo)) if skipped else None)
    actors = pool_size(gpus)
    remote = {"num_cpus": 1, "num_gpus": gpus} if gpus > 0 else {"num_cpus": 1}
    # max_restarts=0: Ray Data's default (restart for ever) makes Ray log an error line on the
    # console for each actor (its constructor arguments live in the object store); a lost actor's
    # patients fail instead, and a re-run computes them.
    ds = ds.map_batches(Embedder, batch_size=batch_size, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(size=actors), max_restarts=0,
                        fn_constructor_args=(lake_uri, snap.version(C.TABLE_SLICES), name, weights),
                        **remote)
    return ds, actors


def _run_local(snap, todo: dict, collector: _Collector, *, lake_uri: str, name: str, weights: str | None,
               batch_size: int) -> None:
    """The pipeline in this process (``workers=0``): each patient's slices read from the lake, in
    ``batch_size`` batches through one ``Embedder``."""
    import pyarrow.compute as pc

    embedder = Embedder(lake_uri, snap.version(C.TABLE_SLICES), name, weights)
    for pid, (site, split, _) in todo.items():
        mine = (pc.field(C.COL_SITE) == site) & (pc.field(C.COL_SPLIT) == split) & (pc.field(C.COL_PATIENT_ID) == pid)
        table = snap.read(C.TABLE_SLICES, columns=READ_COLUMNS, filter=mine)
        for start in range(0, table.num_rows, batch_size):
            collector.add(embedder(table.slice(start, batch_size)))


def _todo(snap, backbone_id: str) -> tuple[dict[str, tuple[str, str, int]], list[str]]:
    """patient -> (site, split, slices) of every patient whose slices (at ``snap``) lack this
    backbone's features with their preprocessing hash, and the patients whose features are there."""
    import pyarrow.compute as pc

    slices = snap.read(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID, C.COL_SITE, C.COL_SPLIT, "params_hash"]).to_pylist()
    feats = snap.read(C.TABLE_FEATURES, columns=[C.COL_PATIENT_ID, "params_hash"],
                      filter=pc.field("backbone") == backbone_id).to_pylist()
    have: dict[str, set] = {}
    for r in feats:
        have.setdefault(r[C.COL_PATIENT_ID], set()).add(r["params_hash"])
    where: dict[str, tuple[str, str]] = {}
    hashes: dict[str, set] = {}
    counts: dict[str, int] = {}
    for r in slices:
        pid = r[C.COL_PATIENT_ID]
        where[pid] = (r[C.COL_SITE], r[C.COL_SPLIT])
        hashes.setdefault(pid, set()).add(r["params_hash"])
        counts[pid] = counts.get(pid, 0) + 1
    todo = {pid: (*where[pid], counts[pid]) for pid in sorted(where) if have.get(pid) != hashes[pid]}
    return todo, sorted(pid for pid in where if have.get(pid) == hashes[pid])


def run_features(lake_root: str, *, backbone: str = "auto", weights: str | None = None, address: str | None = None,
                 workers: int | None = None, gpus: float = 0.0, batch_size: int = 64, batch=None,
                 show_progress: bool = True) -> FeaturesSummary:
    """Compute the missing features of every slice in the lake with ``backbone``. ``batch``: how
    often finished patients are committed (``pipelines.preprocess.BatchSettings``);
    ``batch_size``: slices per actor call and per forward pass; ``gpus``: GPUs per model copy
    (0: CPU actors, one per CPU of the cluster).

    Raises:
        MissingWeightsError: the backbone's weights are not available (named in the message).
        ConfigError: no slices in the lake, or impossible options.
        Interrupted: Ctrl-C; the pipeline was stopped, what finished is in the lake.
    """
    from gbmmet.errors import ConfigError
    from gbmmet.model.backbones import resolve
    from pipelines.preprocess import BatchSettings
    from pipelines.ray_runtime import BatchReport, Interrupted, TaskOutcome, _progress, init_ray
    from storage import catalog, maintenance
    from storage.lake import Lake

    batch = batch or BatchSettings()
    try:
        batch.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if workers is not None and workers < 0:
        raise ConfigError(f"The 'workers' parameter must be >= 0. Got {workers!r} instead.")
    if batch_size < 1:
        raise ConfigError(f"The 'batch_size' parameter must be >= 1. Got {batch_size!r} instead.")
    if gpus < 0:
        raise ConfigError(f"The 'gpus' parameter must be >= 0. Got {gpus!r} instead.")
    lake = Lake(lake_root)
    snap = lake.pinned()  # the slices the pipeline reads: those of the job's start
    name, path, reason = resolve(backbone, weights)
    weights_path = str(path) if path else None
    _, info = _model(name, weights_path, "cpu")  # fails early, names the weights
    summary = FeaturesSummary(backbone_id=info.id, reason=reason, batch_size=batch_size)
    todo, summary.skipped = _todo(snap, info.id)
    if not todo and not summary.skipped:
        raise ConfigError(f"no slices in the lake at {lake.uri}: run `gbmmet preprocess` first")
    use_ray = workers != 0 and bool(todo)
    if use_ray:
        init_ray(address=address, num_cpus=workers, shared=(lake_root,))
    batches = _Batches(lake, info.id, batch)
    progress, task = _progress("features", len(todo))
    collector = _Collector({pid: n for pid, (_, _, n) in todo.items()}, batches, progress, task)
    t0 = time.perf_counter()
    loads_before = _LOADS
    try:
        with progress if show_progress and todo else nullcontext():
            if use_ray:
                _run_ray(snap, todo, bool(summary.skipped), collector, lake_uri=lake.uri, name=name,
                         weights=weights_path, batch_size=batch_size, gpus=gpus)
            elif todo:
                _run_local(snap, todo, collector, lake_uri=lake.uri, name=name, weights=weights_path,
                           batch_size=batch_size)
                collector.loads = {"local": _LOADS - loads_before}
        batches.flush()
    except KeyboardInterrupt:
        batches.flush()
        report = BatchReport([TaskOutcome(p, True) for p in collector.done] +
                             [TaskOutcome(p, False, error=e) for p, e in collector.failed.items()])
        raise Interrupted(f"features interrupted: {len(collector.done)} patients done, {len(collector.failed)} "
                          f"failed, {len(collector.not_finished())} not finished of {len(todo)}",
                          done=collector.done, failed=list(collector.failed), not_finished=collector.not_finished(),
                          report=report) from None
    finally:  # what was committed, even if interrupted, is in the catalog
        if lake.local_root is not None:
            catalog.refresh(lake)
    collector.missing()
    summary.seconds, summary.commits = time.perf_counter() - t0, batches.commits
    summary.computed = sorted(collector.done)
    summary.slices = sum(todo[p][2] for p in collector.done)
    summary.failed = dict(sorted(collector.failed.items()))
    summary.workers, summary.model_loads = len(collector.loads), sum(collector.loads.values())
    summary.forward_batch = max(collector.forward_batches, default=0)
    maintenance.compact_small_on_cluster(lake, [C.TABLE_FEATURES])
    return summary


def _run_ray(snap, todo: dict, skipped: bool, collector: _Collector, **kwargs) -> None:
    """Run the Ray Data pipeline, feeding its rows to ``collector`` as they come; Ray Data's own
    progress bars off (the command shows patients). A Ctrl-C (or any error) stops the pipeline."""
    import ray.data

    from pipelines.ray_runtime import quiet_ray_data

    quiet_ray_data()  # Ray Data's INFO lines (execution plans) stay out of the command's output
    ctx = ray.data.DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False
    try:
        ds, _ = _dataset(snap, todo, skipped, lake_uri=kwargs["lake_uri"], name=kwargs["name"],
                         weights=kwargs["weights"], batch_size=kwargs["batch_size"], gpus=kwargs["gpus"])
        rows = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        try:
            for table in rows:
                collector.add(table)
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()  # stops the streaming executor and its actors
    finally:
        ctx.enable_progress_bars = bars
