"""Benchmark of ``gbmmet synth``: seconds per patient per preset (wall and CPU) for one worker of
one CPU, as a Ray task runs it (SimpleITK, torch and BLAS on one thread), and the speed-up of 2
Ray workers over 1, measured side by side in one run. CPU seconds are what to compare on a shared
machine: wall time there depends on what else runs.

    .venv/bin/python bench/synth.py [--patients 10]

Prints a table and writes bench/out/synth.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import save, use_ray_tmpdir

# BLAS on one thread, as in a Ray task of one CPU (read when numpy loads, so set before).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def per_patient(preset_name: str, n: int, folder: Path) -> dict[str, float]:
    """Seconds per patient in this process on one thread (synthesis + writing), wall and CPU,
    after the one-off work of a worker (template, cached blurs, readers' calibration, torch's
    import); and that one-off work, wall."""
    import SimpleITK as sitk

    from gbmmet.synth.cohort import build_cohort, get_preset
    from gbmmet.synth.render import prepare, synthesize_patient
    from gbmmet.synth.writer import write_patient

    preset = get_preset(preset_name)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # torch follows SimpleITK's setting
    try:
        t0 = time.perf_counter()
        prepare(preset)
        load = time.perf_counter() - t0
        specs = build_cohort(preset, 0)[:n]
        t0, c0 = time.perf_counter(), time.process_time()
        for spec in specs:
            write_patient(synthesize_patient(spec, preset), folder / preset_name / spec.site, truth=False)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return {"seconds_per_patient": (time.perf_counter() - t0) / len(specs),
            "cpu_seconds_per_patient": (time.process_time() - c0) / len(specs), "template_load_s": load}


def ray_run(n: int, workers: int, folder: Path) -> float:
    """Wall seconds to write the first ``n`` demo patients as Ray tasks on ``workers`` CPUs,
    including each worker's template load (what a user waits for)."""
    import ray

    from gbmmet.synth.cohort import build_cohort, get_preset
    from pipelines.ray_runtime import init_ray, run_batch
    from pipelines.synth import _synth_one

    preset = get_preset("demo")
    specs = build_cohort(preset, 0)[:n]
    init_ray(num_cpus=workers)
    try:
        items = [(s.patient_id, (s, preset, 0.5, str(folder / f"w{workers}" / s.site), False)) for s in specs]
        t0 = time.perf_counter()
        report = run_batch(items, _synth_one, description=f"{workers} worker(s)", use_ray=True,
                           show_progress=False)
        seconds = time.perf_counter() - t0
        assert not report.failed, report.failed
        return seconds
    finally:
        ray.shutdown()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10, help="demo patients for the Ray speed-up")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    use_ray_tmpdir(tmp)
    try:
        from gbmmet.synth.cohort import get_preset

        rows = {}
        for name, n in (("tiny", 20), ("demo", 6), ("paper", 4)):
            rows[name] = {"patients_timed": n, **per_patient(name, n, tmp),
                          "patients_in_preset": get_preset(name).n}
        one = ray_run(args.patients, 1, tmp)
        two = ray_run(args.patients, 2, tmp)
        result = {
            "per_preset": rows,
            "ray": {"patients": args.patients, "one_worker_s": one, "two_workers_s": two,
                    "speedup": one / two},
        }
        print(f"{'preset':8} {'patients':>8} {'s/patient':>10} {'CPU s/patient':>14} {'one-off s':>10} "
              f"{'whole preset on 2 workers (est.)':>34}")
        for name, r in rows.items():
            est = r["template_load_s"] + r["seconds_per_patient"] * r["patients_in_preset"] / 2
            r["whole_preset_2_workers_s_estimate"] = est
            print(f"{name:8} {r['patients_in_preset']:8d} {r['seconds_per_patient']:10.2f} "
                  f"{r['cpu_seconds_per_patient']:14.2f} {r['template_load_s']:10.2f} {est:33.0f}s")
        print(f"\nRay, {args.patients} demo patients: 1 worker {one:.1f} s, 2 workers {two:.1f} s, "
              f"speed-up {one / two:.2f}x (template load per worker included)")
        save("synth", result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
