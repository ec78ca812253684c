"""Drivers stopped by a signal: Ctrl-C (SIGINT) cancels the outstanding tasks, commits what
finished and says so (exit 130, "re-run the same command to resume"); a driver killed outright
(SIGKILL) takes its local Ray with it and leaves only what it had committed visible, so the next
run redoes exactly the rest. Real driver processes on 127.0.0.1, bounded waits, nothing left
behind."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import typer

from gbmmet import constants as C
from gbmmet.pseudonym import pseudonymise
from pipelines.cli import EXIT_INTERRUPTED, RESUME_HINT, _user_errors
from pipelines.ray_runtime import Interrupted, run_batch
from storage.lake import Lake
from tests.conftest import default_ctrl_c

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env():
    """The session's Ray settings, with a Ray folder of the child's own: short (Ray's socket paths
    must fit in 107 bytes), removed afterwards."""
    ray_tmp = tempfile.mkdtemp(prefix="sig", dir=os.environ.get("RAY_TMPDIR", "/tmp"))
    yield dict(os.environ, RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT))
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _wait_for(cond, seconds: float, proc: subprocess.Popen | None = None, step: float = 0.1) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return cond()
        time.sleep(step)
    return cond()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_tree(proc: subprocess.Popen, family: list[psutil.Process]) -> None:
    """SIGKILL the driver and every process seen under it (never anything else)."""
    try:
        family = family + psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    for p in [proc, *family]:
        try:
            p.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    proc.wait(timeout=30)


def _staged(lake_dir: Path) -> int:
    """Slices files written into the lake by finished patients, committed or not (a fresh lake)."""
    return len(list((lake_dir / C.TABLE_SLICES).rglob("part-*.parquet")))


def _committed(lake_dir: Path) -> set[str]:
    """The patients marked done: their ``patients`` row is committed."""
    return set(Lake(lake_dir).read(C.TABLE_PATIENTS, columns=[C.COL_PATIENT_ID]).column(0).to_pylist())


def _site(tiny_cohort: Path, tmp_path: Path, ids: list[str]) -> Path:
    folder = tmp_path / "siteB"
    shutil.copytree(tiny_cohort / "siteB", folder)
    manifest = folder / C.MANIFEST_FILE
    with manifest.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r[C.COL_PATIENT_ID] in ids]
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(C.MANIFEST_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    return manifest


# -- in-process: the error and the CLI's wording ------------------------------------------------
def test_ctrl_c_in_a_local_batch_raises_interrupted_saying_what_finished():
    def fn(i):
        if i == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
        if i == 1:
            raise ValueError("bad item")
        return i

    with pytest.raises(Interrupted) as err:
        run_batch([(f"k{i}", (i,)) for i in range(4)], fn, description="demo", use_ray=False, show_progress=False)
    exc = err.value
    assert exc.done == ["k0"] and exc.failed == ["k1"] and exc.not_finished == ["k2", "k3"]
    assert str(exc) == "demo interrupted: 1 done, 1 failed, 2 not finished (cancelled) of 4"
    assert [o.key for o in exc.report.outcomes] == ["k0", "k1"]


def test_the_cli_prints_an_interruption_with_the_resume_hint_and_exits_130(capsys):
    @_user_errors
    def interrupted():
        raise Interrupted("preprocess interrupted: 2 patient(s) done", done=["a", "b"], failed=[], not_finished=["c"])

    @_user_errors
    def bare():
        raise KeyboardInterrupt

    for fn, text in ((interrupted, "interrupted: preprocess interrupted: 2 patient(s) done"),
                     (bare, "interrupted (Ctrl-C)")):
        with pytest.raises(typer.Exit) as err:
            fn()
        assert err.value.exit_code == EXIT_INTERRUPTED == 130
        assert capsys.readouterr().err.strip() == f"{text}; {RESUME_HINT}"


# -- real drivers -------------------------------------------------------------------------------
def test_ctrl_c_cancels_the_outstanding_ray_tasks_and_kills_their_workers(tmp_path, env):
    marks = tmp_path / "marks"
    marks.mkdir()
    code = textwrap.dedent(f"""
        import json, os, time
        from pipelines.ray_runtime import Interrupted, init_ray, run_batch

        def work(i):
            if i == 0:
                return "quick"
            with open(os.path.join({str(marks)!r}, f"{{i}}.pid"), "w") as fh:
                fh.write(str(os.getpid()))
            time.sleep(300)

        init_ray(num_cpus=2)
        try:
            run_batch([(f"k{{i}}", (i,)) for i in range(4)], work, description="demo", use_ray=True,
                      show_progress=False)
        except Interrupted as exc:
            print(json.dumps({{"done": exc.done, "failed": exc.failed, "not_finished": exc.not_finished}}), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], preexec_fn=default_ctrl_c, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8")
    family: list[psutil.Process] = []
    try:
        # with 2 CPUs: k0 returns, k1 and k2 sleep, k3 waits
        assert _wait_for(lambda: len(list(marks.glob("*.pid"))) >= 2, 90, proc), proc.communicate(timeout=30)
        workers = [psutil.Process(int(p.read_text())) for p in marks.glob("*.pid")]
        family = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.5)  # k0's result reaches the driver
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        got = json.loads(out.strip().splitlines()[-1])
        assert got == {"done": ["k0"], "failed": [], "not_finished": ["k1", "k2", "k3"]}
        assert _wait_for(lambda: not any(_alive(w) for w in workers), 20)  # cancelled, not left running
    finally:
        if proc.poll() is None or family:
            _kill_tree(proc, family)


