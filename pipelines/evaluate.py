"""``gbmmet evaluate``: the fold ensemble on val, internal test and external, then the statistics.

The wiring only; every rule (index, cutoffs, subgroups, intervals, differences, calibration, flow)
is a pure function in ``gbmmet.evaluation`` and ``gbmmet.stats``, documented there.

1. Scoring (``score_run``, reused while the run and the slices are unchanged): every fold model
   scores every val / test / external slice; ``slice_predictions`` per fold, the majority vote
   (``ensemble_vote``) and the soft vote (``ensemble_mean``); ``cams``, the ensemble's Grad-CAM of
   every test and external slice. Both are Ray Data pipelines: workers read the slices (frozen
   mode: their features) from the pinned lake, ``EnsembleActor``s (one per CPU, each building the
   run's ``FoldEnsemble`` once) score them in batches; the plan is in the ``score`` record.
2. ``patient_predictions``: the predictive index, both cutoffs (the paper's on the internal test,
   the leakage-free one on validation), and P(GBM) from a logistic fit on validation patients.
3. ``metrics`` per cohort and subgroup for the model at each cutoff and each reader (unassisted,
   assisted), every CI method; intention-to-diagnose rows; calibration summary rows.
4. ``differences``: model at each cutoff minus each reader, each reader assisted minus unassisted,
   with paired bootstrap CIs, McNemar / DeLong p values, Holm-adjusted per cohort.
5. ``calibration`` (reliability and decision curves) and ``patient_flow`` (STARD counts).

Scoring and the evaluation proper each read one snapshot of the lake (``Lake.pinned``: the
evaluation's is taken once the slices are scored) and record its table versions in their ``runs``
record (``score``, ``evaluate``: ``lake_versions``); every table they write is one commit replacing
the run's earlier rows, the record last.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np

from gbmmet import constants as C
from gbmmet.evaluation import EvaluationSettings
from gbmmet.model.ensemble import ensemble_vote

EVAL_SPLITS = (C.VAL, C.TEST, C.EXTERNAL)
CAM_SPLITS = (C.TEST, C.EXTERNAL)  # the splits whose slices get the ensemble's Grad-CAM
CAM_SIZE = 112  # side of a stored class activation map, pixels
CUT_PAPER = C.CUTOFF_PAPER
CUT_VAL = C.CUTOFF_VAL
# Part of every evaluation's fingerprint: raise it when evaluate writes its tables differently, so
# that lakes evaluated before are evaluated again rather than reused (3: issue 12's statistics;
# 4: uncertainty, out-of-distribution flag, conformal sets and deferral; 5: the OOD score adds
# the sequence check, stored with its two parts).
EVALUATE_VERSION = 5
SCORE_VERSION = 1
ENSEMBLE_VOTE = "ensemble_vote"
ENSEMBLE_MEAN = "ensemble_mean"


@dataclass
class EvaluateSummary:
    run_id: str
    cutoffs: dict[str, float]
    patients: int
    slices: int
    metrics_rows: int
    differences_rows: int
    readers: list[str] = field(default_factory=list)
    seconds: float = 0.0


def train_run_record(lake, run: str | None = None) -> dict:
    """The ``runs`` record of training run ``run``, or of the lake's latest finished one.

    Raises:
        ConfigError: no such run (the message lists the lake's runs), or no finished run at all.
    """
    from gbmmet.errors import ConfigError

    runs = [r for r in lake.read(C.TABLE_RUNS).to_pylist() if r["kind"] == "train" and r["status"] == "ok"]
    if run is not None:
        named = [r for r in runs if r["run_id"] == run]
        if not named:
            raise ConfigError(f"no training run {run!r} in {lake.uri}; runs there: {sorted({r['run_id'] for r in runs})}")
        return named[-1]
    if not runs:
        raise ConfigError(f"no finished training run in {lake.uri}: run `gbmmet train` first")
    return max(runs, key=lambda r: r["finished_at"])


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, default=str, sort_keys=True).encode()).hexdigest()


def _slices_state(lake) -> list:
    return sorted(lake.read(C.TABLE_PATIENTS, columns=[C.COL_PATIENT_ID, "params_hash", "n_slices"]).to_pylist(),
                  key=lambda r: r[C.COL_PATIENT_ID])


def _record(lake, run: str, kind: str) -> dict | None:
    done = [r for r in lake.read(C.TABLE_RUNS).to_pylist() if r["run_id"] == run and r["kind"] == kind]
    return done[-1] if done else None


# ---------------------------------------------------------------------------------------------
# 1. scoring
# ---------------------------------------------------------------------------------------------
def score_run(lake, rec: dict, *, cams: bool = True, force: bool = False, show_progress: bool = True,
              gpus: float = 0.0, echo=print) -> str:
    """Slice predictions (and CAMs) of run ``rec`` into the lake; reused while the run, the slices
    and ``cams`` are unchanged. ``gpus``: GPUs per ensemble actor (0: CPU actors, one per CPU).
    Returns the scoring fingerprint.

    Reads the lake as it is when scoring starts (``lake.pinned()``); the ``score`` record holds
    those versions (``lake_versions``)."""
    import pyarrow as pa

    from storage.schemas import RUNS

    run = rec["run_id"]
    snap = lake.pinned()
    fingerprint = _hash([SCORE_VERSION, run, rec["finished_at"], rec["fold_checkpoints"], _slices_state(snap), cams])
    done = _record(snap, run, "score")
    if done and not force and json.loads(done["config"]).get("fingerprint") == fingerprint:
        echo(f"score {run}: slices already scored by this run; reusing it")
        return fingerprint
    started = dt.datetime.now(dt.UTC)
    scored, plan = _run_ensemble(snap, rec, cams, show_progress, gpus)
    try:
        predictions, n = _score_slices(scored, rec, lake.uri)
        lake.replace(C.TABLE_SLICE_PREDICTIONS, predictions, {"run_id": run, C.COL_SPLIT: list(EVAL_SPLITS)})
        if cams:
            _commit_cams(lake, run, _cam_files(scored))
    except BaseException:
        _remove_staged(lake, _cam_files(scored))  # uncommitted: nobody reads them; a re-run stages anew
        raise
    lake.replace(C.TABLE_RUNS, pa.Table.from_pylist([{
        "run_id": run, "kind": "score", "mode": rec["mode"], "backbone_id": rec["backbone_id"],
        "config": json.dumps({"fingerprint": fingerprint, "cams": cams, "ray_data": plan}), "started_at": started,
        "finished_at": dt.datetime.now(dt.UTC), "fold_checkpoints": rec["fold_checkpoints"],
        "timings": json.dumps({"slices": n}), "status": "ok",
        "lake_versions": json.dumps(snap.versions(), sort_keys=True)}], schema=RUNS), {"run_id": run, "kind": "score"})
    _after_commits(lake, [C.TABLE_SLICE_PREDICTIONS, C.TABLE_CAMS, C.TABLE_RUNS])
    return fingerprint


def _after_commits(lake, names: list[str]) -> None:
    """After a job's commits: a local lake's catalog rebuilt, then tables ``names`` compacted
    where small commits piled up."""
    from storage import catalog, maintenance

    if lake.local_root is not None:
        catalog.refresh(lake)
    maintenance.compact_small_on_cluster(lake, names)


#: The key columns of every scored slice, as ``slice_predictions`` and ``cams`` hold them.
SLICE_KEYS = (C.COL_PATIENT_ID, C.COL_SITE, C.COL_SPLIT, "slice_index")
#: Rows per Ray Data batch handed to one ensemble actor. Inside a batch the backbone runs
#: ``backbones.forward_batch`` slices a pass, the frozen heads 256 feature rows a pass.
SCORE_BATCH = 64


class EnsembleActor:
    """Ray Data actor (``map_batches``): run ``rec``'s fold ensemble (``FoldEnsemble``), built once
    per actor, on batches of slices: every row scored (``probs``: P(GBM) by every fold model, fold
    order) and, where ``cams``, the Grad-CAM of each test and external slice, staged by the actor
    as a data file of the ``cams`` table in the lake at ``lake_root`` (``_cam_rows``): the maps'
    bytes never pass through the driver, which gets the file's ``Staged`` record and commits it.

    Rows hold ``vector`` (frozen mode: the stored backbone features, scored by the heads) or
    ``image`` / ``channels`` / ``height`` / ``width`` (slices: scored in fine-tune mode, mapped
    where ``cams``); a batch may hold both kinds (``_scoring_dataset`` unites them). Output: the
    key columns, ``probs`` (null where not scored), ``mapped`` (whether a map was made) and
    ``cams_file`` (``storage.lake.Staged`` as JSON, on one row of each batch that made maps, null on
    the others)."""

    def __init__(self, rec: dict, cams: bool, lake_root: str | None = None):
        import torch  # noqa: F401 - imported before match_threads_to_task, which limits it only if loaded

        from gbmmet.model.backbones import default_device
        from gbmmet.model.ensemble import FoldEnsemble
        from pipelines.ray_runtime import match_threads_to_task
        from pipelines.train import load_state
        from storage.lake import Lake

        match_threads_to_task()
        if cams and lake_root is None:
            raise ValueError("EnsembleActor: maps are staged in the lake; lake_root is needed where cams")
        self.frozen, self.cams, self.run = rec["mode"] == "frozen", cams, rec["run_id"]
        self.lake = Lake(lake_root) if cams else None
        self.ensemble = FoldEnsemble.from_run_record(rec, load_state, features_only=self.frozen and not cams)
        self.ensemble.to(default_device())

    def __call__(self, batch):
        import pyarrow as pa
        import pyarrow.compute as pc

        parts = []
        if "vector" in batch.column_names:
            rows = batch.filter(pc.is_valid(batch.column("vector")))
            if rows.num_rows:
                X = np.stack(rows.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
                parts.append(self._rows(rows, self.ensemble.predict_proba(X, batch_size=256), None))
        if "image" in batch.column_names:
            rows = batch.filter(pc.is_valid(batch.column("image")))
            if rows.num_rows:
                parts.append(self._images(rows))
        return pa.concat_tables(parts) if parts else _actor_schema(self.ensemble.n_folds).empty_table()

    def _images(self, rows):
        from dataclasses import asdict

        from storage.codec import decode_images

        images = decode_images(rows)
        probs = None if self.frozen else self.ensemble.predict_proba(images=images)
        wanted, staged = np.zeros(rows.num_rows, bool), None
        if self.cams:
            wanted = np.isin(np.asarray(rows.column(C.COL_SPLIT).to_pylist(), dtype=object), CAM_SPLITS)
            if wanted.any():
                made = np.round(self.ensemble.grad_cam(images[wanted], size=CAM_SIZE) * 255).astype(np.uint8)
                mapped = rows.filter(wanted)
                staged = json.dumps(asdict(self.lake.stage(C.TABLE_CAMS, _cam_rows(self.run, mapped, made))))
        return self._rows(rows, probs, wanted, staged)

    def _rows(self, rows, probs, mapped=None, staged: str | None = None):
        import pyarrow as pa

        schema = _actor_schema(self.ensemble.n_folds)
        n = rows.num_rows
        return pa.table({**{c: rows.column(c) for c in SLICE_KEYS},
                         "probs": _fold_lists(probs) if probs is not None else pa.nulls(n, schema.field("probs").type),
                         "mapped": pa.array(mapped if mapped is not None else np.zeros(n, bool), pa.bool_()),
                         "cams_file": pa.array([staged] + [None] * (n - 1), pa.string())}, schema=schema)


def _actor_schema(folds: int):
    import pyarrow as pa

    return pa.schema([pa.field(C.COL_PATIENT_ID, pa.string()), pa.field(C.COL_SITE, pa.string()),
                      pa.field(C.COL_SPLIT, pa.string()), pa.field("slice_index", pa.int32()),
                      pa.field("probs", pa.list_(pa.float32(), folds)), pa.field("mapped", pa.bool_()),
                      pa.field("cams_file", pa.string())])


def _cam_rows(run: str, keys, maps: np.ndarray):
    """The ``cams`` rows of run ``run``: the key columns of ``keys`` (a table) and ``maps``
    ((N, CAM_SIZE, CAM_SIZE) uint8, 0..255 for 0..1), one row per slice."""
    import pyarrow as pa

    n = keys.num_rows
    return pa.table({
        "run_id": pa.array([run] * n, pa.string()), **{c: keys.column(c) for c in SLICE_KEYS},
        "height": pa.array([CAM_SIZE] * n, pa.int16()), "width": pa.array([CAM_SIZE] * n, pa.int16()),
        "cam": pa.array([m.tobytes() for m in maps], pa.binary())})


def _fold_lists(probs: np.ndarray):
    """(folds, N) P(GBM) as N fixed-size lists of the folds' values (one row per slice)."""
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(probs.T).ravel(), pa.float32()),
                                             probs.shape[0])


