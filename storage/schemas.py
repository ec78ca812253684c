"""Arrow schemas of every lake table (design.md). One place; writers and the catalog use them.

``slices`` stores each ROI slice as raw bytes: ``channels x height x width`` uint8 in C order
(channel, row, column), the channels and the fixed WhiteStripe-to-uint8 mapping named in the
schema's metadata and in ``preprocess_runs.params``. Hive partitions: ``slices`` by site and
split (those two columns come from the folder names, not the files).
"""

from __future__ import annotations

import pyarrow as pa

from gbmmet import constants as C

PATIENTS = pa.schema([
    pa.field(C.COL_PATIENT_ID, pa.string(), nullable=False),  # pseudonymised
    pa.field(C.COL_SITE, pa.string(), nullable=False),
    pa.field(C.COL_SPLIT, pa.string(), nullable=False),
    pa.field(C.COL_LABEL, pa.string(), nullable=False),
    pa.field(C.COL_AGE, pa.int16()),
    pa.field(C.COL_SEX, pa.string()),
    pa.field(C.COL_LOCATION, pa.string()),
    pa.field(C.COL_PRIMARY, pa.string()),
    pa.field("n_slices", pa.int32()),
    pa.field("input_hash", pa.string()),
    pa.field("params_hash", pa.string()),
    pa.field("preprocessed_at", pa.timestamp("us", tz="UTC")),
])

SLICE_METADATA = {
    b"image_dtype": b"uint8",
    b"image_layout": b"channels x height x width, C order (channel, row, column); rows anterior->posterior, columns patient right->left",
}

SLICES = pa.schema([
    pa.field(C.COL_PATIENT_ID, pa.string(), nullable=False),
    pa.field(C.COL_LABEL, pa.string(), nullable=False),
    pa.field("slice_index", pa.int32(), nullable=False),  # along the LPS-oriented T2's slice axis
    pa.field("z_mm", pa.float32()),  # superior-inferior position of the slice (LPS z)
    pa.field("roi_i_min", pa.int32()),
    pa.field("roi_i_max", pa.int32()),
    pa.field("roi_j_min", pa.int32()),
    pa.field("roi_j_max", pa.int32()),
    pa.field("crop_mm", pa.float32()),  # side of the square crop
    pa.field("channels", pa.int8()),
    pa.field("height", pa.int16()),
    pa.field("width", pa.int16()),
    pa.field("image", pa.binary(), nullable=False),
    pa.field("params_hash", pa.string()),
], metadata=SLICE_METADATA)

PREPROCESS_RUNS = pa.schema([
    pa.field(C.COL_PATIENT_ID, pa.string(), nullable=False),
    pa.field(C.COL_SITE, pa.string()),
    # the manifest's split and label, so that patients who failed still count in the patient flow
    # and the intention-to-diagnose metrics (null in lakes preprocessed before they were recorded)
    pa.field(C.COL_SPLIT, pa.string()),
    pa.field(C.COL_LABEL, pa.string()),
    pa.field("attempt_id", pa.string(), nullable=False),
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("status", pa.string(), nullable=False),  # ok / failed
    pa.field("error_kind", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("read_s", pa.float32()),
    pa.field("n4_s", pa.float32()),
    pa.field("resample_s", pa.float32()),
    pa.field("register_s", pa.float32()),
    pa.field("whitestripe_s", pa.float32()),
    pa.field("slices_s", pa.float32()),
    pa.field("total_s", pa.float32()),
    pa.field("registration_metric", pa.float64()),
    pa.field("ws_t1c_mean", pa.float64()),
    pa.field("ws_t1c_sd", pa.float64()),
    pa.field("ws_t2_mean", pa.float64()),
    pa.field("ws_t2_sd", pa.float64()),
    pa.field("n_slices", pa.int32()),
    pa.field("params_hash", pa.string()),
    pa.field("input_hash", pa.string()),
    # hash of each input file's real path, byte size and mtime_ns and of the manifest row, from
    # os.stat only: the re-run skip key (pipelines.preprocess.input_stamp); null before it existed
    pa.field("input_stamp", pa.string()),
    pa.field("params", pa.string()),  # JSON of the full preprocessing parameters
    pa.field("versions", pa.string()),  # JSON: gbmmet, SimpleITK, numpy, ...
    pa.field("ray_node", pa.string()),  # the Ray node that ran the attempt (null: recorded by the driver)
    # input accepted but questionable: JSON list of {"kind", "message"} (gbmmet.errors.InputWarning)
    pa.field("warnings", pa.string()),
    # registration QC: the rule (preprocess_runs.warnings says which) flagged this patient
    pa.field("registration_suspect", pa.bool_()),
])

FEATURES = pa.schema([
    pa.field(C.COL_PATIENT_ID, pa.string(), nullable=False),
    pa.field(C.COL_SITE, pa.string(), nullable=False),
    pa.field(C.COL_SPLIT, pa.string(), nullable=False),
    pa.field(C.COL_LABEL, pa.string(), nullable=False),
    pa.field("slice_index", pa.int32(), nullable=False),
    pa.field("weights_sha256", pa.string(), nullable=False),
    pa.field("params_hash", pa.string(), nullable=False),  # preprocessing parameters of the slice
    pa.field("vector", pa.list_(pa.float32()), nullable=False),
])

FOLDS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field(C.COL_PATIENT_ID, pa.string(), nullable=False),
    pa.field("fold", pa.int8(), nullable=False),
])

