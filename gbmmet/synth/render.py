"""Render one synthetic patient: CE-T1 and T2 in their native geometry, ROI, truth.

The chain for one patient (each step's parameters are in ``TISSUE`` and ``sites``):

1. anatomy: the template's tissue fractions (``anatomy``), with the lesion's parts drawn in
   (``lesion``): lesion replaces tissue; oedema replaces grey / white matter.
2. contrast: each compartment gets its relative intensity per sequence (``TISSUE``), jittered per
   patient by 3 %; lesion parts get textured (heterogeneous enhancement, necrosis, oedema).
3. pose: the patient's head in the scanner differs from the template by a random affine
   (rotations sd 4 degrees, pitch sd 6, isotropic scale sd 4 %, 2 % per axis, shift sd 4 mm) and
   a mild smooth deformation (a displacement field on a 12 mm grid, smoothed, sd 1.5 mm).
4. acquisition, per sequence: slice-profile blur (Gaussian, FWHM = voxel size), sampling onto the
   site's native grid (its voxel size, matrix, axis order and flips); CE-T1 additionally through
   the rigid misalignment between the two sequences (the patient moved between them);
   multiplicative bias field (a smooth quadratic log-field); Rician noise; the scanner's gain
   (site scale times a per-patient factor, sd 10 %) and offset; stored as int16.
5. ROI on the T2: a rectangle per axial slice where the mass is seen (>= 10 mm^2), around the mass
   and its T2 hyperintensity, with jittered margins (2-8 mm) like a hand-drawn box.

The truth kept (``--truth``): label maps of tissues and lesion parts on both native grids
(``lesion.PART_NAMES``), the rigid transform that maps T2 physical points to CE-T1 physical points
(what a registration with T2 fixed and CE-T1 moving should recover), and the lesion's parameters.

Generator version 4 draws the same images as version 3 but for the random draws of noise, gain
and bias field (same distributions), at about a quarter of the CPU (``bench/synth.py``):

- blur (``blur``): a patient's image on the template is kept as tissue levels plus the lesion's
  box, and blurred by linearity from tissue fractions blurred once per process;
- sampling (``sampling``): the pose is computed exactly on a lattice of native voxels and
  interpolated in between; torch's ``grid_sample`` samples the template a slab of slices at a
  time, and each slab gets its bias field, noise, gain and rounding while in cache (``scanner``);
- truth label maps are sampled only when asked for (``--truth``); the ROI needs only the block of
  the T2 grid that can see the lesion's box (``sampling.lesion_block``);
- the lesion (``lesion.rasterize_lesion``) is drawn where it can reach, with exact distances by
  Maurer's algorithm and its smooth fields by banded matrix products;
- the files are gzipped by ISA-L (``writer``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from gbmmet.constants import T1C, T2, TEST_COHORTS
from gbmmet.synth import lesion as L
from gbmmet.synth.anatomy import Anatomy, load_anatomy
from gbmmet.synth.blur import (
    TISSUES,
    TemplateImage,
    blurred_template,
    blurred_tissues,
    slice_profile,
)
from gbmmet.synth.cohort import (
    STREAM_ANATOMY,
    STREAM_LESION,
    STREAM_READERS,
    STREAM_ROI,
    STREAM_SCANNER,
    PatientSpec,
    Preset,
    patient_rng,
)
from gbmmet.synth.readers import simulate_reads
from gbmmet.synth.sampling import NativeSampler, lesion_block, torch_threads
from gbmmet.synth.scanner import ScannerSignal
from gbmmet.synth.sites import Acquisition, SiteProfile, get_site, scaled

#: Relative intensities per compartment: CE-T1 relative to white matter, T2 relative to CSF.
#: CE-T1 (post-gadolinium 3D T1): WM > GM > CSF; enhancing tumour brighter than WM; necrosis and
#: oedema dark. T2: CSF > GM > WM; oedema bright (its level is a lesion parameter); necrosis
#: near fluid; enhancing tumour intermediate. Skull (cortical bone) dark on both; scalp (fat)
#: bright on T1 and fairly bright on T2 (fast spin echo).
TISSUE = {
    T1C: {"csf": 0.25, "gm": 0.68, "wm": 1.0, "skull": 0.08, "scalp": 0.95, "edema": 0.60,
          "necrosis": 0.30},
    T2: {"csf": 1.0, "gm": 0.52, "wm": 0.38, "skull": 0.05, "scalp": 0.60, "enhancing": 0.55,
         "necrosis": 0.90},
}
TISSUE_JITTER = 0.03
ROI_MIN_AREA_MM2 = 10.0
FOV_SUPERIOR_SHIFT_MM = 8.0

_AXES = {"LR": (1.0, 0.0, 0.0), "AP": (0.0, 1.0, 0.0), "SI": (0.0, 0.0, 1.0)}


def native_grid(acq: Acquisition, center: np.ndarray) -> sitk.Image:
    """An empty image with the acquisition's geometry, centred on ``center`` (LPS mm)."""
    direction = np.array([np.multiply(_AXES[a], f) for a, f in zip(acq.axes, acq.flip, strict=True)]).T
    extent = np.asarray(acq.spacing) * (np.asarray(acq.size) - 1) / 2.0
    origin = np.asarray(center) - direction @ extent
    img = sitk.Image([int(s) for s in acq.size], sitk.sitkUInt8)
    img.SetSpacing([float(s) for s in acq.spacing])
    img.SetDirection([float(d) for d in direction.ravel()])
    img.SetOrigin([float(o) for o in origin])
    return img


