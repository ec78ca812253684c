"""Out-of-distribution patients: what a GBM-vs-metastasis model was never meant to see.

Three kinds, each written in its own folder beside the cohort (``pipelines.synth``):

- ``meningioma``: an extra-axial, dural-based tumour. Its centre lies a quarter of its radius
  inside the inner table of the skull (convexity, 70 %) or on the falx (midline, 30 %), so the
  part beyond the dura is cut flat against it (a broad dural base). The brain is pushed away, not
  replaced: grey and white matter are displaced radially (incompressibly, r^3 = s^3 + R^3, the
  displacement fading out by three radii), then the tumour fills the room made. Homogeneous,
  strong enhancement (CE-T1 N(1.6, 0.08) x WM, texture 6 %), no necrosis, T2 iso to slightly
  high (N(0.60, 0.04) x CSF; grey matter 0.52), little or moderate vasogenic oedema (T2
  hyperintensity / mass diameter U(1.0, 1.5)), and a dural tail (a thin enhancing layer along
  the dura up to 1.7 radii from the centre). Diameter N(32, 9) mm, 15-55 mm.
- ``no_lesion``: a normal brain; the ROI is drawn like a reader's boxes around a lesion-sized
  ball (diameter N(30, 8) mm, 16-50 mm) of normal deep white matter or grey-white junction.
- ``swapped``: real cohort patients (the test cohorts, in a seeded order) whose CE-T1 and T2 are
  exchanged on disk: ``t1c.nii.gz`` holds the T2 and ``t2.nii.gz`` the CE-T1; the ROI is the
  patient's own, resampled (nearest neighbour, through the true motion between the sequences)
  onto the grid of the file now named T2, as ``gbmmet.io.read_roi`` requires. Real labels.

Manifests (``OOD_MANIFEST_COLUMNS``): the cohort's columns, then ``ood_kind`` (the kind) and
``source_patient_id`` (swapped: the cohort patient the images come from; else empty). Every OOD
patient is in the ``external`` split. The label of ``meningioma`` / ``no_lesion`` rows is a
placeholder (``OOD_PLACEHOLDER_LABEL``, so ``gbmmet.manifest.load_manifests`` reads them); those
patients are for scoring (``gbmmet predict``-style, OOD scores), never training or evaluation:
use ``is_placeholder_label``. Swapped patients keep their real labels, as site ``swapped``, and
may be preprocessed and evaluated as an external site.

Every OOD patient depends only on (seed, kind, site, index): its generators are seeded with the
kind's code as a fifth word, so they never share a stream with a cohort patient, and the cohort's
own patients are untouched by whether OOD patients are drawn.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import asdict, dataclass, replace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from gbmmet import constants as C
from gbmmet.errors import ConfigError
from gbmmet.synth import lesion as L
from gbmmet.synth.anatomy import Anatomy, load_anatomy
from gbmmet.synth.cohort import (
    STREAM_ANATOMY,
    STREAM_DEMOGRAPHICS,
    STREAM_LESION,
    STREAM_ROI,
    STREAM_SCANNER,
    PatientSpec,
    Preset,
    build_cohort,
    get_preset,
    site_code,
)
from gbmmet.synth.render import (
    Scan,
    SyntheticPatient,
    intensity_and_labels,
    scan_patient,
    synthesize_patient,
)
from gbmmet.synth.sites import get_site

#: Bumped whenever an OOD kind draws different images for the same settings (recorded per folder).
OOD_VERSION = "1"
MENINGIOMA = "meningioma"
NO_LESION = "no_lesion"
SWAPPED = "swapped"
OOD_KINDS = (MENINGIOMA, NO_LESION, SWAPPED)
#: Kinds that are neither GBM nor MET: their manifest label is a placeholder.
NON_TUMOUR_CLASS_KINDS = (MENINGIOMA, NO_LESION)
OOD_DIR = "ood"
COL_OOD_KIND = "ood_kind"
COL_SOURCE_PATIENT = "source_patient_id"
OOD_MANIFEST_COLUMNS = (*C.MANIFEST_COLUMNS, COL_OOD_KIND, COL_SOURCE_PATIENT)
OOD_PLACEHOLDER_LABEL = C.GBM
SWAPPED_SITE = "swapped"
_ID_PREFIX = {MENINGIOMA: "MNG", NO_LESION: "NOL", SWAPPED: "SW"}

MENINGIOMA_DIAMETER = (32.0, 9.0, 15.0, 55.0)  # mean, sd, min, max (mm)
MENINGIOMA_ENHANCEMENT = (1.6, 0.08)  # CE-T1, white matter = 1
MENINGIOMA_T2 = (0.60, 0.04)  # CSF = 1 (grey matter 0.52, white matter 0.38)
MENINGIOMA_EDEMA_RATIO = (1.0, 1.5)  # uniform
MENINGIOMA_EDEMA_T2 = (0.76, 0.06)
P_FALX = 0.3
DURAL_TAIL_RADII = 1.7
NO_LESION_DIAMETER = (30.0, 8.0, 16.0, 50.0)


def parse_kinds(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"meningioma,swapped"`` (or a sequence) as a tuple of known kinds, in ``OOD_KINDS`` order.

    Raises:
        ConfigError: an unknown kind.
    """
    items = [k.strip() for k in (text.split(",") if isinstance(text, str) else text)]
    items = [k for k in items if k]
    unknown = sorted(set(items) - set(OOD_KINDS))
    if unknown:
        raise ConfigError(f"The 'ood' parameter must name kinds among {list(OOD_KINDS)}. Got {unknown} instead.")
    return tuple(k for k in OOD_KINDS if k in items)


