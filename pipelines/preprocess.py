"""``gbmmet preprocess``: one Ray task per patient, from site manifests into the slice lake.

What a run does:

1. reads and checks every manifest (``gbmmet.manifest``): any problem stops the run before work,
   listing every offending row; with ``keep_going`` missing files only fail their own patient;
2. checks that the lake can be written (``Lake.check_writable``), pseudonymises ids with the
   lake's key and hashes each patient's inputs (file bytes and the manifest row) and the
   parameters; a patient already in the lake with both hashes equal is skipped, one whose inputs
   or parameters changed is reprocessed;
3. refuses identical image content (CE-T1 or T2, whatever the role) under two ids of one site
   (``ManifestError`` naming both rows and the files); across sites it is allowed but recorded as
   a ``duplicate_input`` warning on both patients;
4. runs the patients as Ray tasks (retried when a worker dies; a patient's own error is recorded
   and not retried); each task writes its slices, then its ``preprocess_runs`` row (with the
   ``InputWarning``s raised on the way), then its ``patients`` row (the "done" mark), each file
   atomically; a reprocessed patient's files are replaced only by a successful attempt (its old
   slices file removed afterwards where its split changed), so a failed attempt keeps its old rows;
5. applies the registration QC rule (``gbmmet.preprocess.qc``) to every patient without a verdict
   against the lake's cohort, and records it (``registration_suspect``, a warning when suspect);
6. rebuilds the DuckDB catalog and writes the id mapping (raw id -> pseudonym) beside each
   manifest, on the site's side, never into the lake.

Ctrl-C cancels the outstanding tasks and raises ``Interrupted`` (what finished is kept: the same
command resumes).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import re
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gbmmet import __version__
from gbmmet import constants as C
from gbmmet.manifest import PatientEntry
from gbmmet.preprocess.params import PreprocessParams

ID_MAP_FILE = "pseudonyms.csv"
#: The image columns compared for duplicates. The ROI is left out: a mask or a box file holds no
#: image of the patient, and two patients can have the same small box file legitimately.
IMAGE_COLUMNS = (C.COL_T1C_PATH, C.COL_T2_PATH)
#: ``kind`` of the warning recorded on both patients of identical images across sites.
WARN_DUPLICATE = "duplicate_input"
SITE_FOLDER = "<site folder>"


@dataclass(frozen=True)
class PatientJob:
    entry: PatientEntry
    pseudo_id: str
    input_hash: str
    params: PreprocessParams
    params_hash: str
    lake_root: str
    # (kind, message) found by the driver before the run (duplicates across sites), lake-ready
    warnings: tuple[tuple[str, str], ...] = ()
    # (site, split) of the patient's slices file that this attempt replaces, where it differs
    old_partition: tuple[str, str] | None = None


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
    # raw id -> [{"kind", "message"}] recorded in this run (input warnings, duplicates, QC)
    warnings: dict[str, list[dict]] = field(default_factory=dict)
    suspect: list[str] = field(default_factory=list)  # raw ids flagged by the registration QC
    qc_pending: list[str] = field(default_factory=list)  # raw ids the QC could not judge yet (cohort too small)

    def warn(self, pid: str, kind: str, message: str) -> None:
        items = self.warnings.setdefault(pid, [])
        if not any(w["kind"] == kind and w["message"] == message for w in items):
            items.append({"kind": kind, "message": message})


def _hash_path(hashers, path: Path) -> None:
    """Feed a file's bytes (a folder's: each file's relative name and bytes, sorted) to every hasher."""
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            for h in hashers:
                h.update(f.relative_to(path).as_posix().encode())
            _hash_path(hashers, f)
    elif path.is_file():
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                for h in hashers:
                    h.update(chunk)


def input_hashes(entry: PatientEntry) -> tuple[str, dict[str, str]]:
    """(input hash, sha256 of each file by manifest column), the files read once.

    The input hash covers the image and ROI bytes and the manifest row (not the paths): it keys
    what is done in the lake. The per-file digests find the same image under two ids.
    """
    h = hashlib.sha256()
    per_file = {}
    for col, p in zip((C.COL_T1C_PATH, C.COL_T2_PATH, C.COL_ROI_PATH),
                      (entry.t1c_path, entry.t2_path, entry.roi_path), strict=True):
        h.update(b"\x00file\x00")
        f = hashlib.sha256()
        _hash_path((h, f), Path(p))
        per_file[col] = f.hexdigest()
    h.update(json.dumps(entry.clinical(), sort_keys=True).encode())
    return h.hexdigest()[:32], per_file


