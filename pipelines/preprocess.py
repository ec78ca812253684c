"""``gbmmet preprocess``: one Ray task per patient, from site manifests into the slice lake.

What a run does:

1. reads and checks every manifest (``gbmmet.manifest``): any problem stops the run before work,
   listing every offending row; with ``keep_going`` missing files only fail their own patient;
2. checks that the lake can be written (``Lake.check_writable``), pseudonymises ids with the
   lake's key and stamps each patient's inputs (``input_stamp``: every file's path, byte size and
   mtime, and the manifest row; ``os.stat`` only, no image byte is read); a patient whose
   ``patients`` row is committed with these parameters, by an attempt that saw the same stamp, is
   skipped; one whose files were touched or replaced, or whose row or parameters changed, is
   reprocessed (its task hashes the bytes again, ``input_hash``, and may find them unchanged);
3. refuses identical image content (CE-T1 or T2, whatever the role) under two ids of one site
   (``ManifestError`` naming both rows and the files); across sites it is allowed but recorded as
   a ``duplicate_input`` warning on both patients. Only files whose size another patient's file
   has too are hashed for this (``size_collisions``): identical content has identical size;
4. runs the patients as Ray tasks, at most a window of them in flight (``ray_runtime.task_window``:
   2 per CPU of the cluster), each reserving ``PATIENT_MEMORY``. A task is retried when its
   worker dies or an input read fails with a transient errno (``gbmmet.errors.TransientIOError``:
   EIO, EAGAIN, ETIMEDOUT, ECONNRESET, EBUSY, ESTALE), up to ``TASK_MAX_RETRIES`` times; a
   patient's own error (a missing or unreadable file among them) is recorded and not retried.
   A task makes nothing visible: it stages its slices (``Lake.stage``, a data
   file no reader sees) and returns them with its ``preprocess_runs`` row (with the
   ``InputWarning``s raised on the way) and its ``patients`` row. The driver commits finished
   patients in batches (``BatchSettings``: every so many patients or seconds, whichever first,
   and at the end), up to four commits a batch (``Batches.flush``); a reprocessed patient's rows are
   replaced only by a successful attempt, wherever its split put them, so a failed attempt keeps
   its old rows. After each batch the catalog is rebuilt, so analysts see the progress;
5. applies the registration QC rule (``gbmmet.preprocess.qc``) to every patient without a verdict
   against the lake's cohort, and records it (``registration_suspect``, a warning when suspect)
   in one commit;
6. writes the id mapping (raw id -> pseudonym) beside each manifest, on the site's side, never
   into the lake.

Ctrl-C cancels the outstanding tasks, commits what finished and raises ``Interrupted``; a driver
killed outright leaves its uncommitted patients as staged files only (invisible, removed by
``gbmmet lake vacuum``). Either way the same command resumes: it redoes exactly the patients
whose ``patients`` row was not committed. Several jobs (e.g. one per site) may write one lake at
the same time: each commit lands whole, retried against the others' (``Lake``).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import itertools
import json
import math
import os
import re
import signal
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
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
#: Ray's ``memory=`` for one preprocess task, in bytes: a reservation the scheduler counts, so a
#: node runs only as many patients at once as its memory holds (not a limit on the task).
#: Measured: peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of ``preprocess_one`` on one
#: demo-preset patient, default parameters (1 mm grid, QC panels), seed 0: in a fresh Ray worker
#: (``max_calls=1``; 125 MiB before the task) 588 MiB (A0001) and 584 MiB (A0051); in a fresh
#: plain process 591 and 587 MiB, 270 MiB of it the imports. With margin for scans larger than
#: the demo's (1 mm, 2 cores, Ray 2.60): 1 GiB.
PATIENT_MEMORY = 1 << 30
#: Retries of a preprocess task whose worker died or whose input read failed transiently
#: (``TransientIOError``); without Ray (``workers=0``) a transient read is retried as often.
TASK_MAX_RETRIES = 3


@dataclass(frozen=True)
class PatientJob:
    entry: PatientEntry
    pseudo_id: str
    input_stamp: str  # ``input_stamp`` as the driver saw it (stat only): the lake's skip key
    params: PreprocessParams
    params_hash: str
    lake_root: str
    # (kind, message) found by the driver before the run (duplicates across sites), lake-ready
    warnings: tuple[tuple[str, str], ...] = ()
    qc: bool = True  # draw and stage the QC panels (``qc_panels``); not part of the parameters' hash
    input_hash: str = ""  # ``input_hash``, set by the task once it has read the inputs ("" before)


#: The tables preprocessing writes, compacted once they pass ``IN_RUN_MAX_FILES`` small files
#: during a run and ``storage.maintenance.SMALL_FILES`` at its end.
PREPROCESS_TABLES = (C.TABLE_SLICES, C.TABLE_QC_PANELS, C.TABLE_PREPROCESS_RUNS, C.TABLE_PATIENTS)
IN_RUN_MAX_FILES = 256


@dataclass(frozen=True)
class BatchSettings:
    """How often the driver commits finished patients: once ``patients`` have finished since the
    last commit, or ``seconds`` after it (or the run's start) if any has, whichever comes first;
    and at the end (or on Ctrl-C). Fewer, larger commits keep the Delta log short; more, smaller
    ones show progress sooner and leave less to redo after a crash. Not part of the parameters'
    hash (changing them reprocesses nothing)."""

    patients: int = 32
    seconds: float = 30.0

    def check(self) -> None:
        """ValueError where a batch could never be committed."""
        if self.patients < 1:
            raise ValueError(f"batch patients must be >= 1, got {self.patients}")
        if not self.seconds > 0:
            raise ValueError(f"batch seconds must be > 0, got {self.seconds}")


@dataclass
class PreprocessSummary:
    lake: str
    batch: BatchSettings = field(default_factory=BatchSettings)
    commits: int = 0  # Delta commits this run made (four per batch at most, one for the QC verdicts)
    batches: int = 0  # batches of finished patients committed
    compacted: list[str] = field(default_factory=list)  # tables compacted at the end of the run
    ok: list[str] = field(default_factory=list)  # raw ids (the user gave them)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # raw id -> "kind: message"
    slices_written: int = 0
    window: int = 0  # the most patients in flight at once on Ray (0: none ran on Ray)
    max_in_flight: int = 0  # the most that were
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
    """Feed a file's bytes (a folder's: each file's relative name and bytes, sorted) to every
    hasher. A path that is gone raises ``FileNotFoundError``."""
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            for h in hashers:
                h.update(f.relative_to(path).as_posix().encode())
            _hash_path(hashers, f)
    else:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                for h in hashers:
                    h.update(chunk)


def _input_files(entry: PatientEntry) -> tuple[tuple[str, str], ...]:
    """(manifest column, path) of the patient's input files, in hashing order."""
    return ((C.COL_T1C_PATH, entry.t1c_path), (C.COL_T2_PATH, entry.t2_path), (C.COL_ROI_PATH, entry.roi_path))


def file_digest(path: str | Path) -> str:
    """sha256 of one input's bytes (a folder's: its files' relative names and bytes)."""
    f = hashlib.sha256()
    _hash_path((f,), Path(path))
    return f.hexdigest()


def _read_error(exc: OSError, entry: PatientEntry, col: str, path: str) -> Exception:
    """The error of a failed input read: ``TransientIOError`` where its errno may clear (the task
    is retried), else the patient's own error: ``MissingFileError`` (ENOENT), ``ImageFileError``."""
    from gbmmet.errors import ImageFileError, MissingFileError, TransientIOError, classify_os_error

    where = exc.filename or path
    what = f"patient {entry.patient_id}: {col} {where}"
    if classify_os_error(exc):
        return TransientIOError(exc.errno, f"{what}: {exc.strerror or exc} (a transient read error)")
    if isinstance(exc, FileNotFoundError):
        return MissingFileError(f"{what} does not exist (any more)", patient_id=entry.patient_id, path=str(where))
    return ImageFileError(f"{what} cannot be read: {exc.strerror or exc}", patient_id=entry.patient_id,
                          path=str(where))


def input_hash(entry: PatientEntry) -> str:
    """sha256 of the patient's image and ROI bytes and of its manifest row (not the paths): what
    the task read, recorded in ``patients`` and ``preprocess_runs``.

    Raises:
        TransientIOError: a read failed with a transient errno (``classify_os_error``): retry.
        MissingFileError, ImageFileError: a file is gone, or cannot be read (EACCES, ...): the
            patient fails, at once.
    """
    h = hashlib.sha256()
    for col, p in _input_files(entry):
        h.update(b"\x00file\x00")
        try:
            _hash_path((h,), Path(p))
        except OSError as exc:
            raise _read_error(exc, entry, col, p) from exc
    h.update(json.dumps(entry.clinical(), sort_keys=True).encode())
    return h.hexdigest()[:32]


def _file_stats(path: Path) -> list[tuple[str, int, int]]:
    """(name, byte size, mtime in ns) of a file (name ""), or of each file of a folder (names
    relative, sorted): ``os.stat`` only, no byte read."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return [(f.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns) for f in files for st in (f.stat(),)]
    st = path.stat()
    return [("", st.st_size, st.st_mtime_ns)]


def stat_inputs(entry: PatientEntry) -> dict[str, tuple[str, list[tuple[str, int, int]]]]:
    """Per manifest column: (the file's real path, ``_file_stats``). The driver's only look at them."""
    return {col: (os.path.realpath(p), _file_stats(Path(p))) for col, p in _input_files(entry)}


def input_stamp(entry: PatientEntry, stats: dict | None = None) -> str:
    """A cheap key of the patient's inputs: a hash of each file's real path, byte size and mtime
    (ns; a folder's every file) and of its manifest row. Any file touched, replaced, added to or
    removed from a folder, or moved, changes it; the content is not read (see ``input_hash``).
    Hashed, since paths hold raw ids: the lake keeps ``preprocess_runs.input_stamp``."""
    stats = stats if stats is not None else stat_inputs(entry)
    text = json.dumps({"files": stats, "row": entry.clinical()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def size_collisions(keys: dict[tuple[str, str], object]) -> set[tuple[str, str]]:
    """The (patient, column) whose size key (byte size, and whether a folder) the file of another
    patient has too: identical content has identical size, so only these can be duplicates and
    need hashing. A patient's own CE-T1 and T2 of one size do not collide."""
    owners: dict[object, set[str]] = {}
    for (pid, _), key in keys.items():
        owners.setdefault(key, set()).add(pid)
    return {pc for pc, key in keys.items() if len(owners[key]) > 1}


def _size_key(stat: tuple[str, list[tuple[str, int, int]]]) -> tuple[bool, int]:
    """(a folder?, total bytes) of one input's ``stat_inputs`` entry."""
    files = stat[1]  # a file is one unnamed entry; a folder, its files (none where empty)
    return not files or files[0][0] != "", sum(size for _, size, _ in files)


def find_duplicates(entries: list[PatientEntry], digests: dict[str, dict[str, str]], pseudo: dict[str, str]
                    ) -> tuple[list[str], dict[str, list[tuple[str, str, str]]]]:
    """Identical image content (``IMAGE_COLUMNS``, whatever the role) under two patient ids.

    A shared T2 with a different CE-T1 is a duplicate too: each image file is compared, not the
    patient's set of files. ``digests``: raw id -> column -> sha256, of the files hashed (a file
    left out has no duplicate: ``size_collisions``).

    Returns:
        (problems, warnings): one problem per pair within a site (both manifest rows, both ids,
        both files); per raw id across sites, (kind, console message, lake message), the lake's
        naming the other patient only by pseudonym and its files only by role.
    """
    uses: dict[str, list[tuple[PatientEntry, str]]] = {}
    for e in entries:
        for col in IMAGE_COLUMNS:
            digest = digests.get(e.patient_id, {}).get(col)
            if digest is not None:  # an unhashed file (no size collision) has no duplicate
                uses.setdefault(digest, []).append((e, col))
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


def _record_failure(batches: Batches, job: PatientJob, kind: str, message: str) -> None:
    """A failed attempt recorded by the driver (the patient never ran, or its task died), held
    for the next batch's commit."""
    batches.add(_run_row(job, _new_attempt(), dt.datetime.now(dt.UTC), "failed", kind, message))


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
        "params_hash": job.params_hash, "input_hash": job.input_hash, "input_stamp": job.input_stamp or None,
        "params": json.dumps(job.params.to_dict(), sort_keys=True), "versions": _versions(),
        "ray_node": _ray_node(),
        "warnings": json.dumps([{"kind": w["kind"], "message": _scrub(w["message"], job.entry, job.pseudo_id)}
                                for w in (found or [])]),
        "registration_suspect": None,
    }


class Batches:
    """Finished attempts held by the driver until they are committed together (``flush``).

    A batch becomes visible in up to four commits, in this order: the slices its successful attempts
    staged (the same patients' old slices replaced in that commit, whatever partition their split
    put them in), their QC panels (``qc_panels``, the same patients' old ones replaced), its
    ``preprocess_runs`` rows (appended), its ``patients`` rows (replacing the patients' old ones). The ``patients`` commit is what marks a patient done: a run that stops
    before it (killed, or a commit that failed for good) leaves the patient to the next run, which
    redoes it and replaces whatever of it had landed. Staged files never committed stay invisible
    until ``gbmmet lake vacuum`` removes them.
    """

    def __init__(self, lake, settings: BatchSettings):
        self.lake, self.settings = lake, settings
        self.staged: list = []  # storage.lake.Staged slices files of successful attempts
        self.qc_staged: list = []  # storage.lake.Staged qc_panels files of successful attempts
        self.runs: list[dict] = []  # preprocess_runs rows, one per finished attempt
        self.patients: list[dict] = []  # patients rows of successful attempts
        self.last = time.monotonic()  # of the last commit (or the run's start)
        self.commits = 0
        self.batches = 0

    def add(self, run: dict, staged=None, patient: dict | None = None, qc_staged=None) -> None:
        """Hold one finished attempt: its run row and, for a successful one, its staged slices, its
        staged QC panels (where drawn) and its patient row."""
        self.runs.append(run)
        if staged is not None:
            self.staged.append(staged)
        if qc_staged is not None:
            self.qc_staged.append(qc_staged)
        if patient is not None:
            self.patients.append(patient)

    def wait_s(self) -> float:
        """Seconds until the held batch is due by time (``inf`` while nothing is held)."""
        if not self.runs:
            return math.inf
        return max(0.0, self.last + self.settings.seconds - time.monotonic())

    def flush_if_due(self) -> None:
        """Commit the held batch if it has its patients, or has waited its seconds."""
        if len(self.runs) >= self.settings.patients or self.wait_s() <= 0:
            self.flush()

    def flush(self) -> None:
        """Commit what is held (nothing held: no commit), then rebuild a local lake's catalog.
        A Ctrl-C meanwhile is raised once the commits are done, so none is left half known.

        Raises:
            LakeError: a commit failed for good (``Lake``'s retries spent); the job must stop:
                nothing held is marked done, so the next run redoes those patients.
        """
        import pyarrow as pa

        from gbmmet.errors import LakeError
        from storage import catalog, maintenance

        if not self.runs:
            return
        ids = [row[C.COL_PATIENT_ID] for row in self.patients]
        held = len(self.runs)
        try:
            with _ctrl_c_deferred():
                if self.staged:
                    self.lake.commit(C.TABLE_SLICES, self.staged, where={C.COL_PATIENT_ID: ids})
                    self.staged, self.commits = [], self.commits + 1
                if self.qc_staged:
                    self.lake.commit(C.TABLE_QC_PANELS, self.qc_staged, where={C.COL_PATIENT_ID: ids})
                    self.qc_staged, self.commits = [], self.commits + 1
                self.lake.append(C.TABLE_PREPROCESS_RUNS, pa.Table.from_pylist(self.runs))
                self.runs, self.commits = [], self.commits + 1
                if self.patients:
                    self.lake.replace(C.TABLE_PATIENTS, pa.Table.from_pylist(self.patients),
                                      where={C.COL_PATIENT_ID: ids})
                    self.patients, self.commits = [], self.commits + 1
        except LakeError as exc:
            raise LakeError(f"preprocess stopped: a batch of {held} finished patient(s) could not be committed "
                            f"({exc}). Patients of earlier batches are in the lake; these are not marked done "
                            "(their files not committed stay invisible until `gbmmet lake vacuum`): re-run the "
                            "same command to redo them") from None
        self.last, self.batches = time.monotonic(), self.batches + 1
        # a long run keeps its tables to a few hundred files (each commit checks the files for
        # patients it replaces); the end of the run compacts them further
        if not maintenance.compact_small_on_cluster(self.lake, PREPROCESS_TABLES, max_files=IN_RUN_MAX_FILES) \
                and self.lake.local_root is not None:
            catalog.refresh(self.lake)


@contextmanager
def _ctrl_c_deferred():
    """Hold a Ctrl-C (SIGINT) arriving inside the block and raise it at the end: a commit is then
    either known done or not begun, never landed unnoticed (and committed twice). Only the main
    thread receives signals; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


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
    """The Ray task: preprocess one patient. Makes nothing visible: stages the slices
    (``Lake.stage``) and returns them with the attempt's ``preprocess_runs`` row and, if it
    succeeded, its ``patients`` row, for the driver to commit (``Batches``); and a short summary.

    It first reads the inputs whole (``input_hash``, recorded with the attempt). A read failing
    with a transient errno, there or later, is raised as ``TransientIOError`` (nothing staged yet)
    for Ray to retry the task. A patient's own error (``PatientError``: a missing or unreadable
    file among them) or any other exception is returned as a failed attempt (its row too), not
    raised: retrying would fail the same way. A killed worker is retried by Ray (what it staged
    stays invisible). ``InputWarning``s raised on the way are recorded with the attempt (failed
    or not) with the driver's ``job.warnings``, and returned (raw, for the console).
    """
    from gbmmet.errors import PatientError, transient_cause
    from gbmmet.preprocess.patient import preprocess_patient
    from pipelines.ray_runtime import match_threads_to_task
    from storage.lake import Lake

    match_threads_to_task()
    e = job.entry
    attempt = _new_attempt()
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    error = None
    # One patient per worker process at a time, so catching warnings here is safe.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            job = replace(job, input_hash=input_hash(e))
            out = preprocess_patient(e.t1c_path, e.t2_path, e.roi_path, job.params, patient_id=e.patient_id,
                                     qc=job.qc)
        except Exception as exc:  # noqa: BLE001 - recorded, the batch goes on
            transient = transient_cause(exc)
            if transient is exc:
                raise
            if transient is not None:
                raise transient from exc
            error = exc
    found = [{"kind": k, "message": m} for k, m in job.warnings] + _input_warnings(caught)
    if error is not None:
        kind = error.kind if isinstance(error, PatientError) else "internal_error"
        message = str(error) if isinstance(error, PatientError) else f"{type(error).__name__}: {error}"
        run = _run_row(job, attempt, started, "failed", kind, message, total=time.perf_counter() - t0, found=found)
        return {"status": "failed", "kind": kind, "message": message, "n_slices": 0, "warnings": found, "run": run}

    staged = Lake(job.lake_root).stage(C.TABLE_SLICES, _slices_table(job, out),
                                       {C.COL_SITE: e.site, C.COL_SPLIT: e.split})
    qc_staged = _stage_qc(job, attempt, out, found) if job.qc else None
    total = time.perf_counter() - t0
    patient = {C.COL_PATIENT_ID: job.pseudo_id, **e.clinical(), "n_slices": len(out.boxes),
               "input_hash": job.input_hash, "params_hash": job.params_hash,
               "preprocessed_at": dt.datetime.now(dt.UTC)}
    return {"status": "ok", "n_slices": len(out.boxes), "seconds": total, "attempt_id": attempt,
            "registration_metric": out.registration_metric, "warnings": found, "staged": staged, "qc_staged": qc_staged,
            "run": _run_row(job, attempt, started, "ok", out=out, total=total, found=found), "patient": patient}


def _stage_qc(job: PatientJob, attempt: str, out, found: list[dict]):
    """Stage the patient's QC panels (``qc_panels``); a panel that cannot be drawn fails the QC
    only, not the patient: a ``qc_panels_failed`` warning is added to ``found`` and None returned."""
    import pyarrow as pa

    from gbmmet.preprocess import qc_flags, qc_panels
    from storage.lake import Lake

    try:
        pngs, measures = qc_panels.render_patient(out)
    except Exception as exc:  # noqa: BLE001 - the slices are good; the pictures are a report
        found.append({"kind": "qc_panels_failed", "message": f"QC panels not drawn: {type(exc).__name__}: {exc}"})
        return None
    flags = [qc_flags.roi_slices_flag(len(out.boxes)), qc_flags.skull_stripped_flag(out.background_zero_share)]
    shapes = [qc_panels.png_size(b) for b in pngs.values()]
    n = len(pngs)
    table = pa.table({
        C.COL_PATIENT_ID: [job.pseudo_id] * n, C.COL_SITE: [job.entry.site] * n, C.COL_SPLIT: [job.entry.split] * n,
        "attempt_id": [attempt] * n, "params_hash": [job.params_hash] * n, "panel": list(pngs),
        "height": [s[0] for s in shapes], "width": [s[1] for s in shapes], "png": list(pngs.values()),
        "measures": [json.dumps(measures)] * n, "flags": [json.dumps([f.to_dict() for f in flags])] * n,
    })
    return Lake(job.lake_root).stage(C.TABLE_QC_PANELS, table)


def _slices_table(job: PatientJob, out):
    """The ``slices`` rows of one patient's preprocessing output (partition columns apart)."""
    import pyarrow as pa

    n = len(out.boxes)
    s = job.params.slices
    return pa.table({
        C.COL_PATIENT_ID: [job.pseudo_id] * n,
        C.COL_LABEL: [job.entry.label] * n,
        "slice_index": [b.slice_index for b in out.boxes],
        "z_mm": [b.z_mm for b in out.boxes],
        "roi_i_min": [b.i_min for b in out.boxes], "roi_i_max": [b.i_max for b in out.boxes],
        "roi_j_min": [b.j_min for b in out.boxes], "roi_j_max": [b.j_max for b in out.boxes],
        "crop_mm": [b.side_mm for b in out.boxes],
        "channels": [len(s.channels)] * n, "height": [s.size] * n, "width": [s.size] * n,
        "image": [img.tobytes() for img in out.images],
        "params_hash": [job.params_hash] * n,
    })


def _amend_runs(lake, amendments: list[tuple[dict, bool | None, list[dict]]]) -> int:
    """Record QC verdicts and warnings in attempts' ``preprocess_runs`` rows, all in one commit
    replacing those rows (keyed on ``attempt_id``); return the commits made (0 or 1).

    ``amendments``: (row, suspect, add): the attempt's row (its ``attempt_id`` is the key), the
    verdict (None: unchanged), the warnings to add (lake-ready; those already there are not
    repeated).
    """
    import pyarrow as pa
    import pyarrow.dataset as ds

    if not amendments:
        return 0
    ids = [row["attempt_id"] for row, _, _ in amendments]
    current = {r["attempt_id"]: r for r in
               lake.read(C.TABLE_PREPROCESS_RUNS, filter=ds.field("attempt_id").isin(ids)).to_pylist()}
    rows = []
    for row, suspect, add in amendments:
        rec = current[row["attempt_id"]]
        found = json.loads(rec["warnings"] or "[]")
        found += [w for w in add if w not in found]
        rec["warnings"] = json.dumps(found)
        if suspect is not None:
            rec["registration_suspect"] = suspect
        rows.append(rec)
    lake.replace(C.TABLE_PREPROCESS_RUNS, pa.Table.from_pylist(rows), where={"attempt_id": ids})
    return 1


def _judge_registration(lake, pseudo: dict[str, str], entries: list[PatientEntry], params_hash: str,
                        summary: PreprocessSummary, extra: dict[str, list[tuple[str, str, str]]]) -> int:
    """Apply the registration QC rule to every patient of ``entries`` in the lake without a verdict
    (new, or judged before with too small a cohort), record it in its latest ok attempt and in
    ``summary``; also record ``extra`` warnings (raw id -> (kind, console, lake message)) on patients
    skipped in this run (their latest ok attempt). All in one commit; return the commits made."""
    from gbmmet.preprocess import qc

    current = {r[C.COL_PATIENT_ID]: r for r in lake.read(C.TABLE_PATIENTS).to_pylist()}
    cols = [C.COL_PATIENT_ID, C.COL_SITE, "attempt_id", "status", "params_hash", "input_hash",
            "registration_metric", "registration_suspect", "warnings"]
    latest = qc.latest_ok_runs(lake.read(C.TABLE_PREPROCESS_RUNS, columns=cols).to_pylist(), params_hash)
    # the cohort: patients whose rows in the lake are their latest ok attempt's
    cohort = [r for pid, r in latest.items() if pid in current and current[pid]["input_hash"] == r["input_hash"]]
    done = set(summary.ok) | set(summary.skipped)
    amendments = []
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
            amendments.append((row, verdict, add))
    return _amend_runs(lake, amendments)


def _run_tasks(todo: list[tuple[str, tuple]], on_outcome, batches: Batches, *, use_ray: bool,
               show_progress: bool, names: dict[str, str], resources: dict | None, window: int | None = None):
    """Run ``preprocess_one`` for each (key, (job,)) of ``todo``, as Ray tasks (at most
    ``ray_runtime.task_window(window)`` in flight) or (``use_ray`` False) here, handing each
    outcome (``TaskOutcome``) to ``on_outcome`` as it arrives and committing ``batches`` whenever
    one is due, even while no task finishes.

    As ``ray_runtime.run_batch``: a task whose worker died, or whose input read failed
    transiently (``TransientIOError``), is retried (``TASK_MAX_RETRIES``); any other exception of
    the task itself fails its patient alone. Returns the ``BatchReport``.

    Raises:
        Interrupted: Ctrl-C: what had finished was committed, then the outstanding tasks were
            cancelled (what they staged stays invisible).
    """
    from pipelines.ray_runtime import BatchReport, Interrupted, _progress, cancel_pending

    report = BatchReport()
    pending: dict = {}
    progress, task = _progress("preprocess", len(todo))

    def finished(outcome) -> None:
        report.outcomes.append(outcome)
        on_outcome(outcome)
        progress.update(task, advance=1, failed=len(report.failed))

    start = time.perf_counter()
    try:
        with progress if show_progress and todo else nullcontext():
            if use_ray:
                _ray_tasks(todo, finished, batches, pending, names, resources or {}, report, window)
            else:
                for key, (job,) in todo:
                    finished(_outcome(key, lambda job=job: _local_task(job)))
                    batches.flush_if_due()
    except KeyboardInterrupt:
        _drain(pending, finished)
        batches.flush()  # before cancelling: a Ray crash on cancel (below) cannot lose it
        cancel_pending(pending)
        done = {o.key for o in report.outcomes}
        raise Interrupted("preprocess interrupted", done=[o.key for o in report.ok],
                          failed=[o.key for o in report.failed], not_finished=[k for k, _ in todo if k not in done],
                          report=report) from None
    except BaseException:
        cancel_pending(pending)
        raise
    report.seconds = time.perf_counter() - start
    return report


def _local_task(job: PatientJob) -> dict:
    """``preprocess_one`` in this process, a transient read error retried as Ray would."""
    from gbmmet.errors import TransientIOError

    for tries in range(TASK_MAX_RETRIES + 1):
        try:
            return preprocess_one(job)
        except TransientIOError:
            if tries == TASK_MAX_RETRIES:
                raise
    raise AssertionError("unreachable")


def _outcome(key: str, get):
    """``TaskOutcome`` of ``get()`` in this process: its value, or the error that failed it."""
    from pipelines.ray_runtime import TaskOutcome

    try:
        return TaskOutcome(key, True, get())
    except Exception as exc:  # noqa: BLE001 - one bad item fails alone
        return TaskOutcome(key, False, error=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)


def _ray_tasks(todo, finished, batches: Batches, pending: dict, names: dict[str, str],
               resources: dict[str, dict[str, float]], report, window: int | None) -> None:
    """``_run_tasks``'s Ray loop: ``pending`` holds the submitted tasks not yet collected, at most
    ``report.window``; the next is submitted as one is collected. Waits at most until the held
    batch is due by time, so it is committed then."""
    import ray

    from gbmmet.errors import TransientIOError
    from pipelines.ray_runtime import ray_outcome, submit_upto, task_window

    remote = ray.remote(num_cpus=1, memory=PATIENT_MEMORY, max_retries=TASK_MAX_RETRIES,
                        retry_exceptions=[TransientIOError])(preprocess_one)

    def submit(key, args):
        opts = {"name": names[key]} if key in names else {}
        if key in resources:
            opts["resources"] = resources[key]
        return remote.options(**opts).remote(*args)

    report.window = task_window(window)
    queue = iter(todo)
    submit_upto(queue, pending, submit, report)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(5.0, batches.wait_s()))
        for ref in ready:
            finished(ray_outcome(pending.pop(ref), ref))
        submit_upto(queue, pending, submit, report)
        batches.flush_if_due()


