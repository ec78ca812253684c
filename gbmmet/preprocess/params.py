"""Preprocessing parameters: typed, frozen, recorded with every run and hashed.

The hash (``params_hash``) keys what is done in the lake: re-running with the same inputs and the
same hash skips a patient, changing any parameter reprocesses it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

#: Bumped when the preprocessing code changes what it writes for the same parameters.
PREPROCESS_VERSION = "1"


@dataclass(frozen=True)
class N4Params:
    backend: str = "sitk"  # "sitk" (default: 3-6x faster here, see README) or "ants"
    # 6: N4 2.0 s instead of 3.9 s per demo patient; the stored slices move by 0.4-3.4 uint8 levels
    # on average against shrink 4, no more than shrink 8 moves them (N4's own spread across
    # shrink factors); measured on 4 demo patients (README, issue 5 note).
    shrink: int = 6
    iterations: tuple[int, ...] = (20, 20)  # two fitting levels: 3x faster than (50, 40, 30), same field to 0.5 %
    convergence: float = 1e-4


@dataclass(frozen=True)
class RegistrationParams:
    # Registered on block-averaged copies at this resolution: as accurate as on the 1 mm grid
    # here (mean residual 0.2-0.3 mm on synthetic truth) at a third of the time.
    resolution_mm: float = 2.0
    shrink: tuple[int, ...] = (2, 1)  # multi-resolution pyramid on that grid: 4 mm, then 2 mm
    smoothing_mm: tuple[float, ...] = (2.0, 1.0)
    sampling: float = 0.10  # share of voxels sampled by the metric (random, seeded)
    bins: int = 32  # Mattes mutual information histogram bins
    iterations: int = 200
    seed: int = 42
    threads: int = 1  # fixed, so the result does not depend on the machine's core count


@dataclass(frozen=True)
class WhiteStripeParams:
    width: float = 0.05  # quantile half-width of the stripe (intensity-normalization's default)
    head_erosion_mm: float = 12.0  # fit inside the head eroded by this: no scalp fat or skull
    roi_margin_mm: float = 5.0  # the lesion ROI grown by this is excluded from the fit
    kde_samples: int = 200_000  # voxels used for the KDE mode search (strided, deterministic)


@dataclass(frozen=True)
class SliceParams:
    size: int = 224
    channels: tuple[str, ...] = ("t1c", "t2", "t2")  # the paper: CE-T1, T2, T2
    # Fixed mapping from WhiteStripe units to uint8: v = round(255 * (ws - lo) / (hi - lo)),
    # clipped. WhiteStripe's unit is the sd of a narrow stripe of white matter (0.6-1 % of its
    # mean on real BraTS images and on the synthetic cohorts alike), so tissues spread over
    # hundreds of units: measured 1st-99th percentiles inside the ROI crops, BraTS CE-T1 -155 to
    # +146 and T2 -99 to +115; synthetic CE-T1 -171 to +71, T2 -96 to +130. The ranges keep
    # those at about 1.2 units per step.
    ws_range: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"t1c": (-160.0, 160.0), "t2": (-110.0, 150.0)})


@dataclass(frozen=True)
class PreprocessParams:
    iso_mm: float = 1.0
    n4: N4Params = field(default_factory=N4Params)
    registration: RegistrationParams = field(default_factory=RegistrationParams)
    whitestripe: WhiteStripeParams = field(default_factory=WhiteStripeParams)
    slices: SliceParams = field(default_factory=SliceParams)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["version"] = PREPROCESS_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessParams:
        """The parameters recorded by ``to_dict`` (e.g. ``preprocess_runs.params``)."""
        def tup(x):
            return tuple(x) if isinstance(x, list) else x

        s = d["slices"]
        return cls(
            iso_mm=d["iso_mm"],
            n4=N4Params(**{k: tup(v) for k, v in d["n4"].items()}),
            registration=RegistrationParams(**{k: tup(v) for k, v in d["registration"].items()}),
            whitestripe=WhiteStripeParams(**d["whitestripe"]),
            slices=SliceParams(size=s["size"], channels=tuple(s["channels"]),
                               ws_range={k: tuple(v) for k, v in s["ws_range"].items()}),
        )

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check(self) -> PreprocessParams:
        """Raise ``ValueError`` naming an impossible parameter."""
        if self.n4.backend not in ("sitk", "ants"):
            raise ValueError(f"The 'n4.backend' parameter must be 'sitk' or 'ants'. Got {self.n4.backend!r} instead.")
        if self.iso_mm <= 0:
            raise ValueError(f"The 'iso_mm' parameter must be > 0. Got {self.iso_mm!r} instead.")
        if not 0 < self.registration.sampling <= 1:
            raise ValueError(f"The 'registration.sampling' parameter must be in (0, 1]. Got {self.registration.sampling!r} instead.")
        if self.slices.size < 8:
            raise ValueError(f"The 'slices.size' parameter must be >= 8. Got {self.slices.size!r} instead.")
        for ch in self.slices.channels:
            if ch not in self.slices.ws_range:
                raise ValueError(f"slice channel {ch!r} has no intensity range; expected one of {sorted(self.slices.ws_range)}")
        return self