def input_hash(entry: PatientEntry) -> str:
    """sha256 of the patient's image and ROI bytes and of its manifest row (not the paths)."""
    return input_hashes(entry)[0]


def find_duplicates(entries: list[PatientEntry], digests: dict[str, dict[str, str]], pseudo: dict[str, str]
                    ) -> tuple[list[str], dict[str, list[tuple[str, str, str]]]]:
    """Identical image content (``IMAGE_COLUMNS``, whatever the role) under two patient ids.

    A shared T2 with a different CE-T1 is a duplicate too: each image file is compared, not the
    patient's set of files.

    Returns:
        (problems, warnings): one problem per pair within a site (both manifest rows, both ids,
        both files); per raw id across sites, (kind, console message, lake message), the lake's
        naming the other patient only by pseudonym and its files only by role.
    """
    uses: dict[str, list[tuple[PatientEntry, str]]] = {}
    for e in entries:
        for col in IMAGE_COLUMNS:
            if e.patient_id in digests:
                uses.setdefault(digests[e.patient_id][col], []).append((e, col))
    problems: list[str] = []
    warned: dict[str, list[tuple[str, str, str]]] = {}
    for digest, group in uses.items():
        first_in_site: dict[str, tuple[PatientEntry, str]] = {}
        for e, col in group:  # within a site: each later use against the site's first
            first, fcol = first_in_site.setdefault(e.site, (e, col))
            if first.patient_id == e.patient_id:
                continue  # one patient's CE-T1 and T2 identical: not a duplicate of ids
            a_path, b_path = getattr(first, fcol), getattr(e, col)
            files = (f"both name {col} {a_path}" if (col, b_path) == (fcol, a_path)
                     else f"{col} {b_path} and {fcol} {a_path}")
            problems.append(
                f"{e.manifest} line {e.line} (patient {e.patient_id}) and {first.manifest} line {first.line} "
                f"(patient {first.patient_id}): identical image content, {files} (sha256 {digest[:12]}); "
                f"one patient under two ids leaks its images across splits ({e.split}, {first.split}): "
                "keep one row")
        for me, mcol in group:  # across sites: each use against the first of every other site
            for site, (other, ocol) in first_in_site.items():
                if site == me.site:
                    continue
                console = (f"patient {me.patient_id}: {mcol} {getattr(me, mcol)} has the same content as {ocol} "
                           f"{getattr(other, ocol)} of patient {other.patient_id} ({other.site}, {other.split})")
                lake_msg = (f"patient {me.patient_id}: its {mcol} has the same content as the {ocol} of patient "
                            f"{pseudo[other.patient_id]} ({other.site}, {other.split}), sha256 {digest[:12]}")
                warned.setdefault(me.patient_id, []).append((WARN_DUPLICATE, console, lake_msg))
    return problems, warned


def _versions() -> str:
    import numpy
    import SimpleITK

    return json.dumps({"gbmmet": __version__, "SimpleITK": SimpleITK.Version_VersionString(),
                       "numpy": numpy.__version__})


#: Ids this long are replaced wherever they stand as a whole token; shorter ones ("1", "A",
#: "T2") are words and numbers of the messages too, so only where a message names the patient
#: ("patient T2") or in its own file names.
_MIN_FREE_ID = 4


def _id_token(raw: str) -> re.Pattern:
    """``raw`` as a whole token: not inside a run of letters and digits, and not a part of a decimal
    number (``1`` of ``1.5`` or ``0.1``). Path separators, ``_``, ``-``, spaces, punctuation and a
    ``.`` before a letter (an extension) end a token."""
    return re.compile(rf"(?<![A-Za-z0-9])(?<!\d\.){re.escape(raw)}(?![A-Za-z0-9])(?!\.\d)")