def round_robin(todo: list[tuple[str, tuple]], group: dict[str, str]) -> list[tuple[str, tuple]]:
    """``todo`` taking one item of each group (e.g. site) in turn, each group's items in their
    order: a window of tasks in flight then holds every group's, not the first group's only."""
    groups: dict[str, list] = {}
    for item in todo:
        groups.setdefault(group[item[0]], []).append(item)
    return [item for turn in itertools.zip_longest(*groups.values()) for item in turn if item is not None]


def _drain(pending: dict, finished) -> None:
    """Collect the submitted Ray tasks that have finished already (before Ctrl-C), so that they
    are committed rather than cancelled."""
    if not pending:
        return
    import ray

    from pipelines.ray_runtime import ray_outcome

    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
    for ref in ready:
        finished(ray_outcome(pending.pop(ref), ref))


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


@dataclass
class _Plan:
    """What a run will do, decided before any patient runs (``_plan``)."""

    lake: object  # storage.lake.Lake
    entries: list[PatientEntry]
    present: list[PatientEntry]  # those whose files exist
    pseudo: dict[str, str]  # raw id -> pseudonym
    jobs: dict[str, PatientJob]  # raw id -> job
    todo: list[tuple[str, tuple[PatientJob]]]  # (raw id, (job,)) to run
    skipped: list[str]  # raw ids done in the lake with the same input stamp and parameters
    missing: dict[str, str]  # raw id -> why its files are missing (keep_going)
    duplicates: dict[str, list[tuple[str, str, str]]]  # raw id -> (kind, console, lake message)
    hashed: int = 0  # image files the driver hashed to look for duplicates (those of colliding sizes)


