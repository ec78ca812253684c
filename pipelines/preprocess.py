"""``gbmmet preprocess``: one Ray task per patient, from site manifests into the slice lake.

What a run does:

1. reads and checks every manifest (``gbmmet.manifest``): any problem stops the run before work,
   listing every offending row; with ``keep_going`` missing files only fail their own patient;
2. pseudonymises ids with the lake's key and hashes each patient's inputs (file bytes and the
   manifest row) and the parameters; a patient already in the lake with both hashes equal is
   skipped, one whose inputs or parameters changed is reprocessed (its old rows removed first);
3. runs the patients as Ray tasks (retried when a worker dies; a patient's own error is recorded
   and not retried); each task writes its slices, then its ``preprocess_runs`` row, then its
   ``patients`` row (the "done" mark), each file atomically;
4. rebuilds the DuckDB catalog and writes the id mapping (raw id -> pseudonym) beside each
   manifest, on the site's side, never into the lake.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gbmmet import __version__
from gbmmet import constants as C
from gbmmet.manifest import PatientEntry
from gbmmet.preprocess.params import PreprocessParams

ID_MAP_FILE = "pseudonyms.csv"


@dataclass(frozen=True)
class PatientJob:
    entry: PatientEntry
    pseudo_id: str
    input_hash: str
    params: PreprocessParams
    params_hash: str
    lake_root: str


@dataclass
class PreprocessSummary:
    lake: str
    ok: list[str] = field(default_factory=list)  # raw ids (the user gave them)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # raw id -> "kind: message"
    slices_written: int = 0
    seconds_per_patient: float = float("nan")
    wall_seconds: float = 0.0
    catalog: str | None = None


def _hash_path(h, path: Path) -> None:
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode())
            _hash_path(h, f)
    elif path.is_file():
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)


def input_hash(entry: PatientEntry) -> str:
    """sha256 of the patient's image and ROI bytes and of its manifest row (not the paths)."""
    h = hashlib.sha256()
    for p in (entry.t1c_path, entry.t2_path, entry.roi_path):
        h.update(b"\x00file\x00")
        _hash_path(h, Path(p))
    h.update(json.dumps(entry.clinical(), sort_keys=True).encode())
    return h.hexdigest()[:32]


def _versions() -> str:
    import numpy
    import SimpleITK

    return json.dumps({"gbmmet": __version__, "SimpleITK": SimpleITK.Version_VersionString(),
                       "numpy": numpy.__version__})


def _scrub(message: str, entry: PatientEntry, pseudo: str) -> str:
    """A message fit for the lake: the raw id replaced by the pseudonym, folders dropped."""
    for p in (entry.t1c_path, entry.t2_path, entry.roi_path):
        message = message.replace(str(Path(p).parent), "<site folder>")
    return message.replace(entry.patient_id, pseudo)