def _scrub(message: str, entry: PatientEntry, pseudo: str) -> str:
    """A message fit for the lake: the raw id replaced by the pseudonym, folders dropped.

    The id is replaced as a whole token only (``_id_token``): after "patient", inside the names of
    the patient's own files, and, for ids of 4 or more characters, anywhere else; so an id such as
    ``T2`` or ``1`` does not garble "CE-T1 and T2" or "spacing (1.0, 1.0)".
    """
    tok = _id_token(entry.patient_id)
    paths = sorted({str(Path(p)) for p in (entry.t1c_path, entry.t2_path, entry.roi_path)}, key=len, reverse=True)
    for p in paths:
        message = message.replace(p, f"{SITE_FOLDER}/{tok.sub(pseudo, Path(p).name)}")
    for p in paths:
        message = message.replace(str(Path(p).parent), SITE_FOLDER)
    message = re.sub(rf"(\b[Pp]atient\s+){tok.pattern}", lambda m: m.group(1) + pseudo, message)
    if len(entry.patient_id) >= _MIN_FREE_ID:
        message = tok.sub(pseudo, message)
    return message


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
             message: str = "", out=None, total: float = float("nan"), found: list[dict] | None = None) -> dict:
    """One attempt's ``preprocess_runs`` row; ``found``: its warnings ({"kind", "message"}), scrubbed
    here. ``registration_suspect`` stays null: the driver judges it against the cohort."""
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
        "warnings": json.dumps([{"kind": w["kind"], "message": _scrub(w["message"], job.entry, job.pseudo_id)}
                                for w in (found or [])]),
        "registration_suspect": None,
    }


def _input_warnings(caught) -> list[dict]:
    """The ``InputWarning``s among recorded warnings, as {"kind", "message"}; the others are shown
    again as usual."""
    from gbmmet.errors import InputWarning

    found = []
    for w in caught:
        if isinstance(w.message, InputWarning):
            found.append({"kind": w.message.kind, "message": str(w.message)})
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return found


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
    retried by Ray. ``InputWarning``s raised on the way are recorded with the attempt (failed or
    not) with the driver's ``job.warnings``, and returned (raw, for the console).
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
    error = None
    # One patient per worker process at a time, so catching warnings here is safe.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = preprocess_patient(e.t1c_path, e.t2_path, e.roi_path, job.params, patient_id=e.patient_id)
        except Exception as exc:  # noqa: BLE001 - recorded, the batch goes on
            error = exc
    found = [{"kind": k, "message": m} for k, m in job.warnings] + _input_warnings(caught)
    if error is not None:
        kind = error.kind if isinstance(error, PatientError) else "internal_error"
        message = str(error) if isinstance(error, PatientError) else f"{type(error).__name__}: {error}"
        _write_run(lake, _run_row(job, attempt, started, "failed", kind, message, total=time.perf_counter() - t0,
                                  found=found))
        return {"status": "failed", "kind": kind, "message": message, "n_slices": 0, "warnings": found}

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
    _write_run(lake, _run_row(job, attempt, started, "ok", out=out, total=total, found=found))
    patient = {C.COL_PATIENT_ID: job.pseudo_id, **e.clinical(), "n_slices": n, "input_hash": job.input_hash,
               "params_hash": job.params_hash, "preprocessed_at": dt.datetime.now(dt.UTC)}
    lake.write(C.TABLE_PATIENTS, pa.Table.from_pylist([patient]), f"{job.pseudo_id}.parquet")
    if job.old_partition is not None and job.old_partition != (e.site, e.split):  # its split changed
        lake.delete(C.TABLE_SLICES, f"{job.pseudo_id}.parquet",
                    {C.COL_SITE: job.old_partition[0], C.COL_SPLIT: job.old_partition[1]})
    return {"status": "ok", "n_slices": n, "seconds": total, "attempt_id": attempt,
            "registration_metric": out.registration_metric, "warnings": found}


