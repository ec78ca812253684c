"""Benchmark of ``gbmmet preprocess`` on the demo cohort, measured side by side in one run:

- seconds per step per patient (one process, one thread: what one Ray task costs);
- N4: SimpleITK against antspyx on the same CE-T1 volumes;
- throughput with 1 and 2 Ray workers on the same patients, and the speed-up;
- the extrapolated time for the paper preset (741 patients) on this machine.

    .venv/bin/python bench/preprocess.py [--cohort data/demo] [--patients 10]

Prints a table and writes bench/out/preprocess.json.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import ROOT, save, use_ray_tmpdir

PAPER_PATIENTS = 741


def _cohort(path: Path, n: int, tmp: Path) -> Path:
    """``path`` if it holds a cohort, else the first patients of the demo preset written to tmp."""
    if (path / "siteA" / "manifest.csv").is_file():
        return path
    from gbmmet import constants as C
    from gbmmet.synth.cohort import build_cohort, get_preset
    from gbmmet.synth.render import synthesize_patient
    from gbmmet.synth.writer import manifest_row, write_patient, write_table

    preset = get_preset("demo")
    out = tmp / "cohort"
    specs = [s for s in build_cohort(preset, 0) if s.site == "siteA"][:n]
    for s in specs:
        write_patient(synthesize_patient(s, preset), out / s.site)
    write_table([manifest_row(s) for s in specs], C.MANIFEST_COLUMNS, out / "siteA" / C.MANIFEST_FILE)
    return out


def _subset_manifest(cohort: Path, n: int, tmp: Path) -> Path:
    rows = []
    for m in sorted(cohort.glob("*/manifest.csv")):
        with m.open() as fh:
            for r in csv.DictReader(fh):
                for col in ("t1c_path", "t2_path", "roi_path"):
                    r[col] = str((m.parent / r[col]).resolve())
                rows.append(r)
    rows = rows[::max(1, len(rows) // n)][:n]  # both sites
    out = tmp / "subset.csv"
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--patients", type=int, default=10)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pre-"))
    use_ray_tmpdir(tmp)
    try:
        import ray
        import SimpleITK as sitk

        from gbmmet import io
        from gbmmet.preprocess import bias
        from gbmmet.preprocess.params import PreprocessParams
        from gbmmet.preprocess.patient import STEPS, preprocess_patient
        from pipelines.preprocess import run_preprocess

        cohort = _cohort(args.cohort, args.patients, tmp)
        manifest = _subset_manifest(cohort, args.patients, tmp)
        with manifest.open() as fh:
            rows = list(csv.DictReader(fh))

        # 1. per step, one thread (a Ray task's share of a core)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        steps = {s: [] for s in STEPS}
        for r in rows[:6]:
            out = preprocess_patient(r["t1c_path"], r["t2_path"], r["roi_path"], patient_id=r["patient_id"])
            for s in STEPS:
                steps[s].append(out.seconds[s])
        per_step = {s: statistics.mean(v) for s, v in steps.items()}
        per_patient = sum(per_step.values())

        # 2. N4 backends on the same volumes (one thread each)
        n4 = {"sitk": [], "ants": []}
        for r in rows[:3]:
            img = io.read_image(r["t1c_path"])
            mask = bias.head_mask(img)
            for backend in n4:
                t0 = time.perf_counter()
                n4p = PreprocessParams().n4
                bias.n4_correct(img, mask, backend=backend, shrink=n4p.shrink, iterations=n4p.iterations,
                                convergence=n4p.convergence)
                n4[backend].append(time.perf_counter() - t0)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(os.cpu_count() or 2)

        # 3. throughput, 1 vs 2 workers, same patients, fresh lakes
        wall = {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            s = run_preprocess([manifest], tmp / f"lake{workers}", workers=workers, show_progress=False)
            wall[workers] = time.perf_counter() - t0
            assert not s.failed, s.failed
            ray.shutdown()
        speedup = wall[1] / wall[2]
        paper_s = PAPER_PATIENTS * wall[2] / len(rows)
        result = {
            "patients": len(rows),
            "seconds_per_step": per_step,
            "cpu_seconds_per_patient": per_patient,
            "n4_seconds": {k: statistics.mean(v) for k, v in n4.items()},
            "wall_seconds": {"1_worker": wall[1], "2_workers": wall[2]},
            "speedup_2_over_1": speedup,
            "paper_preset_estimate_s": paper_s,
        }
        print("seconds per step per patient (one thread):")
        for s, v in per_step.items():
            print(f"  {s:12s} {v:6.2f}")
        print(f"  {'total':12s} {per_patient:6.2f}")
        print(f"N4 on CE-T1 (one thread): SimpleITK {result['n4_seconds']['sitk']:.2f} s, "
              f"antspyx {result['n4_seconds']['ants']:.2f} s "
              f"({result['n4_seconds']['ants'] / result['n4_seconds']['sitk']:.1f}x)")
        print(f"{len(rows)} patients: 1 worker {wall[1]:.1f} s, 2 workers {wall[2]:.1f} s, speed-up {speedup:.2f}x "
              "(Ray start-up included)")
        print(f"paper preset ({PAPER_PATIENTS} patients) on this machine, 2 workers: about {paper_s / 60:.0f} min")
        save("preprocess", result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
