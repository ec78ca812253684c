"""Shared set-up of the benchmarks: project on sys.path, Ray on loopback, results folder."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def use_ray_tmpdir(tmp: Path) -> None:
    """Ray's temporary files under this benchmark's own folder (unless the user chose one)."""
    (tmp / "ray").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_TMPDIR", str(tmp / "ray"))


def save(name: str, result: dict) -> Path:
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=1))
    return path