def _plan(manifests, lake_root, params: PreprocessParams, keep_going: bool, qc: bool = True) -> _Plan:
    """Read the manifests, check the lake, pseudonymise and stamp every patient (``input_stamp``:
    ``os.stat`` only), refuse duplicates within a site (hashing only the files of colliding
    sizes), and split the patients into those to run and those done (``_done_stamps``: what
    resuming relies on). No image is read whole but to look for duplicates."""
    from gbmmet.manifest import load_manifests
    from gbmmet.pseudonym import pseudonymise
    from storage.lake import Lake

    entries, missing = load_manifests([str(m) for m in manifests], allow_missing_files=keep_going)
    lake = Lake(lake_root).check_writable()  # a read-only or unusable lake fails before any patient
    key = lake.secret()
    params_hash = params.hash()
    pseudo = {e.patient_id: pseudonymise(key, e.site, e.patient_id) for e in entries}
    present = [e for e in entries if e.patient_id not in missing]
    stats = {e.patient_id: _stat_or_refuse(e) for e in present}
    duplicates, hashed = _refuse_duplicates(present, stats, pseudo)
    done = _done_stamps(lake, params_hash)
    jobs = {e.patient_id: PatientJob(
        e, pseudo[e.patient_id], input_stamp(e, stats[e.patient_id]) if e.patient_id in stats else "", params,
        params_hash, lake.uri, warnings=tuple((k, m) for k, _, m in duplicates.get(e.patient_id, [])), qc=qc)
        for e in entries}
    todo, skipped = [], []
    for e in present:
        job = jobs[e.patient_id]
        if done.get(job.pseudo_id) == job.input_stamp:
            skipped.append(e.patient_id)
        else:  # new, or its inputs or parameters changed: a successful attempt replaces its rows
            todo.append((e.patient_id, (job,)))
    return _Plan(lake, entries, present, pseudo, jobs, todo, skipped, missing, duplicates, hashed)