def _new_attempt() -> str:
    """A sortable, unique attempt id: UTC time and a random suffix."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def _write_run(lake, row: dict) -> None:
    """One ``preprocess_runs`` row as its own file (attempts never overwrite each other)."""
    import pyarrow as pa

    lake.write(C.TABLE_PREPROCESS_RUNS, pa.Table.from_pylist([row]),
               f"{row[C.COL_PATIENT_ID]}-{row['attempt_id']}.parquet")


def _record_failure(lake, job: PatientJob, kind: str, message: str) -> None:
    """A failed attempt recorded by the driver (the patient never ran, or its task died)."""
    _write_run(lake, _run_row(job, _new_attempt(), dt.datetime.now(dt.UTC), "failed", kind, message))


def _run_row(job: PatientJob, attempt: str, started: dt.datetime, status: str, kind: str = "",
             message: str = "", out=None, total: float = float("nan")) -> dict:
    sec = out.seconds if out is not None else {}
    ws = out.ws if out is not None else {}
    return {
        C.COL_PATIENT_ID: job.pseudo_id, C.COL_SITE: job.entry.site, C.COL_SPLIT: job.entry.split,
        C.COL_LABEL: job.entry.label, "attempt_id": attempt,
        "started_at": started, "status": status, "error_kind": kind or None,
        "error_message": _scrub(message, job.entry, job.pseudo_id) if message else None,
        **{f"{step}_s": sec.get(step) for step in ("read", "n4", "resample", "register", "whitestripe", "slices")},
        "total_s": total,
        "registration_metric": out.registration_metric if out is not None else None,
        "ws_t1c_mean": ws["t1c"].mean if "t1c" in ws else None, "ws_t1c_sd": ws["t1c"].std if "t1c" in ws else None,
        "ws_t2_mean": ws["t2"].mean if "t2" in ws else None, "ws_t2_sd": ws["t2"].std if "t2" in ws else None,
        "n_slices": len(out.boxes) if out is not None else 0,
        "params_hash": job.params_hash, "input_hash": job.input_hash,
        "params": json.dumps(job.params.to_dict(), sort_keys=True), "versions": _versions(),
        "ray_node": _ray_node(),
    }


def _ray_node() -> str | None:
    """The id of the Ray node this runs on, inside a Ray task; None in the driver or without Ray."""
    try:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().get_task_id() is not None:
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - provenance only: never fail a patient over it
        pass
    return None


def site_resources(sites, cluster: dict[str, float]) -> dict[str, dict[str, float]]:
    """The custom resource each site's tasks ask for (``site:<site>``, a sliver of it, so that CPUs
    and not the resource bound how many run at once), checked against the cluster's resources.

    Raises:
        ConfigError: a site has no node (its tasks would wait for ever); the message says how to
            start one.
    """
    from gbmmet.errors import ConfigError

    need = {site: C.SITE_RESOURCE_PREFIX + site for site in sorted(set(sites))}
    missing = [r for r in need.values() if cluster.get(r, 0) <= 0]
    if missing:
        have = sorted(k for k in cluster if k.startswith(C.SITE_RESOURCE_PREFIX))
        raise ConfigError(f"--pin-sites: no node of the cluster has {', '.join(missing)} (it has: {have or 'none'}); "
                          "start each site's nodes with, e.g., ray start --address HEAD:6379 --resources "
                          f"'{{\"{missing[0]}\": 1}}'")
    return {site: {res: 0.001} for site, res in need.items()}


def preprocess_one(job: PatientJob) -> dict:
    """The Ray task: preprocess one patient and write its rows. Returns a short summary.

    A patient's own error (``PatientError``) or any unexpected exception is recorded as a failed
    attempt and returned, not raised: retrying would fail the same way. A killed worker is
    retried by Ray.
    """
    import time

    import pyarrow as pa

    from gbmmet.errors import PatientError
    from gbmmet.preprocess.patient import preprocess_patient
    from pipelines.ray_runtime import match_threads_to_task
    from storage.lake import Lake

    match_threads_to_task()
    lake = Lake(job.lake_root)
    e = job.entry
    attempt = _new_attempt()
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    try:
        out = preprocess_patient(e.t1c_path, e.t2_path, e.roi_path, job.params, patient_id=e.patient_id)
    except Exception as exc:  # noqa: BLE001 - recorded, the batch goes on
        kind = exc.kind if isinstance(exc, PatientError) else "internal_error"
        message = str(exc) if isinstance(exc, PatientError) else f"{type(exc).__name__}: {exc}"
        _write_run(lake, _run_row(job, attempt, started, "failed", kind, message, total=time.perf_counter() - t0))
        return {"status": "failed", "kind": kind, "message": message, "n_slices": 0}

    n = len(out.boxes)
    s = job.params.slices
    slices = pa.table({
        C.COL_PATIENT_ID: [job.pseudo_id] * n,
        C.COL_LABEL: [e.label] * n,
        "slice_index": [b.slice_index for b in out.boxes],
        "z_mm": [b.z_mm for b in out.boxes],
        "roi_i_min": [b.i_min for b in out.boxes], "roi_i_max": [b.i_max for b in out.boxes],
        "roi_j_min": [b.j_min for b in out.boxes], "roi_j_max": [b.j_max for b in out.boxes],
        "crop_mm": [b.side_mm for b in out.boxes],
        "channels": [len(s.channels)] * n, "height": [s.size] * n, "width": [s.size] * n,
        "image": [img.tobytes() for img in out.images],
        "params_hash": [job.params_hash] * n,
    })
    lake.write(C.TABLE_SLICES, slices, f"{job.pseudo_id}.parquet", {C.COL_SITE: e.site, C.COL_SPLIT: e.split})
    total = time.perf_counter() - t0
    _write_run(lake, _run_row(job, attempt, started, "ok", out=out, total=total))
    patient = {C.COL_PATIENT_ID: job.pseudo_id, **e.clinical(), "n_slices": n, "input_hash": job.input_hash,
               "params_hash": job.params_hash, "preprocessed_at": dt.datetime.now(dt.UTC)}
    lake.write(C.TABLE_PATIENTS, pa.Table.from_pylist([patient]), f"{job.pseudo_id}.parquet")
    return {"status": "ok", "n_slices": n, "seconds": total}


def _write_id_maps(entries: list[PatientEntry], pseudo: dict[str, str]) -> None:
    """raw id -> pseudonym, beside each manifest (the site's side). Skipped where read-only."""
    by_manifest: dict[str, list[PatientEntry]] = {}
    for e in entries:
        by_manifest.setdefault(e.manifest, []).append(e)
    for manifest, rows in by_manifest.items():
        path = Path(manifest).parent / ID_MAP_FILE
        try:
            tmp = path.with_name(f".{ID_MAP_FILE}.tmp")
            with tmp.open("w", newline="") as fh:
                w = csv.writer(fh, lineterminator="\n")
                w.writerow([C.COL_PATIENT_ID, C.COL_SITE, "pseudonym"])
                for e in sorted(rows, key=lambda r: r.patient_id):
                    w.writerow([e.patient_id, e.site, pseudo[e.patient_id]])
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only site folder: the key in the lake regenerates the mapping


def run_preprocess(
    manifests: list[str | Path],
    lake_root: str | Path = "lake",
    *,
    params: PreprocessParams | None = None,
    address: str | None = None,
    workers: int | None = None,
    keep_going: bool = False,
    pin_sites: bool = False,
    show_progress: bool = True,
) -> PreprocessSummary:
    """Preprocess every patient of ``manifests`` into the lake at ``lake_root``.

    ``workers=0`` runs in this process without Ray (debugging); otherwise on the local Ray with
    ``workers`` CPUs (default: all), or on the cluster at ``address`` / ``RAY_ADDRESS``.
    ``pin_sites`` runs each site's patients only on nodes that have the custom resource
    ``site:<site>`` (data that may not leave a site's machines; ``preprocess_runs.ray_node`` shows
    where each ran).

    Raises:
        ManifestError: the manifests have problems (listed); nothing ran.
        ConfigError: impossible parameters.
    """
    import time

    from gbmmet.errors import ConfigError
    from gbmmet.manifest import load_manifests
    from gbmmet.pseudonym import pseudonymise
    from pipelines.ray_runtime import init_ray, run_batch
    from storage import catalog
    from storage.lake import Lake

    t_start = time.perf_counter()
    params = params or PreprocessParams()
    try:
        params.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if workers is not None and workers < 0:
        raise ConfigError(f"The 'workers' parameter must be >= 0. Got {workers!r} instead.")
    entries, missing = load_manifests([str(m) for m in manifests], allow_missing_files=keep_going)
    lake = Lake(lake_root).ensure()
    key = lake.secret()
    params_hash = params.hash()
    pseudo = {e.patient_id: pseudonymise(key, e.site, e.patient_id) for e in entries}
    present = [e for e in entries if e.patient_id not in missing]
    with ThreadPoolExecutor(max_workers=4) as pool:
        hashes = dict(zip([e.patient_id for e in present], pool.map(input_hash, present), strict=True))
    jobs = {e.patient_id: PatientJob(e, pseudo[e.patient_id], hashes.get(e.patient_id, ""), params, params_hash,
                                     lake.uri) for e in entries}

    existing = {r[C.COL_PATIENT_ID]: r for r in lake.read(C.TABLE_PATIENTS).to_pylist()}
    summary = PreprocessSummary(lake=lake.uri)
    todo = []
    for e in present:
        job = jobs[e.patient_id]
        old = existing.get(job.pseudo_id)
        if old and old["input_hash"] == job.input_hash and old["params_hash"] == params_hash:
            summary.skipped.append(e.patient_id)
            continue
        if old:  # inputs or parameters changed: remove the old rows before reprocessing
            lake.delete(C.TABLE_PATIENTS, f"{job.pseudo_id}.parquet")
            lake.delete(C.TABLE_SLICES, f"{job.pseudo_id}.parquet",
                        {C.COL_SITE: old[C.COL_SITE], C.COL_SPLIT: old[C.COL_SPLIT]})
        todo.append((e.patient_id, (job,)))
    for pid, msg in missing.items():
        _record_failure(lake, jobs[pid], "missing_file", msg)
        summary.failed[pid] = f"missing_file: {msg}"

    use_ray = workers != 0 and bool(todo)
    if pin_sites and workers == 0:
        raise ConfigError("--pin-sites needs Ray (workers 0 runs in this process)")
    resources = None
    if use_ray:
        init_ray(address=address, num_cpus=workers)
        if pin_sites:
            import ray

            by_site = site_resources([jobs[pid].entry.site for pid, _ in todo], ray.cluster_resources())
            resources = {pid: by_site[jobs[pid].entry.site] for pid, _ in todo}
    report = run_batch(todo, preprocess_one, description="preprocess", use_ray=use_ray, show_progress=show_progress,
                       names={pid: f"preprocess-{pseudo[pid]}" for pid, _ in todo}, resources=resources)
    seconds = []
    for o in report.outcomes:
        if not o.ok:  # the task itself died for good (retries spent): record it from here
            summary.failed[o.key] = f"worker_failed: {o.error}"
            _record_failure(lake, jobs[o.key], "worker_failed", o.error)
        elif o.value["status"] == "ok":
            summary.ok.append(o.key)
            summary.slices_written += o.value["n_slices"]
            seconds.append(o.value["seconds"])
        else:
            summary.failed[o.key] = f"{o.value['kind']}: {o.value['message']}"
    if seconds:
        summary.seconds_per_patient = sum(seconds) / len(seconds)
    _write_id_maps(entries, pseudo)
    if lake.local_root is not None:
        summary.catalog = str(catalog.refresh(lake))
    summary.wall_seconds = time.perf_counter() - t_start
    return summary