def is_placeholder_label(row: dict) -> bool:
    """Whether a manifest row's label is a placeholder (a meningioma / no-lesion patient)."""
    return row.get(COL_OOD_KIND, "") in NON_TUMOUR_CLASS_KINDS


def ood_rng(seed: int, kind: str, site: str, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of one OOD patient; never the same stream as a cohort patient's."""
    return np.random.default_rng([int(seed), site_code(site), int(index), int(stream), zlib.crc32(kind.encode())])


@dataclass(frozen=True)
class OodSpec:
    """One OOD patient: its kind, who it is, and (swapped) the cohort patient it comes from."""

    kind: str
    patient: PatientSpec
    source: PatientSpec | None = None

    def manifest_extra(self) -> dict:
        return {COL_OOD_KIND: self.kind, COL_SOURCE_PATIENT: self.source.patient_id if self.source else ""}


def _new_patient(kind: str, preset: Preset, seed: int, index: int) -> PatientSpec:
    site = preset.sites[index % len(preset.sites)].site
    rng = ood_rng(seed, kind, site, index, STREAM_DEMOGRAPHICS)
    # Meningioma: older, mostly women (about 2.5 : 1); a normal scan: anyone.
    age_mean, age_sd, p_female = (62.0, 13.0, 0.7) if kind == MENINGIOMA else (50.0, 16.0, 0.5)
    age = int(np.clip(round(rng.normal(age_mean, age_sd)), 18, 92))
    sex = "F" if rng.random() < p_female else "M"
    return PatientSpec(
        patient_id=f"{_ID_PREFIX[kind]}{get_site(site).patient_prefix}{index + 1:04d}",
        site=site, index=index, split=C.EXTERNAL, label=OOD_PLACEHOLDER_LABEL, age=age, sex=sex,
        location=C.SUPRA, primary_tumor="", seed=int(seed),
    )


def swapped_sources(preset: Preset, seed: int) -> list[PatientSpec]:
    """The cohort patients swapped cohorts draw from, in order: the test cohorts, shuffled."""
    pool = [s for s in build_cohort(preset, seed) if s.split in C.TEST_COHORTS]
    order = np.random.default_rng([int(seed), zlib.crc32(SWAPPED.encode())]).permutation(len(pool))
    return [pool[i] for i in order]


def build_ood(preset: Preset | str, seed: int, kinds: tuple[str, ...], count: int) -> list[OodSpec]:
    """``count`` patients of each kind; draws no images, deterministic in (preset, seed).

    Raises:
        ConfigError: unknown kind, ``count`` < 1, or more swapped patients than the preset's
            test cohorts hold.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    kinds = parse_kinds(kinds)
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"The 'ood_count' parameter must be a whole number >= 1. Got {count!r} instead.")
    out = []
    for kind in kinds:
        if kind != SWAPPED:
            out += [OodSpec(kind, _new_patient(kind, preset, seed, i)) for i in range(count)]
            continue
        sources = swapped_sources(preset, seed)
        if count > len(sources):
            raise ConfigError(f"The 'ood_count' parameter ({count}) exceeds the {len(sources)} test-cohort "
                              f"patients of preset {preset.name!r} that swapped patients are drawn from.")
        for i, src in enumerate(sources[:count]):
            patient = replace(src, patient_id=f"{_ID_PREFIX[SWAPPED]}{src.patient_id}", site=SWAPPED_SITE,
                              split=C.EXTERNAL, index=i)
            out.append(OodSpec(kind, patient, src))
    return out


@dataclass(frozen=True)
class MeningiomaParams:
    """One meningioma; mm and template voxel indices (z, y, x)."""

    site_kind: str  # convexity or falx
    center_index: tuple[int, int, int]
    diameter_mm: float
    lobulation: float
    lobe_dirs: tuple[tuple[float, float, float], ...]
    enhancement: float
    mass_t2: float
    edema_ratio: float
    edema_t2: float
    texture_seed: int
    nodularity: float = 0.0  # read by render: a homogeneous enhancement

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=2)
def _dural_maps(anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Depth below the inner table (mm) and the supratentorial convexity / falx-capable mask."""
    depth = ndimage.distance_transform_edt(anatomy.intracranial, sampling=anatomy.spacing)
    x, y, z = anatomy.ras
    infra = (y < -38.0) & (z < -12.0 - 0.25 * (y + 38.0))
    supra = anatomy.intracranial & ~infra & (z > -5.0)
    return depth, supra


def sample_meningioma(rng: np.random.Generator, anatomy: Anatomy) -> MeningiomaParams:
    """Draw one meningioma on ``anatomy``: where (convexity or falx), how big, how it looks."""
    mean, sd, lo, hi = MENINGIOMA_DIAMETER
    diameter = float(np.clip(rng.normal(mean, sd), lo, hi))
    radius = diameter / 2.0
    depth, supra = _dural_maps(anatomy)
    sp = anatomy.spacing
    falx = rng.random() < P_FALX
    if falx:
        # On the midline plane, deep enough under the vertex for the tumour to hang off the falx.
        cands = supra & (np.abs(anatomy.ras[0]) < 0.6 * sp) & (depth > 0.8 * radius) & (anatomy.ras[2] > 15.0)
    else:
        cands = supra & (np.abs(depth - 0.25 * radius) < 0.6 * sp) & (np.abs(anatomy.ras[0]) > radius)
    idx = np.argwhere(cands)
    if len(idx) == 0:
        raise ValueError(f"no meningioma site for a {diameter:.0f} mm tumour on the {sp} mm template")
    center = tuple(int(c) for c in idx[int(rng.random() * len(idx))])
    n_lobes = int(rng.integers(3, 6))
    return MeningiomaParams(
        site_kind="falx" if falx else "convexity",
        center_index=center,  # type: ignore[arg-type]
        diameter_mm=diameter,
        lobulation=float(np.clip(rng.normal(0.08, 0.04), 0.0, 0.2)),
        lobe_dirs=tuple(tuple(float(c) for c in v / np.linalg.norm(v)) for v in rng.normal(size=(n_lobes, 3))),
        enhancement=float(rng.normal(*MENINGIOMA_ENHANCEMENT)),
        mass_t2=float(rng.normal(*MENINGIOMA_T2)),
        edema_ratio=float(rng.uniform(*MENINGIOMA_EDEMA_RATIO)),
        edema_t2=float(rng.normal(*MENINGIOMA_EDEMA_T2)),
        texture_seed=int(rng.integers(1 << 31)),
    )


def _box(center, half_vox: int, shape) -> tuple[slice, slice, slice]:
    return tuple(slice(max(0, c - half_vox), min(n, c + half_vox + 1)) for c, n in zip(center, shape, strict=True))


def _radial(box, center, sp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets (mm, (..., 3) in z, y, x), their length and unit directions on a box."""
    grid = np.indices(tuple(s.stop - s.start for s in box), dtype=np.float32)
    offset = np.array([s.start - c for s, c in zip(box, center, strict=True)], np.float32)
    v = np.stack([(grid[a] + offset[a]) * sp for a in range(3)], axis=-1)
    r = np.linalg.norm(v, axis=-1)
    return v, r, v / np.maximum(r, 1e-6)[..., None]


def displace_brain(anatomy: Anatomy, box, center, outer: np.ndarray, reach: np.ndarray) -> Anatomy:
    """The anatomy with its grey and white matter pushed radially out of a mass.

    ``outer`` is the mass's radius (mm) in each voxel's direction from ``center`` and ``reach``
    where the push has faded out (mm), both on ``box``. A voxel at distance r samples the brain
    at s with r^3 = s^3 + outer^3 (volume kept along each ray), blended back to s = r by
    ``reach``; CSF fills whatever the brain left in the intracranial space. The skull does not
    give, so the room the mass takes comes out of the CSF around it (``_efface_csf``), and the
    brain's grey and white matter keep their volume.
    """
    sp = anatomy.spacing
    _, r, u = _radial(box, center, sp)
    s = np.cbrt(np.maximum(r**3 - outer**3, 0.0))
    fade = np.clip((reach - r) / np.maximum(reach - outer, 1e-3), 0.0, 1.0)
    s = r - (r - s) * fade
    src = (np.asarray(center, np.float32)[:, None, None, None]
           + np.moveaxis(u * s[..., None], -1, 0) / sp)  # source voxel indices (z, y, x)
    inside = anatomy.intracranial[box]
    gm, wm, csf, labels = anatomy.gm.copy(), anatomy.wm.copy(), anatomy.csf.copy(), anatomy.labels.copy()
    for arr, full in ((gm, anatomy.gm), (wm, anatomy.wm)):
        arr[box] = np.where(inside, ndimage.map_coordinates(full, src, order=1, mode="nearest"), arr[box])
    total = np.maximum(gm[box] + wm[box], 1.0)
    gm[box], wm[box] = gm[box] / total, wm[box] / total
    csf[box] = np.where(inside, np.clip(1.0 - gm[box] - wm[box], 0.0, 1.0), 0.0)
    lost = float((anatomy.gm[box] + anatomy.wm[box]).sum() - ((gm[box] + wm[box]) * (r >= outer)).sum())
    weight = np.clip(1.0 - (r - outer) / np.maximum(reach - outer, 1e-3), 0.0, 1.0) * (r >= outer) * inside
    gm[box], wm[box], csf[box] = _efface_csf(gm[box], wm[box], csf[box], weight, lost)
    stack = np.stack([csf[box], gm[box], wm[box], anatomy.skull[box] + anatomy.scalp[box]])
    labels[box] = np.where(stack.sum(0) < 0.5, 0, np.array([1, 2, 3, 7], np.uint8)[stack.argmax(0)])
    return replace(anatomy, gm=gm, wm=wm, csf=csf, labels=labels)


def _efface_csf(gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, weight: np.ndarray, lost: float):
    """Give back ``lost`` voxels of brain from the CSF, most next to the mass (``weight``): sulci
    and ventricles near an extra-axial mass are effaced. Never more than the CSF there holds."""
    avail = csf * weight
    share = float(np.clip(lost / max(float(avail.sum()), 1e-6), 0.0, 1.0)) if lost > 0 else 0.0
    add = share * avail
    brain = gm + wm
    grey = np.where(brain > 0.05, gm / np.maximum(brain, 1e-6), 1.0)  # no brain there: cortex
    return gm + add * grey, wm + add * (1.0 - grey), csf - add


def rasterize_meningioma(params: MeningiomaParams, anatomy: Anatomy) -> tuple[L.LesionParts, Anatomy]:
    """The meningioma's parts on the template grid, and the anatomy with the brain pushed aside."""
    sp = anatomy.spacing
    radius = params.diameter_mm / 2.0
    half_vox = int(math.ceil(3.2 * radius / sp))
    box = _box(params.center_index, half_vox, anatomy.shape)
    v, r, u = _radial(box, params.center_index, sp)
    outer = radius * (1.0 + params.lobulation * L._bumps(u, params.lobe_dirs, [1.0] * len(params.lobe_dirs), 3.0))
    shifted = displace_brain(anatomy, box, params.center_index, outer, 3.0 * radius)
    inside = anatomy.intracranial[box]
    mass = (r < outer) & inside
    # Dural tail: the dura (the innermost layer of the intracranial space; on the falx, the
    # midline) enhances beyond the base, thinning with distance.
    depth, _ = _dural_maps(anatomy)
    if params.site_kind == "falx":
        dura = np.abs(anatomy.ras[0][box]) < 0.6 * sp
    else:
        dura = depth[box] <= 1.01 * sp
    tail = dura & inside & ~mass & (r < DURAL_TAIL_RADII * radius)
    tail_frac = tail * np.clip(1.0 - (r - radius) / ((DURAL_TAIL_RADII - 1.0) * radius), 0.0, 1.0) * 0.8
    rng = np.random.default_rng(params.texture_seed)
    texture = L.smooth_field(rng, r.shape, 2.5 / sp)
    fingers = L.smooth_field(rng, r.shape, 5.0 / sp)
    dist = ndimage.distance_transform_edt(~mass, sampling=sp) if mass.any() else np.full(r.shape, np.inf)
    gm, wm, csf = shifted.gm[box], shifted.wm[box], shifted.csf[box]
    tissue = np.clip((wm + 0.1 * gm) / np.maximum(wm + gm, 1e-3), 0.0, 1.0)  # vasogenic: spares cortex
    extent = (params.edema_ratio - 1.0) / 2.0 * params.diameter_mm
    edema = np.clip((extent * (1.0 + 0.35 * fingers) * (0.35 + 0.65 * tissue) - dist) / 2.0 + 0.5, 0.0, 1.0)
    edema = edema * (1.0 - csf) * inside * ~mass * (1.0 - tail_frac)
    parts = L.LesionParts(box=box, enhancing=np.maximum(mass, tail_frac).astype(np.float32),  # type: ignore[arg-type]
                          necrosis=np.zeros(r.shape, np.float32), edema=edema.astype(np.float32), texture=texture)
    return parts, shifted


def _no_parts(anatomy: Anatomy, center) -> L.LesionParts:
    box = _box(center, 0, anatomy.shape)
    zero = np.zeros((1, 1, 1), np.float32)
    return L.LesionParts(box=box, enhancing=zero, necrosis=zero, edema=zero, texture=zero)  # type: ignore[arg-type]


@dataclass(frozen=True)
class NoLesionParams:
    """Where the ROI of a normal scan was drawn: a ball of normal brain (template voxels, mm)."""

    site_kind: str  # deep_wm or gw_junction
    center_index: tuple[int, int, int]
    diameter_mm: float

    def to_dict(self) -> dict:
        return asdict(self)


def no_lesion_roi_labels(rng: np.random.Generator, anatomy: Anatomy) -> tuple[np.ndarray, NoLesionParams]:
    """A label map whose 'mass' is a lesion-sized ball of normal brain, for drawing the ROI on."""
    kind = "deep_wm" if rng.random() < 0.5 else "gw_junction"
    cands = anatomy.candidates[kind]
    center = tuple(int(c) for c in cands[int(rng.random() * len(cands))])
    mean, sd, lo, hi = NO_LESION_DIAMETER
    diameter = float(np.clip(rng.normal(mean, sd), lo, hi))
    box = _box(center, int(math.ceil(diameter / 2.0 / anatomy.spacing)) + 1, anatomy.shape)
    _, r, _ = _radial(box, center, anatomy.spacing)
    labels = anatomy.labels.copy()
    ball = (r < diameter / 2.0) & anatomy.intracranial[box]
    labels[box] = np.where(ball, L.LABEL_ENHANCING, labels[box])
    return labels, NoLesionParams(site_kind=kind, center_index=center, diameter_mm=diameter)  # type: ignore[arg-type]


def synthesize_ood(spec: OodSpec, preset: Preset, difficulty: float = 0.5) -> SyntheticPatient:
    """Draw one OOD patient's images, ROI and truth (no reads); deterministic in its spec.

    ``lesion`` of the result is a ``MeningiomaParams``, a ``NoLesionParams`` (where the ROI was
    drawn) or the source patient's ``LesionParams`` (swapped).
    """
    if spec.kind == SWAPPED:
        return swap_sequences(synthesize_patient(spec.source, preset, difficulty), spec.patient)
    p = spec.patient
    anatomy = load_anatomy(preset.template_mm)

    def rng(stream: int) -> np.random.Generator:
        return ood_rng(p.seed, spec.kind, p.site, p.index, stream)

    roi_labels = None
    if spec.kind == MENINGIOMA:
        lesion = sample_meningioma(rng(STREAM_LESION), anatomy)
        parts, anatomy_drawn = rasterize_meningioma(lesion, anatomy)
        mass_t2 = lesion.mass_t2
    else:
        roi_labels, lesion = no_lesion_roi_labels(rng(STREAM_LESION), anatomy)
        parts, anatomy_drawn, mass_t2 = _no_parts(anatomy, lesion.center_index), anatomy, None
    rng_anat = rng(STREAM_ANATOMY)
    stand_in = lesion if spec.kind == MENINGIOMA else L.LesionParams(**_NEUTRAL)
    images, labels = intensity_and_labels(anatomy, parts, stand_in, rng_anat, mass_t2=mass_t2, drawn=anatomy_drawn)
    scan = scan_patient(anatomy, images, labels, p.site, preset, rng_anat, rng(STREAM_SCANNER),
                        rng(STREAM_ROI), roi_labels=roi_labels)
    return _patient(p, lesion, scan)


# A lesion that draws nothing (no parts): only its enhancement, nodularity and edema_t2 are read.
_NEUTRAL = dict(label=C.GBM, location=C.SUPRA, site_kind="none", center_index=(0, 0, 0), diameter_mm=0.0,
                lobulation=0.0, lobe_dirs=(), lobe_weights=(), rim_mm=0.0, nodularity=0.0, nodule_dirs=(),
                solid=True, septa_normals=(), edema_ratio=1.0, edema_t2=0.0, gm_spread=0.0, enhancement=1.0,
                texture_seed=0)


def _patient(spec: PatientSpec, lesion, scan: Scan) -> SyntheticPatient:
    return SyntheticPatient(spec=spec, lesion=lesion, t1c=scan.t1c, t2=scan.t2, roi=scan.roi,
                            truth_labels=scan.truth_labels, t2_to_t1c=scan.t2_to_t1c,
                            reads=[], roi_slices=scan.roi_slices)


def swap_sequences(sp: SyntheticPatient, patient: PatientSpec) -> SyntheticPatient:
    """``sp`` with CE-T1 and T2 exchanged, renamed ``patient``; the ROI moved onto the new T2.

    The ROI (drawn on the real T2) is resampled, nearest neighbour, onto the real CE-T1's grid
    through the true motion between the two; label maps swap with their images.

    Raises:
        ValueError: the resampled ROI is empty (it cannot be, for a lesion inside both fields
            of view).
    """
    ce_to_t2 = sp.t2_to_t1c.GetInverse()  # maps a CE-T1 point to the T2 point (Resample's direction)
    roi = sitk.Resample(sp.roi, sp.t1c, ce_to_t2, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    arr = sitk.GetArrayViewFromImage(roi)
    if not arr.any():
        raise ValueError(f"patient {sp.spec.patient_id}: the ROI falls outside the CE-T1 field of view")
    slices = [int(k) for k in np.nonzero(arr.reshape(arr.shape[0], -1).any(1))[0]]
    return SyntheticPatient(spec=patient, lesion=sp.lesion, t1c=sp.t2, t2=sp.t1c, roi=roi,
                            truth_labels=sp.truth_labels.swapped(), t2_to_t1c=sitk.Euler3DTransform(ce_to_t2),
                            reads=[], roi_slices=slices)


def ood_record(kind: str, preset: str, seed: int, count: int, difficulty: float) -> dict:
    """What made an OOD folder (``ood.json``): a folder with another record is redrawn."""
    from gbmmet.synth import GENERATOR_VERSION

    return {"kind": kind, "preset": preset, "seed": int(seed), "count": int(count), "difficulty": difficulty,
            "generator_version": GENERATOR_VERSION, "ood_version": OOD_VERSION}


__all__ = [
    "OOD_KINDS", "MENINGIOMA", "NO_LESION", "SWAPPED", "OOD_DIR", "COL_OOD_KIND", "COL_SOURCE_PATIENT",
    "OOD_MANIFEST_COLUMNS", "OOD_PLACEHOLDER_LABEL", "SWAPPED_SITE", "OodSpec", "MeningiomaParams",
    "build_ood", "parse_kinds", "is_placeholder_label", "synthesize_ood", "swap_sequences",
]
