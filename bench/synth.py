"""Benchmark of ``gbmmet synth``: seconds per patient per preset, and the speed-up of 2 Ray
workers over 1, measured side by side in one run.

    .venv/bin/python bench/synth.py [--patients 10]

Prints a table and writes bench/out/synth.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import save, use_ray_tmpdir


def per_patient(preset_name: str, n: int, folder: Path) -> tuple[float, float]:
    """Seconds per patient in this process (synthesis + writing), after the template is loaded;
    and the one-off template load."""
    from gbmmet.synth.anatomy import load_anatomy
    from gbmmet.synth.cohort import build_cohort, get_preset
    from gbmmet.synth.render import synthesize_patient
    from gbmmet.synth.writer import write_patient

    preset = get_preset(preset_name)
    t0 = time.perf_counter()
    load_anatomy(preset.template_mm)
    load = time.perf_counter() - t0
    specs = build_cohort(preset, 0)[:n]
    t0 = time.perf_counter()
    for spec in specs:
        write_patient(synthesize_patient(spec, preset), folder / preset_name / spec.site, truth=False)
    return (time.perf_counter() - t0) / len(specs), load


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
            sec, load = per_patient(name, n, tmp)
            rows[name] = {"patients_timed": n, "seconds_per_patient": sec, "template_load_s": load,
                          "patients_in_preset": get_preset(name).n}
        one = ray_run(args.patients, 1, tmp)
        two = ray_run(args.patients, 2, tmp)
        result = {
            "per_preset": rows,
            "ray": {"patients": args.patients, "one_worker_s": one, "two_workers_s": two,
                    "speedup": one / two},
        }
        print(f"{'preset':8} {'patients':>8} {'s/patient':>10} {'template load s':>16} {'whole preset on 2 workers (est.)':>34}")
        for name, r in rows.items():
            est = r["template_load_s"] + r["seconds_per_patient"] * r["patients_in_preset"] / 2
            r["whole_preset_2_workers_s_estimate"] = est
            print(f"{name:8} {r['patients_in_preset']:8d} {r['seconds_per_patient']:10.2f} "
                  f"{r['template_load_s']:16.2f} {est:33.0f}s")
        print(f"\nRay, {args.patients} demo patients: 1 worker {one:.1f} s, 2 workers {two:.1f} s, "
              f"speed-up {one / two:.2f}x (template load per worker included)")
        save("synth", result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