def test_ctrl_c_without_ray_exits_130_saying_what_finished(tiny_cohort, tmp_path, env):
    manifest = _site(tiny_cohort, tmp_path, ["B0001", "B0002", "B0003", "B0004"])
    lake_dir = tmp_path / "lake"
    cmd = [sys.executable, "-m", "pipelines.cli", "preprocess", "--manifest", str(manifest), "--lake", str(lake_dir),
           "--workers", "0"]
    proc = subprocess.Popen(cmd, preexec_fn=default_ctrl_c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            encoding="utf-8")
    try:
        # a patient has finished (its slices staged), long before a batch is due
        assert _wait_for(lambda: _staged(lake_dir) >= 1, 120, proc), proc.communicate(timeout=30)
        assert not _committed(lake_dir)
        time.sleep(0.5)  # its result reaches the driver
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            _kill_tree(proc, [])
    assert proc.returncode == 130, err
    done = len(_committed(lake_dir))  # what finished was committed before stopping
    assert 1 <= done < 4
    assert f"preprocess interrupted: {done} patient(s) done, 0 failed, {4 - done} not finished" in err
    assert err.rstrip().endswith("re-run the same command to resume") and "Traceback" not in err
    runs = Lake(lake_dir).read(C.TABLE_PREPROCESS_RUNS).to_pylist()
    assert len(runs) == done and all(r["status"] == "ok" for r in runs)  # nothing half recorded


