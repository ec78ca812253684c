"""Lesions of glioblastoma (GBM) and solitary metastasis (MET): parameters and rasterisation.

Every feature is drawn from overlapping class distributions (``../shared/synth-facts.md``: each
single feature separates the two tumours with an AUC around 0.7; only their combination does
well). The reference values (``REFERENCE``) are the published figures, adjusted where the raw
figures would make one feature alone nearly decisive; ``difficulty`` then scales the distance
between the class means:

    mean_c(difficulty) = pooled + 2 * (1 - difficulty) * (reference_c - pooled)

so ``difficulty=0.5`` (the default) gives the reference values, 0 doubles every separation and
1 makes the classes identical. Probabilities (necrosis, septa, location type) scale the same way.

Parameter table (reference, difficulty 0.5), and why:

| parameter | GBM | MET | reasoning |
| --- | --- | --- | --- |
| enhancing-mass diameter, mm | N(48, 11), 20-75 | N(32, 12), 8-60 | 5.4 (1.0) vs 3.9 (1.5) cm in a surgical series; shrunk a little because those are maximal diameters of irregular masses |
| lobulation amplitude | N(0.25, 0.12) | N(0.14, 0.10) | GBM irregular, lobulated; MET round; overlap keeps sphericity's AUC near 0.7 |
| rim thickness, mm | lognormal, median 4.0, sd(log) 0.45 | median 2.6, sd(log) 0.45 | thick nodular vs thin smooth rim, 10/11 vs 2/7 uneven; AUC about 0.75 alone |
| rim nodularity | N(0.55, 0.2) | N(0.2, 0.15) | uneven thickness, irregular inner margin in GBM |
| solid (no necrosis) | 5% | 30%, always below 12 mm | MET often without necrosis (median necrotic area 0) |
| septa across the necrosis (wavy, partial) | 70 %, 1 + Poisson(0.5) | 10 % have one | GBM multilocular with septa (11/11), MET unilocular; kept below 100 % so one cue never decides |
| T2-hyperintensity / mass diameter | N(1.6, 0.4), 1.05-3.5 | N(2.15, 0.5), 1.1-4.5 | ratio cut-off 2.35, accuracy only 68%; MET oedema larger than the tumour in about half |
| peritumoral T2 signal (CSF = 1) | N(0.83, 0.08) | N(0.76, 0.08) | higher in infiltrated GBM oedema; AUC about 0.73 alone |
| oedema spreads into grey matter | 0.6 | 0.1 | cortical involvement in GBM; vasogenic oedema spares the cortex |
| location type, supratentorial | deep white matter 64% | grey-white junction 70% | seed paper and BMC Med Imaging 2023 |
| enhancement (CE-T1 rim, WM = 1) | N(1.38, 0.12) | N(1.38, 0.12) | not discriminative |

Infratentorial lesions are capped at 35 mm (the posterior fossa is small). The lesion's location
class (supra / infra) comes from the cohort (its rates are the paper's per site).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from gbmmet.constants import GBM, INFRA, LABELS, MET
from gbmmet.synth.anatomy import Anatomy

# Lesion-part labels in truth label maps (tissues 0-3 and 7 come from the anatomy).
LABEL_BACKGROUND = 0
LABEL_CSF = 1
LABEL_GM = 2
LABEL_WM = 3
LABEL_EDEMA = 4
LABEL_ENHANCING = 5
LABEL_NECROSIS = 6
LABEL_SKULL_SCALP = 7
PART_NAMES = {
    LABEL_BACKGROUND: "background",
    LABEL_CSF: "csf",
    LABEL_GM: "grey_matter",
    LABEL_WM: "white_matter",
    LABEL_EDEMA: "edema",
    LABEL_ENHANCING: "enhancing",
    LABEL_NECROSIS: "necrosis",
    LABEL_SKULL_SCALP: "skull_scalp",
}

#: Reference (difficulty 0.5) distributions: (GBM, MET) pairs.
REFERENCE = {
    "diameter_mm": ((48.0, 11.0), (32.0, 12.0)),  # normal (mean, sd)
    "lobulation": ((0.25, 0.12), (0.14, 0.10)),  # normal
    "log_rim_mm": ((math.log(4.0), 0.45), (math.log(2.6), 0.45)),  # normal in log mm
    "nodularity": ((0.55, 0.20), (0.20, 0.15)),  # normal
    "edema_ratio": ((1.6, 0.4), (2.15, 0.5)),  # normal
    "edema_t2": ((0.83, 0.08), (0.76, 0.08)),  # normal, CSF = 1
    "p_solid": (0.05, 0.30),
    "p_septa": (0.70, 0.10),  # probability of any septum
    "p_deep_wm": (0.64, 0.30),  # supratentorial lesions centred in deep white matter
    "gm_spread": (0.6, 0.1),  # oedema allowed into grey matter (weight)
}
CLIPS = {
    "diameter_mm": ((20.0, 75.0), (8.0, 60.0)),
    "lobulation": ((0.0, 0.6), (0.0, 0.6)),
    "nodularity": ((0.0, 1.0), (0.0, 1.0)),
    "edema_ratio": ((1.05, 3.5), (1.1, 4.5)),
    "edema_t2": ((0.6, 0.98), (0.6, 0.98)),
}
ENHANCEMENT = (1.38, 0.12)
INFRA_MAX_DIAMETER_MM = 35.0
SOLID_BELOW_MM = 12.0


def _check_difficulty(difficulty: float) -> float:
    if not 0.0 <= float(difficulty) <= 1.0:
        raise ValueError(f"difficulty must be between 0 and 1, not {difficulty!r}")
    return float(difficulty)


def class_value(name: str, label: str, difficulty: float):
    """The class's distribution parameters for ``name`` at ``difficulty`` (see module doc)."""
    ref = REFERENCE[name]
    idx = LABELS.index(label)
    sep = 2.0 * (1.0 - _check_difficulty(difficulty))
    if isinstance(ref[0], tuple):
        mean = 0.5 * (ref[0][0] + ref[1][0])
        return mean + sep * (ref[idx][0] - mean), ref[idx][1]
    pooled = 0.5 * (ref[0] + ref[1])
    return float(np.clip(pooled + sep * (ref[idx] - pooled), 0.0, 1.0))


