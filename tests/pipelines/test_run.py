"""The main job end to end (`gbmmet run`, what `make demo` runs) on the tiny preset, then again:
the second run reuses every stage."""

from __future__ import annotations

import time

import pyarrow.compute as pc
import pytest

from gbmmet import constants as C
from pipelines.cli import main
from storage.lake import Lake


@pytest.mark.slow
def test_gbmmet_run_end_to_end_and_rerun_reuses(tmp_path, ray_local, capsys):
    lake, data = tmp_path / "lake", tmp_path / "data"
    args = ["run", "--preset", "tiny", "--lake", str(lake), "--data", str(data), "--epochs", "3",
            "--resamples", "100"]
    assert main(args) == 0
    out = capsys.readouterr().out
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
