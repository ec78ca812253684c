"""QC panels and flags: the pictures of one real preprocessed patient, and each rule on small numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from gbmmet.preprocess import qc_flags, qc_panels, skull
from gbmmet.preprocess.params import PreprocessParams
from gbmmet.preprocess.patient import _fit_mask, preprocess_patient


@pytest.fixture(scope="module")
def tiny_patient(tiny_cohort, fast_params):
    d = tiny_cohort / "siteA" / "images" / "A0001"
    return preprocess_patient(str(d / "t1c.nii.gz"), str(d / "t2.nii.gz"), str(d / "roi.nii.gz"), fast_params,
                              patient_id="A0001", qc=True)


def test_a_patient_preprocessed_with_qc_gets_every_panel_under_200_kb(tiny_patient):
    pngs, measures = qc_panels.render_patient(tiny_patient)
    sizes = {name: len(b) for name, b in pngs.items()}
    print("panel bytes", sizes, "total", sum(sizes.values()))
    assert list(pngs) == list(qc_panels.PANELS)
    assert sum(sizes.values()) < qc_panels.MAX_PATIENT_BYTES
    assert measures["n_slices"] == len(tiny_patient.boxes) and measures["skull_stripped"] is False
    assert qc_panels.png_size(pngs[qc_panels.REG_AFTER]) == qc_panels.png_array(pngs[qc_panels.REG_AFTER]).shape[:2]


def test_without_qc_the_output_keeps_no_intermediates_and_render_refuses_it(tiny_cohort, fast_params):
    d = tiny_cohort / "siteA" / "images" / "A0002"
    out = preprocess_patient(str(d / "t1c.nii.gz"), str(d / "t2.nii.gz"), str(d / "roi.nii.gz"), fast_params)
    assert out.qc is None
    with pytest.raises(ValueError, match="qc=True"):
        qc_panels.render_patient(out)


def test_registration_panels_show_the_t2_edges_closer_to_the_ce_t1_after_registration(tiny_patient):
    qc = tiny_patient.qc
    k = qc_panels.mid_roi_slice([b.slice_index for b in tiny_patient.boxes])
    grid = qc_panels.plane_grid(qc.t2_raw, k)
    edge = qc_panels.edges(qc_panels.sample_plane(qc.t2_n4, grid))
    before = qc_panels.edges(qc_panels.sample_plane(qc.t1_iso, grid))
    after = qc_panels.edges(qc_panels.sample_plane(qc.t1_iso, grid, tiny_patient.registration))
    # share of T2 edge pixels with a CE-T1 edge within one pixel
    near = lambda e: np.mean(np.asarray(sitk.GetArrayFromImage(  # noqa: E731
        sitk.BinaryDilate(sitk.GetImageFromArray(e.astype(np.uint8)), [1, 1])))[edge] > 0)
    assert near(after) > near(before)


def test_the_bias_field_is_nan_outside_the_head_and_zero_median_inside():
    raw = np.array([[2.0, 4.0], [8.0, 0.0]], np.float32)
    field = qc_panels.log_field(raw, np.array([[1.0, 2.0, ], [2.0, 1.0]], np.float32), np.array([[1, 1], [1, 1]], bool))
    assert np.isnan(field[1, 1])  # raw 0: no field
    assert np.nanmedian(field) == pytest.approx(0.0)
    assert field[1, 0] - field[0, 0] == pytest.approx(math.log(4.0) - math.log(2.0))
    rgb = qc_panels.field_rgb(field)
    assert tuple(rgb[1, 1]) == (0, 0, 0) and tuple(rgb[0, 1]) == (255, 255, 255)


def test_the_histogram_panel_shades_the_stripe_and_marks_the_mode():
    edges = np.linspace(0.0, 100.0, 11)
    rgb = qc_panels.histogram_rgb(np.ones(10), edges, lower=40.0, upper=60.0, mode=50.0, size=(20, 100))
    top = rgb[0]  # above every bar
    assert tuple(top[45]) == qc_panels.STRIPE_COLOUR and tuple(top[10]) == (255, 255, 255)
    assert tuple(top[50]) == qc_panels.MODE_COLOUR or tuple(top[49]) == qc_panels.MODE_COLOUR


def test_the_roi_sheet_holds_at_most_eight_slices_ce_t1_over_t2():
    images = np.zeros((20, 3, 32, 32), np.uint8)
    images[:, 0] = 200
    sheet = qc_panels.roi_sheet(images, thumb=16)
    assert sheet.shape == (2 * 16 + 2, 8 * 18 - 2, 3)
    assert sheet[0, 0, 0] == 200 and sheet[20, 0, 0] == 0


def test_a_grey_panel_is_stored_as_one_channel_png_and_reads_back_the_same():
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 255, (40, 50, 1), dtype=np.uint8), 3, axis=-1)
    colour = grey.copy()
    colour[0, 0] = (255, 0, 0)
    assert len(qc_panels.png_bytes(grey)) < len(qc_panels.png_bytes(colour))
    assert np.array_equal(qc_panels.png_array(qc_panels.png_bytes(grey)), grey)


def test_mid_roi_slice_is_the_middle_of_the_sorted_slices():
    assert qc_panels.mid_roi_slice([7, 3, 5]) == 5
    assert qc_panels.mid_roi_slice([4, 1, 2, 3]) == 2
    with pytest.raises(ValueError, match="at least one slice"):
        qc_panels.mid_roi_slice([])


# -- flags ----------------------------------------------------------------------------------------
def test_a_value_far_above_the_cohort_median_is_flagged_and_one_inside_is_not():
    cohort = [1.0, 2.0, 3.0, 2.5, 1.5, 2.0, 3.0, 2.2]  # median 2.1, MAD 0.5 -> scale 0.74
    far = qc_flags.cohort_flag("x", 6.0, cohort, scale_floor=0.1)
    near = qc_flags.cohort_flag("x", 3.0, cohort, scale_floor=0.1)
    assert far.raised is True and far.z == pytest.approx((6.0 - 2.1) / (1.4826 * 0.5))
    assert near.raised is False


def test_a_one_sided_rule_ignores_values_below_and_a_two_sided_one_flags_them():
    cohort = [10.0, 10.5, 9.5, 10.2, 9.8, 10.1, 9.9, 10.0]
    assert qc_flags.cohort_flag("x", 2.0, cohort, scale_floor=0.01).raised is False
    assert qc_flags.cohort_flag("x", 2.0, cohort, scale_floor=0.01, two_sided=True).raised is True


def test_the_scale_floor_keeps_a_near_identical_cohort_from_flagging_small_differences():
    cohort = [0.5] * 10
    assert qc_flags.cohort_flag("x", 2.0, cohort, scale_floor=1.0).raised is False
    assert qc_flags.cohort_flag("x", 5.0, cohort, scale_floor=1.0).raised is True


def test_a_small_site_falls_back_to_every_site_and_a_small_lake_is_not_judged():
    site, everyone = [1.0, 1.1], [1.0, 1.1, 0.9, 1.0, 1.2, 1.0, 0.8, 1.1, 1.0]
    flag = qc_flags.cohort_flag("x", 9.0, site, everyone, scale_floor=0.1)
    assert flag.raised is True and "all sites" in flag.detail
    small = qc_flags.cohort_flag("x", 9.0, site, site, scale_floor=0.1)
    assert small.raised is None and "not judged" in small.detail


def test_an_roi_of_one_slice_is_flagged_and_two_are_not():
    assert qc_flags.roi_slices_flag(1).raised is True
    assert qc_flags.roi_slices_flag(2).raised is False


def test_a_pure_translation_displaces_every_point_by_its_length():
    t = sitk.Euler3DTransform()
    t.SetCenter((10.0, 0.0, 0.0))
    t.SetTranslation((9.0, 12.0, 0.0))
    points = np.random.default_rng(0).normal(size=(50, 3)) * 40
    assert qc_flags.registration_displacement_mm(t, points) == pytest.approx(15.0)
    assert math.isnan(qc_flags.registration_displacement_mm(t, np.zeros((0, 3))))


def test_the_relative_stripe_width_is_sd_over_mean():
    assert qc_flags.ws_relative_width(2.0, 200.0) == pytest.approx(0.01)
    assert math.isnan(qc_flags.ws_relative_width(None, 200.0)) and math.isnan(qc_flags.ws_relative_width(2.0, 0.0))


def test_patients_are_sorted_worst_first_by_raised_warnings_then_z():
    def flags(raised, z):
        return [qc_flags.Flag("roi_slices", raised, 1.0, "", z=z),
                qc_flags.Flag("skull_stripped", True, 1.0, "", severity=qc_flags.INFO)]

    order = sorted([("a", flags(False, 1.0)), ("b", flags(True, 0.5)), ("c", flags(False, 3.0))],
                   key=lambda p: qc_flags.badness(p[1]), reverse=True)
    assert [p for p, _ in order] == ["b", "c", "a"]


def test_flags_are_stored_as_json_without_nan():
    d = qc_flags.roi_slices_flag(3).to_dict()
    assert d["z"] is None and d["rule"] == qc_flags.RULES[qc_flags.FLAG_ROI_SLICES]


# -- skull-stripped images -----------------------------------------------------------------------
def test_an_image_with_exact_zeros_around_the_head_is_skull_stripped_and_one_with_noise_is_not(rng):
    head = np.zeros((10, 10), bool)
    head[3:7, 3:7] = True
    stripped = np.where(head, 100.0, 0.0)
    noisy = stripped + np.abs(rng.normal(0, 2, head.shape)) * ~head
    assert skull.background_zero_share(stripped, head) == 1.0 and skull.is_skull_stripped(1.0)
    assert skull.background_zero_share(noisy, head) < 0.05
    assert not skull.is_skull_stripped(skull.background_zero_share(noisy, head))
    assert not skull.is_skull_stripped(skull.background_zero_share(stripped, np.ones_like(head)))


def _sphere(radius_mm: float, background) -> tuple[sitk.Image, sitk.Image]:
    n, sp = 64, 2.0
    k, j, i = np.mgrid[:n, :n, :n]
    r = np.sqrt((i - n / 2) ** 2 + (j - n / 2) ** 2 + (k - n / 2) ** 2) * sp
    arr = np.where(r < radius_mm, 100.0 + (i % 3), background(r.shape)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([sp] * 3)
    roi = sitk.GetImageFromArray(((np.abs(i - 40) < 3) & (np.abs(j - 32) < 3) & (np.abs(k - 32) < 3)).astype(np.uint8))
    roi.CopyInformation(img)
    return img, roi


def test_a_skull_stripped_brain_is_recognised_and_eroded_like_a_head_where_whitestripe_is_fit(rng):
    params = PreprocessParams(iso_mm=2.0)
    brain, roi = _sphere(50.0, np.zeros)
    mask, share = _fit_mask(brain, roi, params, "p")
    head, roi = _sphere(50.0, lambda shape: np.abs(rng.normal(0, 5, shape)))
    eroded, share_head = _fit_mask(head, roi, params, "p")
    assert skull.is_skull_stripped(share) and not skull.is_skull_stripped(share_head)
    # deep brain only in both: the rim 6-11 mm inside the surface is eroded away (12 mm)
    n = 64
    k, j, i = np.mgrid[:n, :n, :n]
    r = np.sqrt((i - n / 2) ** 2 + (j - n / 2) ** 2 + (k - n / 2) ** 2) * 2.0
    rim, deep = (r > 39) & (r < 44), r < 30
    assert mask[rim].mean() < 0.05 and eroded[rim].mean() < 0.05
    assert mask[deep].mean() > 0.9 and eroded[deep].mean() > 0.9
