"""Preprocessing steps, each a pure function on an image (SimpleITK image or array).

``bias`` (N4), ``resample`` (1 mm isotropic), ``register`` (rigid CE-T1 onto T2),
``whitestripe`` (intensity normalisation), ``slices`` (ROI slices), ``patient`` (one patient
through all of them), ``params`` (the typed, hashed parameters).
"""
