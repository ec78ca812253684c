"""Synthetic multi-site cohorts of GBM and solitary metastasis (``gbmmet synth``).

Modules: ``anatomy`` (template), ``lesion`` (class distributions), ``sites`` (scanner profiles),
``cohort`` (presets, demographics), ``render`` (images; with ``blur``, ``sampling`` and
``scanner``), ``readers`` (simulated radiologists),
``writer`` (files), ``preview`` (montage), ``features`` (hand-made features for calibration),
``ood`` (out-of-distribution patients: meningioma, no lesion, swapped sequences; they never change
the GBM / MET cohort, and have their own ``OOD_VERSION``).
"""

#: Bumped whenever the generator draws different images for the same settings; recorded in
#: ``cohort.json``, so an older cohort folder is regenerated rather than mixed with new patients.
GENERATOR_VERSION = "4"