def _slices_dataset(lake, rec: dict, splits, features: bool, batch_rows: int):
    """Ray Dataset of the slices of ``splits`` (or their features under the run's backbone), read
    by the cluster's workers from the lake's pinned version (``Lake.ray_dataset``); the driver
    lists files only. None where there are none."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = C.TABLE_FEATURES if features else C.TABLE_SLICES
    where = {"backbone": rec["backbone_id"]} if features else {C.COL_SPLIT: list(splits)}
    files = lake.partition_files(table, where)
    if not files:
        return None
    columns = [*SLICE_KEYS, *(["vector"] if features else ["channels", "height", "width", "image"])]
    # Blocks of about one batch: an actor takes a block whole, so a data file of a whole split
    # (after compaction) would otherwise go to one actor while the others wait.
    meta = pq.ParquetFile(files[0], filesystem=lake.fs).metadata
    row_bytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) / max(1, meta.num_rows)
    return lake.ray_dataset(table, columns=columns, where=where, filter=pc.field(C.COL_SPLIT).isin(list(splits)),
                            block_bytes=max(1 << 20, int(row_bytes * batch_rows)))


def _scoring_dataset(lake, rec: dict, cams: bool):
    """The rows one pool of ``EnsembleActor`` works through: fine-tune mode, the val / test /
    external slices (every one scored, test and external mapped); frozen mode, their stored
    features (scored) and, where ``cams``, the test and external slices (mapped) in the same
    dataset, so one pool of actors builds the ensemble once for both. None where there is
    nothing to score."""
    frozen = rec["mode"] == "frozen"
    ds = _slices_dataset(lake, rec, EVAL_SPLITS, frozen, SCORE_BATCH)
    if ds is None or not (frozen and cams):
        return ds
    images = _slices_dataset(lake, rec, CAM_SPLITS, False, SCORE_BATCH)
    return ds if images is None else ds.union(images)


def _actors(n_rows: int, batch_size: int, gpus: float = 0.0) -> int:
    """Ensemble actors for ``n_rows`` slices: ``ray_runtime.pool_size``, no more than there are
    batches."""
    from pipelines.ray_runtime import pool_size

    return max(1, min(pool_size(gpus), -(-n_rows // batch_size)))


def _n_slices(lake, splits) -> int:
    """Slices of the patients of ``splits`` (the patients table's counts)."""
    import pyarrow.compute as pc

    t = lake.read(C.TABLE_PATIENTS, columns=["n_slices"], filter=pc.field(C.COL_SPLIT).isin(list(splits)))
    return int(pc.sum(t.column("n_slices")).as_py() or 0)


def _run_ensemble(lake, rec: dict, cams: bool, show_progress: bool, gpus: float = 0.0):
    """One pool of ``EnsembleActor`` over ``_scoring_dataset``: its output rows sorted as the
    lake's reads are (split in ``EVAL_SPLITS`` order, patient, slice; in frozen mode a mapped slice
    has a row of its own beside its scored features), and the plan (batch size, actors, the
    resources each asked for) used. ``gpus``: GPUs per actor (0: CPU actors)."""
    import pyarrow as pa
    import ray
    import ray.data

    plan = {"batch_size": SCORE_BATCH, "actors": 0, "num_cpus": 1, "num_gpus": gpus, "cams": cams}
    ds = _scoring_dataset(lake, rec, cams)
    if ds is None:
        return None, plan
    plan["actors"] = _actors(_n_slices(lake, EVAL_SPLITS), SCORE_BATCH, gpus)
    ray.data.DataContext.get_current().enable_progress_bars = show_progress
    from pipelines.ray_runtime import quiet_ray_data

    quiet_ray_data()
    # max_restarts=0: Ray Data's default (restart for ever) makes Ray log an error line on the
    # console for each actor (its constructor arguments live in the object store); a lost actor
    # fails the scoring instead, which a re-run does again.
    out = ds.map_batches(EnsembleActor, fn_constructor_args=(rec, cams, lake.uri), batch_size=SCORE_BATCH,
                         batch_format="pyarrow", num_cpus=plan["num_cpus"], max_restarts=0,
                         **({"num_gpus": gpus} if gpus else {}),
                         compute=ray.data.ActorPoolStrategy(size=plan["actors"], max_tasks_in_flight_per_actor=1))
    try:
        parts = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    except Exception as exc:  # an actor's or a reader's error, as Ray Data raises it
        from gbmmet.errors import RunFailed

        raise RunFailed(f"scoring of run {rec['run_id']} failed: {exc}") from exc
    if not parts:
        return None, plan
    t = pa.concat_tables(parts)
    order = {s: i for i, s in enumerate(EVAL_SPLITS)}
    t = t.append_column("_order", pa.array([order[s] for s in t.column(C.COL_SPLIT).to_pylist()], pa.int8()))
    return t.sort_by([("_order", "ascending"), (C.COL_PATIENT_ID, "ascending"),
                      ("slice_index", "ascending")]).drop_columns(["_order"]), plan


def _score_slices(t, rec: dict, lake_uri: str = "the lake"):
    """The ``slice_predictions`` rows of run ``rec`` (each fold model and both ensembles) from the
    scored rows of ``_run_ensemble``'s table ``t``, and the number of slices.

    Raises:
        ConfigError: no val / test / external slice (or features) was scored."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from gbmmet.errors import ConfigError

    run, mode = rec["run_id"], rec["mode"]
    t = t.filter(pc.is_valid(t.column("probs"))) if t is not None else None
    if t is None or not t.num_rows:
        raise ConfigError(f"nothing to evaluate in {lake_uri}: no val / test / external "
                          + ("features" if mode == "frozen" else "slices") + f" for run {run}")
    flat = t.column("probs").combine_chunks()
    probs = flat.flatten().to_numpy().reshape(t.num_rows, flat.type.list_size).T  # (folds, N)
    share, mean_p, vote = ensemble_vote(probs)
    base = {"run_id": pa.array([run] * t.num_rows), **{c: t.column(c) for c in SLICE_KEYS}}

    def table(model, fold, prob, call):
        return pa.table({**base, "model": pa.array([model] * len(prob)), "fold": pa.array([fold] * len(prob), pa.int8()),
                         "prob_gbm": pa.array(prob, pa.float32()), "vote": pa.array(np.where(call, C.GBM, C.MET))})

    tables = [table(f"fold{k}", k, probs[k], probs[k] >= 0.5) for k in range(len(probs))]
    tables += [table(ENSEMBLE_VOTE, None, share, vote), table(ENSEMBLE_MEAN, None, mean_p, mean_p >= 0.5)]
    return pa.concat_tables(tables), t.num_rows


def _cam_files(t) -> list:
    """The ``cams`` data files the actors staged (``storage.lake.Staged``), from
    ``_run_ensemble``'s table ``t``."""
    from storage.lake import Staged

    if t is None:
        return []
    return [Staged(**json.loads(x)) for x in t.column("cams_file").to_pylist() if x is not None]


def _remove_staged(lake, staged: list) -> None:
    """Delete staged files that will not be committed (best effort: ``gbmmet lake vacuum`` removes
    any left, as those of an actor lost half-way)."""
    from contextlib import suppress

    from storage.maintenance import delete_data_files

    with suppress(OSError):
        delete_data_files(lake, C.TABLE_CAMS, [s.path for s in staged])


def _commit_cams(lake, run: str, staged: list) -> None:
    """Run ``run``'s maps in the ``cams`` table: the ``staged`` files in one commit that removes
    the run's earlier maps (none staged: those removed). Where the run had maps (a re-scoring),
    ``Lake.commit`` rewrites the new files' rows in that commit, so only then do the maps pass
    through this process."""
    if staged:
        lake.commit(C.TABLE_CAMS, staged, where={"run_id": run})
    else:
        lake.delete(C.TABLE_CAMS, {"run_id": run})


# ---------------------------------------------------------------------------------------------
# 2. patients: index, cutoffs, probability
# ---------------------------------------------------------------------------------------------
def _patients(lake, run: str) -> dict[str, dict]:
    """Evaluated patients: site, split, label, clinical fields, index, soft index, slices."""
    import pyarrow.compute as pc

    from gbmmet.evaluation import patient_scores

    sp = lake.read(C.TABLE_SLICE_PREDICTIONS, filter=(pc.field("run_id") == run)
                   & pc.field("model").isin([ENSEMBLE_VOTE, ENSEMBLE_MEAN])).to_pandas()
    sp = sp[sp[C.COL_SPLIT].isin(EVAL_SPLITS)]
    wide = sp.pivot_table(index=[C.COL_PATIENT_ID, "slice_index"], columns="model", values=["prob_gbm", "vote"],
                          aggfunc="first").reset_index()
    scores = patient_scores(wide[C.COL_PATIENT_ID], wide[("vote", ENSEMBLE_VOTE)] == C.GBM,
                            wide[("prob_gbm", ENSEMBLE_MEAN)])
    info = {r[C.COL_PATIENT_ID]: r for r in lake.read(C.TABLE_PATIENTS).to_pylist()}
    return {p: {**info[p], "index": s.index, "soft": s.soft_index, "n_slices_scored": s.n_slices}
            for p, s in scores.items() if p in info}


def _by_cohort(pat: dict, cohort: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    ps = sorted(p for p, d in pat.items() if d[C.COL_SPLIT] == cohort)
    return ps, np.array([pat[p][C.COL_LABEL] == C.GBM for p in ps], int), np.array([pat[p]["index"] for p in ps])


def _calibrate(pat: dict, settings: EvaluationSettings, echo) -> dict | None:
    """P(GBM) for every patient from a logistic fit on the validation patients' index; the fit."""
    import warnings

    from gbmmet.calibration import IndexCalibrator

    _, y, s = _by_cohort(pat, C.VAL)
    if y.sum() == 0 or y.sum() == len(y):
        echo("  no validation patients of both classes: no probability of GBM, no calibration")
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        cal = IndexCalibrator(C=settings.calibration_c).fit(s, y)
    for w in caught:
        echo(f"  calibration: {w.message}")
    ps = sorted(pat)
    for p, prob in zip(ps, cal.predict_proba(np.array([pat[p]["index"] for p in ps])), strict=True):
        pat[p]["prob"] = float(prob)
    return cal.to_dict()


def _cutoffs(pat: dict, echo) -> dict:
    from gbmmet.errors import ConfigError
    from gbmmet.evaluation import choose_cutoffs

    try:
        cutoffs, notes = choose_cutoffs({c: _by_cohort(pat, c)[1:] for c in EVAL_SPLITS})
    except ValueError as exc:
        raise ConfigError(f"no internal test cohort with both classes to choose the paper's cutoff: {exc}") from None
    for note in notes:
        echo("  " + note)
    return cutoffs


def _patients_table(run: str, pat: dict, cutoffs: dict):
    """The ``patient_predictions`` rows of run ``run``: one per patient and cutoff."""
    import pyarrow as pa

    from storage.schemas import PATIENT_PREDICTIONS

    return pa.Table.from_pylist(_patient_rows(run, pat, cutoffs), schema=PATIENT_PREDICTIONS)


def _patient_rows(run: str, pat: dict, cutoffs: dict) -> list[dict]:
    return [{"run_id": run, C.COL_PATIENT_ID: p, C.COL_SITE: d[C.COL_SITE], C.COL_SPLIT: d[C.COL_SPLIT],
             C.COL_LABEL: d[C.COL_LABEL], "n_slices": d["n_slices_scored"], "predictive_index": d["index"],
             "soft_index": d["soft"], "prob_gbm": d.get("prob"), "cutoff_kind": kind, "cutoff": cut.value,
             C.COL_CALL: C.GBM if d["index"] >= cut.value else C.MET, **{c: d.get(c) for c in C.TRUST_COLUMNS}}
            for p, d in sorted(pat.items()) for kind, cut in cutoffs.items()]


# ---------------------------------------------------------------------------------------------
# 3.-4. metrics and differences (Ray tasks)
# ---------------------------------------------------------------------------------------------
def _reads_for(lake, run: str) -> list[dict]:
    """The reads this evaluation uses: imported ones, and assisted reads simulated for this run."""
    src = C.COL_READ_SOURCE
    return [r for r in lake.read(C.TABLE_READS).to_pylist()
            if not (r.get(src) or "").startswith(C.READ_SOURCE_SIMULATED) or r[src] == C.READ_SOURCE_SIMULATED + run]


def _raters(pat: dict, ps: list[str], cutoffs: dict, reads: list[dict], cohort: str, subgroup: str):
    """Every rater on the patients ``ps``: the model at each cutoff, each reader alone and assisted."""
    from gbmmet.evaluation import MODEL_AT, Rater, recut_applies, signed_confidence
    from gbmmet.stats import youden_cutoff

    index = np.array([pat[p]["index"] for p in ps])
    raters = []
    for kind, cut in cutoffs.items():
        raters.append(({"rater": C.MODEL_RATER, C.COL_ASSISTED: None, "cutoff_kind": kind},
                       Rater(MODEL_AT + kind, tuple(ps), (index >= cut.value).astype(int), index, None,
                             youden_cutoff if recut_applies(kind, cohort, subgroup) else None)))
    inside = set(ps)
    for reader in sorted({r[C.COL_READER_ID] for r in reads}):
        for assisted in (False, True):
            got = {r[C.COL_PATIENT_ID]: r for r in reads if r[C.COL_READER_ID] == reader
                   and r[C.COL_ASSISTED] == assisted and r[C.COL_PATIENT_ID] in inside}
            if not got:
                continue
            rp = sorted(got)
            calls = [got[p][C.COL_CALL] for p in rp]
            raters.append(({"rater": reader, C.COL_ASSISTED: assisted, "cutoff_kind": None},
                           Rater(reader + ("+assisted" if assisted else ""), tuple(rp),
                                 np.array([c == C.GBM for c in calls], int), None,
                                 signed_confidence(calls, [got[p][C.COL_CONFIDENCE] for p in rp]))))
    return raters


def _group_rows(group, labels: dict, raters, y_failed, settings_dict: dict, seed: int) -> list[dict]:
    """Ray task: the metrics rows of one cohort / subgroup, every rater in it."""
    from gbmmet.evaluation import (
        EvaluationSettings,
        confidence_auc_rows,
        intention_to_diagnose,
        metric_rows,
    )

    settings = EvaluationSettings.from_dict(settings_dict)
    rows = []
    for base, r in raters:
        y = np.array([labels[p] for p in r.patients], int)
        b = {"cohort": group.cohort, "subgroup": group.name, **base}
        rows += metric_rows(b, y, r.call, r.score, settings, names=group.metrics, seed=seed,
                            choose_cutoff=r.choose_cutoff, where=f"{group.cohort} {group.name} {r.name}")
        if r.signed is not None and "auc" in group.metrics:
            rows += confidence_auc_rows(b, y, r.call, r.signed, settings, seed)
        if base["rater"] == C.MODEL_RATER and group.name == "all" and len(y_failed):
            y_all, call_all = intention_to_diagnose(y, r.call, y_failed)
            itd = metric_rows(b, y_all, call_all, None, settings, names=("accuracy", "recall", "specificity"),
                              seed=seed, where=f"{group.cohort} intention to diagnose")
            rows += [{**x, "metric": x["metric"] + C.ITD_SUFFIX} for x in itd]
    return rows


def _difference_rows(cohort: str, labels: dict, raters, settings_dict: dict, seed: int) -> list[dict]:
    """Ray task: one cohort's paired differences, Holm-adjusted as one family."""
    from gbmmet.evaluation import EvaluationSettings, Rater, adjust_family, paired_differences

    settings = EvaluationSettings.from_dict(settings_dict)
    models = [r for base, r in raters if base["rater"] == C.MODEL_RATER]
    alone = {base["rater"]: r for base, r in raters if base["rater"] != C.MODEL_RATER and not base[C.COL_ASSISTED]}
    helped = {base["rater"]: r for base, r in raters if base["rater"] != C.MODEL_RATER and base[C.COL_ASSISTED]}
    rows = []
    at_cutoff = tuple(m for m in C.DIFFERENCE_METRICS if m != "auc")
    for reader, r in sorted(alone.items()):
        for m in models:  # the operating point at each cutoff
            rows += paired_differences(cohort, m, r, labels, settings, seed=seed, kind="model_vs_reader",
                                       names=at_cutoff)
        if models:  # AUC does not depend on the cutoff: once, as the model's index
            index = Rater(C.MODEL_RATER, models[0].patients, models[0].call, models[0].score)
            rows += paired_differences(cohort, index, r, labels, settings, seed=seed, kind="model_vs_reader",
                                       names=("auc",))
        if reader in helped:
            rows += paired_differences(cohort, helped[reader], r, labels, settings, seed=seed,
                                       kind="assisted_vs_unassisted")
    return adjust_family(rows, settings.primary)


# ---------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------
def _fingerprint(lake, rec: dict, reads: list[dict], settings: EvaluationSettings, scoring: str) -> str:
    attempts = sorted((r[C.COL_PATIENT_ID], r["attempt_id"], r["status"])
                      for r in lake.read(C.TABLE_PREPROCESS_RUNS,
                                         columns=[C.COL_PATIENT_ID, "attempt_id", "status"]).to_pylist())
    return _hash([EVALUATE_VERSION, scoring, sorted(tuple(str(v) for v in r.values()) for r in reads),
                  attempts, settings.to_dict()])


def run_evaluate(lake_root: str, run: str | None = None, *, settings: EvaluationSettings | None = None,
                 address: str | None = None, workers: int | None = None, show_progress: bool = True,
                 force: bool = False, cams: bool = True, predictions_only: bool = False,
                 gpus: float = 0.0, echo=print) -> EvaluateSummary:
    """Evaluate train run ``run`` (default: the lake's latest) and write the evaluation tables.
    ``gpus``: GPUs per ensemble actor of the scoring (0: CPU actors).

    An evaluation of the same run, reads, slices and settings is reused unless ``force``.
    ``predictions_only``: stop after ``patient_predictions`` (what simulated assisted readers
    need to see the model's calls); no statistics and no evaluation record are written.

    Raises:
        ConfigError: no such run, no slices / features to score, no internal test patients.
    """
    from pipelines.ray_runtime import init_ray
    from storage.lake import Lake

    settings = settings or EvaluationSettings()
    if gpus < 0:
        from gbmmet.errors import ConfigError

        raise ConfigError(f"The 'gpus' parameter must be >= 0. Got {gpus!r} instead.")
    t0 = time.perf_counter()
    lake = Lake(lake_root)
    rec = train_run_record(lake, run)
    run = rec["run_id"]
    init_ray(address=address, num_cpus=workers, shared=(lake_root,))
    scoring = score_run(lake, rec, cams=cams, force=force, show_progress=show_progress, gpus=gpus, echo=echo)
    snap = lake.pinned()  # what the evaluation reads (the slices scored): its record holds these versions
    reads = _reads_for(snap, run)
    fingerprint = _fingerprint(snap, rec, reads, settings, scoring)
    if predictions_only:
        pat = _patients(snap, run)
        cutoffs = _cutoffs(pat, echo)
        _calibrate(pat, settings, echo)
        lake.replace(C.TABLE_PATIENT_PREDICTIONS, _patients_table(run, pat, cutoffs), {"run_id": run})
        _after_commits(lake, [C.TABLE_PATIENT_PREDICTIONS])
        return EvaluateSummary(run, {k: c.value for k, c in cutoffs.items()}, len(pat),
                               sum(d["n_slices_scored"] for d in pat.values()), 0, 0, [], time.perf_counter() - t0)
    done = _record(snap, run, "evaluate")
    if done and not force and json.loads(done["config"]).get("fingerprint") == fingerprint:
        t = json.loads(done["timings"])
        echo(f"evaluate {run}: already evaluated with these inputs and settings; reusing it")
        return EvaluateSummary(run, t["cutoffs"], t["patients"], t["slices"], t["metrics_rows"],
                               t["differences_rows"], t["readers"], 0.0)
    started = dt.datetime.now(dt.UTC)
    summary, config, tables = _statistics(snap, rec, reads, settings, show_progress, echo)
    for name, table in tables.items():
        lake.replace(name, table, {"run_id": run})
    summary.seconds = time.perf_counter() - t0
    _write_record(lake, rec, summary, {**config, "fingerprint": fingerprint, "scoring": scoring}, started,
                  snap.versions())
    _after_commits(lake, [*tables, C.TABLE_RUNS])
    return summary


def _statistics(lake, rec: dict, reads: list[dict], settings: EvaluationSettings, show_progress: bool,
                echo) -> tuple[EvaluateSummary, dict, dict]:
    """The evaluation of train run ``rec`` from the lake (pinned): its summary, its settings and
    cutoffs (for the record), and the rows of every table it writes (table -> Arrow table)."""
    import pyarrow as pa

    from gbmmet import evaluation as E
    from pipelines import trust
    from storage import schemas as S

    run = rec["run_id"]
    pat = _patients(lake, run)
    cutoffs = _cutoffs(pat, echo)
    calibrator = _calibrate(pat, settings, echo)
    trusted, trust_metrics, trust_curves = trust.assess(lake, rec, pat, cutoffs, settings.trust, echo)
    attempts = lake.read(C.TABLE_PREPROCESS_RUNS).to_pylist()
    mrows, drows = _metrics_and_differences(pat, cutoffs, reads, attempts, settings, show_progress, echo)
    mrows += trust_metrics
    crows = list(trust_curves)
    for cohort in EVAL_SPLITS:
        ps, y, _ = _by_cohort(pat, cohort)
        if calibrator is None or not ps or cohort == C.VAL:
            continue
        rows, summ = E.calibration_rows(cohort, y, [pat[p]["prob"] for p in ps], settings)
        crows += [{"run_id": run, **r} for r in rows]
        mrows += [{"run_id": run, "cohort": cohort, "subgroup": "all", "rater": C.MODEL_RATER, "metric": k,
                   "value": summ[k], "n": summ["n"], "n_gbm": summ["n_gbm"], "ci_choice": None, "ci_method": None}
                  for k in ("brier", "calibration_intercept", "calibration_slope")]
    read_by = {r: {x[C.COL_PATIENT_ID] for x in reads if x[C.COL_READER_ID] == r and not x[C.COL_ASSISTED]}
               for r in {x[C.COL_READER_ID] for x in reads}}
    flow = [{"run_id": run, **r} for r in E.patient_flow(attempts, set(pat), read_by)]
    tables = {C.TABLE_PATIENT_PREDICTIONS: _patients_table(run, pat, cutoffs)}
    for name, rows, schema in ((C.TABLE_METRICS, mrows, S.METRICS), (C.TABLE_DIFFERENCES, drows, S.DIFFERENCES),
                               (C.TABLE_CALIBRATION, crows, S.CALIBRATION), (C.TABLE_FLOW, flow, S.PATIENT_FLOW)):
        tables[name] = pa.Table.from_pylist([{"run_id": run, **r} for r in rows], schema=schema)
    readers = sorted({r[C.COL_READER_ID] for r in reads})
    summary = EvaluateSummary(run, {k: c.value for k, c in cutoffs.items()}, len(pat),
                              sum(d["n_slices_scored"] for d in pat.values()), len(mrows), len(drows), readers)
    config = {"settings": settings.to_dict(), "cutoffs": {k: vars(c) for k, c in cutoffs.items()},
              "calibrator": calibrator, "ci_methods": list(settings.ci_methods) + [C.CI_DELONG],
              "trust": trusted}
    return summary, config, tables


def _metrics_and_differences(pat, cutoffs, reads, attempts, settings, show_progress, echo) -> tuple[list, list]:
    from gbmmet.errors import RunFailed
    from gbmmet.evaluation import subgroups, unprocessed_labels
    from pipelines.ray_runtime import run_batch

    labels = {p: int(d[C.COL_LABEL] == C.GBM) for p, d in pat.items()}
    sdict = settings.to_dict()
    jobs, diffs = [], []
    for ci, cohort in enumerate(EVAL_SPLITS):
        ps = sorted(p for p, d in pat.items() if d[C.COL_SPLIT] == cohort)
        if not ps:
            continue
        y_failed = unprocessed_labels(attempts, cohort)
        for gi, g in enumerate(subgroups(cohort, ps, pat)):
            raters = _raters(pat, list(g.patients), cutoffs, reads, cohort, g.name)
            jobs.append((f"metrics {cohort}/{g.name}", _group_rows,
                         (g, labels, raters, y_failed, sdict, settings.seed + 100 * ci + gi)))
        diffs.append((f"differences {cohort}", _difference_rows,
                      (cohort, labels, _raters(pat, ps, cutoffs, reads, cohort, "all"), sdict, settings.seed + ci)))
    report = run_batch([(k, (fn, *args)) for k, fn, args in jobs + diffs], _call, description="evaluate (statistics)",
                       use_ray=True, show_progress=show_progress)
    if report.failed:
        raise RunFailed("statistics failed: " + "; ".join(f"{o.key}: {o.error}" for o in report.failed))
    out = {o.key: o.value[0] for o in report.outcomes}
    for note in sorted({m for o in report.outcomes for m in o.value[1]}):
        echo("  note: " + note)
    drows = [r for k, *_ in diffs for r in out[k]]
    if drows and not any(r["is_primary"] for r in drows):
        p = settings.primary
        echo(f"  note: the primary comparison {p.a} - {p.b} ({p.metric}) matches no paired difference; "
             f"pairs here: {sorted({(r['a'], r['b']) for r in drows})}")
    return [r for k, *_ in jobs for r in out[k]], drows


def _call(fn, *args):
    """Ray task: ``fn(*args)`` and the warnings it raised (shown once by the driver, not by every worker)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn(*args)
    return value, sorted({str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)})


def _write_record(lake, rec: dict, summary: EvaluateSummary, config: dict, started, versions: dict) -> None:
    """The ``evaluate`` record of the run (replacing an earlier one), with the table ``versions``
    the evaluation read."""
    import pyarrow as pa

    from storage.schemas import RUNS

    lake.replace(C.TABLE_RUNS, pa.Table.from_pylist([{
        "run_id": summary.run_id, "kind": "evaluate", "mode": rec["mode"], "backbone_id": rec["backbone_id"],
        "backbone_reason": rec.get("backbone_reason"), "weights_sha256": rec.get("weights_sha256"),
        "config": json.dumps(config, default=str), "seeds": json.dumps({"resampling": config["settings"]["seed"]}),
        "versions": rec.get("versions"), "git_commit": rec.get("git_commit"), "started_at": started,
        "finished_at": dt.datetime.now(dt.UTC), "fold_checkpoints": rec["fold_checkpoints"],
        "seconds": summary.seconds,
        "timings": json.dumps({"cutoffs": summary.cutoffs, "patients": summary.patients, "slices": summary.slices,
                               "metrics_rows": summary.metrics_rows, "differences_rows": summary.differences_rows,
                               "readers": summary.readers, "total_s": summary.seconds}),
        "status": "ok", "lake_versions": json.dumps(versions, sort_keys=True)}], schema=RUNS),
        {"run_id": summary.run_id, "kind": "evaluate"})