TRAIN_HISTORY = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("fold", pa.int8(), nullable=False),
    pa.field("epoch", pa.int32(), nullable=False),
    pa.field("train_loss", pa.float64()),
    pa.field("train_acc", pa.float64()),
    pa.field("val_loss", pa.float64()),  # on the fold's held-out patients
    pa.field("val_acc", pa.float64()),
    pa.field("attempt", pa.int16()),  # 0 unless a worker failed and the fold resumed from a checkpoint
])

SLICE_PREDICTIONS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field(C.COL_PATIENT_ID, pa.string(), nullable=False),
    pa.field(C.COL_SITE, pa.string()),
    pa.field(C.COL_SPLIT, pa.string()),
    pa.field("slice_index", pa.int32(), nullable=False),
    pa.field("model", pa.string(), nullable=False),  # fold0..fold4, or an ensemble name
    pa.field("fold", pa.int8()),
    pa.field("prob_gbm", pa.float32(), nullable=False),
    pa.field("vote", pa.string()),
])

RUNS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("mode", pa.string()),
    pa.field("backbone_id", pa.string()),
    pa.field("backbone_reason", pa.string()),  # why this backbone (auto says which and why)
    pa.field("weights_sha256", pa.string()),
    pa.field("config", pa.string()),  # JSON: enough to repeat the run
    pa.field("seeds", pa.string()),
    pa.field("versions", pa.string()),
    pa.field("git_commit", pa.string()),
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("fold_checkpoints", pa.string()),  # JSON: fold -> checkpoint path / URI
    pa.field("seconds", pa.float64()),
    pa.field("timings", pa.string()),  # JSON: seconds per fold, data loading, in all
    pa.field("status", pa.string()),
    pa.field("lake_versions", pa.string()),  # JSON: table -> the Delta version this run read
])

PATIENT_PREDICTIONS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field(C.COL_PATIENT_ID, pa.string(), nullable=False),
    pa.field(C.COL_SITE, pa.string()),
    pa.field(C.COL_SPLIT, pa.string()),
    pa.field(C.COL_LABEL, pa.string()),
    pa.field("n_slices", pa.int32()),
    pa.field("predictive_index", pa.float64()),  # share of slices the ensemble (majority vote) calls GBM
    pa.field("soft_index", pa.float64()),  # mean over slices of the folds' mean P(GBM)
    # P(GBM) from the predictive index: a logistic fit on the validation patients only (runs.config
    # of the evaluation holds the fit); null where the run has no validation patients of both classes
    pa.field("prob_gbm", pa.float64()),
    pa.field("cutoff_kind", pa.string(), nullable=False),  # paper_youden_internal_test / val_youden_ensemble
    pa.field("cutoff", pa.float64()),
    pa.field(C.COL_CALL, pa.string()),  # GBM where predictive_index >= cutoff
    # Knowing when not to trust the call (definitions: gbmmet.uncertainty, gbmmet.ood,
    # gbmmet.conformal, gbmmet.selective); null where the run could not compute them
    pa.field(C.COL_INDEX_FOLD_SD, pa.float64()),  # sd over the fold models of their own indices
    pa.field(C.COL_ENTROPY_TOTAL, pa.float64()),  # bits; total = aleatoric + mutual information
    pa.field(C.COL_ENTROPY_ALEATORIC, pa.float64()),
    pa.field(C.COL_MUTUAL_INFORMATION, pa.float64()),  # the epistemic part: the folds disagree
    pa.field(C.COL_OOD_SCORE, pa.float64()),  # max(ood_distance, sequence part on its scale)
    pa.field(C.COL_OOD_THRESHOLD, pa.float64()),  # fixed on validation patients only
    pa.field(C.COL_OOD, pa.bool_()),  # ood_score > ood_threshold
    pa.field(C.COL_OOD_DISTANCE, pa.float64()),  # backbone-feature distance to the training slices
    # mean T2 - CE-T1 in WhiteStripe units over the ROI crops' pixels inside the head (< 0: sequences
    # swapped?); null where the sequence check was off (gbmmet.ood)
    pa.field(C.COL_SEQUENCE_CONTRAST, pa.float64()),
    # the conformal set at each level (set_90, set_95): "GBM", "MET", "GBM|MET" or "" (empty)
    *[pa.field(C.set_column(level), pa.string()) for level in C.CONFORMAL_LEVELS],
    pa.field(C.COL_DEFERRED, pa.bool_()),  # defer to the readers: not one label at 90 %, or ood
    pa.field(C.COL_DEFER_REASON, pa.string()),  # why, in words; null where not deferred
])