@pytest.mark.slow
def test_ctrl_c_in_the_preprocess_cli_on_ray_exits_130_and_the_same_command_resumes(tiny_cohort, tmp_path, env):
    manifest = _site(tiny_cohort, tmp_path, ["B0001", "B0002", "B0003", "B0004"])
    lake_dir = tmp_path / "lake"
    cmd = [sys.executable, "-m", "pipelines.cli", "preprocess", "--manifest", str(manifest), "--lake", str(lake_dir),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, preexec_fn=default_ctrl_c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
    family: list[psutil.Process] = []
    try:
        assert _wait_for(lambda: _staged(lake_dir) >= 1, 180, proc), proc.communicate(timeout=30)
        time.sleep(1.0)  # its result reaches the driver
        family = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        _kill_tree(proc, family)
    assert proc.returncode == 130, err
    done = _committed(lake_dir)
    assert 1 <= len(done) < 4
    assert f"preprocess interrupted: {len(done)} patient(s) done" in err and RESUME_HINT in err
    # the same command resumes: only the rest is processed
    again = subprocess.run(cmd[:-2] + ["--workers", "0"], cwd=ROOT, env=env, capture_output=True, encoding="utf-8",
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{4 - len(done)} ok, {len(done)} skipped" in again.stdout
    runs = Lake(lake_dir).read(C.TABLE_PREPROCESS_RUNS).to_pylist()
    assert sorted(r[C.COL_PATIENT_ID] for r in runs if r["status"] == "ok") == sorted(_committed(lake_dir))
    assert len(_committed(lake_dir)) == 4  # each patient done once


def test_a_sigkilled_preprocess_driver_leaves_only_its_commits_and_the_next_run_redoes_the_rest(
        tiny_cohort, tmp_path, env):
    ids = ["B0001", "B0002", "B0003", "B0004"]
    manifest = _site(tiny_cohort, tmp_path, ids)
    lake_dir = tmp_path / "lake"
    code = textwrap.dedent(f"""
        from gbmmet.preprocess.params import PreprocessParams
        from pipelines.preprocess import BatchSettings, run_preprocess

        run_preprocess([{str(manifest)!r}], {str(lake_dir)!r}, params=PreprocessParams(iso_mm=2.0), workers=0,
                       show_progress=False, batch=BatchSettings(patients=1))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, encoding="utf-8")
    try:  # killed once a patient is committed, most likely while the next one runs
        assert _wait_for(lambda: Lake(lake_dir).version(C.TABLE_PATIENTS) is not None, 120, proc, step=0.05), \
            proc.communicate(timeout=30)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            _kill_tree(proc, [])
    lake = Lake(lake_dir)
    done = _committed(lake_dir)
    assert 1 <= len(done) < 4, "the driver finished before it was killed"
    # nothing of an uncommitted patient is visible but (killed between a batch's commits) its slices
    assert done <= set(lake.read(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID]).column(0).to_pylist())
    runs = lake.read(C.TABLE_PREPROCESS_RUNS).to_pylist()
    assert all(r["status"] == "ok" for r in runs) and done <= {r[C.COL_PATIENT_ID] for r in runs}

    from gbmmet.preprocess.params import PreprocessParams
    from pipelines.preprocess import run_preprocess

    again = run_preprocess([manifest], lake_dir, params=PreprocessParams(iso_mm=2.0), workers=0, show_progress=False)
    assert len(again.ok) == 4 - len(done) and len(again.skipped) == len(done)  # exactly the uncommitted redone
    assert {pseudonymise(lake.secret(), "siteB", pid) for pid in again.skipped} == done
    patients = lake.read(C.TABLE_PATIENTS).to_pylist()
    assert len(patients) == 4
    slices = Counter(lake.read(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID]).column(0).to_pylist())
    assert slices == {p[C.COL_PATIENT_ID]: p["n_slices"] for p in patients}  # no slice twice, none lost


@pytest.mark.slow
def test_a_sigkilled_driver_takes_its_local_ray_with_it(env):
    code = textwrap.dedent("""
        import time, ray
        from pipelines.ray_runtime import init_ray

        init_ray(num_cpus=2)

        @ray.remote
        def sleep():
            time.sleep(300)

        refs = [sleep.remote() for _ in range(2)]
        time.sleep(3)
        print("READY", flush=True)
        ray.get(refs)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    family: list[psutil.Process] = []
    try:
        assert proc.stdout.readline().strip() == "READY"
        family = psutil.Process(proc.pid).children(recursive=True)
        names = {p.name() for p in family}
        assert {"raylet", "gcs_server"} <= names and sum(n == "ray::sleep" for n in names) >= 1
        t0 = time.monotonic()
        proc.kill()
        proc.wait(timeout=30)
        core = [p for p in family if p.name() in ("raylet", "gcs_server")]
        assert _wait_for(lambda: not any(_alive(p) for p in core), 10)  # fate-shared at once
        # the task workers within seconds, the dashboard and runtime-env agents within about a minute
        assert _wait_for(lambda: not any(_alive(p) for p in family), 120, step=0.5), \
            [(p.pid, p.name()) for p in family if _alive(p)]
        assert time.monotonic() - t0 < 120
    finally:
        _kill_tree(proc, family)
