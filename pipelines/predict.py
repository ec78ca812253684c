"""``gbmmet predict``: one new patient through the lake's preprocessing and a run's ensemble.

In one process, without Ray (one patient; latency matters): the preprocessing parameters the
lake's patients were processed with (``preprocess_runs.params``), the run's backbone and fold
models, the ensemble's majority vote per slice, the predictive index, the call at each of the
run's cutoffs (from its evaluation), per-slice probabilities per fold, and Grad-CAM overlays as
PNG files. Nothing is written to the lake.

The registration QC rule of ``gbmmet preprocess`` (``gbmmet.preprocess.qc``) is applied to the
patient against the lake's patients preprocessed with the same parameters (every site: the new
patient's site is not known) and returned with the prediction, so a CE-T1 from another patient
is reported before the call.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gbmmet import constants as C
from gbmmet.model.ensemble import ensemble_vote


@dataclass
class Prediction:
    run_id: str
    backbone_id: str
    n_slices: int
    predictive_index: float
    soft_index: float
    cutoffs: dict[str, float]
    calls: dict[str, str]
    slice_probs: np.ndarray  # (folds, slices)
    slice_index: list[int]
    slice_vote: np.ndarray  # the ensemble's call per slice (True: GBM)
    overlays: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    registration_qc: object = None  # gbmmet.preprocess.qc.RegistrationQC


def registration_check(lake, params, metric: float):
    """The registration QC rule (``gbmmet.preprocess.qc``) for a new patient's final Mattes value
    ``metric`` against the lake's ok patients preprocessed with ``params`` (every site)."""
    from gbmmet.preprocess import qc

    cols = [C.COL_PATIENT_ID, C.COL_SITE, "attempt_id", "status", "params_hash", "registration_metric",
            "registration_suspect"]
    latest = qc.latest_ok_runs(lake.read(C.TABLE_PREPROCESS_RUNS, columns=cols).to_pylist(), params.hash())
    return qc.registration_qc(metric, (), qc.cohort_values(latest.values()))


def _lake_params(lake):
    from gbmmet.errors import ConfigError
    from gbmmet.preprocess.params import PreprocessParams

    runs = lake.read(C.TABLE_PREPROCESS_RUNS, columns=["status", "params"]).to_pylist()
    used = Counter(r["params"] for r in runs if r["status"] == "ok" and r["params"])
    if not used:
        raise ConfigError(f"no preprocessed patients in {lake.uri}: the run's preprocessing is unknown")
    return PreprocessParams.from_dict(json.loads(used.most_common(1)[0][0]))


def run_predict(t1c: str, t2: str, roi: str, *, lake_root: str = "lake", run: str | None = None,
                out: str | Path | None = "predict-out", cam: bool = True, threads: int | None = None) -> Prediction:
    """Predict one patient. Raises PatientError subclasses for bad files (naming the file),
    ConfigError for a lake without a usable run."""
    import torch

    from gbmmet.model.ensemble import FoldEnsemble
    from gbmmet.preprocess.patient import preprocess_patient
    from pipelines.evaluate import train_run_record
    from pipelines.train import load_state
    from storage.lake import Lake

    sec: dict[str, float] = {}
    t = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    lake = Lake(lake_root)
    rec = train_run_record(lake, run)
    evals = [r for r in lake.read(C.TABLE_RUNS).to_pylist() if r["run_id"] == rec["run_id"] and r["kind"] == "evaluate"]
    cutoffs = json.loads(evals[-1]["timings"])["cutoffs"] if evals else {}
    params = _lake_params(lake)

    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads or os.cpu_count() or 1)
    out_p = preprocess_patient(t1c, t2, roi, params, patient_id="new patient")
    qc = registration_check(lake, params, out_p.registration_metric)
    sec["preprocess"] = time.perf_counter() - t
    t = time.perf_counter()

    ensemble = FoldEnsemble.from_run_record(rec, load_state)
    probs = ensemble.predict_proba(images=out_p.images)
    sec["model"] = time.perf_counter() - t

    _, mean_p, vote = ensemble_vote(probs)
    index = float(vote.mean())
    pred = Prediction(rec["run_id"], ensemble.info.id, len(vote), index, float(mean_p.mean()), cutoffs,
                      {k: (C.GBM if index >= v else C.MET) for k, v in cutoffs.items()}, probs,
                      [b.slice_index for b in out_p.boxes], vote, seconds=sec, registration_qc=qc)
    if cam and out is not None:
        t = time.perf_counter()
        from PIL import Image

        from gbmmet.render import overlay

        maps = ensemble.grad_cam(out_p.images)
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for i, b in enumerate(out_p.boxes):
            path = folder / f"slice{b.slice_index:03d}_cam.png"
            Image.fromarray(np.concatenate([np.repeat(out_p.images[i][0][..., None], 3, -1),
                                            overlay(out_p.images[i], maps[i])], axis=1)).save(path)
            pred.overlays.append(str(path))
        sec["cam"] = time.perf_counter() - t
    return pred
