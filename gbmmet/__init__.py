"""gbmmet: glioblastoma vs solitary brain metastasis on CE-T1 and T2 MR.

The domain library: pure functions and small classes (reading images and manifests,
preprocessing, ROI slicing, synthetic cohorts, the model, statistics). It never imports Ray;
the Ray jobs live in ``pipelines``.
"""

__version__ = "0.1.0"
