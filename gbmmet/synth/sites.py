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
    """A simulated radiologist's operating points, (sensitivity, specificity) for GBM.

    ``unassisted`` is what ``readers.simulate_reads`` reproduces. ``assisted`` is the paper's
    operating point with the model's result at hand; it is not simulated directly: it is the
    target from which ``readers.assist_profile`` derives how often the reader follows the model.
    """

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
    # The paper's model (ResNet-50 at the predictive-index cutoff 0.55) on this site's test set,
    # (sensitivity, specificity) for GBM; None where the paper has no such cohort.
    paper_model: tuple[float, float] | None = None
    # The paper's test set at this site, label -> patients: the prevalence that weighs the
    # readers' sensitivity and specificity into an accuracy (``readers.assist_profile``).
    paper_test_counts: dict[str, int] = field(default_factory=dict)


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
        # Paper, internal test (50 GBM, 50 MET), GBM positive: sensitivity = recall, specificity =
        # (accuracy * 100 - recall * 50) / 50. Reader 1: accuracy 88.9 %, recall 0.918 alone;
        # 92.0 %, 0.940 assisted. Reader 2: 77 %, 0.776 alone; 91.0 %, 0.887 assisted. These
        # reproduce the paper's AUC (= (sensitivity + specificity) / 2 for binary calls: 0.889 /
        # 0.770 alone, 0.920 / 0.910 assisted, paper 0.889 / 0.768, 0.920 / 0.910) and precision
        # within 0.01.
        readers={
            "reader1": ReaderProfile(unassisted=(0.918, 0.860), assisted=(0.940, 0.900)),
            "reader2": ReaderProfile(unassisted=(0.776, 0.764), assisted=(0.887, 0.933)),
        },
        patient_prefix="A",
        # Paper, internal test: accuracy 89 %, precision 0.852, recall 0.939, so sensitivity 0.939
        # and specificity (89 - 0.939 * 50) / 50 = 0.841 (precision from these: 0.855); the
        # paper's counts agree: 3/50 GBM and 8/50 metastases misclassified.
        paper_model=(0.939, 0.841),
        paper_test_counts={GBM: 50, MET: 50},
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
        # Paper, external (100 GBM, 43 MET), derived as for siteA with specificity =
        # (accuracy * 143 - recall * 100) / 43. Reader 1: 86.6 %, recall 0.88 alone; 90.1 %, 0.92
        # assisted. Reader 2: 75.3 %, 0.82 alone; 88.0 %, 0.94 assisted. AUC from these: 0.857 /
        # 0.709 alone, 0.889 / 0.840 assisted (paper 0.857 / 0.708, 0.889 / 0.839).
        readers={
            "reader1": ReaderProfile(unassisted=(0.880, 0.833), assisted=(0.920, 0.857)),
            "reader2": ReaderProfile(unassisted=(0.820, 0.597), assisted=(0.940, 0.741)),
        },
        patient_prefix="B",
        # Paper, external: accuracy 85.9 %, precision 0.907, recall 0.889, so sensitivity 0.889
        # and specificity (85.9 * 1.43 - 88.9) / 43 = 0.789 (precision from these: 0.907); the
        # paper's counts: 12/100 GBM and 9/43 metastases misclassified (0.88, 0.791).
        paper_model=(0.889, 0.789),
        paper_test_counts={GBM: 100, MET: 43},
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
