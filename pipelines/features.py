"""``gbmmet features``: frozen-backbone features of every slice, computed once and cached in the
lake's ``features`` table (partitioned by backbone id).

One Ray task per patient; each Ray worker process loads the backbone once and keeps it for the
following tasks. A patient whose features exist for this backbone and the same preprocessing hash
is skipped. Runs on GPU when the task is given one (``gpus``), in eval mode with inference_mode,
channels_last on CPU.

Tasks read the slices at the version the driver started from and make nothing visible: each
stages its patient's features (``Lake.stage``) and returns them; the driver commits finished
patients in batches (``BatchSettings``: every so many patients or seconds, and at the end or on
Ctrl-C), each commit replacing those patients' earlier features of this backbone. A killed driver
leaves only invisible staged files; the same command redoes the patients not committed.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from gbmmet import constants as C

_MODEL_CACHE: dict = {}


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

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds else float("nan")


def _model(name: str, weights: str | None, device: str):
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
    return _MODEL_CACHE[key]


def embed(images, name: str, weights: str | None = None, batch_size: int = 64, device: str | None = None):
    """Features (N, D) float32 of uint8 slices with the backbone (loaded once per process)."""
    import numpy as np
    import torch

    from gbmmet.model.backbones import to_network_input

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
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


def features_one(lake_root: str, versions: dict, pid: str, site: str, split: str, name: str, weights: str | None,
                 batch_size: int) -> dict:
    """The Ray task: features of one patient's slices (the slices table at ``versions``), staged
    for the driver to commit (``"staged"``), with the slice count and seconds."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import torch  # noqa: F401 - imported first so the thread limit below applies to it

    from pipelines.ray_runtime import match_threads_to_task
    from storage.codec import decode_images
    from storage.lake import Lake

    match_threads_to_task()
    lake = Lake(lake_root)
    t0 = time.perf_counter()
    mine = (pc.field(C.COL_SITE) == site) & (pc.field(C.COL_SPLIT) == split) & (pc.field(C.COL_PATIENT_ID) == pid)
    table = lake.at(versions).read(C.TABLE_SLICES, filter=mine).sort_by("slice_index")
    vectors, info = embed(decode_images(table), name, weights, batch_size)
    n = table.num_rows
    out = pa.table({
        C.COL_PATIENT_ID: table.column(C.COL_PATIENT_ID),
        C.COL_SITE: [site] * n,
        C.COL_SPLIT: [split] * n,
        C.COL_LABEL: table.column(C.COL_LABEL),
        "slice_index": table.column("slice_index"),
        "weights_sha256": [info.weights_sha256] * n,
        "params_hash": table.column("params_hash"),
        "vector": pa.array(list(vectors), type=pa.list_(pa.float32())),
    })
    staged = lake.stage(C.TABLE_FEATURES, out, {"backbone": info.id})
    return {"n": n, "seconds": time.perf_counter() - t0, "staged": staged}


class _Batches:
    """Features staged by finished tasks, held by the driver until committed together (``flush``):
    one commit of the ``features`` table per batch, replacing the batch's patients' earlier
    features of the backbone."""

    def __init__(self, lake, backbone_id: str, settings):
        self.lake, self.backbone_id, self.settings = lake, backbone_id, settings
        self.held: list[tuple[str, object]] = []  # (patient, storage.lake.Staged)
        self.first: float | None = None  # time.monotonic() when the held batch's first patient finished
        self.commits = 0

    def add(self, pid: str, staged) -> None:
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
            self.lake.commit(C.TABLE_FEATURES, [s for _, s in held],
                             where={"backbone": self.backbone_id, C.COL_PATIENT_ID: [p for p, _ in held]})
            self.commits += 1


def _run_tasks(todo: list[tuple[str, tuple]], batches: _Batches, *, description: str, use_ray: bool, gpus: float,
               show_progress: bool):
    """Run ``features_one`` for each (patient, args) of ``todo`` (Ray tasks, or here), holding
    each finished patient's staged features in ``batches`` and committing them whenever a batch is
    due, even while no task finishes, and at the end. Returns the ``BatchReport``.

    Raises:
        Interrupted: Ctrl-C: the outstanding tasks were cancelled and what finished committed.
    """
    from pipelines.ray_runtime import BatchReport, Interrupted, _progress, cancel_pending

    report, pending = BatchReport(), {}
    progress, task = _progress(description, len(todo))

    def finished(key: str, get) -> None:
        report.outcomes.append(_outcome(key, get))
        if report.outcomes[-1].ok:
            batches.add(key, report.outcomes[-1].value["staged"])
        progress.update(task, advance=1, failed=len(report.failed))
        batches.flush_if_due()

    start = time.perf_counter()
    try:
        with progress if show_progress and todo else nullcontext():
            if use_ray:
                import ray

                remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(features_one)
                for key, args in todo:
                    pending[remote.options(name=f"features-{key}").remote(*args)] = key
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(5.0, batches.wait_s()))
                    for ref in ready:
                        finished(pending.pop(ref), lambda ref=ref: ray.get(ref))
                    batches.flush_if_due()
            else:
                for key, args in todo:
                    finished(key, lambda args=args: features_one(*args))
    except KeyboardInterrupt:
        cancel_pending(pending)
        batches.flush()
        done = {o.key for o in report.outcomes}
        raise Interrupted(f"{description} interrupted", done=[o.key for o in report.ok],
                          failed=[o.key for o in report.failed], not_finished=[k for k, _ in todo if k not in done],
                          report=report) from None
    except BaseException:
        cancel_pending(pending)
        raise
    batches.flush()
    report.seconds = time.perf_counter() - start
    return report


