"""``gbmmet features``: frozen-backbone features of every slice, computed once and cached in the
lake's ``features`` table (partitioned by backbone id; one file per patient).

One Ray task per patient's slice file; each Ray worker process loads the backbone once and keeps
it for the following tasks. A patient whose features exist for this backbone and the same
preprocessing hash is skipped. Runs on GPU when the task is given one (``gpus``), in eval mode
with inference_mode, channels_last on CPU.
"""

from __future__ import annotations

import posixpath
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


def features_one(lake_root: str, slice_file: str, site: str, split: str, name: str, weights: str | None,
                 batch_size: int) -> dict:
    """The Ray task: features of one patient's slices, written atomically."""
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch  # noqa: F401 - imported first so the thread limit below applies to it

    from pipelines.ray_runtime import match_threads_to_task
    from storage.codec import decode_images
    from storage.lake import Lake

    match_threads_to_task()
    lake = Lake(lake_root)
    t0 = time.perf_counter()
    table = pq.read_table(slice_file, filesystem=lake.fs)
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
    pid = posixpath.basename(slice_file)
    lake.write(C.TABLE_FEATURES, out, pid, {"backbone": info.id})
    return {"n": n, "seconds": time.perf_counter() - t0}


def run_features(lake_root: str, *, backbone: str = "auto", weights: str | None = None, address: str | None = None,
                 workers: int | None = None, gpus: float = 0.0, batch_size: int = 64,
                 show_progress: bool = True) -> FeaturesSummary:
    """Compute the missing features of every slice in the lake with ``backbone``.

    Raises:
        MissingWeightsError: the backbone's weights are not available (named in the message).
        ConfigError: no slices in the lake, or impossible options.
    """
    import time

    import pyarrow.parquet as pq

    from gbmmet.errors import ConfigError
    from gbmmet.model.backbones import resolve
    from pipelines.ray_runtime import init_ray, run_batch
    from storage import catalog
    from storage.lake import Lake

    if workers is not None and workers < 0:
        raise ConfigError(f"The 'workers' parameter must be >= 0. Got {workers!r} instead.")
    if batch_size < 1:
        raise ConfigError(f"The 'batch_size' parameter must be >= 1. Got {batch_size!r} instead.")
    lake = Lake(lake_root)
    files = lake.files(C.TABLE_SLICES)
    if not files:
        raise ConfigError(f"no slices in the lake at {lake.uri}: run `gbmmet preprocess` first")
    name, path, reason = resolve(backbone, weights)
    _, info = _model(name, str(path) if path else None, "cpu")  # fails early, names the weights
    summary = FeaturesSummary(backbone_id=info.id, reason=reason)
    weights_arg = str(path) if path else None

    done = {}
    data = lake.dataset(C.TABLE_FEATURES)
    if data is not None:
        import pyarrow.compute as pc

        t = data.to_table(columns=[C.COL_PATIENT_ID, "params_hash"], filter=pc.field("backbone") == info.id)
        done = dict(zip(t.column(C.COL_PATIENT_ID).to_pylist(), t.column("params_hash").to_pylist(), strict=True))
    todo = []
    for f in files:
        rel = posixpath.relpath(f, lake.path(C.TABLE_SLICES))
        site_part, split_part, fname = rel.split("/")
        pid = fname.removesuffix(".parquet")
        if pid in done:
            hashes = set(pq.read_table(f, columns=["params_hash"], filesystem=lake.fs).column(0).to_pylist())
            if hashes == {done[pid]}:
                summary.skipped.append(pid)
                continue
        todo.append((pid, (lake.uri, f, site_part.split("=", 1)[1], split_part.split("=", 1)[1], name, weights_arg,
                           batch_size)))
    use_ray = workers != 0 and bool(todo)
    if use_ray:
        init_ray(address=address, num_cpus=workers)
    t0 = time.perf_counter()
    report = run_batch(todo, features_one, description=f"features {info.id}", use_ray=use_ray,
                       num_cpus=1, num_gpus=gpus, show_progress=show_progress, names={k: f"features-{k}" for k, _ in todo})
    summary.seconds = time.perf_counter() - t0
    for o in report.outcomes:
        if o.ok:
            summary.computed.append(o.key)
            summary.slices += o.value["n"]
        else:
            summary.failed[o.key] = o.error
    if lake.local_root is not None:
        catalog.refresh(lake)
    return summary
