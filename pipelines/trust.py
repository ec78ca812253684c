"""Evaluation's wiring of "when not to trust a call" (the rules: ``gbmmet.trust`` and the modules
it names): it reads the run's fold predictions and backbone features from the lake, calls the
pure functions, and adds to every evaluated patient its uncertainty, out-of-distribution score and
flag, conformal sets and deferral; it returns what the evaluation record keeps (the fitted
detector's and conformal sets' summaries) and each cohort's metric and curve rows.
"""

from __future__ import annotations

import json

import numpy as np

from gbmmet import constants as C
from pipelines.evaluate import EVAL_SPLITS, _by_cohort


def fold_probabilities(lake, run: str, splits) -> tuple[np.ndarray, np.ndarray]:
    """(patient id per slice, P(GBM) (folds, slices)) of run ``run``'s fold models on the slices
    of ``splits``, slices in patient / slice order. Training slices hold one fold (out of fold)."""
    import pyarrow.compute as pc

    t = lake.read(C.TABLE_SLICE_PREDICTIONS, columns=[C.COL_PATIENT_ID, "slice_index", "fold", "prob_gbm"],
                  filter=(pc.field("run_id") == run) & pc.field(C.COL_SPLIT).isin(list(splits))
                  & pc.field("fold").is_valid()).to_pandas()
    if t.empty:
        return np.array([], str), np.zeros((0, 0), np.float32)
    wide = t.pivot_table(index=[C.COL_PATIENT_ID, "slice_index"], columns="fold", values="prob_gbm",
                         aggfunc="first").sort_index()
    return wide.index.get_level_values(0).to_numpy(str), wide.to_numpy(np.float64).T


def _uncertainty(lake, run: str, pat: dict) -> None:
    from gbmmet.uncertainty import patient_uncertainty

    pids, probs = fold_probabilities(lake, run, EVAL_SPLITS)
    for p, u in (patient_uncertainty(pids, probs).items() if len(pids) else ()):
        if p in pat:
            pat[p].update({C.COL_INDEX_FOLD_SD: u.index_fold_sd, C.COL_ENTROPY_TOTAL: u.entropy_total,
                           C.COL_ENTROPY_ALEATORIC: u.entropy_aleatoric,
                           C.COL_MUTUAL_INFORMATION: u.mutual_information})


def slice_settings(lake) -> dict:
    """The slice settings (``SliceParams``: channels, WhiteStripe byte ranges) of every parameter
    set the lake's slices were made with, by ``params_hash``."""
    from gbmmet.preprocess.params import PreprocessParams

    runs = lake.read(C.TABLE_PREPROCESS_RUNS, columns=["params_hash", "params"]).to_pylist()
    return {r["params_hash"]: PreprocessParams.from_dict(json.loads(r["params"])).slices
            for r in runs if r["params_hash"] and r["params"]}


def _slice_contrasts(batch, *, settings: dict):
    """Ray Data map over stored slices: each slice's patient, index and ``contrast_sums``
    (``sum``, ``pixels``), decoded with the settings of the parameter set it was made with
    (``settings``: params hash -> (channels, WhiteStripe byte ranges))."""
    import pyarrow as pa

    from gbmmet.ood import contrast_sums
    from storage.codec import decode_images

    hashes = np.array(batch.column("params_hash").to_pylist(), dtype=object)
    sums, pixels = np.zeros(batch.num_rows), np.zeros(batch.num_rows)
    for h in dict.fromkeys(hashes):
        rows = np.flatnonzero(hashes == h)
        channels, ws_range = settings[h]
        sums[rows], pixels[rows] = contrast_sums(decode_images(batch.take(rows)), channels, ws_range)
    return pa.table({C.COL_PATIENT_ID: batch.column(C.COL_PATIENT_ID), "slice_index": batch.column("slice_index"),
                     "sum": sums, "pixels": pixels})