def _outcome(key: str, get):
    """``TaskOutcome`` of ``get()``: its value, or the error (a Ray task's own cause) that failed it."""
    from pipelines.ray_runtime import TaskOutcome

    try:
        return TaskOutcome(key, True, get())
    except Exception as exc:  # noqa: BLE001 - one bad patient fails alone
        cause = getattr(exc, "cause", None) or exc
        return TaskOutcome(key, False, error=f"{type(cause).__name__}: {cause}")




def _todo(snap, backbone_id: str) -> tuple[list[tuple[str, tuple]], list[str]]:
    """(patient, (site, split)) of every patient whose slices (at ``snap``) lack this backbone's
    features with their preprocessing hash, and the patients whose features are there."""
    import pyarrow.compute as pc

    slices = snap.read(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID, C.COL_SITE, C.COL_SPLIT, "params_hash"]).to_pylist()
    feats = snap.read(C.TABLE_FEATURES, columns=[C.COL_PATIENT_ID, "params_hash"],
                      filter=pc.field("backbone") == backbone_id).to_pylist()
    have: dict[str, set] = {}
    for r in feats:
        have.setdefault(r[C.COL_PATIENT_ID], set()).add(r["params_hash"])
    where: dict[str, tuple[str, str]] = {}
    hashes: dict[str, set] = {}
    for r in slices:
        where[r[C.COL_PATIENT_ID]] = (r[C.COL_SITE], r[C.COL_SPLIT])
        hashes.setdefault(r[C.COL_PATIENT_ID], set()).add(r["params_hash"])
    todo = [(pid, where[pid]) for pid in sorted(where) if have.get(pid) != hashes[pid]]
    return todo, sorted(pid for pid in where if have.get(pid) == hashes[pid])


def run_features(lake_root: str, *, backbone: str = "auto", weights: str | None = None, address: str | None = None,
                 workers: int | None = None, gpus: float = 0.0, batch_size: int = 64, batch=None,
                 show_progress: bool = True) -> FeaturesSummary:
    """Compute the missing features of every slice in the lake with ``backbone``. ``batch``: how
    often finished patients are committed (``pipelines.preprocess.BatchSettings``).

    Raises:
        MissingWeightsError: the backbone's weights are not available (named in the message).
        ConfigError: no slices in the lake, or impossible options.
        Interrupted: Ctrl-C; the outstanding tasks were cancelled, what finished is in the lake.
    """
    from gbmmet.errors import ConfigError
    from gbmmet.model.backbones import resolve
    from pipelines.preprocess import BatchSettings
    from pipelines.ray_runtime import init_ray
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
    lake = Lake(lake_root)
    snap = lake.pinned()  # the slices the tasks read: those of the job's start
    name, path, reason = resolve(backbone, weights)
    _, info = _model(name, str(path) if path else None, "cpu")  # fails early, names the weights
    summary = FeaturesSummary(backbone_id=info.id, reason=reason)
    todo, summary.skipped = _todo(snap, info.id)
    if not todo and not summary.skipped:
        raise ConfigError(f"no slices in the lake at {lake.uri}: run `gbmmet preprocess` first")
    versions = {C.TABLE_SLICES: snap.version(C.TABLE_SLICES)}
    items = [(pid, (lake.uri, versions, pid, site, split, name, str(path) if path else None, batch_size))
             for pid, (site, split) in todo]
    use_ray = workers != 0 and bool(items)
    if use_ray:
        init_ray(address=address, num_cpus=workers, shared=(lake_root,))
    batches = _Batches(lake, info.id, batch)
    t0 = time.perf_counter()
    try:
        report = _run_tasks(items, batches, description="features", use_ray=use_ray, gpus=gpus,
                            show_progress=show_progress)
    finally:  # what was committed, even if interrupted, is in the catalog
        if lake.local_root is not None:
            catalog.refresh(lake)
    summary.seconds, summary.commits = time.perf_counter() - t0, batches.commits
    for o in report.outcomes:
        if o.ok:
            summary.computed.append(o.key)
            summary.slices += o.value["n"]
        else:
            summary.failed[o.key] = o.error
    maintenance.compact_small(lake, [C.TABLE_FEATURES])
    return summary
