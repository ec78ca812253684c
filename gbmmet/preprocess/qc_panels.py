"""QC panels: small pictures that show each preprocessing step worked, per patient.

Every panel is drawn on one axial plane: the T2's own slice through the middle of the ROI
(``mid_roi_slice``), over the T2's whole field of view, at a pixel size that makes its longer
side ``PLANE_PX`` pixels. The panels (``PANELS``, in the order a report shows them):

- ``registration_before``: the CE-T1 (after N4, on the 1 mm grid) where its header puts it, with
  the T2's edges over it (Canny on the N4-corrected T2): a shift between the two acquisitions shows
  as edges off the anatomy.
- ``registration_after``: the same with the CE-T1 through the fitted rigid transform: the edges
  must lie on the CE-T1's.
- ``bias_t1c``, ``bias_t2``: N4's multiplicative field, log(original) - log(corrected), minus its
  median inside the head, in a blue-white-red ramp from -``FIELD_SPAN`` to +``FIELD_SPAN``
  (about -26 % to +35 %); black outside the head. A smooth ramp is what N4 should find; anatomy
  in the field means it absorbed tissue contrast.
- ``hist_t1c``, ``hist_t2``: the histogram of the voxels WhiteStripe was fit on (0.5th to 99.5th
  percentile), its stripe shaded orange and its mode a blue line: the stripe must sit on the
  white-matter peak (T1: the brightest tissue peak; T2: the largest).
- ``roi_slices``: the stored ROI slices (CE-T1 row over T2 row), up to ``ROI_SHEET_SLICES`` of
  them evenly spread, ``ROI_THUMB`` pixels each: what the model sees.

Panels are uint8 RGB arrays (``draw_panels``), stored as PNG (``png_bytes``: greyscale where the
panel is grey, zlib level 6: optimize=True cost 4x the time for 5 % fewer bytes); a patient's
panels come to 75-95 KB on the tiny preset and BraTS (the tests hold them under
``MAX_PATIENT_BYTES``); drawing them takes 0.04-0.05 s, 1.5-3 % of preprocessing a patient.
"""

from __future__ import annotations

import io

import numpy as np
import SimpleITK as sitk

from gbmmet.render import grey_rgb

REG_BEFORE = "registration_before"
REG_AFTER = "registration_after"
BIAS_T1C = "bias_t1c"
BIAS_T2 = "bias_t2"
HIST_T1C = "hist_t1c"
HIST_T2 = "hist_t2"
ROI_SLICES = "roi_slices"
PANELS = (REG_BEFORE, REG_AFTER, BIAS_T1C, BIAS_T2, HIST_T1C, HIST_T2, ROI_SLICES)
#: What each panel shows, in words (the HTML report's and the dashboard's captions).
CAPTIONS = {
    REG_BEFORE: "CE-T1 as acquired (header position) with the T2's edges (magenta)",
    REG_AFTER: "CE-T1 registered onto the T2 with the T2's edges (magenta): they must lie on the anatomy",
    BIAS_T1C: "N4 field of the CE-T1, log scale about its median (blue -0.3 .. red +0.3): smooth, no anatomy",
    BIAS_T2: "N4 field of the T2, log scale about its median (blue -0.3 .. red +0.3): smooth, no anatomy",
    HIST_T1C: "CE-T1 histogram of the WhiteStripe fit voxels: stripe (orange) on the white-matter peak, mode (blue)",
    HIST_T2: "T2 histogram of the WhiteStripe fit voxels: stripe (orange) on the largest peak, mode (blue)",
    ROI_SLICES: "ROI slices as stored: CE-T1 (top row), T2 (bottom row)",
}

PLANE_PX = 160
FIELD_SPAN = 0.3
HIST_SIZE = (90, 240)  # height, width
ROI_SHEET_SLICES = 8
ROI_THUMB = 88
MAX_PATIENT_BYTES = 200_000
EDGE_COLOUR = (255, 0, 255)
STRIPE_COLOUR = (255, 150, 0)
MODE_COLOUR = (0, 90, 255)


