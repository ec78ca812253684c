"""Benchmark of ``gbmmet preprocess`` on the demo cohort, measured side by side in one run:

- CPU and wall seconds per step per patient (one process, one thread: what one Ray task costs;
  QC panels drawn, as ``gbmmet preprocess`` draws them), with today's settings and with the
  settings before issue 15 (``_before_issue_15``), and how far the stored slices move between
  the two (mean |difference| and 99th percentile, uint8 levels, per patient); with
  ``--reference``, also how far N4 shrink 4 -> 6 moved them (the yardstick issue 15 set);
- N4: SimpleITK against antspyx on the same CE-T1 volumes;
- throughput with 1 and 2 Ray workers on the same patients, and the speed-up;
- the extrapolated time for the paper preset (741 patients) on this machine.

    .venv/bin/python bench/preprocess.py [--cohort data/demo] [--patients 10] [--reference]

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
from dataclasses import replace
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


def _before_issue_15(p, shrink: int | None = None):
    """``p`` with the settings it replaced in issue 15: N4 with (20, 20) iterations, its head mask
    on the full image and its field evaluated at every voxel; registration with random sampling,
    gradient images and a 0.001 mm minimum step; the exact KDE (the code gives the slices it gave
    then)."""
    n4 = replace(p.n4, iterations=(20, 20), mask_mm=0.0, field_mm=0.0, shrink=shrink or p.n4.shrink)
    return replace(p, n4=n4,
                   registration=replace(p.registration, sampling=0.10, min_step=1e-3, gradient_filter=True,
                                        sampling_strategy="random"),
                   whitestripe=replace(p.whitestripe, kde_bins=None))


def _per_step(rows, params) -> list[dict]:
    """Per patient: CPU and wall seconds per step and the stored slices."""
    from gbmmet.preprocess import qc_panels
    from gbmmet.preprocess.patient import preprocess_patient

    out = []
    for r in rows:
        o = preprocess_patient(r["t1c_path"], r["t2_path"], r["roi_path"], params, patient_id=r["patient_id"],
                               qc=True)
        t, c = time.perf_counter(), time.process_time()
        qc_panels.render_patient(o)
        out.append({"cpu": {**o.cpu_seconds, "qc_panels": time.process_time() - c},
                    "wall": {**o.seconds, "qc_panels": time.perf_counter() - t}, "images": o.images})
    return out


def _movement(a: list[dict], b: list[dict]) -> list[tuple[float, float]]:
    """Per patient, (mean, 99th percentile) of |a - b| over its stored slices (uint8 levels)."""
    import numpy as np

    moved = []
    for x, y in zip(a, b, strict=True):
        d = np.abs(x["images"].astype(np.int16) - y["images"].astype(np.int16))
        moved.append((float(d.mean()), float(np.percentile(d, 99))))
    return moved


def _mean_steps(runs: list[dict], key: str) -> dict[str, float]:
    steps = runs[0][key]
    return {s: statistics.mean(r[key][s] for r in runs) for s in steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--reference", action="store_true",
                        help="also measure how far N4 shrink 4 -> 6 moved the slices (6 more patient runs)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pre-"))
    use_ray_tmpdir(tmp)
    try:
        import ray
        import SimpleITK as sitk

        from gbmmet import io
        from gbmmet.preprocess import bias
        from gbmmet.preprocess.params import PreprocessParams
        from pipelines.preprocess import run_preprocess

        cohort = _cohort(args.cohort, args.patients, tmp)
        manifest = _subset_manifest(cohort, args.patients, tmp)
        with manifest.open() as fh:
            rows = list(csv.DictReader(fh))

        # 1. per step, one thread (a Ray task's share of a core), today's settings and those before
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        params = PreprocessParams()
        _per_step(rows[:1], params)  # imports and first calls kept out of the figures
        new = _per_step(rows[:6], params)
        old = _per_step(rows[:6], _before_issue_15(params))
        per_step = _mean_steps(new, "wall")
        per_step_cpu, per_step_cpu_old = _mean_steps(new, "cpu"), _mean_steps(old, "cpu")
        per_patient = sum(per_step.values())
        moved = _movement(old, new)
        yardstick = _movement(_per_step(rows[:6], _before_issue_15(params, shrink=4)), old) if args.reference else []

        # 2. N4 backends on the same volumes (one thread each)
        n4 = {"sitk": [], "ants": []}
        for r in rows[:3]:
            img = io.read_image(r["t1c_path"])
            mask = bias.head_mask(img)
            for backend in n4:
                t0 = time.perf_counter()
                n4p = PreprocessParams().n4
                bias.n4_correct(img, mask, backend=backend, shrink=n4p.shrink, iterations=n4p.iterations,
                                convergence=n4p.convergence, field_mm=n4p.field_mm)
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
            "wall_seconds_per_patient": per_patient,
            "cpu_seconds_per_step": per_step_cpu,
            "cpu_seconds_per_step_before_issue_15": per_step_cpu_old,
            "cpu_seconds_per_patient": sum(per_step_cpu.values()),
            "cpu_seconds_per_patient_max": max(sum(r["cpu"].values()) for r in new),
            "cpu_seconds_per_patient_before_issue_15": sum(per_step_cpu_old.values()),
            "slices_moved_mean_p99": moved,
            "slices_moved_by_n4_shrink_4_to_6": yardstick,
            "n4_seconds": {k: statistics.mean(v) for k, v in n4.items()},
            "wall_seconds": {"1_worker": wall[1], "2_workers": wall[2]},
            "speedup_2_over_1": speedup,
            "paper_preset_estimate_s": paper_s,
        }
        print(f"seconds per step per patient (one thread, mean of {len(new)}): CPU before issue 15, CPU now, wall now")
        for s in per_step:
            print(f"  {s:12s} {per_step_cpu_old[s]:6.2f} {per_step_cpu[s]:6.2f} {per_step[s]:6.2f}")
        print(f"  {'total':12s} {result['cpu_seconds_per_patient_before_issue_15']:6.2f} "
              f"{result['cpu_seconds_per_patient']:6.2f} {per_patient:6.2f} "
              f"(CPU now, slowest patient: {result['cpu_seconds_per_patient_max']:.2f})")
        print("stored slices moved by today's settings against those before (mean / 99th pct, uint8 levels): "
              + ", ".join(f"{m:.2f}/{p:.0f}" for m, p in moved))
        if yardstick:
            print("  and by N4 shrink 4 -> 6 (the yardstick): " + ", ".join(f"{m:.2f}/{p:.0f}" for m, p in yardstick))
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