READS = pa.schema([
    pa.field(C.COL_READER_ID, pa.string(), nullable=False),
    pa.field(C.COL_PATIENT_ID, pa.string(), nullable=False),  # pseudonymised
    pa.field(C.COL_ASSISTED, pa.bool_(), nullable=False),
    pa.field(C.COL_CALL, pa.string(), nullable=False),  # GBM / MET
    pa.field(C.COL_CONFIDENCE, pa.int16()),  # 1 (guess) .. 5 (certain), optional
    # where the read came from: "import:<file name>@<digest of its full path>", or "simulated:<run_id>" for a synthetic
    # cohort's assisted reads, which depend on that run's model calls (null in older lakes: imported)
    pa.field(C.COL_READ_SOURCE, pa.string()),
])

METRICS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("cohort", pa.string(), nullable=False),  # val / test / external (/ train: out-of-fold)
    pa.field("subgroup", pa.string(), nullable=False),  # all, location=supra, primary=lung, ...
    pa.field("rater", pa.string(), nullable=False),  # model, or a reader id
    pa.field(C.COL_ASSISTED, pa.bool_()),  # readers: with the model's result; null for the model
    pa.field("cutoff_kind", pa.string()),  # the model's cutoff; null for readers
    pa.field("metric", pa.string(), nullable=False),
    pa.field("value", pa.float64()),
    pa.field("ci_low", pa.float64()),
    pa.field("ci_high", pa.float64()),
    pa.field("ci_method", pa.string()),  # what made the interval: bootstrap_bca, bootstrap_percentile, paper_subsample90, delong
    # the CI asked for (one row per metric and choice); differs from ci_method where BCa was
    # undefined (a resample without a GBM call, a constant statistic) and percentile stands in
    pa.field("ci_choice", pa.string()),
    pa.field("n", pa.int32()),  # patients
    pa.field("n_gbm", pa.int32()),
    pa.field("n_resamples", pa.int32()),
    pa.field("n_degenerate", pa.int32()),  # resamples left out: one class, or the metric undefined
    pa.field("tp", pa.int32()),
    pa.field("fp", pa.int32()),
    pa.field("tn", pa.int32()),
    pa.field("fn", pa.int32()),
])

DIFFERENCES = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("cohort", pa.string(), nullable=False),
    pa.field("kind", pa.string()),  # model_vs_reader / assisted_vs_unassisted
    pa.field("a", pa.string(), nullable=False),  # model@<cutoff kind>, reader1+assisted, ...
    pa.field("b", pa.string(), nullable=False),  # reader1, ...
    pa.field("metric", pa.string(), nullable=False),  # accuracy, recall, specificity, auc, auc_confidence
    pa.field("n", pa.int32()),  # patients both rated
    pa.field("n_gbm", pa.int32()),
    pa.field("estimate_a", pa.float64()),
    pa.field("estimate_b", pa.float64()),
    pa.field("diff", pa.float64()),  # a - b
    pa.field("ci_low", pa.float64()),  # Newcombe (proportions) / DeLong (AUC) / paired BCa (re-chosen cutoff)
    pa.field("ci_high", pa.float64()),
    pa.field("ci_method", pa.string()),
    pa.field("test", pa.string()),  # mcnemar (on all / GBMs / METs) or delong
    pa.field("statistic", pa.float64()),
    pa.field("p", pa.float64()),  # unadjusted
    pa.field("p_holm", pa.float64()),  # Holm-adjusted over the cohort's family
    pa.field("family_size", pa.int32()),
    pa.field("is_primary", pa.bool_()),  # the comparison named in the evaluation's settings
    pa.field("note", pa.string()),  # which scores and test were used
])

CALIBRATION = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("cohort", pa.string(), nullable=False),
    pa.field("curve", pa.string(), nullable=False),  # reliability / decision
    pa.field("x", pa.float64()),  # mean predicted P(GBM) of the bin / threshold probability
    pa.field("y", pa.float64()),  # observed share of GBM in the bin / the model's net benefit
    pa.field("n", pa.int32()),  # patients in the bin / in the cohort
    pa.field("treat_all", pa.float64()),  # decision curve: net benefit of calling every patient GBM
    pa.field("treat_none", pa.float64()),  # decision curve: 0
])