def mid_roi_slice(slice_indices) -> int:
    """The T2 slice in the middle of the ROI's slices (the lower middle of an even count)."""
    ks = sorted(int(k) for k in slice_indices)
    if not ks:
        raise ValueError("The 'slice_indices' parameter must hold at least one slice. Got none instead.")
    return ks[(len(ks) - 1) // 2]


def plane_grid(t2: sitk.Image, k: int, max_px: int = PLANE_PX) -> sitk.Image:
    """A 2D-like grid (``w x h x 1``) on the T2's slice ``k``, over its whole in-plane field of view,
    square pixels sized so that the longer side has ``max_px`` pixels."""
    size = np.array(t2.GetSize()[:2], dtype=float)
    extent = size * np.array(t2.GetSpacing()[:2])
    px = float(extent.max() / max_px)
    n = np.maximum(1, np.round(extent / px)).astype(int)
    direction = np.array(t2.GetDirection()).reshape(3, 3)
    corner = np.array(t2.TransformContinuousIndexToPhysicalPoint([-0.5, -0.5, float(k)]))
    grid = sitk.Image([int(n[0]), int(n[1]), 1], sitk.sitkUInt8)
    grid.SetSpacing([px, px, float(t2.GetSpacing()[2])])
    grid.SetDirection(t2.GetDirection())
    grid.SetOrigin((corner + direction[:, 0] * px / 2 + direction[:, 1] * px / 2).tolist())
    return grid


def sample_plane(volume: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None) -> np.ndarray:
    """``volume`` sampled (linear, 0 outside it) on ``grid``, through ``transform`` (grid points to
    volume points), as a (rows, columns) float32 array."""
    out = sitk.Resample(volume, grid, transform or sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)[0]


def to_grey(plane: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.5) -> np.ndarray:
    """``plane`` windowed between percentiles of its non-zero pixels, as uint8 (0 stays 0)."""
    values = plane[plane > 0]
    if values.size == 0:
        return np.zeros(plane.shape, np.uint8)
    lo, hi = np.percentile(values, (lo_pct, hi_pct))
    scaled = (plane - lo) / max(float(hi - lo), 1e-6)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def edges(plane: np.ndarray, sigma_px: float = 1.0) -> np.ndarray:
    """Canny edges of ``plane`` (boolean): hysteresis between the 75th and 90th percentiles of the
    gradient magnitude over the non-zero pixels, after a Gaussian of ``sigma_px`` pixels."""
    img = sitk.GetImageFromArray(np.asarray(plane, dtype=np.float32))
    smooth = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(img, sigma_px))
    inside = smooth[plane > 0]
    if inside.size == 0 or not np.any(inside > 0):
        return np.zeros(plane.shape, bool)
    low, high = (float(v) for v in np.percentile(inside, (75, 90)))
    out = sitk.CannyEdgeDetection(img, lowerThreshold=low, upperThreshold=max(high, low + 1e-6),
                                  variance=[sigma_px ** 2] * 2)
    return sitk.GetArrayFromImage(out) > 0


def edge_overlay(grey: np.ndarray, edge: np.ndarray, colour=EDGE_COLOUR) -> np.ndarray:
    """RGB uint8: the grey uint8 plane with ``edge`` pixels painted ``colour``."""
    rgb = grey_rgb(grey)
    rgb[np.asarray(edge, bool)] = colour
    return rgb


def log_field(raw: np.ndarray, corrected: np.ndarray, head: np.ndarray) -> np.ndarray:
    """N4's log field log(raw) - log(corrected) where both are positive inside ``head``, minus its
    median there; NaN elsewhere."""
    ok = np.asarray(head, bool) & (raw > 0) & (corrected > 0)
    out = np.full(raw.shape, np.nan, np.float32)
    out[ok] = np.log(raw[ok]) - np.log(corrected[ok])
    if ok.any():
        out[ok] -= np.median(out[ok])
    return out


def field_rgb(field: np.ndarray, span: float = FIELD_SPAN) -> np.ndarray:
    """RGB uint8 of a log field: blue (-span) - white (0) - red (+span), black where NaN."""
    t = np.clip(np.nan_to_num(field, nan=0.0) / span, -1, 1)
    r = np.where(t < 0, 1 + t, 1.0)
    b = np.where(t > 0, 1 - t, 1.0)
    g = 1 - np.abs(t)
    rgb = (np.stack([r, g, b], axis=-1) * 255).round().astype(np.uint8)
    rgb[np.isnan(field)] = 0
    return rgb


def histogram_rgb(counts: np.ndarray, bin_edges: np.ndarray, lower: float, upper: float, mode: float,
                  size: tuple[int, int] = HIST_SIZE) -> np.ndarray:
    """RGB uint8 ``size`` (height, width): the histogram in dark grey bars on white, the stripe
    [``lower``, ``upper``] shaded orange behind them, the mode a blue line."""
    h, w = size
    counts = np.asarray(counts, float)
    lo, hi = float(bin_edges[0]), float(bin_edges[-1])
    x = lo + (np.arange(w) + 0.5) * (hi - lo) / w  # each pixel column's value
    which = np.clip(np.searchsorted(bin_edges, x, side="right") - 1, 0, len(counts) - 1)
    heights = np.round(counts[which] / max(counts.max(), 1.0) * (h - 4)).astype(int)
    rgb = np.full((h, w, 3), 255, np.uint8)
    rgb[:, (x >= lower) & (x <= upper)] = STRIPE_COLOUR
    rows = np.arange(h)[:, None]
    rgb[rows >= (h - heights)[None, :]] = (60, 60, 60)
    col = int(np.clip(np.round((mode - lo) / max(hi - lo, 1e-12) * w - 0.5), 0, w - 1))
    rgb[:, col] = MODE_COLOUR
    return rgb