def sequence_contrasts(lake, splits) -> dict[str, float]:
    """Each patient's ``gbmmet.ood.sequence_contrast`` from its stored slices in ``splits``, each
    slice decoded with the settings it was made with.

    The slices are read and reduced to two numbers each by Ray Data tasks on the cluster
    (``Lake.ray_dataset``); the driver reads only which parameter set made each slice.

    Raises:
        ConfigError: a slice whose parameter set is not in ``preprocess_runs`` (named).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    from gbmmet.errors import ConfigError
    from gbmmet.ood import contrast_by_patient
    from pipelines.ray_runtime import quiet_ray_data

    splits = list(splits)
    made = lake.read(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID, C.COL_SPLIT, "params_hash"],
                     filter=pc.field(C.COL_SPLIT).isin(splits))
    if not made.num_rows:
        return {}
    settings = slice_settings(lake)
    for row in made.group_by(["params_hash"]).aggregate([(C.COL_PATIENT_ID, "min"), (C.COL_SPLIT, "min")]).to_pylist():
        if row["params_hash"] not in settings:
            raise ConfigError(f"slices of patient {row[C.COL_PATIENT_ID + '_min']} ({row[C.COL_SPLIT + '_min']}) were "
                              f"made with preprocessing parameters {row['params_hash']!r}, which preprocess_runs "
                              "does not hold: cannot read their intensities")
    quiet_ray_data()
    used = {h: (tuple(settings[h].channels), dict(settings[h].ws_range)) for h in made.column("params_hash").unique().to_pylist()}
    ds = lake.ray_dataset(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID, "slice_index", "params_hash", "channels", "height",
                                                   "width", "image"],
                          where={C.COL_SPLIT: splits})
    parts = ray.get(ds.map_batches(_slice_contrasts, batch_format="pyarrow", fn_kwargs={"settings": used})
                    .to_arrow_refs())
    t = pa.concat_tables([p for p in parts if p.num_rows]).sort_by([(C.COL_PATIENT_ID, "ascending"),
                                                                    ("slice_index", "ascending")])
    return contrast_by_patient(t.column("sum").to_numpy(), t.column("pixels").to_numpy(),
                               t.column(C.COL_PATIENT_ID).to_pylist())


def fit_ood(lake, backbone_id: str, settings, echo=print, contrast_scale: float | None = None,
            reference_contrast: dict[str, float] | None = None):
    """The out-of-distribution detector of ``backbone_id``'s features: fitted on the training
    slices, its threshold fixed on the validation patients, its sequence check scaled by their
    median contrast (``reference_contrast``: theirs, where the caller has it; by default read
    from their slices), or by ``contrast_scale``, where an evaluation recorded it. None (and a
    note) where either is missing."""
    from gbmmet.ood import OodDetector
    from pipelines.train import load_feature_matrix

    _, train = load_feature_matrix(lake, backbone_id, C.TRAIN)
    meta, val = load_feature_matrix(lake, backbone_id, C.VAL)
    if not len(train) or not len(val):
        echo(f"  note: no out-of-distribution flag: no {backbone_id} features of "
             f"{'training slices' if not len(train) else 'validation patients'} (run `gbmmet features`)")
        return None
    reference = (contrast_scale if contrast_scale is not None else
                 reference_contrast if reference_contrast is not None else sequence_contrasts(lake, (C.VAL,)))
    detector = OodDetector(settings.ood).fit(train, val, meta.column(C.COL_PATIENT_ID).to_numpy(), reference)
    if detector.contrast_scale_ is None and contrast_scale is None:
        echo("  note: no sequence check: " + ("the validation patients' median T2 - CE-T1 contrast is not positive"
                                              if detector.reference_contrast_ else
                                              "no validation slice has pixels inside the head to measure it"))
    return detector


def _ood(lake, rec: dict, pat: dict, settings, echo) -> dict | None:
    from pipelines.train import load_feature_matrix

    contrast = sequence_contrasts(lake, EVAL_SPLITS)  # one pass over the slices for all three cohorts
    val = {p: v for p, v in contrast.items() if pat.get(p, {}).get(C.COL_SPLIT) == C.VAL}
    detector = fit_ood(lake, rec["backbone_id"], settings, echo, reference_contrast=val)
    if detector is None:
        return None
    distances = dict(detector.reference_scores_)  # the validation patients: scored when fitting
    for split in (C.TEST, C.EXTERNAL):
        meta, X = load_feature_matrix(lake, rec["backbone_id"], split)
        if len(X):
            distances.update(detector.patient_distances(X, meta.column(C.COL_PATIENT_ID).to_numpy()))
    check = detector.contrast_scale_ is not None
    contrast = {**contrast, **detector.reference_contrast_} if check else {}
    for p, distance in distances.items():
        if p in pat:
            score = detector.combine(distance, contrast.get(p))
            pat[p].update({C.COL_OOD_SCORE: score, C.COL_OOD_THRESHOLD: detector.threshold_,
                           C.COL_OOD: bool(detector.flag(score)), C.COL_OOD_DISTANCE: distance,
                           C.COL_SEQUENCE_CONTRAST: contrast.get(p)})
    return detector.summary()


def _calibration_patients(lake, run: str, pat: dict, settings) -> tuple[np.ndarray, np.ndarray]:
    """(predictive index, 1 where GBM) of the patients that calibrate the conformal sets."""
    from gbmmet.evaluation import patient_scores

    if settings.calibration == "val":
        _, y, index = _by_cohort(pat, C.VAL)
        return index, y
    pids, probs = fold_probabilities(lake, run, (C.TRAIN,))
    if not len(pids):
        return np.zeros(0), np.zeros(0, int)
    prob = np.nanmax(probs, axis=0)  # one fold per training slice: the one that held it out
    scores = patient_scores(pids, prob >= 0.5, prob)
    labels = {r[C.COL_PATIENT_ID]: r[C.COL_LABEL]
              for r in lake.read(C.TABLE_PATIENTS, columns=[C.COL_PATIENT_ID, C.COL_LABEL]).to_pylist()}
    ps = sorted(p for p in scores if p in labels)
    return np.array([scores[p].index for p in ps]), np.array([labels[p] == C.GBM for p in ps], int)


def _conformal(lake, run: str, pat: dict, settings, echo) -> dict | None:
    from gbmmet.conformal import ClassConditionalConformal

    index, y = _calibration_patients(lake, run, pat, settings)
    if not len(y):
        echo(f"  note: no conformal sets: no {settings.calibration} patients to calibrate them")
        return None
    conformal = ClassConditionalConformal(settings.levels).fit(index, y)
    for note in conformal.notes_:
        echo("  note: conformal sets: " + note)
    ps = sorted(pat)
    sets = conformal.predict_sets(np.array([pat[p]["index"] for p in ps]))
    for level, column in sets.items():
        for p, s in zip(ps, column, strict=True):
            pat[p][C.set_column(level)] = s
    return {**conformal.summary(), "calibration": settings.calibration, "n_calibration": int(len(y))}


def decision_cutoff(cutoffs: dict):
    """The cutoff the deferral rule and the risk-coverage curve use: the leakage-free one."""
    return cutoffs.get(C.CUTOFF_VAL) or cutoffs[C.CUTOFF_PAPER]


def assess(lake, rec: dict, pat: dict, cutoffs: dict, settings, echo=print) -> tuple[dict, list[dict], list[dict]]:
    """Add the trust columns to every patient of ``pat`` (in place); return the record's part
    (detector and conformal summaries, the cutoff used) and the ``metrics`` and ``calibration``
    rows of every cohort (without ``run_id``)."""
    from gbmmet.trust import cohort_rows

    run = rec["run_id"]
    _uncertainty(lake, run, pat)
    ood = _ood(lake, rec, pat, settings, echo)
    conformal = _conformal(lake, run, pat, settings, echo)
    cut = decision_cutoff(cutoffs)
    mrows, crows = [], []
    for cohort in EVAL_SPLITS:
        ps = sorted(p for p, d in pat.items() if d[C.COL_SPLIT] == cohort)
        if not ps:
            continue
        calls = [C.GBM if pat[p]["index"] >= cut.value else C.MET for p in ps]
        y = [int(pat[p][C.COL_LABEL] == C.GBM) for p in ps]
        sets = {lv: [pat[p][C.set_column(lv)] for p in ps] for lv in settings.levels} if conformal else {}
        entropy = [pat[p].get(C.COL_ENTROPY_TOTAL, np.nan) for p in ps]
        rows, curve, defer = cohort_rows(calls, y, sets, [pat[p].get(C.COL_OOD) for p in ps], entropy, settings)
        if defer is not None:
            for p, d, why in zip(ps, defer.deferred, defer.reasons, strict=True):
                pat[p].update({C.COL_DEFERRED: bool(d), C.COL_DEFER_REASON: why})
        base = {"cohort": cohort, "subgroup": "all", "rater": C.MODEL_RATER, C.COL_ASSISTED: None,
                "ci_choice": None}
        mrows += [{**base, "cutoff_kind": cut.kind if not r["metric"].startswith("conformal") else None, **r}
                  for r in rows]
        crows += [{"cohort": cohort, **r} for r in curve]
    return {"ood": ood, "conformal": conformal, "cutoff_kind": cut.kind}, mrows, crows
