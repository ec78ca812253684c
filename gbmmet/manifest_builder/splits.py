"""A seeded split stratified by site and label, with a subject's cases kept together.

Each stratum (site, label) is split on its own: its groups (subjects) sorted, shuffled by a
generator seeded with (seed, a digest of the stratum's name), and dealt out in counts of the
largest-remainder rounding of ``n_groups * fraction``. A stratum's split therefore depends only
on its own members, the fractions and the seed: building the GBM and the MET manifest in two
calls gives the same split as one call over both.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from gbmmet import constants as C
from gbmmet.errors import ConfigError
from gbmmet.manifest_builder import Case

#: The default of ``--splits``.
DEFAULT_FRACTIONS = {C.TRAIN: 0.7, C.VAL: 0.1, C.TEST: 0.2}
RULE = ("stratified by (site, label); a subject's cases kept together; each stratum's groups sorted, "
        "shuffled with numpy default_rng([seed, sha256(stratum)]) and dealt out by largest-remainder "
        "rounding of n_groups * fraction")
_SUM_TOL = 1e-6


def parse_fractions(text: str) -> dict[str, float]:
    """``"train=0.7,val=0.1,test=0.2"`` as ``{split: fraction}``.

    Raises:
        ConfigError: an unknown split, a value that is not a number in [0, 1], a split named
            twice, or fractions that do not sum to 1.
    """
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = (s.strip() for s in part.partition("="))
        if not sep or name not in C.SPLITS:
            raise ConfigError(f"--splits must be SPLIT=FRACTION,... with SPLIT one of {list(C.SPLITS)}; "
                              f"got {part!r} in {text!r}")
        try:
            fraction = float(value)
        except ValueError:
            fraction = math.nan
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"--splits: the fraction of {name} must be a number from 0 to 1, not {value!r}")
        if name in out:
            raise ConfigError(f"--splits names {name} twice in {text!r}")
        out[name] = fraction
    if not out or abs(sum(out.values()) - 1.0) > _SUM_TOL:
        raise ConfigError(f"--splits fractions must sum to 1; {text!r} sums to {sum(out.values()):.6g}")
    return out


def largest_remainder(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """``n`` items dealt out in proportion to ``fractions`` (summing to 1): the floors of
    ``n * fraction``, then one more to the largest remainders (ties: the order given)."""
    exact = {k: n * f for k, f in fractions.items()}
    counts = {k: math.floor(v + 1e-9) for k, v in exact.items()}
    order = sorted(fractions, key=lambda k: -(exact[k] - counts[k]))
    for k in order[:n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def assign_splits(cases: Sequence[Case], site: str, fractions: Mapping[str, float], seed: int
                  ) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """The split of each case (patient_id -> split) and the count of cases per stratum and split.

    Raises:
        ConfigError: ``seed`` is negative.
    """
    if seed < 0:
        raise ConfigError(f"--seed must be 0 or more, not {seed}")
    groups: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for case in cases:
        groups[f"{site}/{case.label}"][case.group].append(case.patient_id)
    split_of: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    for stratum, members in sorted(groups.items()):
        names = sorted(members)
        rng = np.random.default_rng([seed, _digest(stratum)])
        shuffled = [names[i] for i in rng.permutation(len(names))]
        dealt = largest_remainder(len(names), fractions)
        start = 0
        counts[stratum] = dict.fromkeys(fractions, 0)
        for split, n in dealt.items():
            for group in shuffled[start:start + n]:
                for pid in members[group]:
                    split_of[pid] = split
                    counts[stratum][split] += 1
            start += n
    return split_of, counts