def roi_sheet(images: np.ndarray, max_slices: int = ROI_SHEET_SLICES, thumb: int = ROI_THUMB) -> np.ndarray:
    """RGB uint8: the stored slices (n, channels, size, size) as a sheet, CE-T1 (channel 0) over T2
    (channel 1), up to ``max_slices`` evenly spread, each ``thumb`` pixels, 2 white pixels apart."""
    from PIL import Image

    n = len(images)
    if n == 0:
        raise ValueError("The 'images' parameter must hold at least one slice. Got none instead.")
    pick = np.unique(np.round(np.linspace(0, n - 1, min(n, max_slices))).astype(int))
    gap = 2
    sheet = np.full((2 * thumb + gap, len(pick) * (thumb + gap) - gap), 255, np.uint8)
    for c, i in enumerate(pick):
        for r in range(2):
            small = Image.fromarray(images[i, r]).resize((thumb, thumb), Image.BILINEAR)
            sheet[r * (thumb + gap):r * (thumb + gap) + thumb, c * (thumb + gap):c * (thumb + gap) + thumb] = small
    return grey_rgb(sheet)


def png_bytes(rgb: np.ndarray) -> bytes:
    """A panel as PNG (one grey channel where the three are equal: a third of the bytes)."""
    from PIL import Image

    rgb = np.asarray(rgb, np.uint8)
    grey = bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))
    img = Image.fromarray(rgb[..., 0] if grey else rgb)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a PNG, read from its header."""
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


def png_array(data: bytes) -> np.ndarray:
    """A panel's PNG back as RGB uint8 (tests, the dashboard)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def draw_panels(qc, transform: sitk.Transform, ws: dict, images: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Every panel of one patient, as RGB uint8 arrays keyed by ``PANELS``' names.

    ``qc``: the patient's ``gbmmet.preprocess.patient.QCInputs``; ``transform``: the registration
    (T2 points to CE-T1 points); ``ws``: its ``WhiteStripe`` fits by sequence ("t1c", "t2");
    ``images``: its stored slices; ``k``: the T2 slice the planes lie on (``mid_roi_slice``).
    """
    grid = plane_grid(qc.t2_raw, k)
    t2_plane = sample_plane(qc.t2_n4, grid)
    edge = edges(t2_plane)
    t2_raw_plane = sample_plane(qc.t2_raw, grid)
    head = _head(t2_raw_plane)
    out = {
        REG_BEFORE: edge_overlay(to_grey(sample_plane(qc.t1_iso, grid)), edge),
        REG_AFTER: edge_overlay(to_grey(sample_plane(qc.t1_iso, grid, transform)), edge),
        BIAS_T1C: field_rgb(log_field(sample_plane(qc.t1_raw, grid, transform),
                                      sample_plane(qc.t1_n4, grid, transform), head)),
        BIAS_T2: field_rgb(log_field(t2_raw_plane, t2_plane, head)),
        ROI_SLICES: roi_sheet(images),
    }
    for name, seq in ((HIST_T1C, "t1c"), (HIST_T2, "t2")):
        counts, bin_edges = qc.histograms[seq]
        w = ws[seq]
        out[name] = histogram_rgb(counts, bin_edges, w.lower, w.upper, w.mode)
    return {name: out[name] for name in PANELS}


def _head(plane: np.ndarray) -> np.ndarray:
    """The head on a plane (``bias.head_mask`` in 2D: Otsu, largest component, holes filled)."""
    from gbmmet.preprocess.bias import head_mask

    if not np.any(plane > 0):
        return np.zeros(plane.shape, bool)
    return sitk.GetArrayFromImage(head_mask(sitk.GetImageFromArray(np.asarray(plane, np.float32)))) > 0


def head_points(head: sitk.Image, step: int = 2) -> np.ndarray:
    """Physical points (n, 3) of every ``step``-th voxel along each axis of the mask ``head``
    that is inside it."""
    kji = np.argwhere(sitk.GetArrayViewFromImage(head)[::step, ::step, ::step] > 0) * step
    if kji.size == 0:
        return np.zeros((0, 3))
    origin = np.array(head.GetOrigin())
    m = np.array(head.GetDirection()).reshape(3, 3) * np.array(head.GetSpacing())
    return origin + kji[:, ::-1] @ m.T


def render_patient(out) -> tuple[dict[str, bytes], dict]:
    """One preprocessed patient's panels as PNG bytes (``PANELS``' order) and what was measured on
    it: ``displacement_mm`` (``qc_flags.registration_displacement_mm`` over the T2's head),
    ``background_zero_share`` and ``skull_stripped`` (``skull``), ``n_slices``, ``plane_slice_index``.

    Raises:
        ValueError: ``out`` (a ``PatientOutput``) was made without ``qc=True``.
    """
    from gbmmet.preprocess.qc_flags import finite_or_none, registration_displacement_mm

    if out.qc is None:
        raise ValueError("The 'out' parameter must come from preprocess_patient(..., qc=True). Got one without "
                         "its QC inputs instead.")
    k = mid_roi_slice([b.slice_index for b in out.boxes])
    pngs = {name: png_bytes(rgb) for name, rgb in draw_panels(out.qc, out.registration, out.ws, out.images, k).items()}
    measures = {"displacement_mm": registration_displacement_mm(out.registration, head_points(out.qc.head)),
                "background_zero_share": out.background_zero_share, "skull_stripped": out.skull_stripped,
                "n_slices": len(out.boxes), "plane_slice_index": k}
    return pngs, {key: finite_or_none(v) for key, v in measures.items()}