PATIENT_FLOW = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("cohort", pa.string(), nullable=False),  # the manifest's split
    pa.field(C.COL_SITE, pa.string()),
    pa.field("stage", pa.string(), nullable=False),  # in_manifest, preprocessed, failed, evaluated, read
    pa.field("detail", pa.string()),  # failed: the error kind; read: the reader
    pa.field("n", pa.int32()),
])

CAMS = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field(C.COL_PATIENT_ID, pa.string(), nullable=False),
    pa.field(C.COL_SITE, pa.string()),
    pa.field(C.COL_SPLIT, pa.string()),
    pa.field("slice_index", pa.int32(), nullable=False),
    pa.field("height", pa.int16()),
    pa.field("width", pa.int16()),
    pa.field("cam", pa.binary(), nullable=False),  # height x width uint8, 0..255 = map 0..1, row-major
], metadata={b"cam": b"ensemble Grad-CAM (mean of the folds' maps), bilinear to the slice grid at half resolution"})

# Written by the dashboard only, one row per patient shown (``dashboards.common.log_patient_view``);
# keyed by pseudonym like every patient table, so ``gbmmet lake forget`` erases a patient's views too.
ACCESS_LOG = pa.schema([
    pa.field(C.COL_USER, pa.string(), nullable=False),  # the signed-in e-mail, or "local" without sign-in
    pa.field(C.COL_TIME, pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field(C.COL_PAGE, pa.string(), nullable=False),  # the page that showed the patient
    pa.field(C.COL_PATIENT_ID, pa.string(), nullable=False),  # the pseudonym
    pa.field(C.COL_SITE, pa.string()),
    pa.field("run_id", pa.string()),  # the run whose evaluation the page showed
])

# One row per patient and QC panel of its latest successful preprocessing attempt (replaced with
# its slices): ``gbmmet.preprocess.qc_panels`` draws them, ``gbmmet qc`` and the dashboard's QC page
# show them with the flags of ``gbmmet.preprocess.qc_flags``.
QC_PANELS = pa.schema([
    pa.field(C.COL_PATIENT_ID, pa.string(), nullable=False),
    pa.field(C.COL_SITE, pa.string()),
    pa.field(C.COL_SPLIT, pa.string()),
    pa.field("attempt_id", pa.string(), nullable=False),  # the preprocess_runs row it belongs to
    pa.field("params_hash", pa.string()),
    pa.field("panel", pa.string(), nullable=False),  # gbmmet.preprocess.qc_panels.PANELS
    pa.field("height", pa.int16()),
    pa.field("width", pa.int16()),
    pa.field("png", pa.binary(), nullable=False),
    # JSON, the same on every row of the patient: what the task measured (registration shift in mm,
    # the T2's share of zeros outside the head, skull_stripped, n_slices, the panels' plane) ...
    pa.field("measures", pa.string()),
    # ... and the flags judged on the patient alone (ROI slices, skull-stripped): a list of
    # {"name", "raised", "value", "detail", "rule", ...}; the cohort's flags are judged when shown
    pa.field("flags", pa.string()),
])

SCHEMAS: dict[str, pa.Schema] = {
    C.TABLE_PATIENTS: PATIENTS,
    C.TABLE_SLICES: SLICES,
    C.TABLE_PREPROCESS_RUNS: PREPROCESS_RUNS,
    C.TABLE_FEATURES: FEATURES,
    C.TABLE_FOLDS: FOLDS,
    C.TABLE_TRAIN_HISTORY: TRAIN_HISTORY,
    C.TABLE_SLICE_PREDICTIONS: SLICE_PREDICTIONS,
    C.TABLE_RUNS: RUNS,
    C.TABLE_PATIENT_PREDICTIONS: PATIENT_PREDICTIONS,
    C.TABLE_READS: READS,
    C.TABLE_METRICS: METRICS,
    C.TABLE_DIFFERENCES: DIFFERENCES,
    C.TABLE_CALIBRATION: CALIBRATION,
    C.TABLE_FLOW: PATIENT_FLOW,
    C.TABLE_CAMS: CAMS,
    C.TABLE_ACCESS_LOG: ACCESS_LOG,
    C.TABLE_QC_PANELS: QC_PANELS,
}

#: Partition columns per table (Delta partitions, hive-style folders, in order); they are
#: columns of the Delta table, after the schema's own.
PARTITIONS: dict[str, tuple[str, ...]] = {
    C.TABLE_SLICES: (C.COL_SITE, C.COL_SPLIT),
    C.TABLE_FEATURES: ("backbone",),  # the backbone id: name@weights-sha256 prefix
}