def _amend_run(lake, row: dict, *, suspect: bool | None = None, add: list[dict] = ()) -> None:
    """Rewrite one attempt's ``preprocess_runs`` file (atomically) with the QC verdict ``suspect``
    (None: unchanged) and the warnings ``add`` (lake-ready; those already there are not repeated)."""
    import pyarrow.parquet as pq

    from storage.schemas import PREPROCESS_RUNS

    name = f"{row[C.COL_PATIENT_ID]}-{row['attempt_id']}.parquet"
    rec = pq.read_table(lake.path(C.TABLE_PREPROCESS_RUNS, name), filesystem=lake.fs).to_pylist()[0]
    rec = {k: rec.get(k) for k in PREPROCESS_RUNS.names}  # a row of an older schema gets the new columns
    found = json.loads(rec["warnings"] or "[]")
    found += [w for w in add if w not in found]
    rec["warnings"] = json.dumps(found)
    if suspect is not None:
        rec["registration_suspect"] = suspect
    _write_run(lake, rec)


def _judge_registration(lake, pseudo: dict[str, str], entries: list[PatientEntry], params_hash: str,
                        summary: PreprocessSummary, extra: dict[str, list[tuple[str, str, str]]]) -> None:
    """Apply the registration QC rule to every patient of ``entries`` in the lake without a verdict
    (new, or judged before with too small a cohort), record it in its latest ok attempt and in
    ``summary``; also record ``extra`` warnings (raw id -> (kind, console, lake message)) on patients
    skipped in this run (their latest ok attempt)."""
    from gbmmet.preprocess import qc

    current = {r[C.COL_PATIENT_ID]: r for r in lake.read(C.TABLE_PATIENTS).to_pylist()}
    cols = [C.COL_PATIENT_ID, C.COL_SITE, "attempt_id", "status", "params_hash", "input_hash",
            "registration_metric", "registration_suspect", "warnings"]
    latest = qc.latest_ok_runs(lake.read(C.TABLE_PREPROCESS_RUNS, columns=cols).to_pylist(), params_hash)
    # the cohort: patients whose rows in the lake are their latest ok attempt's
    cohort = [r for pid, r in latest.items() if pid in current and current[pid]["input_hash"] == r["input_hash"]]
    done = set(summary.ok) | set(summary.skipped)
    for e in entries:
        row = latest.get(pseudo[e.patient_id])
        if row is None or e.patient_id not in done:
            continue
        add = [{"kind": k, "message": lake_msg} for k, _, lake_msg in extra.get(e.patient_id, [])
               if e.patient_id in summary.skipped]
        verdict = None
        if row["registration_suspect"] is None:
            res = qc.registration_qc(row["registration_metric"],
                                     qc.cohort_values(cohort, exclude=row[C.COL_PATIENT_ID], site=e.site),
                                     qc.cohort_values(cohort, exclude=row[C.COL_PATIENT_ID]), site=e.site)
            verdict = res.suspect
            if res.suspect is None:
                summary.qc_pending.append(e.patient_id)
            elif res.suspect:
                who = f"patient {e.patient_id}: CE-T1 {e.t1c_path} onto T2 {e.t2_path}: "
                summary.suspect.append(e.patient_id)
                summary.warn(e.patient_id, qc.WARNING_KIND, res.warning(who)["message"])
                add.append(res.warning(_scrub(who, e, pseudo[e.patient_id])))
        if verdict is not None or add:
            _amend_run(lake, row, suspect=verdict, add=add)


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
        ManifestError: the manifests have problems (listed), or one site has identical images under
            two ids; nothing ran.
        ConfigError: impossible parameters.
        LakeError: the lake cannot be written (a file, read-only, its key unusable); nothing ran.
        Interrupted: Ctrl-C; the outstanding tasks were cancelled, what finished is in the lake.
    """
    import time

    from gbmmet.errors import ConfigError, ManifestError
    from gbmmet.manifest import load_manifests
    from gbmmet.pseudonym import pseudonymise
    from pipelines.ray_runtime import Interrupted, init_ray, run_batch
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
    if pin_sites and workers == 0:
        raise ConfigError("--pin-sites needs Ray (workers 0 runs in this process)")
    entries, missing = load_manifests([str(m) for m in manifests], allow_missing_files=keep_going)
    lake = Lake(lake_root).check_writable()  # a read-only or unusable lake fails before any patient
    key = lake.secret()
    params_hash = params.hash()
    pseudo = {e.patient_id: pseudonymise(key, e.site, e.patient_id) for e in entries}
    present = [e for e in entries if e.patient_id not in missing]
    with ThreadPoolExecutor(max_workers=4) as pool:
        hashed = dict(zip([e.patient_id for e in present], pool.map(input_hashes, present), strict=True))
    problems, duplicates = find_duplicates(present, {pid: h[1] for pid, h in hashed.items()}, pseudo)
    if problems:
        raise ManifestError(f"{len(problems)} problem(s) in the manifest(s); nothing was run:\n  "
                            + "\n  ".join(problems))
    summary = PreprocessSummary(lake=lake.uri)
    for pid, found in duplicates.items():
        for kind, console, _ in found:
            summary.warn(pid, kind, console)

    existing = {r[C.COL_PATIENT_ID]: r for r in lake.read(C.TABLE_PATIENTS).to_pylist()}
    jobs = {}
    for e in entries:
        old = existing.get(pseudo[e.patient_id])
        jobs[e.patient_id] = PatientJob(
            e, pseudo[e.patient_id], hashed[e.patient_id][0] if e.patient_id in hashed else "", params,
            params_hash, lake.uri, warnings=tuple((k, m) for k, _, m in duplicates.get(e.patient_id, [])),
            old_partition=(old[C.COL_SITE], old[C.COL_SPLIT]) if old else None)
    todo = []
    for e in present:
        job = jobs[e.patient_id]
        old = existing.get(job.pseudo_id)
        if old and old["input_hash"] == job.input_hash and old["params_hash"] == params_hash:
            summary.skipped.append(e.patient_id)
            continue
        # inputs or parameters changed: the new attempt replaces the old rows only if it succeeds
        todo.append((e.patient_id, (job,)))
    for pid, msg in missing.items():
        _record_failure(lake, jobs[pid], "missing_file", msg)
        summary.failed[pid] = f"missing_file: {msg}"

    use_ray = workers != 0 and bool(todo)
    resources = None
    if use_ray:
        init_ray(address=address, num_cpus=workers)
        if pin_sites:
            import ray

            by_site = site_resources([jobs[pid].entry.site for pid, _ in todo], ray.cluster_resources())
            resources = {pid: by_site[jobs[pid].entry.site] for pid, _ in todo}
    try:
        report = run_batch(todo, preprocess_one, description="preprocess", use_ray=use_ray,
                           show_progress=show_progress, names={pid: f"preprocess-{pseudo[pid]}" for pid, _ in todo},
                           resources=resources)
    except Interrupted as exc:
        _write_id_maps(entries, pseudo)  # the pseudonyms of the patients already written
        values = {o.key: o.value for o in exc.report.outcomes if o.ok}
        ok = [k for k, v in values.items() if v["status"] == "ok"]
        failed = [o.key for o in exc.report.outcomes if o.key not in ok]
        raise Interrupted(
            f"preprocess interrupted: {len(ok)} patient(s) done, {len(failed)} failed, "
            f"{len(exc.not_finished)} not finished (cancelled), {len(summary.skipped)} skipped (already in the "
            f"lake) of {len(entries)}", done=ok, failed=failed, not_finished=exc.not_finished,
            report=exc.report) from None
    seconds = []
    for o in report.outcomes:
        if not o.ok:  # the task itself died for good (retries spent): record it from here
            summary.failed[o.key] = f"worker_failed: {o.error}"
            _record_failure(lake, jobs[o.key], "worker_failed", o.error)
            continue
        for w in o.value.get("warnings", []):
            if w["kind"] != WARN_DUPLICATE:  # those are in the summary already, in console form
                summary.warn(o.key, w["kind"], w["message"])
        if o.value["status"] == "ok":
            summary.ok.append(o.key)
            summary.slices_written += o.value["n_slices"]
            seconds.append(o.value["seconds"])
        else:
            summary.failed[o.key] = f"{o.value['kind']}: {o.value['message']}"
    if seconds:
        summary.seconds_per_patient = sum(seconds) / len(seconds)
    _judge_registration(lake, pseudo, present, params_hash, summary, duplicates)
    _write_id_maps(entries, pseudo)
    if lake.local_root is not None:
        summary.catalog = str(catalog.refresh(lake))
    summary.wall_seconds = time.perf_counter() - t_start
    return summary
