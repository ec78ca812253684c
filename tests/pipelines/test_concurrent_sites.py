"""Two sites preprocessed at the same time into one lake: two driver processes, each a site's job
on the session's local Ray (127.0.0.1), committing a batch per patient. Both land whole: every
patient of both sites in ``patients``, ``slices`` and ``preprocess_runs``, and every commit either
driver made is a version of its table (none lost to the other's)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from gbmmet import constants as C
from pipelines.preprocess import ID_MAP_FILE
from storage.lake import Lake

ROOT = Path(__file__).resolve().parents[2]
PER_SITE = 4
TABLES = (C.TABLE_SLICES, C.TABLE_QC_PANELS, C.TABLE_PREPROCESS_RUNS, C.TABLE_PATIENTS)


def _site(tiny_cohort: Path, tmp_path: Path, site: str) -> Path:
    """A copy of ``site``'s folder whose manifest holds its first ``PER_SITE`` patients."""
    folder = tmp_path / site
    shutil.copytree(tiny_cohort / site, folder)
    manifest = folder / C.MANIFEST_FILE
    with manifest.open() as fh:
        rows = list(csv.DictReader(fh))[:PER_SITE]
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(C.MANIFEST_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    return manifest


def _driver(manifest: Path, lake_dir: Path, address: str) -> subprocess.Popen:
    """A site's preprocess job in its own process, on the Ray at ``address``, one commit batch per
    patient (so the two drivers' commits interleave); prints its summary as JSON."""
    code = textwrap.dedent(f"""
        import json, time
        from gbmmet.preprocess.params import PreprocessParams
        from pipelines.preprocess import BatchSettings, run_preprocess

        start = time.time()
        s = run_preprocess([{str(manifest)!r}], {str(lake_dir)!r}, params=PreprocessParams(iso_mm=2.0),
                           address={address!r}, show_progress=False, batch=BatchSettings(patients=1))
        print(json.dumps({{"ok": s.ok, "failed": s.failed, "commits": s.commits, "batches": s.batches,
                          "start": start, "end": time.time()}}), flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, encoding="utf-8")


def _pseudonyms(manifest: Path) -> set[str]:
    with (manifest.parent / ID_MAP_FILE).open() as fh:
        return {r["pseudonym"] for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_two_sites_preprocessed_at_once_into_one_lake_both_land_whole(tiny_cohort, tmp_path, ray_local):
    lake_dir = tmp_path / "lake"
    Lake(lake_dir).check_writable()  # the key first: two new drivers would each make their own
    manifests = [_site(tiny_cohort, tmp_path, site) for site in ("siteA", "siteB")]
    address = ray_local.get_runtime_context().gcs_address
    procs = [_driver(m, lake_dir, address) for m in manifests]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-4000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    a, b = results
    assert a["start"] < b["end"] and b["start"] < a["end"]  # the two jobs ran at the same time
    assert all(len(r["ok"]) == PER_SITE and not r["failed"] and r["batches"] == PER_SITE for r in results)

    lake = Lake(lake_dir)
    everyone = _pseudonyms(manifests[0]) | _pseudonyms(manifests[1])
    assert len(everyone) == 2 * PER_SITE
    patients = lake.read(C.TABLE_PATIENTS).to_pylist()
    assert sorted(p[C.COL_PATIENT_ID] for p in patients) == sorted(everyone)
    slices = Counter(lake.read(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID]).column(0).to_pylist())
    assert slices == {p[C.COL_PATIENT_ID]: p["n_slices"] for p in patients}
    runs = lake.read(C.TABLE_PREPROCESS_RUNS).to_pylist()
    assert sorted(r[C.COL_PATIENT_ID] for r in runs) == sorted(everyone) and {r["status"] for r in runs} == {"ok"}
    # no commit lost: one version per commit of either driver, a patients version per batch
    assert lake.version(C.TABLE_PATIENTS) + 1 == 2 * PER_SITE
    assert sum(lake.version(t) + 1 for t in TABLES) == a["commits"] + b["commits"]