def _rotation(angles_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _pose(rng: np.random.Generator, anatomy: Anatomy) -> tuple[sitk.Transform, np.ndarray]:
    """template <- scanner transform for this patient, and the head centre in the scanner."""
    center = np.asarray(anatomy.head_center)
    angles = rng.normal(0.0, [6.0, 4.0, 4.0])  # pitch (about LR), roll, yaw
    scale = rng.normal(1.0, 0.04) * rng.normal(1.0, 0.02, 3)
    shift = rng.normal(0.0, 4.0, 3)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(center.tolist())
    affine.SetMatrix((_rotation(angles) @ np.diag(scale)).ravel().tolist())
    affine.SetTranslation(shift.tolist())

    # Mild smooth deformation: a coarse random displacement field, smoothed, sd 1.5 mm.
    ref = anatomy.reference
    coarse = 12.0
    size = [int(math.ceil(n * s / coarse)) + 3 for n, s in zip(ref.GetSize(), ref.GetSpacing(), strict=True)]
    comps = []
    for _ in range(3):
        noise = rng.normal(size=size[::-1])
        noise = ndimage.gaussian_filter(noise, 1.0)
        noise *= 1.5 / max(noise.std(), 1e-9)
        comps.append(noise)
    field = sitk.GetImageFromArray(np.stack(comps, axis=-1).astype(np.float64), isVector=True)
    field.SetSpacing([coarse] * 3)
    field.SetDirection(ref.GetDirection())
    start = np.asarray(ref.GetOrigin()) - np.asarray(ref.GetDirection()).reshape(3, 3) @ np.full(3, coarse)
    field.SetOrigin(start.tolist())
    deform = sitk.DisplacementFieldTransform(field)
    # The head centre in the scanner frame: where the affine sends the template's centre from.
    inverse = affine.GetInverse()
    head_scanner = np.asarray(inverse.TransformPoint(center.tolist()))
    return sitk.CompositeTransform([deform, affine]), head_scanner


def _misalignment(rng: np.random.Generator, profile: SiteProfile, center: np.ndarray) -> sitk.Euler3DTransform:
    """T2 frame <- CE-T1 frame: the patient's motion between the two acquisitions."""
    rot = np.clip(rng.normal(0.0, profile.misalign_rot_deg, 3), -2.5 * profile.misalign_rot_deg,
                  2.5 * profile.misalign_rot_deg)
    trans = np.clip(rng.normal(0.0, profile.misalign_trans_mm, 3), -2.5 * profile.misalign_trans_mm,
                    2.5 * profile.misalign_trans_mm)
    t = sitk.Euler3DTransform()
    t.SetCenter(center.tolist())
    t.SetRotation(*np.deg2rad(rot).tolist())
    t.SetTranslation(trans.tolist())
    return t


class TruthLabels:
    """The truth label maps on both native grids, made when first asked for and kept.

    ``make(seq)`` draws the map of sequence ``seq`` (``T1C`` or ``T2``); only ``--truth`` writes
    them, so a cohort without truth never pays for them.
    """

    def __init__(self, make: Callable[[str], sitk.Image]):
        self._make = make
        self._maps: dict[str, sitk.Image] = {}

    def __call__(self, seq: str) -> sitk.Image:
        if seq not in self._maps:
            self._maps[seq] = self._make(seq)
        return self._maps[seq]

    def swapped(self) -> TruthLabels:
        """The same maps with the two sequences exchanged."""
        return TruthLabels(lambda seq: self(T2 if seq == T1C else T1C))


@dataclass(frozen=True, eq=False)
class SyntheticPatient:
    spec: PatientSpec
    lesion: L.LesionParams
    t1c: sitk.Image
    t2: sitk.Image
    roi: sitk.Image
    truth_labels: TruthLabels
    t2_to_t1c: sitk.Euler3DTransform
    reads: list[dict]
    roi_slices: list[int]

    @property
    def labels_t1c(self) -> sitk.Image:
        """Truth labels on the CE-T1 grid (drawn on first use)."""
        return self.truth_labels(T1C)

    @property
    def labels_t2(self) -> sitk.Image:
        """Truth labels on the T2 grid (drawn on first use)."""
        return self.truth_labels(T2)


def _native_image(arr: np.ndarray, grid: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(grid)
    return img


def intensity_and_labels(anatomy: Anatomy, parts: L.LesionParts, lesion: L.LesionParams,
                          rng: np.random.Generator, mass_t2: float | None = None,
                          drawn: Anatomy | None = None) -> tuple[dict[str, TemplateImage], np.ndarray]:
    """Relative intensities of both sequences and the truth labels on the template grid.

    ``lesion`` needs only ``enhancement``, ``nodularity`` and ``edema_t2``; ``mass_t2`` replaces
    the T2 level of the enhancing part (``TISSUE``), for lesions other than GBM / MET. ``drawn``
    is the anatomy inside the lesion's box where the lesion changed it (a mass pushing the brain
    aside); outside the box it must equal ``anatomy``.
    """
    jit = {seq: {k: v * (1.0 + rng.normal(0.0, TISSUE_JITTER)) for k, v in tab.items()}
           for seq, tab in TISSUE.items()}
    a = anatomy
    d = anatomy if drawn is None else drawn
    box = parts.box
    gm, wm, csf = d.gm[box], d.wm[box], d.csf[box]
    m = parts.enhancing + parts.necrosis
    e = parts.edema
    gm2, wm2, csf2 = gm * (1 - e) * (1 - m), wm * (1 - e) * (1 - m), csf * (1 - m)
    ed = e * (gm + wm) * (1 - m)
    tex = parts.texture
    enh_t1 = lesion.enhancement * (1.0 + 0.06 * (1.0 + lesion.nodularity) * tex)
    images = {}
    for seq in (T1C, T2):
        t = jit[seq]
        edema_level = t["edema"] if seq == T1C else lesion.edema_t2 * (1.0 + 0.04 * tex)
        if seq == T1C:
            enh_level = enh_t1
        else:
            enh_level = (t["enhancing"] if mass_t2 is None else mass_t2) * (1.0 + 0.05 * tex)
        lesion_img = (csf2 * t["csf"] + gm2 * t["gm"] + wm2 * t["wm"] + ed * edema_level
                      + parts.enhancing * enh_level + parts.necrosis * t["necrosis"] * (1.0 + 0.05 * tex))
        # Lesions stay inside the intracranial space, so skull and scalp keep their values.
        inside = (lesion_img + a.skull[box] * t["skull"] + a.scalp[box] * t["scalp"]).astype(np.float32)
        images[seq] = TemplateImage(levels=tuple(float(t[k]) for k in TISSUES), box=box, inside=inside)
    labels = a.labels.copy()
    labels[box] = _part_labels(csf2, gm2, wm2, ed, parts.enhancing, parts.necrosis, d.labels[box])
    return images, labels


def _part_labels(csf, gm, wm, edema, enhancing, necrosis, tissue_labels: np.ndarray) -> np.ndarray:
    """The largest part in each voxel of the lesion's box (the first of equals, in the order of
    the arguments); the tissue label where the parts cover under half a voxel."""
    parts = ((csf, L.LABEL_CSF), (gm, L.LABEL_GM), (wm, L.LABEL_WM), (edema, L.LABEL_EDEMA),
             (enhancing, L.LABEL_ENHANCING), (necrosis, L.LABEL_NECROSIS))
    largest = parts[0][0].copy()
    total = parts[0][0].copy()
    labels = np.full(largest.shape, parts[0][1], np.uint8)
    for fraction, label in parts[1:]:
        labels[fraction > largest] = label
        np.maximum(largest, fraction, out=largest)
        total += fraction
    return np.where(total >= 0.5, labels, tissue_labels)


def _acquire(torch, anatomy: Anatomy, image: TemplateImage, grid: sitk.Image, transform: sitk.Transform,
             acq: Acquisition, rng: np.random.Generator, noise: np.random.Generator
             ) -> tuple[sitk.Image, NativeSampler]:
    """One sequence on its native grid: the image, and its sampler (for the labels)."""
    sampler = NativeSampler(anatomy, grid, transform)
    blurred = blurred_template(anatomy, image, slice_profile(anatomy, acq))
    scanner = ScannerSignal(acq, sampler.shape, rng, noise)
    stored = np.empty(sampler.shape, np.int16)
    for slices, values in sampler.slabs(torch, blurred):
        stored[slices] = scanner.store(values, slices)
    return _native_image(stored, grid), sampler


def lesion_box(labels: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Bounding box of the oedema, enhancing and necrotic voxels of a template label map."""
    mask = (labels >= L.LABEL_EDEMA) & (labels <= L.LABEL_NECROSIS)
    if not mask.any():
        return None
    spans = []
    for axis in range(3):
        hit = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        spans.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(spans)  # type: ignore[return-value]


def draw_roi(labels_t2: sitk.Image, rng: np.random.Generator) -> tuple[sitk.Image, list[int]]:
    """Hand-drawn-like rectangles on each axial T2 slice where the mass is seen.

    Returns the ROI mask (uint8, 1 inside) on the T2 grid and the slice indices (k) drawn on.
    """
    lab = sitk.GetArrayFromImage(labels_t2)  # (k, j, i)
    sx, sy, _ = labels_t2.GetSpacing()
    roi = np.zeros_like(lab, dtype=np.uint8)
    mass = (lab == L.LABEL_ENHANCING) | (lab == L.LABEL_NECROSIS)
    region = mass | (lab == L.LABEL_EDEMA)
    margins = np.full(4, 4.0)
    drawn = []
    for k in range(lab.shape[0]):
        if mass[k].sum() * sx * sy < ROI_MIN_AREA_MM2:
            continue
        rows, cols = np.nonzero(region[k])
        # Correlated jitter: a hand keeps its habit from one slice to the next.
        margins = np.clip(0.6 * margins + 0.4 * (2.0 + np.abs(rng.normal(0.0, 3.0, 4))), 2.0, 8.0)
        j0 = max(0, rows.min() - int(round(margins[0] / sy)))
        j1 = min(lab.shape[1], rows.max() + 1 + int(round(margins[1] / sy)))
        i0 = max(0, cols.min() - int(round(margins[2] / sx)))
        i1 = min(lab.shape[2], cols.max() + 1 + int(round(margins[3] / sx)))
        roi[k, j0:j1, i0:i1] = 1
        drawn.append(k)
    img = sitk.GetImageFromArray(roi)
    img.CopyInformation(labels_t2)
    return img, drawn


def patient_lesion(spec: PatientSpec, difficulty: float = 0.5, anatomy: Anatomy | None = None) -> L.LesionParams:
    """The patient's lesion parameters; without ``anatomy`` the centre is left at (0, 0, 0)."""
    rng = patient_rng(spec.seed, spec.site, spec.index, STREAM_LESION)
    return L.sample_lesion_params(rng, spec.label, spec.location, anatomy, difficulty)


def patient_reads(spec: PatientSpec, difficulty: float = 0.5, lesion: L.LesionParams | None = None) -> list[dict]:
    """The readers' unassisted reads of a test-cohort patient (none for train / val); needs no
    images. Assisted reads depend on a trained model's calls and are made later
    (``readers.simulate_assisted_reads``; in the lake ``pipelines.readers.simulate_assisted``)."""
    if spec.split not in TEST_COHORTS:
        return []
    lesion = lesion if lesion is not None else patient_lesion(spec, difficulty)
    rng = patient_rng(spec.seed, spec.site, spec.index, STREAM_READERS)
    rows = simulate_reads(rng, spec.site, spec.label, lesion, difficulty)
    return [{"patient_id": spec.patient_id, **row} for row in rows]


@dataclass(frozen=True, eq=False)
class Scan:
    """One patient's acquisition: both sequences, their truth labels, the ROI, the motion."""

    t1c: sitk.Image
    t2: sitk.Image
    truth_labels: TruthLabels
    roi: sitk.Image
    roi_slices: list[int]
    t2_to_t1c: sitk.Euler3DTransform


def _label_maker(labels: np.ndarray, samplers: dict[str, NativeSampler]) -> Callable[[str], sitk.Image]:
    """Truth labels on a sequence's native grid: nearest neighbour through its sampler."""

    def make(seq: str) -> sitk.Image:
        with torch_threads() as torch:
            arr = samplers[seq].sample(torch, labels, nearest=True)
        return _native_image(arr.astype(np.uint8), samplers[seq].grid)

    return make


def _roi_labels(torch, anatomy: Anatomy, roi_on: np.ndarray, box, sampler: NativeSampler) -> sitk.Image:
    """``roi_on`` (template labels) on the T2 grid where it can show the lesion, 0 elsewhere:
    where it is sampled it equals the truth labels' sampling."""
    arr = np.zeros(sampler.shape, np.uint8)
    block = None if box is None else lesion_block(sampler, box, anatomy.shape)
    if block is not None:
        arr[block] = sampler.sample(torch, roi_on, nearest=True, block=block).astype(np.uint8)
    return _native_image(arr, sampler.grid)


def scan_patient(anatomy: Anatomy, images: dict[str, TemplateImage], labels: np.ndarray, site: str,
                 preset: Preset, rng_pose: np.random.Generator, rng_scan: np.random.Generator,
                 rng_roi: np.random.Generator, roi_labels: np.ndarray | None = None,
                 roi_box: tuple[slice, slice, slice] | None = None) -> Scan:
    """Pose, acquire (both sequences on the site's native grids) and draw the ROI.

    ``images`` and ``labels`` are on the template grid (``intensity_and_labels``). The ROI is
    drawn around the mass of ``roi_labels`` (default ``labels``): a template-grid label map
    whose enhancing / necrosis / oedema voxels say where a reader would draw; ``roi_box``, their
    bounding box where the caller knows it (else it is found).
    """
    profile = get_site(site)
    template_from_scanner, head = _pose(rng_pose, anatomy)
    t1_acq, t2_acq = scaled(profile.t1c, preset.voxel_factor), scaled(profile.t2, preset.voxel_factor)
    # Fields of view centred a little above the head's centre (vertex to foramen magnum), as a
    # technologist would place them, within a few mm.
    fov = head + np.array([0.0, 0.0, FOV_SUPERIOR_SHIFT_MM])
    t2_grid = native_grid(t2_acq, fov + rng_scan.normal(0.0, 3.0, 3))
    t1_grid = native_grid(t1_acq, fov + rng_scan.normal(0.0, 3.0, 3))
    motion = _misalignment(rng_scan, profile, head)  # T2 frame <- CE-T1 frame
    t1_transform = sitk.CompositeTransform([template_from_scanner, motion])
    roi_on = labels if roi_labels is None else roi_labels
    roi_box = roi_box if roi_box is not None else lesion_box(roi_on)
    noise_t2, noise_t1 = rng_scan.spawn(2)  # noise apart: it never shifts the scanner's other draws
    with torch_threads() as torch:
        t2_img, t2_sampler = _acquire(torch, anatomy, images[T2], t2_grid, template_from_scanner, t2_acq,
                                      rng_scan, noise_t2)
        roi_lab = _roi_labels(torch, anatomy, roi_on, roi_box, t2_sampler)
        t1_img, t1_sampler = _acquire(torch, anatomy, images[T1C], t1_grid, t1_transform, t1_acq, rng_scan,
                                      noise_t1)
    roi, drawn = draw_roi(roi_lab, rng_roi)
    truth = TruthLabels(_label_maker(labels, {T2: t2_sampler, T1C: t1_sampler}))
    return Scan(t1c=t1_img, t2=t2_img, truth_labels=truth, roi=roi, roi_slices=drawn,
                t2_to_t1c=motion.GetInverse())


def prepare(preset: Preset, difficulty: float = 0.5) -> None:
    """Compute what a process computes once for ``preset``: the template, its blurred tissues
    (``blur.blurred_tissues``), the readers' calibration, and torch's import; a worker's first
    patient (or a benchmark) then pays only for itself."""
    from gbmmet.synth.readers import _population_typicality

    anatomy = load_anatomy(preset.template_mm)
    with torch_threads():
        pass
    for sc in preset.sites:
        profile = get_site(sc.site)
        for acq in (profile.t1c, profile.t2):
            lr, ap, _ = slice_profile(anatomy, scaled(acq, preset.voxel_factor))
            blurred_tissues(anatomy, ap / anatomy.spacing, lr / anatomy.spacing)
        for label in {label for split, label, n in sc.counts if split in TEST_COHORTS and n}:
            _population_typicality(sc.site, label, difficulty)


def synthesize_patient(spec: PatientSpec, preset: Preset, difficulty: float = 0.5) -> SyntheticPatient:
    """Draw one patient's images, ROI, truth and reads; deterministic in (seed, site, index)."""
    anatomy = load_anatomy(preset.template_mm)
    seed, site, idx = spec.seed, spec.site, spec.index
    lesion = patient_lesion(spec, difficulty, anatomy)
    parts = L.rasterize_lesion(lesion, anatomy)
    rng_anat = patient_rng(seed, site, idx, STREAM_ANATOMY)
    images, labels = intensity_and_labels(anatomy, parts, lesion, rng_anat)
    scan = scan_patient(anatomy, images, labels, site, preset, rng_anat,
                        patient_rng(seed, site, idx, STREAM_SCANNER), patient_rng(seed, site, idx, STREAM_ROI),
                        roi_box=parts.box)
    reads = patient_reads(spec, difficulty, lesion)
    return SyntheticPatient(
        spec=spec,
        lesion=lesion,
        t1c=scan.t1c,
        t2=scan.t2,
        roi=scan.roi,
        truth_labels=scan.truth_labels,
        t2_to_t1c=scan.t2_to_t1c,
        reads=reads,
        roi_slices=scan.roi_slices,
    )
