"""The rules that pick a patient's CE-T1 and T2 DICOM series (``dicom_rules.toml``).

The package ships the defaults; a site's file is merged over them key by key, so it holds only
what it changes. Every key is checked (an unknown key is a typo, not a silent default).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gbmmet import constants as C
from gbmmet.errors import ConfigError

DEFAULT_RULES = "dicom_rules.toml"
CONTRAST_REQUIRED, CONTRAST_FORBIDDEN, CONTRAST_ANY = "required", "forbidden", "any"
CONTRAST_MODES = (CONTRAST_REQUIRED, CONTRAST_FORBIDDEN, CONTRAST_ANY)
PREFER_AXIAL, PREFER_ORIGINAL, PREFER_NO_CONTRAST = "axial", "original", "no_contrast"
PREFERENCES = (PREFER_AXIAL, PREFER_ORIGINAL, PREFER_NO_CONTRAST)


@dataclass(frozen=True)
class RoleRule:
    """What makes a series the CE-T1 or the T2 (see ``dicom_rules.toml`` for each key)."""

    description: tuple[str, ...]
    reject_description: tuple[str, ...]
    echo_time_ms: tuple[float, float]
    repetition_time_ms: tuple[float, float]
    inversion_time_ms: tuple[float, float]
    reject_scanning_sequence: tuple[str, ...]
    reject_sequence_name: tuple[str, ...]
    contrast: str
    prefer: tuple[str, ...]


@dataclass(frozen=True)
class Rules:
    """The whole rules file: exclusions, contrast words, one ``RoleRule`` per role, ROI patterns."""

    min_images: int
    exclude_description: tuple[str, ...]
    exclude_image_type: tuple[str, ...]
    contrast_post: tuple[str, ...]
    contrast_pre: tuple[str, ...]
    roles: dict[str, RoleRule]
    roi_mask: tuple[str, ...]
    source: str


def _merge(base: dict, over: dict, where: str, prefix: str = "") -> dict:
    out = dict(base)
    for key, value in over.items():
        name = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{where}: unknown key {name!r}; known keys here: {sorted(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {name!r} must be a table ([{name}]), not {value!r}")
            out[key] = _merge(base[key], value, where, f"{name}.")
        else:
            out[key] = value
    return out


def _patterns(value, name: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {name} must be a list of strings, not {value!r}")
    for v in value:
        try:
            re.compile(v)
        except re.error as exc:
            raise ConfigError(f"{where}: {name} pattern {v!r} is not a regular expression ({exc})") from None
    return tuple(value)


def _range(value, name: str, where: str) -> tuple[float, float]:
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))
    if not ok or value[0] > value[1]:
        raise ConfigError(f"{where}: {name} must be [low, high] in ms with low <= high, not {value!r}")
    return float(value[0]), float(value[1])


def _role(d: dict, role: str, where: str) -> RoleRule:
    if d["contrast"] not in CONTRAST_MODES:
        raise ConfigError(f"{where}: {role}.contrast must be one of {list(CONTRAST_MODES)}, not {d['contrast']!r}")
    bad = [p for p in d["prefer"] if p not in PREFERENCES]
    if bad:
        raise ConfigError(f"{where}: {role}.prefer may hold {list(PREFERENCES)}, not {bad}")
    pats = {k: _patterns(d[k], f"{role}.{k}", where)
            for k in ("description", "reject_description", "reject_sequence_name")}
    ranges = {k: _range(d[k], f"{role}.{k}", where)
              for k in ("echo_time_ms", "repetition_time_ms", "inversion_time_ms")}
    return RoleRule(**pats, **ranges, reject_scanning_sequence=tuple(s.upper() for s in d["reject_scanning_sequence"]),
                    contrast=d["contrast"], prefer=tuple(d["prefer"]))


def load_rules(path: Path | None = None) -> Rules:
    """The packaged rules, with ``path``'s merged over them where given.

    Raises:
        ConfigError: ``path`` missing or not TOML; an unknown key; a value of the wrong kind (a
            pattern that is not a regular expression, a range that is not [low, high], ...).
    """
    text = resources.files("gbmmet.manifest_builder").joinpath(DEFAULT_RULES).read_text("utf-8")
    data, source = tomllib.loads(text), f"gbmmet/manifest_builder/{DEFAULT_RULES}"
    if path is not None:
        try:
            site = tomllib.loads(Path(path).read_text("utf-8"))
        except OSError as exc:
            raise ConfigError(f"--rules {path}: cannot be read ({exc.strerror or exc})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--rules {path}: not a valid UTF-8 TOML file ({exc})") from None
        data, source = _merge(data, site, f"--rules {path}"), f"{source} + {path}"
    where = f"rules ({source})"
    if not isinstance(data["min_images"], int) or data["min_images"] < 1:
        raise ConfigError(f"{where}: min_images must be a whole number >= 1, not {data['min_images']!r}")
    return Rules(
        min_images=data["min_images"],
        exclude_description=_patterns(data["exclude"]["description"], "exclude.description", where),
        exclude_image_type=tuple(s.upper() for s in data["exclude"]["image_type"]),
        contrast_post=_patterns(data["contrast"]["post"], "contrast.post", where),
        contrast_pre=_patterns(data["contrast"]["pre"], "contrast.pre", where),
        roles={role: _role(data[role], role, where) for role in (C.T1C, C.T2)},
        roi_mask=tuple(data["roi"]["mask"]),
        source=source,
    )
