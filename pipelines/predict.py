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
    trust: Trust | None = None

    def to_dict(self) -> dict:
        """``gbmmet predict --json``: the prediction as plain JSON types."""
        qc = self.registration_qc
        return {
            "run_id": self.run_id, "backbone_id": self.backbone_id, "n_slices": self.n_slices,
            "predictive_index": self.predictive_index, "soft_index": self.soft_index, "cutoffs": self.cutoffs,
            "calls": self.calls, "trust": self.trust.to_dict() if self.trust is not None else None,
            "registration_qc": None if qc is None else {"suspect": bool(qc.suspect), "description": qc.describe()},
            "slices": [{"slice_index": int(s), "prob_gbm_by_fold": [float(v) for v in self.slice_probs[:, i]],
                        "vote": C.GBM if self.slice_vote[i] else C.MET} for i, s in enumerate(self.slice_index)],
            "overlays": self.overlays, "seconds": self.seconds}


@dataclass
class Trust:
    """Whether to trust the call (definitions: ``gbmmet.trust``): the calibrated P(GBM), the
    conformal sets, the ensemble's uncertainty, the out-of-distribution score and flag, the
    deferral and its plain-language line. A part is None where the run's evaluation lacks it."""

    cutoff_kind: str | None
    call: str | None
    prob_gbm: float | None
    sets: dict[float, str]
    uncertainty: object  # gbmmet.uncertainty.PatientUncertainty
    ood_score: float | None
    ood_threshold: float | None
    ood: bool | None
    ood_distance: float | None
    sequence_contrast: float | None
    deferred: bool
    line: str

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {"cutoff_kind": self.cutoff_kind, "call": self.call, "prob_gbm": self.prob_gbm,
                "sets": {C.set_column(k): v for k, v in self.sets.items()}, "uncertainty": asdict(self.uncertainty),
                "ood_score": self.ood_score, "ood_threshold": self.ood_threshold, "ood": self.ood,
                C.COL_OOD_DISTANCE: self.ood_distance, C.COL_SEQUENCE_CONTRAST: self.sequence_contrast,
                "deferred": self.deferred, "explanation": self.line}


def registration_check(lake, params, metric: float):
    """The registration QC rule (``gbmmet.preprocess.qc``) for a new patient's final Mattes value
    ``metric`` against the lake's ok patients preprocessed with ``params`` (every site)."""
    from gbmmet.preprocess import qc

    cols = [C.COL_PATIENT_ID, C.COL_SITE, "attempt_id", "status", "params_hash", "registration_metric",
            "registration_suspect"]
    latest = qc.latest_ok_runs(lake.read(C.TABLE_PREPROCESS_RUNS, columns=cols).to_pylist(), params.hash())
    return qc.registration_qc(metric, (), qc.cohort_values(latest.values()))


def assess_trust(lake, rec: dict, evaluation: dict | None, images, probs, index: float, params) -> Trust:
    """The ``Trust`` of one new patient from run ``rec``'s evaluation record (its calibrator,
    conformal thresholds and trust settings) and the lake's backbone features (the detector is
    fitted again exactly as evaluation fitted it: on the training slices, its threshold on the
    validation patients; the sequence check reads ``images``, made with ``params``, at the scale
    the evaluation recorded)."""
    from gbmmet.calibration import IndexCalibrator
    from gbmmet.conformal import ClassConditionalConformal
    from gbmmet.evaluation import EvaluationSettings
    from gbmmet.ood import sequence_contrast
    from gbmmet.trust import DEFER, explain
    from gbmmet.uncertainty import patient_uncertainty
    from pipelines.features import embed
    from pipelines.trust import fit_ood

    config = json.loads(evaluation["config"]) if evaluation else {}
    settings = EvaluationSettings.from_dict(config.get("settings", {})).trust
    trusted = config.get("trust") or {}
    cutoffs = config.get("cutoffs") or {}
    kind = C.CUTOFF_VAL if C.CUTOFF_VAL in cutoffs else next(iter(cutoffs), None)
    call = (C.GBM if index >= cutoffs[kind]["value"] else C.MET) if kind else None
    prob = (float(IndexCalibrator.from_dict(config["calibrator"]).predict_proba(np.array([index]))[0])
            if config.get("calibrator") else None)
    sets = (ClassConditionalConformal.from_summary(trusted["conformal"]).predict_sets(np.array([index]))
            if trusted.get("conformal") else {})
    sets = {level: column[0] for level, column in sets.items()}
    uncertainty = patient_uncertainty(["new"] * probs.shape[1], probs)["new"]
    score = threshold = ood = distance = contrast = None
    stored = trusted.get("ood") or {}
    # the sequence check's scale as evaluation recorded it (none: evaluated before the check; off)
    detector = (fit_ood(lake, rec["backbone_id"], settings, echo=lambda _: None,
                        contrast_scale=stored.get("contrast_scale") or 0.0) if stored else None)
    if detector is not None:
        name = rec["backbone_id"].split("@")[0]
        weights = json.loads(rec["config"]).get("weights_file")
        features, _ = embed(images, name, weights)
        distance = detector.patient_distances(features, np.array(["new"] * len(features)))["new"]
        if detector.contrast_scale_ is not None:
            sp = params.slices
            contrast = sequence_contrast(images, sp.channels, sp.ws_range, ["new"] * len(images))["new"]
        score = detector.combine(distance, contrast)
        threshold, ood = float(detector.threshold_), bool(detector.flag(score))
    verdict, line = explain(sets.get(settings.deferral_level), settings.deferral_level, ood, score, threshold, call,
                            distance=distance, contrast=contrast)
    return Trust(kind, call, prob, sets, uncertainty, score, threshold, ood, distance, contrast, verdict == DEFER, line)


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
    evaluation = evals[-1] if evals else None
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
    t = time.perf_counter()
    pred.trust = assess_trust(lake, rec, evaluation, out_p.images, probs, index, params)
    sec["trust"] = time.perf_counter() - t
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