def _stat_or_refuse(entry: PatientEntry) -> dict:
    """``stat_inputs``; a file that cannot be looked at stops the run (``ManifestError``)."""
    from gbmmet.errors import ManifestError

    try:
        return stat_inputs(entry)
    except OSError as exc:
        raise ManifestError(f"{entry.manifest} line {entry.line} (patient {entry.patient_id}): "
                            f"{exc.filename}: {exc.strerror or exc}; nothing was run") from None


def _refuse_duplicates(present: list[PatientEntry], stats: dict[str, dict], pseudo: dict[str, str]
                       ) -> tuple[dict[str, list[tuple[str, str, str]]], int]:
    """``find_duplicates`` on the image files whose size collides with another patient's
    (``size_collisions``), each distinct file hashed once. Returns the warnings across sites and
    how many files were hashed.

    Raises:
        ManifestError: identical images under two ids of one site (every pair listed); nothing ran.
    """
    from gbmmet.errors import ManifestError

    by_id = {e.patient_id: e for e in present}
    keys = {(e.patient_id, col): _size_key(stats[e.patient_id][col]) for e in present for col in IMAGE_COLUMNS}
    colliding = sorted(size_collisions(keys))
    paths = sorted({getattr(by_id[pid], col) for pid, col in colliding})
    with ThreadPoolExecutor(max_workers=4) as pool:
        digest_of = dict(zip(paths, pool.map(file_digest, paths), strict=True))
    digests: dict[str, dict[str, str]] = {}
    for pid, col in colliding:
        digests.setdefault(pid, {})[col] = digest_of[getattr(by_id[pid], col)]
    problems, duplicates = find_duplicates(present, digests, pseudo)
    if problems:
        raise ManifestError(f"{len(problems)} problem(s) in the manifest(s); nothing was run:\n  "
                            + "\n  ".join(problems))
    return duplicates, len(paths)