@dataclass(frozen=True)
class LesionParams:
    """Everything that defines one lesion; mm and template voxel indices (z, y, x)."""

    label: str
    location: str
    site_kind: str  # deep_wm, gw_junction or cerebellum
    center_index: tuple[int, int, int]
    diameter_mm: float
    lobulation: float
    lobe_dirs: tuple[tuple[float, float, float], ...]
    lobe_weights: tuple[float, ...]
    rim_mm: float
    nodularity: float
    nodule_dirs: tuple[tuple[float, float, float], ...]
    solid: bool
    septa_normals: tuple[tuple[float, float, float], ...]
    edema_ratio: float
    edema_t2: float
    gm_spread: float
    enhancement: float
    texture_seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def _unit_vectors(rng: np.random.Generator, n: int) -> tuple[tuple[float, float, float], ...]:
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return tuple(tuple(float(c) for c in row) for row in v)


def _normal(rng, name, label, difficulty):
    mean, sd = class_value(name, label, difficulty)
    value = rng.normal(mean, sd)
    if name in CLIPS:
        lo, hi = CLIPS[name][LABELS.index(label)]
        value = float(np.clip(value, lo, hi))
    return float(value)


def sample_lesion_params(
    rng: np.random.Generator,
    label: str,
    location: str,
    anatomy: Anatomy | None,
    difficulty: float = 0.5,
) -> LesionParams:
    """Draw one lesion of class ``label`` at ``location`` (supra / infra).

    With ``anatomy=None`` the centre is left at (0, 0, 0): enough for statistics on the
    parameters alone (reader calibration, cohort summaries) without loading the template.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, not {label!r}")
    is_gbm = label == GBM
    if location == INFRA:
        site_kind = "cerebellum"
    else:
        site_kind = "deep_wm" if rng.random() < class_value("p_deep_wm", label, difficulty) else "gw_junction"
    # One uniform draw picks the centre, with or without the anatomy, so every other parameter
    # is the same either way (reads and summaries need no template).
    pick = rng.random()
    center = (0, 0, 0)
    if anatomy is not None:
        cands = anatomy.candidates[site_kind]
        center = tuple(int(c) for c in cands[int(pick * len(cands))])

    diameter = _normal(rng, "diameter_mm", label, difficulty)
    if location == INFRA:
        diameter = min(diameter, INFRA_MAX_DIAMETER_MM)
    lobulation = _normal(rng, "lobulation", label, difficulty)
    n_lobes = int(rng.integers(5, 10) if is_gbm else rng.integers(3, 6))
    lobe_dirs = _unit_vectors(rng, n_lobes)
    lobe_weights = tuple(float(w) for w in rng.uniform(0.5, 1.5, n_lobes))
    mean, sd = class_value("log_rim_mm", label, difficulty)
    rim = float(np.clip(math.exp(rng.normal(mean, sd)), 1.0, 12.0))
    nodularity = _normal(rng, "nodularity", label, difficulty)
    nodule_dirs = _unit_vectors(rng, int(rng.integers(3, 7)))
    solid = bool(rng.random() < class_value("p_solid", label, difficulty)) or diameter < SOLID_BELOW_MM
    n_septa = 0
    if not solid and rng.random() < class_value("p_septa", label, difficulty):
        n_septa = 1 + int(rng.poisson(0.5 if is_gbm else 0.0))
    septa = _unit_vectors(rng, n_septa) if n_septa else ()
    edema_ratio = _normal(rng, "edema_ratio", label, difficulty)
    edema_t2 = _normal(rng, "edema_t2", label, difficulty)
    gm_spread = class_value("gm_spread", label, difficulty)
    enhancement = float(rng.normal(*ENHANCEMENT))
    return LesionParams(
        label=label,
        location=location,
        site_kind=site_kind,
        center_index=center,  # type: ignore[arg-type]
        diameter_mm=diameter,
        lobulation=lobulation,
        lobe_dirs=lobe_dirs,
        lobe_weights=lobe_weights,
        rim_mm=rim,
        nodularity=nodularity,
        nodule_dirs=nodule_dirs,
        solid=solid,
        septa_normals=septa,
        edema_ratio=edema_ratio,
        edema_t2=edema_t2,
        gm_spread=gm_spread,
        enhancement=enhancement,
        texture_seed=int(rng.integers(1 << 31)),
    )


def _bumps(u: np.ndarray, dirs, weights, kappa: float) -> np.ndarray:
    """Sum of von Mises bumps on the sphere, centred (mean over the sphere removed)."""
    d = np.asarray(dirs, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32)
    total = np.zeros(u.shape[:-1], dtype=np.float32)
    mean = (1.0 - math.exp(-2.0 * kappa)) / (2.0 * kappa)
    for k in range(len(d)):
        total += w[k] * (np.exp(kappa * (u @ d[k] - 1.0)) - mean)
    return total


def smooth_field(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation (texture, oedema fingers).

    Drawn on a grid coarser by up to sigma / 2 and interpolated up: the same look at a fraction
    of the cost of filtering the full box.
    """
    factor = max(1, int(sigma_vox // 2))
    coarse = tuple(int(math.ceil(n / factor)) + 1 for n in shape)
    field = gaussian_filter(rng.normal(size=coarse).astype(np.float32), sigma_vox / factor)
    if factor > 1:
        field = _zoom_linear(field, factor, shape)
    field = np.ascontiguousarray(field[tuple(slice(0, n) for n in shape)])
    sd = float(field.std())
    return field / sd if sd > 0 else field


def _reflect_band(n: int, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter1d`` (truncate 4, mode 'reflect') along an axis of n
    samples as an (n, n) matrix."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    rows = np.arange(n)
    band = np.zeros((n, n))
    for offset, weight in zip(offsets, weights, strict=True):
        cols = np.mod(rows + offset, 2 * n)
        np.add.at(band, (rows, np.where(cols >= n, 2 * n - 1 - cols, cols)), weight)
    return band.astype(np.float32)


def gaussian_filter(field: np.ndarray, sigma: float, rows: int = 32) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(field, sigma)`` of a 3-D float32 field (equal to float32
    rounding), as matrix products on blocks of ``rows`` samples along each axis, each with only
    the samples the kernel reaches: faster for the smooth fields' sizes."""
    radius = int(4.0 * sigma + 0.5)
    a, b, c = field.shape
    for axis, n in enumerate(field.shape):
        band = _reflect_band(n, sigma)
        out = np.empty_like(field)
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            lo, hi = max(0, start - radius), min(n, stop + radius)
            part = band[start:stop, lo:hi]
            if axis == 0:
                out[start:stop] = (part @ field[lo:hi].reshape(hi - lo, -1)).reshape(stop - start, b, c)
            elif axis == 1:
                out[:, start:stop] = np.matmul(part, field[:, lo:hi])
            else:
                out.reshape(-1, c)[:, start:stop] = field.reshape(-1, c)[:, lo:hi] @ part.T
        field = out
    return field


def _zoom_matrix(n_in: int, factor: int, n_keep: int) -> np.ndarray:
    """Linear interpolation from n_in to round(n_in * factor) samples (ends on ends, as
    ``scipy.ndimage.zoom(order=1)``), first n_keep rows, as an (n_keep, n_in) matrix."""
    n_out = int(round(n_in * factor))
    pos = np.arange(n_keep) * ((n_in - 1) / (n_out - 1))
    lo = np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
    weight = pos - lo
    rows = np.arange(n_keep)
    matrix = np.zeros((n_keep, n_in))
    matrix[rows, lo] = 1.0 - weight
    matrix[rows, lo + 1] += weight
    return matrix.astype(np.float32)


def _zoom_linear(field: np.ndarray, factor: int, shape) -> np.ndarray:
    """``scipy.ndimage.zoom(field, factor, order=1)[:shape]`` as three matrix products (several
    times faster; equal to float32 rounding)."""
    a, b, c = field.shape
    za, zb, zc = (_zoom_matrix(n, factor, k) for n, k in zip(field.shape, shape, strict=True))
    out = (za @ field.reshape(a, -1)).reshape(len(za), b, c)
    out = np.matmul(zb, out)
    return (out.reshape(-1, c) @ zc.T).reshape(len(za), len(zb), len(zc))


@dataclass(frozen=True, eq=False)
class LesionParts:
    """Fractions of each lesion part on a box of the template grid.

    ``box`` is a tuple of slices into the template arrays (z, y, x); the arrays have its shape.
    """

    box: tuple[slice, slice, slice]
    enhancing: np.ndarray
    necrosis: np.ndarray
    edema: np.ndarray
    texture: np.ndarray  # unit-sd smooth field for intensity heterogeneity


def _around(center, half_vox: int, within: tuple[slice, ...]) -> tuple[slice, ...]:
    """The box of half-width ``half_vox`` voxels around ``center``, clipped to ``within``."""
    return tuple(slice(max(w.start, c - half_vox), min(w.stop, c + half_vox + 1))
                 for c, w in zip(center, within, strict=True))


def _relative(inner: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True))


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    if not mask.any():
        return None
    spans = []
    for axis in range(mask.ndim):
        hit = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        spans.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(spans)


#: Directions on which ``_outer_bound_mm`` evaluates the lobes (a Fibonacci sphere), and their
#: spacing (radians): every direction is within about that of one of them.
_SPHERE_POINTS = 4096
_SPHERE_SPACING = math.sqrt(4.0 * math.pi / _SPHERE_POINTS)


@functools.lru_cache(maxsize=1)
def _sphere() -> np.ndarray:
    i = np.arange(_SPHERE_POINTS) + 0.5
    z = 1.0 - 2.0 * i / _SPHERE_POINTS
    phi = math.pi * (1.0 + math.sqrt(5.0)) * i
    rho = np.sqrt(1.0 - z * z)
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=-1).astype(np.float32)


def _outer_bound_mm(params: LesionParams) -> float:
    """An upper bound of the mass's outer radius (mm) over all directions.

    The lobes' largest value on a dense set of directions, plus how much they can grow between
    neighbouring directions: each bump's slope along the sphere is at most 1.01 times its weight
    (kappa = 3: the largest 3 sin(a) exp(3 (cos(a) - 1))), times twice the spacing.
    """
    bumps = _bumps(_sphere(), params.lobe_dirs, params.lobe_weights, 3.0)
    slack = 2.0 * _SPHERE_SPACING * sum(params.lobe_weights)
    largest = float(bumps.max()) + slack
    return params.diameter_mm / 2.0 * max(1.0 + params.lobulation * largest, 0.35)


def _mass(params: LesionParams, sp: float, core: tuple[slice, ...], texture: np.ndarray,
          fingers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mass and necrosis (before the brain's limit) on ``core`` (template voxels), given the
    texture and fingers there."""
    radius = params.diameter_mm / 2.0
    grid = np.indices(tuple(s.stop - s.start for s in core), dtype=np.float32)
    offset = np.array([s.start - c for s, c in zip(core, params.center_index, strict=True)], np.float32)
    # Vectors in mm, (z, y, x) order: the template is axis-aligned and isotropic.
    v = np.stack([(grid[a] + offset[a]) * sp for a in range(3)], axis=-1)
    r = np.linalg.norm(v, axis=-1)
    u = v / np.maximum(r, 1e-6)[..., None]
    outer = radius * (1.0 + params.lobulation * _bumps(u, params.lobe_dirs, params.lobe_weights, 3.0))
    outer = np.maximum(outer, 0.35 * radius)
    mass = r < outer
    if params.solid:
        return mass, np.zeros_like(mass)
    thickness = params.rim_mm * (
        1.0 + params.nodularity * _bumps(u, params.nodule_dirs, [1.0] * len(params.nodule_dirs), 6.0)
    )
    necrosis = r < outer - np.clip(thickness, 0.8, None)
    for n in params.septa_normals:
        # Septa are wavy and partial, not flat planes across the whole cavity.
        septum = (np.abs(v @ np.asarray(n, np.float32) + 3.0 * texture) < 0.8) & (fingers > -0.5)
        necrosis &= ~septum
    return mass, necrosis


def distance_to(mask: np.ndarray, sp: float) -> np.ndarray:
    """Euclidean distance (mm) of each voxel outside ``mask`` to the nearest voxel of it (exact,
    Maurer's algorithm, as ``scipy.ndimage.distance_transform_edt`` of ``~mask`` but a few times
    faster); meaningless inside."""
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing([sp] * 3)
    dist = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False,
                                        useImageSpacing=True, backgroundValue=0.0)
    return sitk.GetArrayFromImage(dist)


def rasterize_lesion(params: LesionParams, anatomy: Anatomy) -> LesionParts:
    """Draw the lesion's parts on the template grid around its centre.

    The parts are drawn on a box wide enough for the largest mass and oedema this lesion could
    have (its smooth fields are drawn on all of it); the mass only where its outer radius can
    reach, the oedema only as far as it can spread from the mass. The returned box is the
    bounding box of what was drawn (mass and oedema).
    """
    sp = anatomy.spacing
    everywhere = tuple(slice(0, n) for n in anatomy.shape)
    edema_extent = (params.edema_ratio - 1.0) / 2.0 * params.diameter_mm
    half = params.diameter_mm / 2.0 * (1.0 + 2.0 * params.lobulation) + edema_extent * 1.6 + 4.0
    box = _around(params.center_index, int(math.ceil(half / sp)), everywhere)
    shape = tuple(s.stop - s.start for s in box)
    rng = np.random.default_rng(params.texture_seed)
    texture = smooth_field(rng, shape, 2.5 / sp)
    fingers = smooth_field(rng, shape, 5.0 / sp)

    core = _around(params.center_index, int(math.ceil(_outer_bound_mm(params) / sp)) + 1, box)
    in_box = _relative(core, box)
    mass, necrosis = np.zeros(shape, bool), np.zeros(shape, bool)
    mass[in_box], necrosis[in_box] = _mass(params, sp, core, texture[in_box], fingers[in_box])
    brain = anatomy.intracranial[box]
    mass &= brain
    necrosis &= mass
    edema = np.zeros(shape, np.float32)
    seen = _bounding_box(mass)
    if seen is not None:
        # Oedema reaches at most this far (mm) from the mass (``reach`` below, + 1 for the ramp).
        farthest = edema_extent * max(1.0 + 0.35 * float(fingers.max()), 0.0) + 1.0
        spread = tuple(slice(max(0, s.start - int(math.ceil(farthest / sp)) - 1),
                             min(n, s.stop + int(math.ceil(farthest / sp)) + 1))
                       for s, n in zip(seen, shape, strict=True))
        edema[spread] = _edema(params, anatomy, _absolute(spread, box), mass[spread], fingers[spread],
                               brain[spread], edema_extent, sp)
    drawn = _bounding_box(mass | (edema > 0)) or _relative(_around(params.center_index, 0, box), box)
    final = _absolute(drawn, box)
    return LesionParts(
        box=final,  # type: ignore[arg-type]
        enhancing=(mass & ~necrosis)[drawn].astype(np.float32),
        necrosis=necrosis[drawn].astype(np.float32),
        edema=np.ascontiguousarray(edema[drawn]),
        texture=np.ascontiguousarray(texture[drawn]),
    )


def _absolute(inner: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(i.start + o.start, i.stop + o.start) for i, o in zip(inner, outer, strict=True))


def _edema(params: LesionParams, anatomy: Anatomy, where: tuple[slice, ...], mass: np.ndarray,
           fingers: np.ndarray, brain: np.ndarray, edema_extent: float, sp: float) -> np.ndarray:
    """The oedema fraction on ``where`` (template voxels), which holds all of the mass."""
    dist = distance_to(mass, sp)
    gm, wm, csf = anatomy.gm[where], anatomy.wm[where], anatomy.csf[where]
    # Oedema follows white matter (finger-like); infiltrative GBM oedema also crosses cortex.
    tissue = np.clip((wm + params.gm_spread * gm) / np.maximum(wm + gm, 1e-3), 0.0, 1.0)
    reach = edema_extent * (1.0 + 0.35 * fingers) * (0.35 + 0.65 * tissue)
    edema = np.clip((reach - dist) / 2.0 + 0.5, 0.0, 1.0)
    return (edema * (1.0 - csf) * brain * ~mass).astype(np.float32)


@functools.lru_cache(maxsize=8)
def typicality_scale(difficulty: float) -> dict[str, tuple[float, float]]:
    """Pooled mean and sd of each reader-visible feature, for standardising (see readers)."""
    out = {}
    for name in ("diameter_mm", "lobulation", "log_rim_mm", "nodularity", "edema_ratio", "edema_t2"):
        (m1, s1), (m2, s2) = (class_value(name, lab, difficulty) for lab in (GBM, MET))
        mean = 0.5 * (m1 + m2)
        sd = math.sqrt(0.5 * (s1**2 + s2**2) + 0.25 * (m1 - m2) ** 2)
        out[name] = (mean, sd)
    return out


def typicality(params: LesionParams, difficulty: float) -> float:
    """How GBM-like a lesion looks, from the features a radiologist weighs (positive = GBM-like).

    A standardised sum of the reader-visible features, with the sign of each feature's reference
    class difference; used to make readers err more on atypical cases.
    """
    scale = typicality_scale(difficulty)
    values = {
        "diameter_mm": params.diameter_mm,
        "lobulation": params.lobulation,
        "log_rim_mm": math.log(params.rim_mm),
        "nodularity": params.nodularity,
        "edema_ratio": params.edema_ratio,
        "edema_t2": params.edema_t2,
    }
    score = 0.0
    for name, value in values.items():
        (g, _), (m, _) = REFERENCE[name]
        mean, sd = scale[name]
        score += math.copysign(1.0, g - m) * (value - mean) / sd
    score += 1.0 if not params.solid else -1.0
    score += 1.0 if params.septa_normals else -0.5
    score += -1.5 if params.location == INFRA else 0.2
    return score / 3.0


__all__ = [
    "GBM",
    "MET",
    "LesionParams",
    "LesionParts",
    "sample_lesion_params",
    "rasterize_lesion",
    "typicality",
]
