"""Presets and cohort layout: who the patients are, before any image is drawn.

Each patient depends only on (seed, site, index): its label and split come from the site's fixed
layout (splits in order train, val, test, external; within a split GBM first, then MET, then the
whole site's order shuffled by a generator seeded with (seed, site)), and everything else about
the patient from a generator seeded with (seed, site code, index). So patients can be generated in
any order, in parallel, and a cohort's demographics can be computed without drawing images.

Presets:

| preset | siteA (internal): train / val / test | siteB (external) | grid | purpose |
| --- | --- | --- | --- | --- |
| tiny | 10 (5/5) / 2 (1/1) / 4 (2/2) | 4 (2/2) | 2 mm template, coarse voxels | unit tests, seconds |
| demo | 40 (26/14) / 8 (5/3) / 30 (15/15) | 30 (20/10) | 1 mm | the demo: at least 30 per test cohort, whole pipeline in minutes |
| paper | 450 (300/150) / 48 (32/16) / 100 (50/50) | 143 (100/43) | 1 mm | the paper's cohorts (598 + 143) |

(GBM/MET counts in brackets.)
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np

from gbmmet.constants import (
    EXTERNAL,
    GBM,
    INFRA,
    LABELS,
    MET,
    PRIMARY_TUMORS,
    SITE_EXTERNAL,
    SITE_INTERNAL,
    SPLITS,
    SUPRA,
    TEST,
    TRAIN,
    VAL,
)
from gbmmet.errors import ConfigError
from gbmmet.synth.sites import get_site


@dataclass(frozen=True)
class SiteCohort:
    """How many patients of each (split, label) a site contributes."""

    site: str
    counts: tuple[tuple[str, str, int], ...]  # (split, label, n)

    @property
    def n(self) -> int:
        return sum(n for _, _, n in self.counts)


@dataclass(frozen=True)
class Preset:
    name: str
    sites: tuple[SiteCohort, ...]
    template_mm: float  # template grid the anatomy is drawn on
    voxel_factor: float  # native voxel sizes multiplied by this (in plane and 3D axes)
    description: str

    @property
    def n(self) -> int:
        return sum(s.n for s in self.sites)


def _site(site, *rows):
    return SiteCohort(site=site, counts=tuple(rows))


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        sites=(
            _site(SITE_INTERNAL, (TRAIN, GBM, 5), (TRAIN, MET, 5), (VAL, GBM, 1), (VAL, MET, 1),
                  (TEST, GBM, 2), (TEST, MET, 2)),
            _site(SITE_EXTERNAL, (EXTERNAL, GBM, 2), (EXTERNAL, MET, 2)),
        ),
        template_mm=2.0,
        voxel_factor=2.0,
        description="20 patients of small volumes for unit tests (seconds)",
    ),
    "demo": Preset(
        name="demo",
        sites=(
            _site(SITE_INTERNAL, (TRAIN, GBM, 26), (TRAIN, MET, 14), (VAL, GBM, 5), (VAL, MET, 3),
                  (TEST, GBM, 15), (TEST, MET, 15)),
            _site(SITE_EXTERNAL, (EXTERNAL, GBM, 20), (EXTERNAL, MET, 10)),
        ),
        template_mm=1.0,
        voxel_factor=1.0,
        description="108 patients: the demo pipeline in minutes, 30 per test cohort",
    ),
    "paper": Preset(
        name="paper",
        sites=(
            _site(SITE_INTERNAL, (TRAIN, GBM, 300), (TRAIN, MET, 150), (VAL, GBM, 32), (VAL, MET, 16),
                  (TEST, GBM, 50), (TEST, MET, 50)),
            _site(SITE_EXTERNAL, (EXTERNAL, GBM, 100), (EXTERNAL, MET, 43)),
        ),
        template_mm=1.0,
        voxel_factor=1.0,
        description="the paper's cohorts: internal 598 (450/48/100), external 143",
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; raises ``ConfigError`` listing the known presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"The 'preset' parameter must be one of {sorted(PRESETS)}. Got {name!r} instead."
        ) from None


def check_preset(preset: Preset) -> Preset:
    """Validate a (possibly user-built) preset: known sites, splits, labels, counts >= 0."""
    if not preset.sites:
        raise ConfigError(f"preset {preset.name!r} has no sites")
    for sc in preset.sites:
        get_site(sc.site)
        for split, label, n in sc.counts:
            if split not in SPLITS:
                raise ConfigError(f"preset {preset.name!r}, site {sc.site}: split must be one of {SPLITS}, not {split!r}")
            if label not in LABELS:
                raise ConfigError(f"preset {preset.name!r}, site {sc.site}: label must be one of {LABELS}, not {label!r}")
            if not isinstance(n, int) or n < 0:
                raise ConfigError(f"preset {preset.name!r}, site {sc.site}, {split}/{label}: count must be a whole number >= 0, not {n!r}")
    if preset.template_mm not in (1.0, 2.0, 3.0):
        raise ConfigError(f"preset {preset.name!r}: template_mm must be 1, 2 or 3, not {preset.template_mm!r}")
    if preset.voxel_factor <= 0:
        raise ConfigError(f"preset {preset.name!r}: voxel_factor must be > 0, not {preset.voxel_factor!r}")
    return preset


def site_code(site: str) -> int:
    """A stable integer for a site name (for seeding; Python's hash() is salted per process)."""
    return zlib.crc32(site.encode("utf-8"))


def patient_rng(seed: int, site: str, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of one patient: depends only on (seed, site, index) and the stream."""
    return np.random.default_rng([int(seed), site_code(site), int(index), int(stream)])


# Streams of a patient's generator, so that adding a draw to one part never shifts another.
STREAM_DEMOGRAPHICS = 0
STREAM_LESION = 1
STREAM_ANATOMY = 2
STREAM_SCANNER = 3
STREAM_READERS = 4
STREAM_ROI = 5


@dataclass(frozen=True)
class PatientSpec:
    """Who one synthetic patient is (no images)."""

    patient_id: str
    site: str
    index: int
    split: str
    label: str
    age: int
    sex: str
    location: str
    primary_tumor: str  # "" for GBM
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def _layout(seed: int, sc: SiteCohort) -> list[tuple[str, str]]:
    slots = [(split, label) for split, label, n in sc.counts for _ in range(n)]
    order = np.random.default_rng([int(seed), site_code(sc.site), 0x1A7]).permutation(len(slots))
    return [slots[i] for i in order]


def build_cohort(preset: Preset | str, seed: int = 0) -> list[PatientSpec]:
    """Every patient of ``preset`` with demographics, split and label; draws no images.

    Raises:
        ConfigError: unknown preset name, or an impossible preset.
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    check_preset(preset)
    if int(seed) < 0:
        raise ConfigError(f"The 'seed' parameter must be a whole number >= 0. Got {seed!r} instead.")
    specs = []
    for sc in preset.sites:
        profile = get_site(sc.site)
        primaries = list(profile.primary_rates)
        weights = np.array([profile.primary_rates[p] for p in primaries])
        assert set(primaries) <= set(PRIMARY_TUMORS)
        for index, (split, label) in enumerate(_layout(seed, sc)):
            rng = patient_rng(seed, sc.site, index, STREAM_DEMOGRAPHICS)
            mean, sd = profile.age[label]
            age = int(np.clip(round(rng.normal(mean, sd)), 18, 92))
            sex = "M" if rng.random() < profile.male_rate[label] else "F"
            location = INFRA if rng.random() < profile.infra_rate[label] else SUPRA
            primary = str(rng.choice(primaries, p=weights / weights.sum())) if label == MET else ""
            specs.append(
                PatientSpec(
                    patient_id=f"{profile.patient_prefix}{index + 1:04d}",
                    site=sc.site,
                    index=index,
                    split=split,
                    label=label,
                    age=age,
                    sex=sex,
                    location=location,
                    primary_tumor=primary,
                    seed=int(seed),
                )
            )
    return specs
