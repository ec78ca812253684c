"""The main job end to end (`gbmmet run`, what `make demo` runs) on the tiny preset, then again:
the second run reuses every stage."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from gbmmet import constants as C
from pipelines.cli import main
from pipelines.ray_runtime import VERBOSE_ENV
from storage.lake import Lake

# What Ray itself prints (its INFO lines; what its actors and workers print, prefixed with their
# class and pid; Ray Data's plans, progress reports and warnings): none of it may reach a quiet
# run's terminal.
RAY_INTERNALS = ("INFO worker.py", "(TrainController", "(RayTrainWorker", "(PlacementGroupCleaner", "pid=",
                 "Ray Train Controller", "worker group", "raylet", "[repeated", "streaming_executor",
                 "logging_progress", "Execution plan", "MapBatches(", "DeprecationWarning", "UserWarning")


@pytest.mark.slow
def test_gbmmet_run_end_to_end_quietly_and_rerun_reuses(tmp_path, ray_local, capsys):
    lake, data = tmp_path / "lake", tmp_path / "data"
    args = ["run", "--preset", "tiny", "--lake", str(lake), "--data", str(data), "--epochs", "3",
            "--resamples", "100"]
    # as a user runs it: its own process, its own local Ray, everything it prints (this checkout's code)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", VERBOSE_ENV)}
    gbmmet = "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", gbmmet, *args], capture_output=True, text=True, env=env,
                          encoding="utf-8", errors="replace", timeout=1800, cwd=Path(__file__).resolve().parents[2])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    leaked = [line for line in out.splitlines() if any(s in line for s in RAY_INTERNALS)]
    assert not leaked, leaked[:5]
    logs = out.split("Ray's own logs: ")[1].split(" (--verbose")[0]
    assert Path(logs).is_dir()  # named in the closing line, and there
    for stage in ("== synth", "== preprocess", "== features", "== train", "== readers", "== evaluate"):
        assert stage in out
    assert "reader2 + model" in out and "time per stage:" in out and f"lake: {lake}" in out
    L = Lake(lake)
    assert L.read(C.TABLE_PATIENTS).num_rows == 20
    assert L.read(C.TABLE_FOLDS, filter=pc.field("run_id") == "tiny").num_rows == 10
    metrics = L.read(C.TABLE_METRICS, filter=pc.field("run_id") == "tiny")
    assert set(metrics.column("cohort").to_pylist()) == {C.VAL, C.TEST, C.EXTERNAL}
    assert L.read(C.TABLE_CAMS).num_rows > 0

    t0 = time.perf_counter()
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "0 written, 20 reused" in again and "0 done, 20 already in the lake" in again
    assert "already trained with these settings" in again and "already evaluated" in again
    assert time.perf_counter() - t0 < 60
