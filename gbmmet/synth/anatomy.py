"""Brain anatomy for synthetic patients, from a real template.

nilearn's wheel ships the ICBM 2009a symmetric MNI152 template at 1 mm: a skull-stripped T1 and
grey / white matter probability maps. From them we build, once per process:

- tissue fractions on the template grid: grey matter, white matter, CSF (intracranial space minus
  grey and white matter: ventricles and sulci), skull and scalp (procedural shells around the
  intracranial space, because the template is skull-stripped and real images are not);
- candidate lesion centres by anatomical rule (deep white matter, grey-white junction,
  cerebellum), which lesion sampling draws from.

Coordinates: SimpleITK physical points (LPS, mm). MNI (RAS) coordinates are used only to define
the infratentorial region: RAS x = -LPS x, RAS y = -LPS y, RAS z = LPS z.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from gbmmet.errors import TemplateError

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: Padding added around the template so that skull and scalp fit (mm).
PAD_MM = 16.0
#: Shell widths outside the intracranial space (mm): skull (cortical bone, dark on both
#: sequences) then scalp (fat and soft tissue). Typical adult values: skull 5-7 mm, scalp 5-6 mm.
SKULL_MM = (0.0, 6.0)
SCALP_MM = (6.0, 11.5)
#: Deep white matter: white-matter fraction > 0.9 and at least this far from other tissue (mm).
DEEP_WM_DEPTH_MM = 5.0


def template_dir() -> Path:
    """Folder of nilearn's bundled template files (found without importing nilearn: it is slow).

    Raises:
        TemplateError: nilearn is not installed or its wheel lacks the MNI152 files.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise TemplateError(
            "The MNI152 template ships inside the 'nilearn' package, which is not installed: "
            "pip install nilearn==0.14.1"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in _TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise TemplateError(f"nilearn's template files are missing from {folder}: {missing}")
    return folder


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Tissue fractions of the template on its grid, and lesion-centre candidates.

    Arrays are (z, y, x) like ``sitk.GetArrayFromImage``; ``reference`` carries the grid's
    origin, spacing and direction. Fractions are float32 in [0, 1] and sum to at most 1.
    """

    reference: sitk.Image
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    skull: np.ndarray
    scalp: np.ndarray
    intracranial: np.ndarray  # bool
    labels: np.ndarray  # uint8 tissue labels (lesion.PART_NAMES numbering), for truth maps
    ras: tuple[np.ndarray, np.ndarray, np.ndarray]  # RAS mm of each voxel, each (z, y, x)
    candidates: dict[str, np.ndarray]  # name -> (n, 3) voxel indices (z, y, x)
    head_center: tuple[float, float, float]  # LPS mm

    @property
    def spacing(self) -> float:
        return float(self.reference.GetSpacing()[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape  # type: ignore[return-value]

    def index_to_point(self, zyx: np.ndarray) -> np.ndarray:
        """Voxel indices (z, y, x), shape (..., 3), to LPS points (x, y, z) in mm."""
        ref = self.reference
        ijk = np.asarray(zyx, dtype=float)[..., ::-1]
        direction = np.array(ref.GetDirection()).reshape(3, 3)
        return np.asarray(ref.GetOrigin()) + (ijk * np.asarray(ref.GetSpacing())) @ direction.T

    def image(self, array: np.ndarray) -> sitk.Image:
        """Wrap an array on this grid as a SimpleITK image with the template's geometry."""
        img = sitk.GetImageFromArray(array)
        img.CopyInformation(self.reference)
        return img


def infratentorial_mask(ras_x: np.ndarray, ras_y: np.ndarray, ras_z: np.ndarray) -> np.ndarray:
    """Posterior fossa (cerebellum and brainstem) in MNI space, approximated by planes.

    The tentorium slopes up towards the back: below z = -12 mm at y = -38 mm, rising by a
    quarter of a mm per mm backwards; the brainstem below z = -25 mm between y = -38 and -10 mm.
    """
    cerebellum = (ras_y < -38.0) & (ras_z < -12.0 - 0.25 * (ras_y + 38.0))
    brainstem = (ras_z < -25.0) & (ras_y >= -38.0) & (ras_y < -10.0) & (np.abs(ras_x) < 15.0)
    return cerebellum | brainstem


def _load(name: str) -> sitk.Image:
    return sitk.ReadImage(str(template_dir() / _TEMPLATE_FILES[name]), sitk.sitkFloat32)


@functools.lru_cache(maxsize=2)
def load_anatomy(spacing_mm: float = 1.0) -> Anatomy:
    """Build the template anatomy at ``spacing_mm`` (1 or 2 mm), cached per process.

    Raises:
        ValueError: ``spacing_mm`` is not a positive integer number of millimetres.
        TemplateError: the template files cannot be found.
    """
    if spacing_mm not in (1.0, 2.0, 3.0):
        raise ValueError(f"spacing_mm must be 1, 2 or 3 mm, not {spacing_mm!r}")
    gm_img, wm_img = _load("gm"), _load("wm")
    pad = int(round(PAD_MM))
    gm_img = sitk.ConstantPad(gm_img, [pad] * 3, [pad] * 3, 0.0)
    wm_img = sitk.ConstantPad(wm_img, [pad] * 3, [pad] * 3, 0.0)
    # Crop to the head (brain plus the skull and scalp shells, plus a margin): every per-patient
    # full-volume operation then costs about half as much.
    brain_img = sitk.BinaryThreshold(gm_img + wm_img, 0.4 * 255.0, 1e9, 1, 0)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(brain_img)
    x0, y0, z0, nx, ny, nz = stats.GetBoundingBox(1)
    margin = int(round(SCALP_MM[1] + 4.0))
    lo = [max(0, v - margin) for v in (x0, y0, z0)]
    hi = [min(n, v + w + margin) for v, w, n in zip((x0, y0, z0), (nx, ny, nz), gm_img.GetSize(), strict=True)]
    gm_img = gm_img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    wm_img = wm_img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if spacing_mm != 1.0:
        factor = int(spacing_mm)
        gm_img = sitk.BinShrink(gm_img, [factor] * 3)
        wm_img = sitk.BinShrink(wm_img, [factor] * 3)
    gm = sitk.GetArrayFromImage(gm_img) / 255.0
    wm = sitk.GetArrayFromImage(wm_img) / 255.0
    total = np.maximum(gm + wm, 1.0)
    gm, wm = gm / total, wm / total
    sp = float(gm_img.GetSpacing()[0])

    # Intracranial space: brain tissue, closed and filled (ventricles), grown by 2 mm (sulcal and
    # subarachnoid CSF).
    brain = (gm + wm) > 0.4
    radius = max(1, int(round(3.0 / sp)))
    ball = ndimage.generate_binary_structure(3, 1)
    brain = ndimage.binary_closing(brain, structure=ball, iterations=radius)
    brain = ndimage.binary_fill_holes(brain)
    intracranial = ndimage.binary_dilation(brain, structure=ball, iterations=max(1, round(2.0 / sp)))
    csf = np.where(intracranial, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0)

    outside = ndimage.distance_transform_edt(~intracranial, sampling=sp)
    skull = ((outside > SKULL_MM[0]) & (outside <= SKULL_MM[1])).astype(np.float32)
    scalp = ((outside > SCALP_MM[0]) & (outside <= SCALP_MM[1])).astype(np.float32)
    # Soften the shells' staircase edges into partial volume.
    skull = ndimage.gaussian_filter(skull, 0.6 / sp)
    scalp = ndimage.gaussian_filter(scalp, 0.6 / sp)
    skull *= ~intracranial
    scalp *= ~intracranial
    shell_total = np.maximum(skull + scalp, 1.0)
    skull, scalp = skull / shell_total, scalp / shell_total

    reference = sitk.Image(gm_img.GetSize(), sitk.sitkUInt8)
    reference.CopyInformation(gm_img)
    zz, yy, xx = np.indices(gm.shape, dtype=np.float32)
    origin = np.asarray(reference.GetOrigin(), dtype=np.float32)
    direction = np.asarray(reference.GetDirection(), dtype=np.float32).reshape(3, 3)
    # Axis-aligned template: physical = origin + direction @ (index * spacing).
    lps = [origin[a] + sp * (direction[a, 0] * xx + direction[a, 1] * yy + direction[a, 2] * zz)
           for a in range(3)]
    ras = (-lps[0], -lps[1], lps[2])

    infra = infratentorial_mask(*ras)
    depth = ndimage.distance_transform_edt(wm > 0.5, sampling=sp)
    deep_wm = (wm > 0.9) & (depth >= DEEP_WM_DEPTH_MM) & ~infra
    junction = (gm > 0.25) & (gm < 0.75) & (wm > 0.25) & ~infra
    cerebellum = infra & ((gm + wm) > 0.8) & (np.abs(ras[0]) > 8.0) & (ras[1] < -45.0)
    candidates = {
        "deep_wm": np.argwhere(deep_wm),
        "gw_junction": np.argwhere(junction),
        "cerebellum": np.argwhere(cerebellum),
    }
    for name, idx in candidates.items():
        if len(idx) < 50:
            raise TemplateError(f"too few {name} voxels in the template ({len(idx)})")

    # Tissue labels: the largest fraction; background where tissue covers under half a voxel.
    # (Numbering as gbmmet.synth.lesion.PART_NAMES: 1 CSF, 2 GM, 3 WM, 7 skull and scalp.)
    stack = np.stack([csf, gm, wm, skull + scalp])
    labels = np.where(stack.sum(0) < 0.5, 0, np.array([1, 2, 3, 7], np.uint8)[stack.argmax(0)])
    centroid = np.argwhere(intracranial).mean(axis=0)
    anatomy = Anatomy(
        reference=reference,
        gm=gm.astype(np.float32),
        wm=wm.astype(np.float32),
        csf=csf.astype(np.float32),
        skull=skull.astype(np.float32),
        scalp=scalp.astype(np.float32),
        intracranial=intracranial,
        labels=labels.astype(np.uint8),
        ras=ras,
        candidates=candidates,
        head_center=(0.0, 0.0, 0.0),
    )
    center = anatomy.index_to_point(centroid)
    object.__setattr__(anatomy, "head_center", tuple(float(c) for c in center))
    return anatomy
