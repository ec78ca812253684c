"""Scanner and site profiles: how each hospital's images differ.

A site is a hospital with its own scanners and habits. The two of the paper:

- ``siteA`` (internal, the development hospital): 3D sagittal CE-T1 at 1 mm isotropic; 2D axial
  T2 TSE, 0.9 mm in plane, 5 mm slices; moderate bias field and noise.
- ``siteB`` (external): 3D axial CE-T1, 0.9 x 0.9 x 1.5 mm, stored left-right flipped (another
  converter's orientation); 2D axial T2, 0.7 mm in plane, 4 mm slices; stronger bias field, more
  noise, another vendor's intensity scale and offset; slightly larger patient motion between
  sequences.

Add a site by adding a ``SiteProfile`` to ``SITE_PROFILES``. Demographic and clinical rates
(``location``, primary tumours, age, sex) are the paper's Table 1 per cohort.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gbmmet.constants import GBM, MET, SITE_EXTERNAL, SITE_INTERNAL


@dataclass(frozen=True)
class Acquisition:
    """One sequence's native geometry and signal properties at a site.

    ``spacing`` and ``size`` are (i, j, k) of the stored array; ``axes`` names which patient axis
    each stored axis runs along, e.g. ("AP", "SI", "LR") for a sagittal 3D acquisition; a minus
    sign in ``flip`` reverses that axis. The slice (thickest) axis of a 2D sequence is k.
    """

    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    axes: tuple[str, str, str] = ("LR", "AP", "SI")
    flip: tuple[int, int, int] = (1, 1, 1)
    noise: float = 0.025  # Rician sigma, relative to the sequence's reference tissue (= 1)
    bias: float = 0.15  # sd of the log bias field at the edge of the field of view
    scale: float = 1000.0  # scanner units per relative unit
    offset: float = 0.0  # scanner units added (some vendors store an offset)


@dataclass(frozen=True)
class ReaderProfile:
    """A simulated radiologist's operating point: (sensitivity, specificity) for GBM."""

    unassisted: tuple[float, float]
    assisted: tuple[float, float]


@dataclass(frozen=True)
class SiteProfile:
    name: str
    t1c: Acquisition
    t2: Acquisition
    misalign_rot_deg: float  # sd of each rotation angle between CE-T1 and T2 (clipped at 2.5 sd)
    misalign_trans_mm: float  # sd of each translation
    infra_rate: dict[str, float]  # label -> share of infratentorial lesions
    primary_rates: dict[str, float]  # MET primaries
    age: dict[str, tuple[float, float]]  # label -> (mean, sd) years
    male_rate: dict[str, float]
    readers: dict[str, ReaderProfile] = field(default_factory=dict)
    patient_prefix: str = "P"


SITE_PROFILES: dict[str, SiteProfile] = {
    SITE_INTERNAL: SiteProfile(
        name=SITE_INTERNAL,
        t1c=Acquisition(spacing=(1.0, 1.0, 1.0), size=(208, 184, 160), axes=("AP", "SI", "LR"),
                        noise=0.025, bias=0.15, scale=900.0, offset=0.0),
        t2=Acquisition(spacing=(0.9, 0.9, 5.0), size=(240, 240, 32), noise=0.02, bias=0.15,
                       scale=2200.0, offset=0.0),
        misalign_rot_deg=1.5,
        misalign_trans_mm=2.0,
        # Paper, internal: supratentorial 369/382 GBM, 167/216 MET.
        infra_rate={GBM: 13 / 382, MET: 49 / 216},
        primary_rates={"lung": 0.421, "breast": 0.116, "gi": 0.213, "gu": 0.074, "other": 0.176},
        age={GBM: (57.3, 15.2), MET: (57.5, 13.8)},
        male_rate={GBM: 0.584, MET: 0.620},
        # Paper, internal test: reader AUC 0.889 / 0.768 unassisted, 0.920 / 0.910 assisted;
        # from binary calls AUC = (sensitivity + specificity) / 2.
        readers={
            "reader1": ReaderProfile(unassisted=(0.90, 0.878), assisted=(0.93, 0.91)),
            "reader2": ReaderProfile(unassisted=(0.80, 0.736), assisted=(0.92, 0.90)),
        },
        patient_prefix="A",
    ),
    SITE_EXTERNAL: SiteProfile(
        name=SITE_EXTERNAL,
        t1c=Acquisition(spacing=(0.9, 0.9, 1.5), size=(190, 230, 120), flip=(-1, 1, 1),
                        noise=0.035, bias=0.25, scale=3100.0, offset=150.0),
        t2=Acquisition(spacing=(0.7, 0.7, 4.0), size=(300, 300, 40), noise=0.03, bias=0.25,
                       scale=650.0, offset=40.0),
        misalign_rot_deg=2.5,
        misalign_trans_mm=3.0,
        # Paper, external: supratentorial 98/100 GBM (3 %), 32/43 MET (27.3 %).
        infra_rate={GBM: 0.03, MET: 0.273},
        primary_rates={"lung": 0.455, "breast": 0.136, "gi": 0.159, "gu": 0.159, "other": 0.091},
        age={GBM: (57.2, 12.8), MET: (61.0, 10.2)},
        male_rate={GBM: 0.624, MET: 0.568},
        # Paper, external: 0.857 / 0.708 unassisted, 0.889 / 0.839 assisted.
        readers={
            "reader1": ReaderProfile(unassisted=(0.88, 0.834), assisted=(0.90, 0.878)),
            "reader2": ReaderProfile(unassisted=(0.75, 0.666), assisted=(0.86, 0.818)),
        },
        patient_prefix="B",
    ),
}


def get_site(name: str) -> SiteProfile:
    """The profile of site ``name``; raises ``ValueError`` listing the known sites."""
    try:
        return SITE_PROFILES[name]
    except KeyError:
        raise ValueError(f"site must be one of {sorted(SITE_PROFILES)}, not {name!r}") from None


def scaled(acq: Acquisition, factor: float) -> Acquisition:
    """The same field of view sampled ``factor`` times coarser (the ``tiny`` preset)."""
    if factor == 1.0:
        return acq
    spacing = tuple(s * factor if s < 3.0 else s for s in acq.spacing)
    size = tuple(max(8, round(n * s0 / s1)) for n, s0, s1 in zip(acq.size, acq.spacing, spacing, strict=True))
    return Acquisition(spacing=spacing, size=size, axes=acq.axes, flip=acq.flip, noise=acq.noise,
                       bias=acq.bias, scale=acq.scale, offset=acq.offset)
