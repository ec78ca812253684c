"""Names shared by every part of the project: labels, splits, sites, sequences, columns.

Import them from here; never spell them out again elsewhere.
"""

from __future__ import annotations

# Diagnoses. GBM is the positive class throughout (as in the paper).
GBM = "GBM"
MET = "MET"
LABELS = (GBM, MET)

# Splits (design.md). ``external`` is a whole other site's cohort, never seen in training.
TRAIN = "train"
VAL = "val"
TEST = "test"
EXTERNAL = "external"
SPLITS = (TRAIN, VAL, TEST, EXTERNAL)
TEST_COHORTS = (TEST, EXTERNAL)  # cohorts that radiologists read

# Tumour location.
SUPRA = "supra"
INFRA = "infra"
LOCATIONS = (SUPRA, INFRA)

# Sex.
SEXES = ("M", "F")

# Primary tumour of a metastasis (the paper's categories). Empty for GBM.
PRIMARY_TUMORS = ("lung", "breast", "gi", "gu", "other")

# Ray custom resource that pins a site's patients to that site's nodes (`preprocess --pin-sites`):
# a node started with `ray start --resources '{"site:siteA": 1}'` runs siteA's patients.
SITE_RESOURCE_PREFIX = "site:"

# Sites of the synthetic cohorts (scanner profiles live in gbmmet.synth.sites).
SITE_INTERNAL = "siteA"
SITE_EXTERNAL = "siteB"

# MR sequences.
T1C = "t1c"
T2 = "t2"
SEQUENCES = (T1C, T2)

# Manifest columns (one row per patient). Paths are relative to the manifest's folder or absolute.
COL_PATIENT_ID = "patient_id"
COL_SITE = "site"
COL_SPLIT = "split"
COL_LABEL = "label"
COL_AGE = "age"
COL_SEX = "sex"
COL_LOCATION = "location"
COL_PRIMARY = "primary_tumor"
COL_T1C_PATH = "t1c_path"
COL_T2_PATH = "t2_path"
COL_ROI_PATH = "roi_path"
MANIFEST_COLUMNS = (
    COL_PATIENT_ID,
    COL_SITE,
    COL_SPLIT,
    COL_LABEL,
    COL_AGE,
    COL_SEX,
    COL_LOCATION,
    COL_PRIMARY,
    COL_T1C_PATH,
    COL_T2_PATH,
    COL_ROI_PATH,
)

# Reader reads (one row per patient, reader and assisted flag).
COL_READER_ID = "reader_id"
COL_ASSISTED = "assisted"
COL_CALL = "call"
COL_CONFIDENCE = "confidence"
COL_READ_SOURCE = "source"  # reads table: import:<file>@<path digest> or simulated:<run_id>
READ_SOURCE_IMPORT = "import:"
READ_SOURCE_SIMULATED = "simulated:"
READS_COLUMNS = (COL_READER_ID, COL_PATIENT_ID, COL_ASSISTED, COL_CALL, COL_CONFIDENCE)

# Files a site hands over (synthetic cohorts use these names).
MANIFEST_FILE = "manifest.csv"
READS_FILE = "reads.csv"

# Lake tables (design.md). Their Arrow schemas live in ``storage``.
TABLE_PATIENTS = "patients"
TABLE_SLICES = "slices"
TABLE_PREPROCESS_RUNS = "preprocess_runs"
TABLE_FEATURES = "features"
TABLE_SLICE_PREDICTIONS = "slice_predictions"
TABLE_PATIENT_PREDICTIONS = "patient_predictions"
TABLE_READS = "reads"
TABLE_METRICS = "metrics"
TABLE_RUNS = "runs"
TABLE_FOLDS = "folds"  # fold of every training patient, per run
TABLE_TRAIN_HISTORY = "train_history"  # per-epoch losses and accuracies, per run and fold
TABLE_DIFFERENCES = "differences"  # paired differences model - reader, assisted - unassisted
TABLE_CALIBRATION = "calibration"  # reliability and decision curves per cohort
TABLE_FLOW = "patient_flow"  # STARD: patients per stage, site and cohort
TABLE_CAMS = "cams"  # Grad-CAM of the ensemble per test / external slice
TABLE_ACCESS_LOG = "access_log"  # every patient the dashboard showed: who, when, which (its only write)
TABLE_QC_PANELS = "qc_panels"  # preprocessing QC pictures (PNG) per patient and panel, with its measures and flags
TABLES = (
    TABLE_PATIENTS,
    TABLE_SLICES,
    TABLE_PREPROCESS_RUNS,
    TABLE_FEATURES,
    TABLE_SLICE_PREDICTIONS,
    TABLE_PATIENT_PREDICTIONS,
    TABLE_READS,
    TABLE_METRICS,
    TABLE_RUNS,
    TABLE_FOLDS,
    TABLE_TRAIN_HISTORY,
    TABLE_DIFFERENCES,
    TABLE_CALIBRATION,
    TABLE_FLOW,
    TABLE_CAMS,
    TABLE_ACCESS_LOG,
    TABLE_QC_PANELS,
)
# The access log's columns (its patient and site columns are COL_PATIENT_ID and COL_SITE).
COL_USER = "user"  # the signed-in user's e-mail, or ACCESS_LOCAL_USER where the dashboard has no sign-in
COL_TIME = "time"
COL_PAGE = "page"
ACCESS_LOCAL_USER = "local"

