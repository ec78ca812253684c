"""Each preprocessing step on its own, on tiny synthetic volumes with known truth."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from gbmmet import io
from gbmmet.errors import NormalizationError, RegistrationError
from gbmmet.preprocess import bias, register, resample, slices, whitestripe
from gbmmet.synth import lesion as L
from gbmmet.synth.writer import euler_from_record


def _rows(cohort, site="siteA"):
    with (cohort / site / "manifest.csv").open() as fh:
        return list(csv.DictReader(fh))


def _volume(shape=(30, 40, 50), spacing=(1.0, 1.0, 1.0)):
    img = sitk.Image(list(shape[::-1]), sitk.sitkFloat32)
    img.SetSpacing(spacing)
    return img


def test_n4_removes_a_multiplicative_bias_field(rng):
    # a smooth object with a strong linear bias along x
    z, y, x = np.mgrid[0:40, 0:48, 0:56].astype(np.float32)
    inside = ((z - 20) ** 2 / 18**2 + (y - 24) ** 2 / 21**2 + (x - 28) ** 2 / 25**2) < 1
    truth = np.where(inside, 100.0, 0.0) + rng.normal(0, 1.0, inside.shape)
    field = np.exp(0.4 * (x - 28) / 28)
    img = sitk.GetImageFromArray((np.abs(truth) * field + 1).astype(np.float32))
    img.SetSpacing((2.0, 2.0, 2.0))
    for backend in ("sitk", "ants"):
        out = sitk.GetArrayFromImage(bias.n4_correct(img, backend=backend, shrink=2))
        before = np.std(sitk.GetArrayFromImage(img)[inside]) / np.mean(sitk.GetArrayFromImage(img)[inside])
        after = np.std(out[inside]) / np.mean(out[inside])
        assert after < 0.5 * before, (backend, before, after)


def test_n4_rejects_an_unknown_backend():
    with pytest.raises(ValueError, match="'backend' parameter of n4_correct"):
        bias.n4_correct(_volume(), backend="fsl")


def test_resample_isotropic_keeps_the_field_of_view():
    img = _volume((20, 50, 50), (0.9, 0.9, 5.0))
    arr = np.zeros((20, 50, 50), np.float32)
    arr[8:12, 20:30, 20:30] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.9, 0.9, 5.0))
    img.SetOrigin((10.0, -5.0, 3.0))
    iso = resample.resample_isotropic(img, 1.0)
    assert iso.GetSpacing() == (1.0, 1.0, 1.0)
    assert iso.GetOrigin() == img.GetOrigin()
    assert iso.GetSize() == (45, 45, 96)  # floor(49 * 0.9) + 1, floor(19 * 5) + 1
    mask = resample.resample_isotropic(sitk.Cast(img, sitk.sitkUInt8), 1.0, mask=True)
    assert set(np.unique(sitk.GetArrayFromImage(mask))) == {0, 1}  # nearest: no blending
    lin = sitk.GetArrayFromImage(iso)
    assert 0 < lin.max() <= 1 and len(np.unique(lin)) > 2  # linear for images


def test_registration_recovers_the_true_misalignment_under_a_millimetre(tiny_cohort):
    errors = []
    for site in ("siteA", "siteB"):
        for row in _rows(tiny_cohort, site)[:3]:
            t1 = resample.resample_isotropic(io.read_image(tiny_cohort / site / row["t1c_path"]), 2.0)
            t2 = resample.resample_isotropic(io.read_image(tiny_cohort / site / row["t2_path"]), 2.0)
            truth_rec = json.loads((tiny_cohort / site / "truth" / row["patient_id"] / "truth.json").read_text())
            truth = euler_from_record(truth_rec["t2_to_t1c"])
            res = register.register_rigid(t2, t1, shrink=(2, 1), smoothing_mm=(2.0, 1.0))
            lab = io.read_image(tiny_cohort / site / "truth" / row["patient_id"] / "labels_t2.nii.gz")
            brain = np.argwhere(np.isin(sitk.GetArrayFromImage(lab), [L.LABEL_GM, L.LABEL_WM]))[::50]
            pts = [lab.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in brain]
            err = [np.linalg.norm(np.subtract(truth.TransformPoint(p), res.transform.TransformPoint(p))) for p in pts]
            before = [np.linalg.norm(np.subtract(truth.TransformPoint(p), p)) for p in pts]
            errors.append(np.mean(err))
            assert np.mean(before) > 1.0  # there was something to undo
            assert res.metric < -0.5
    assert np.mean(errors) < 1.0, errors
    assert max(errors) < 1.5, errors


def test_registration_is_deterministic(tiny_cohort):
    row = _rows(tiny_cohort)[0]
    t1 = resample.resample_isotropic(io.read_image(tiny_cohort / "siteA" / row["t1c_path"]), 2.0)
    t2 = resample.resample_isotropic(io.read_image(tiny_cohort / "siteA" / row["t2_path"]), 2.0)
    a = register.register_rigid(t2, t1, shrink=(2, 1), smoothing_mm=(2.0, 1.0))
    b = register.register_rigid(t2, t1, shrink=(2, 1), smoothing_mm=(2.0, 1.0))
    assert a.transform.GetParameters() == b.transform.GetParameters()
    assert a.metric == b.metric


def test_registration_refuses_images_that_do_not_overlap():
    a = _volume((20, 20, 20))
    b = _volume((20, 20, 20))
    b.SetOrigin((500.0, 0.0, 0.0))
    with pytest.raises(RegistrationError, match="patient X7: CE-T1 and T2 do not overlap"):
        register.register_rigid(a, b, patient_id="X7")


def test_whitestripe_equals_intensity_normalization(rng):
    from intensity_normalization.adapters.images import create_image
    from intensity_normalization.domain.models import Modality
    from intensity_normalization.normalizers.individual.whitestripe import WhiteStripeNormalizer

    # three tissues on T1 (CSF < GM < WM) and on T2 (WM < GM < CSF, GM the largest)
    labels = rng.choice(3, size=(20, 24, 28), p=[0.15, 0.5, 0.35])
    for modality, means in (("t1", (30.0, 70.0, 100.0)), ("t2", (100.0, 60.0, 45.0))):
        data = (np.take(np.array(means), labels) + rng.normal(0, 4.0, labels.shape)).astype(np.float32)
        mask = np.ones_like(labels, bool)
        mask[:2] = False
        ours = whitestripe.fit_whitestripe(data, mask, modality)
        ref = WhiteStripeNormalizer(modality=Modality.T1 if modality == "t1" else Modality.T2)
        ref.fit(create_image(data), create_image(mask.astype(np.float64)))
        assert ours.mean == pytest.approx(ref.mean, rel=1e-12)
        assert ours.std == pytest.approx(ref.std, rel=1e-12)
        expected = ref.transform(create_image(data)).get_data()
        np.testing.assert_allclose(ours.apply(data), expected, rtol=1e-5, atol=1e-4)
        # the stripe sits on white matter on T1 and on the largest tissue (GM) on T2
        target = means[2] if modality == "t1" else means[1]
        assert abs(ours.mean - target) < 4.0


def test_whitestripe_subsampled_kde_finds_the_same_mode(rng):
    data = rng.normal(100, 5, 400_000)
    full = whitestripe.fit_whitestripe(data, np.ones_like(data, bool), "t2")
    sub = whitestripe.fit_whitestripe(data, np.ones_like(data, bool), "t2", max_samples=20_000)
    assert sub.mean == pytest.approx(full.mean, abs=0.5)


def test_whitestripe_errors_are_clear():
    with pytest.raises(NormalizationError, match="no foreground voxel"):
        whitestripe.fit_whitestripe(np.ones(10), np.zeros(10, bool), "t1")
    with pytest.raises(ValueError, match="'modality' parameter must be one of"):
        whitestripe.fit_whitestripe(np.ones(10), np.ones(10, bool), "flair")


def test_roi_boxes_are_bounding_rectangles_per_slice():
    arr = np.zeros((6, 40, 50), np.uint8)
    arr[2, 10:20, 5:9] = 1
    arr[2, 30, 40] = 1  # a second blob on the same slice widens the box
    arr[4, 5:7, 5:7] = 1
    roi = sitk.GetImageFromArray(arr)
    roi.SetSpacing((0.5, 0.5, 5.0))
    boxes = slices.roi_boxes(roi)
    assert [b.slice_index for b in boxes] == [2, 4]
    b = boxes[0]
    assert (b.i_min, b.i_max, b.j_min, b.j_max) == (5, 40, 10, 30)
    assert b.side_mm == pytest.approx(max(36, 21) * 0.5)
    assert b.z_mm == pytest.approx(10.0)


def test_uint8_mapping_round_trips():
    ws = np.linspace(-200, 200, 1001, dtype=np.float32)
    v = slices.to_uint8(ws, -160.0, 160.0)
    assert v.dtype == np.uint8 and v.min() == 0 and v.max() == 255
    back = slices.from_uint8(v, -160.0, 160.0)
    inside = (ws > -160) & (ws < 160)
    assert np.abs(back[inside] - ws[inside]).max() <= 320 / 255 / 2 + 1e-4
