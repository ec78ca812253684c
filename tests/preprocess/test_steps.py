"""Each preprocessing step on its own, on tiny synthetic volumes with known truth."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from gbmmet import io
from gbmmet.errors import NormalizationError, RegistrationError
from gbmmet.preprocess import bias, qc_panels, register, resample, slices, whitestripe
from gbmmet.preprocess.params import PreprocessParams, RegistrationParams
from gbmmet.preprocess.patient import _unshrink_2x
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
    img, inside = _biased_head(rng)  # a smooth object with a strong linear bias along x
    for backend in ("sitk", "ants"):
        out = sitk.GetArrayFromImage(bias.n4_correct(img, backend=backend, shrink=2))
        before = np.std(sitk.GetArrayFromImage(img)[inside]) / np.mean(sitk.GetArrayFromImage(img)[inside])
        after = np.std(out[inside]) / np.mean(out[inside])
        assert after < 0.5 * before, (backend, before, after)


def _biased_head(rng):
    z, y, x = np.mgrid[0:40, 0:48, 0:56].astype(np.float32)
    inside = ((z - 20) ** 2 / 18**2 + (y - 24) ** 2 / 21**2 + (x - 28) ** 2 / 25**2) < 1
    truth = np.where(inside, 100.0, 0.0) + rng.normal(0, 1.0, inside.shape)
    img = sitk.GetImageFromArray((np.abs(truth) * np.exp(0.4 * (x - 28) / 28) + 1).astype(np.float32))
    img.SetSpacing((2.0, 2.0, 2.0))
    return img, inside


def test_n4_with_a_block_averaged_mask_and_a_coarse_field_removes_the_bias_as_well(rng):
    img, inside = _biased_head(rng)
    full = sitk.GetArrayFromImage(bias.n4_correct(img, shrink=2))
    fast = sitk.GetArrayFromImage(bias.n4_correct(img, shrink=2, mask_mm=4.0, field_mm=4.0))
    cv = lambda a: np.std(a[inside]) / np.mean(a[inside])  # noqa: E731
    assert cv(fast) < 0.1 * cv(sitk.GetArrayFromImage(img))  # 0.16 -> 0.012 (the noise alone: 0.01)
    assert cv(fast) == pytest.approx(cv(full), rel=0.05)
    ratio = fast[inside] / full[inside]  # N4's field has no fixed scale; WhiteStripe removes one
    assert np.percentile(np.abs(ratio / np.median(ratio) - 1), 99) < 0.005


def test_linear_upsampling_of_a_coarse_grid_equals_simpleitk_resampling(rng):
    img = sitk.Image([23, 17, 9], sitk.sitkFloat32)
    img.SetSpacing((0.9, 0.9, 5.0))
    img.SetOrigin((4.0, -3.0, 7.0))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    grid = bias.coarse_grid(img, 3.0)
    assert bias.block_factors(img, 3.0) == [3, 3, 1]
    coarse = sitk.GetImageFromArray(rng.normal(size=grid.GetSize()[::-1]).astype(np.float32))
    coarse.CopyInformation(grid)
    expected = sitk.GetArrayFromImage(sitk.Resample(coarse, img, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                    sitk.sitkFloat32))
    ours = bias.upsample_linear(sitk.GetArrayFromImage(coarse), img.GetSize()[::-1])
    np.testing.assert_allclose(ours, expected, atol=1e-6)


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


def test_an_image_already_on_the_isotropic_grid_comes_back_unchanged_as_float(rng):
    img = sitk.GetImageFromArray(rng.integers(0, 1000, (6, 7, 8)).astype(np.int16))
    img.SetOrigin((1.0, 2.0, 3.0))
    iso = resample.resample_isotropic(img, 1.0)
    ref = sitk.Image(img.GetSize(), sitk.sitkUInt8)
    ref.CopyInformation(img)
    resampled = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    assert iso.GetPixelID() == sitk.sitkFloat32 and iso.GetSize() == img.GetSize()
    assert iso.GetOrigin() == img.GetOrigin() and iso.GetSpacing() == img.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(iso), sitk.GetArrayFromImage(resampled))


def test_a_2x_block_mask_comes_back_on_the_full_grid_as_nearest_neighbour_resampling_does(rng):
    for shape in ((9, 10, 11), (8, 8, 8)):
        img = sitk.GetImageFromArray(rng.random(shape).astype(np.float32))
        img.SetSpacing((0.7, 1.0, 1.3))
        small = sitk.BinShrink(img, [2] * 3)
        mask = rng.random(small.GetSize()[::-1]) > 0.5
        m = sitk.GetImageFromArray(mask.astype(np.uint8))
        m.CopyInformation(small)
        expected = sitk.GetArrayFromImage(sitk.Resample(m, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                        sitk.sitkUInt8)) > 0
        np.testing.assert_array_equal(_unshrink_2x(mask, shape), expected)


def test_registration_recovers_the_true_misalignment_under_a_millimetre(tiny_cohort):
    errors = []
    for site in ("siteA", "siteB"):
        for row in _rows(tiny_cohort, site)[:3]:
            t1 = resample.resample_isotropic(io.read_image(tiny_cohort / site / row["t1c_path"]), 2.0)
            t2 = resample.resample_isotropic(io.read_image(tiny_cohort / site / row["t2_path"]), 2.0)
            truth_rec = json.loads((tiny_cohort / site / "truth" / row["patient_id"] / "truth.json").read_text())
            truth = euler_from_record(truth_rec["t2_to_t1c"])
            res = register.register_rigid(t2, t1, **_shipped_registration())
            lab = io.read_image(tiny_cohort / site / "truth" / row["patient_id"] / "labels_t2.nii.gz")
            brain = np.argwhere(np.isin(sitk.GetArrayFromImage(lab), [L.LABEL_GM, L.LABEL_WM]))[::50]
            pts = [lab.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in brain]
            err = [np.linalg.norm(np.subtract(truth.TransformPoint(p), res.transform.TransformPoint(p))) for p in pts]
            before = [np.linalg.norm(np.subtract(truth.TransformPoint(p), p)) for p in pts]
            errors.append(np.mean(err))
            assert np.mean(before) > 1.0  # there was something to undo
            assert res.metric < -0.5
    print("residual mm", np.round(errors, 3))
    assert np.mean(errors) < 1.0, errors
    assert max(errors) < 1.5, errors


def _shipped_registration() -> dict:
    """``register_rigid``'s settings as preprocessing runs it (``RegistrationParams``' defaults)."""
    r = RegistrationParams()
    return {"shrink": r.shrink, "smoothing_mm": r.smoothing_mm, "sampling": r.sampling, "bins": r.bins,
            "iterations": r.iterations, "min_step": r.min_step, "gradient_filter": r.gradient_filter,
            "sampling_strategy": r.sampling_strategy, "seed": r.seed, "threads": r.threads}


def test_registration_is_deterministic(tiny_cohort):
    row = _rows(tiny_cohort)[0]
    t1 = resample.resample_isotropic(io.read_image(tiny_cohort / "siteA" / row["t1c_path"]), 2.0)
    t2 = resample.resample_isotropic(io.read_image(tiny_cohort / "siteA" / row["t2_path"]), 2.0)
    a = register.register_rigid(t2, t1, **_shipped_registration())
    b = register.register_rigid(t2, t1, **_shipped_registration())
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


def test_the_binned_kde_finds_the_mode_of_the_exact_kde_on_tissue_mixtures(rng):
    from scipy.stats import gaussian_kde

    for _ in range(20):
        k = int(rng.integers(1, 4))
        n = int(rng.integers(5_000, 100_000))
        parts = [rng.normal(rng.uniform(0, 200), rng.uniform(2, 20), int(n * w)) for w in rng.dirichlet(np.ones(k))]
        values = np.concatenate(parts + [rng.uniform(0, 400, n // 50)])  # a tail, as lesions and vessels give
        grid = np.linspace(values.min(), values.max(), 80)
        exact = gaussian_kde(values)(grid)
        binned = whitestripe.binned_kde(values, grid, 16_384)
        assert np.abs(binned - exact).max() < 1e-4 * exact.max()
        assert np.argmax(binned) == np.argmax(exact)


def test_whitestripe_with_the_binned_kde_fits_the_same_stripe(rng):
    labels = rng.choice(3, size=(30, 40, 50), p=[0.15, 0.5, 0.35])
    for modality, means in (("t1", (30.0, 70.0, 100.0)), ("t2", (100.0, 60.0, 45.0))):
        data = (np.take(np.array(means), labels) + rng.normal(0, 4.0, labels.shape)).astype(np.float32)
        mask = np.ones_like(labels, bool)
        exact = whitestripe.fit_whitestripe(data, mask, modality, max_samples=20_000)
        binned = whitestripe.fit_whitestripe(data, mask, modality, max_samples=20_000,
                                             kde_bins=PreprocessParams().whitestripe.kde_bins)
        assert binned == exact


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


def test_a_record_made_before_the_faster_settings_reads_back_as_what_was_done_then():
    record = PreprocessParams().to_dict()
    for group, keys in (("n4", ("mask_mm", "field_mm")),
                        ("registration", ("min_step", "gradient_filter", "sampling_strategy")),
                        ("whitestripe", ("kde_bins",))):
        for key in keys:
            del record[group][key]
    old = PreprocessParams.from_dict(record)
    assert (old.n4.mask_mm, old.n4.field_mm) == (0.0, 0.0)
    assert (old.registration.min_step, old.registration.gradient_filter) == (1e-3, True)
    assert old.registration.sampling_strategy == "random"
    assert old.whitestripe.kde_bins is None
    assert PreprocessParams.from_dict(PreprocessParams().to_dict()) == PreprocessParams()


@pytest.mark.parametrize(("group", "change", "message"), [
    ("n4", {"field_mm": -1.0}, "'n4.field_mm' parameter must be >= 0"),
    ("n4", {"mask_mm": -1.0}, "'n4.mask_mm' parameter must be >= 0"),
    ("registration", {"min_step": 0.0}, "'registration.min_step' parameter must be > 0"),
    ("registration", {"sampling_strategy": "grid"}, "'registration.sampling_strategy' parameter must be"),
    ("whitestripe", {"kde_bins": 10}, "'whitestripe.kde_bins' parameter must be None or >= 80"),
])
def test_impossible_speed_settings_are_refused_by_name(group, change, message):
    from dataclasses import replace

    p = PreprocessParams()
    with pytest.raises(ValueError, match=message):
        replace(p, **{group: replace(getattr(p, group), **change)}).check()


def test_head_points_are_the_strided_voxels_inside_the_mask():
    arr = np.zeros((6, 6, 6), np.uint8)
    arr[2:6, 0:2, 4] = 1
    head = sitk.GetImageFromArray(arr)
    head.SetSpacing((2.0, 2.0, 2.0))
    head.SetOrigin((10.0, 0.0, 0.0))
    pts = qc_panels.head_points(head, step=2)
    # voxels (k, j, i) = (2, 0, 4) and (4, 0, 4): x = 10 + 4 * 2, y = 0, z = k * 2
    np.testing.assert_allclose(sorted(map(tuple, pts)), [(18.0, 0.0, 4.0), (18.0, 0.0, 8.0)])