def _done_stamps(lake, params_hash: str) -> dict[str, str]:
    """Pseudonym -> input stamp of every patient done in the lake with these parameters: its
    ``patients`` row is committed with ``params_hash``, made by its latest ok attempt with these
    parameters (the same ``input_hash``), whose ``input_stamp`` is returned. A patient whose
    attempt committed its run row but not its ``patients`` row (a driver killed between the two)
    is not done; nor one whose attempts predate the stamp (null: redone once)."""
    from gbmmet.preprocess import qc

    patients = {r[C.COL_PATIENT_ID]: r for r in
                lake.read(C.TABLE_PATIENTS, columns=[C.COL_PATIENT_ID, "input_hash", "params_hash"]).to_pylist()}
    cols = [C.COL_PATIENT_ID, "attempt_id", "status", "params_hash", "input_hash", "input_stamp"]
    latest = qc.latest_ok_runs(lake.read(C.TABLE_PREPROCESS_RUNS, columns=cols).to_pylist(), params_hash)
    return {pid: r["input_stamp"] for pid, r in latest.items()
            if r["input_stamp"] and pid in patients and patients[pid]["params_hash"] == params_hash
            and patients[pid]["input_hash"] == r["input_hash"]}


def _collect(outcome, jobs: dict[str, PatientJob], summary: PreprocessSummary, batches: Batches,
             seconds: list[float]) -> None:
    """One finished patient: into ``summary`` (for the console) and ``batches`` (its rows)."""
    from gbmmet.errors import TransientIOError

    key = outcome.key
    if not outcome.ok:  # the task itself died for good (retries spent): record it from here
        kind, message = "worker_failed", outcome.error
        if outcome.error_type == TransientIOError.__name__:
            kind, message = TransientIOError.kind, f"{outcome.error} (still failing after {TASK_MAX_RETRIES} retries)"
        summary.failed[key] = f"{kind}: {message}"
        _record_failure(batches, jobs[key], kind, message)
        return
    value = outcome.value
    for w in value.get("warnings", []):
        if w["kind"] != WARN_DUPLICATE:  # those are in the summary already, in console form
            summary.warn(key, w["kind"], w["message"])
    batches.add(value["run"], value.get("staged"), value.get("patient"), value.get("qc_staged"))
    if value["status"] == "ok":
        summary.ok.append(key)
        summary.slices_written += value["n_slices"]
        seconds.append(value["seconds"])
    else:
        summary.failed[key] = f"{value['kind']}: {value['message']}"


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
    batch: BatchSettings | None = None,
    qc: bool = True,
    window: int | None = None,
) -> PreprocessSummary:
    """Preprocess every patient of ``manifests`` into the lake at ``lake_root``.

    ``workers=0`` runs in this process without Ray (debugging); otherwise on the local Ray with
    ``workers`` CPUs (default: all), or on the cluster at ``address`` / ``RAY_ADDRESS``.
    ``pin_sites`` runs each site's patients only on nodes that have the custom resource
    ``site:<site>`` (data that may not leave a site's machines; ``preprocess_runs.ray_node`` shows
    where each ran). ``batch``: how often finished patients are committed (``BatchSettings``; the
    summary records it and the number of commits made). ``qc``: draw each patient's QC panels into
    ``qc_panels`` (``gbmmet.preprocess.qc_panels``; 0.1 s a patient). ``window``: the most
    patients in flight on Ray at once (default ``ray_runtime.task_window``: 2 per cluster CPU).

    Raises:
        ManifestError: the manifests have problems (listed), or one site has identical images under
            two ids; nothing ran.
        ConfigError: impossible parameters or batch settings.
        LakeError: the lake cannot be written (a file, read-only, its key unusable): nothing ran;
            or a batch's commit failed for good: the run stopped there, earlier batches kept.
        Interrupted: Ctrl-C; the outstanding tasks were cancelled, what finished is in the lake.
    """
    from gbmmet.errors import ConfigError
    from pipelines.ray_runtime import Interrupted, init_ray
    from storage import catalog, maintenance

    t_start = time.perf_counter()
    params, batch = params or PreprocessParams(), batch or BatchSettings()
    try:
        params.check()
        batch.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if workers is not None and workers < 0:
        raise ConfigError(f"The 'workers' parameter must be >= 0. Got {workers!r} instead.")
    if pin_sites and workers == 0:
        raise ConfigError("--pin-sites needs Ray (workers 0 runs in this process)")
    if window is not None and window < 1:
        raise ConfigError(f"The 'window' parameter must be >= 1. Got {window!r} instead.")
    plan = _plan(manifests, lake_root, params, keep_going, qc)
    summary = PreprocessSummary(lake=plan.lake.uri, batch=batch, skipped=list(plan.skipped))
    for pid, found in plan.duplicates.items():
        for kind, console, _ in found:
            summary.warn(pid, kind, console)
    batches = Batches(plan.lake, batch)
    for pid, msg in plan.missing.items():
        _record_failure(batches, plan.jobs[pid], "missing_file", msg)
        summary.failed[pid] = f"missing_file: {msg}"

    use_ray = workers != 0 and bool(plan.todo)
    resources = None
    if use_ray:
        init_ray(address=address, num_cpus=workers, shared=(lake_root,))
        if pin_sites:
            import ray

            by_site = site_resources([plan.jobs[pid].entry.site for pid, _ in plan.todo], ray.cluster_resources())
            resources = {pid: by_site[plan.jobs[pid].entry.site] for pid, _ in plan.todo}
            # the window shared: one site's patients first would leave the others' nodes idle
            plan.todo = round_robin(plan.todo, {pid: plan.jobs[pid].entry.site for pid, _ in plan.todo})
    seconds: list[float] = []
    try:
        report = _run_tasks(plan.todo, lambda o: _collect(o, plan.jobs, summary, batches, seconds), batches,
                            use_ray=use_ray, show_progress=show_progress, resources=resources, window=window,
                            names={pid: f"preprocess-{plan.pseudo[pid]}" for pid, _ in plan.todo})
        summary.window, summary.max_in_flight = report.window, report.max_in_flight
        batches.flush()
    except Interrupted as exc:
        failed = [o.key for o in exc.report.outcomes if o.key not in summary.ok]
        raise Interrupted(
            f"preprocess interrupted: {len(summary.ok)} patient(s) done, {len(failed)} failed, "
            f"{len(exc.not_finished)} not finished (cancelled), {len(summary.skipped)} skipped (already in the "
            f"lake) of {len(plan.entries)}; what finished is committed ({batches.commits} commit(s))",
            done=list(summary.ok), failed=failed, not_finished=exc.not_finished, report=exc.report) from None
    finally:
        _write_id_maps(plan.entries, plan.pseudo)  # the pseudonyms of what was committed, even if stopped
    if seconds:
        summary.seconds_per_patient = sum(seconds) / len(seconds)
    summary.commits = batches.commits + _judge_registration(plan.lake, plan.pseudo, plan.present, params.hash(),
                                                            summary, plan.duplicates)
    summary.batches = batches.batches
    summary.compacted = sorted(maintenance.compact_small_on_cluster(plan.lake, PREPROCESS_TABLES))
    if plan.lake.local_root is not None:
        summary.catalog = str(catalog.refresh(plan.lake))
    summary.wall_seconds = time.perf_counter() - t_start
    return summary