# Evaluation: the model's two cutoffs on the predictive index, the CI methods of ``metrics``, and
# the metrics of the paper's table (GBM is the positive class).
CUTOFF_PAPER = "paper_youden_internal_test"  # Youden on the internal test ROC: optimistic there
CUTOFF_VAL = "val_youden_ensemble"  # Youden on the validation patients' ensemble index: no leakage
CUTOFF_KINDS = (CUTOFF_PAPER, CUTOFF_VAL)
CI_BCA = "bootstrap_bca"  # the default: stratified patient-level bootstrap, BCa
CI_PERCENTILE = "bootstrap_percentile"
CI_SUBSAMPLE = "paper_subsample90"  # the paper's scheme, kept as a reproduction: it under-covers
CI_DELONG = "delong"  # AUC only
CI_DEFAULT = CI_BCA
CI_METHODS = (CI_BCA, CI_PERCENTILE, CI_SUBSAMPLE)
PAPER_METRICS = ("accuracy", "precision", "recall", "f1", "auc")
# The headline table: the paper's metrics and specificity, in clinicians' order.
HEADLINE_METRICS = ("accuracy", "recall", "specificity", "precision", "f1", "auc")
DIFFERENCE_METRICS = ("accuracy", "recall", "specificity", "auc")
MODEL_RATER = "model"
# Reader AUC: from the binary calls (the paper's figure); from calls signed by confidence where
# the reads carry one (a separate metric, never in the paper's table).
AUC_CONFIDENCE = "auc_confidence"
# Intention-to-diagnose: a patient the system could not process counts as wrong.
ITD_SUFFIX = "_itd"

# Knowing when not to trust a call (``gbmmet.uncertainty``, ``gbmmet.ood``, ``gbmmet.conformal``,
# ``gbmmet.selective``): columns of ``patient_predictions``, the conformal levels, and the
# metric / curve names evaluation writes.
COL_INDEX_FOLD_SD = "index_fold_sd"  # sd (ddof 0) over the fold models of each fold's own predictive index
COL_ENTROPY_TOTAL = "entropy_total"  # bits: mean over slices of H(mean over folds of P(GBM))
COL_ENTROPY_ALEATORIC = "entropy_aleatoric"  # bits: mean over slices of the mean over folds of H(P(GBM))
COL_MUTUAL_INFORMATION = "mutual_information"  # bits: entropy_total - entropy_aleatoric (epistemic)
COL_OOD_SCORE = "ood_score"  # the larger of the distance and the sequence part (gbmmet.ood)
COL_OOD_THRESHOLD = "ood_threshold"
COL_OOD = "ood"
COL_OOD_DISTANCE = "ood_distance"  # backbone-feature distance to the training slices
COL_SEQUENCE_CONTRAST = "sequence_contrast"  # mean T2 - CE-T1 (WhiteStripe units) around the ROI; null: check off
COL_DEFERRED = "deferred"
COL_DEFER_REASON = "defer_reason"
CONFORMAL_LEVELS = (0.90, 0.95)
DEFERRAL_LEVEL = 0.90  # the conformal set the deferral rule reads
SET_SEPARATOR = "|"  # a two-label set is stored as "GBM|MET"; the empty set as ""
CI_WILSON = "wilson"  # shares (coverage, deferral, accuracy of kept calls): Wilson score interval
CURVE_RISK_COVERAGE = "risk_coverage"  # in ``calibration``: x share kept, y accuracy of kept calls, n kept


def set_column(level: float) -> str:
    """The ``patient_predictions`` column of the conformal set at ``level``: 0.9 -> ``set_90``."""
    return f"set_{round(level * 100)}"


def level_suffix(level: float) -> str:
    """A metric's level suffix: 0.95 -> ``_95``."""
    return f"_{round(level * 100)}"


#: The trust columns of ``patient_predictions`` (null where a run could not compute them).
TRUST_COLUMNS = (COL_INDEX_FOLD_SD, COL_ENTROPY_TOTAL, COL_ENTROPY_ALEATORIC, COL_MUTUAL_INFORMATION,
                 COL_OOD_SCORE, COL_OOD_THRESHOLD, COL_OOD, COL_OOD_DISTANCE, COL_SEQUENCE_CONTRAST,
                 *(set_column(level) for level in CONFORMAL_LEVELS),
                 COL_DEFERRED, COL_DEFER_REASON)
