"""Faults: a worker killed mid-patient (a real SIGKILL) and a driver interrupted half way (what
had finished is committed on the way out, and the re-run redoes only the rest)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from gbmmet import constants as C
from gbmmet.pseudonym import pseudonymise
from pipelines.preprocess import run_preprocess
from storage.lake import Lake
from tests.conftest import default_ctrl_c, tiny_manifests

ROOT = Path(__file__).resolve().parents[2]


def _kill_worker_once(title: str, deadline: float, killed: list) -> None:
    """Find the Ray worker whose process title is ``title`` and SIGKILL it (bounded wait)."""
    while time.monotonic() < deadline and not killed:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if cmd.startswith(f"ray::{title}"):
                os.kill(proc.info["pid"], signal.SIGKILL)
                killed.append(proc.info["pid"])
                return
        time.sleep(0.05)


def test_killed_worker_is_retried_and_the_patient_completes_once(tiny_cohort, tmp_path, ray_local):
    from gbmmet.preprocess.params import PreprocessParams

    lake_dir = tmp_path / "lake"
    lake = Lake(lake_dir).ensure()
    cohort = tmp_path / "cohort"  # a copy: the id map is written beside the manifests
    shutil.copytree(tiny_cohort, cohort)
    manifest = cohort / "siteB" / C.MANIFEST_FILE
    victim = pseudonymise(lake.secret(), "siteB", "B0003")
    killed: list[int] = []
    killer = threading.Thread(target=_kill_worker_once,
                              args=(f"preprocess-{victim}", time.monotonic() + 120, killed), daemon=True)
    killer.start()
    # default 1 mm parameters: each patient takes seconds, so the kill lands mid-patient
    summary = run_preprocess([manifest], lake_dir, params=PreprocessParams(), show_progress=False)
    killer.join(timeout=5)
    assert killed, "the worker running the patient was never seen"
    assert "B0003" in summary.ok and not summary.failed
    runs = lake.read(C.TABLE_PREPROCESS_RUNS).to_pylist()
    assert Counter(r[C.COL_PATIENT_ID] for r in runs if r["status"] == "ok")[victim] == 1
    assert Counter(r[C.COL_PATIENT_ID] for r in lake.read(C.TABLE_PATIENTS).to_pylist())[victim] == 1
    for f in lake.files(C.TABLE_SLICES) + lake.files(C.TABLE_PATIENTS):  # every visible file is whole
        pq.read_table(f)


def test_interrupted_driver_rerun_finishes_the_rest_without_redoing(tiny_cohort, tmp_path):
    lake_dir = tmp_path / "lake"
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, cohort)
    manifests = tiny_manifests(cohort)
    env = dict(os.environ, RAY_TMPDIR=str(Path(os.environ["RAY_TMPDIR"]) / "driver"))
    Path(env["RAY_TMPDIR"]).mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pipelines.cli", "preprocess", "--lake", str(lake_dir), "--workers", "1"]
    for m in manifests:
        cmd += ["--manifest", str(m)]
    proc = subprocess.Popen(cmd, preexec_fn=default_ctrl_c, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    slices = lake_dir / C.TABLE_SLICES
    deadline = time.monotonic() + 240
    try:  # three patients finished (their slices staged, not committed yet: a batch is 32 or 30 s)
        while time.monotonic() < deadline and len(list(slices.rglob("part-*.parquet"))) < 3:
            assert proc.poll() is None, "the driver ended before it could be interrupted"
            time.sleep(0.2)
        time.sleep(1.0)  # their results reach the driver
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: what finished is committed before the driver stops
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    done_before = set(Lake(lake_dir).read(C.TABLE_PATIENTS).column(C.COL_PATIENT_ID).to_pylist())
    assert 3 <= len(done_before) < 20
    from gbmmet.preprocess.params import PreprocessParams

    summary = run_preprocess(manifests, lake_dir, params=PreprocessParams(), workers=0, show_progress=False)
    assert len(summary.skipped) == len(done_before)
    assert len(summary.ok) + len(summary.skipped) == 20 and not summary.failed
    runs = Lake(lake_dir).read(C.TABLE_PREPROCESS_RUNS).to_pylist()
    ok = Counter(r[C.COL_PATIENT_ID] for r in runs if r["status"] == "ok")
    assert len(ok) == 20
    assert all(ok[pid] == 1 for pid in done_before)  # the finished ones were not redone
