"""Benchmark of the main job (`gbmmet run`, what `make demo` runs), in one run:

- a preset from nothing (fresh cohort folder and lake in a temporary folder): wall and CPU
  seconds per stage and in all. CPU seconds are the whole machine's (driver, Ray's workers and
  anything else running), so they mean the job's cost only where the machine is otherwise idle;
  targets on this 2-core machine: demo within 5 min, paper (741 patients) within 30 min;
- the demo also prints the paper preset extrapolated from its stages by patient counts (said
  so; run `--preset paper` to measure it);
- `gbmmet predict` latency on a real BraTS case against that lake (median of 3; target < 30 s).

    .venv/bin/python bench/run.py [--preset demo|paper] [--keep DIR]

Writes bench/out/run.json (demo) or bench/out/run-paper.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import ROOT, save, use_ray_tmpdir

BRATS = ROOT.parent / "shared" / "data" / "brats2018" / "Brats18_2013_3_1"


TARGET_S = {"demo": 300.0, "paper": 1800.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(TARGET_S), default="demo")
    ap.add_argument("--keep", help="keep the data and lake in this folder (default: a temporary one, removed)")
    args = ap.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gbmmet-bench-run-"))
    tmp.mkdir(parents=True, exist_ok=True)
    use_ray_tmpdir(tmp)

    from gbmmet import constants as C
    from gbmmet.synth.cohort import get_preset
    from pipelines.run import machine_cpu_seconds, run_all
    from storage.lake import Lake

    lines: list[str] = []
    t0, c0 = time.perf_counter(), machine_cpu_seconds()
    s = run_all(args.preset, lake=str(tmp / "lake"), data=tmp / "data", echo=lines.append)
    total, total_cpu = time.perf_counter() - t0, machine_cpu_seconds() - c0
    lake = Lake(tmp / "lake")
    n_patients = lake.read(C.TABLE_PATIENTS).num_rows
    n_slices = lake.read(C.TABLE_SLICES, columns=["slice_index"]).num_rows
    latencies = _predict_latencies(tmp) if args.preset == "demo" else []

    target = TARGET_S[args.preset]
    print(f"{args.preset} preset from nothing: {n_patients} patients, {n_slices} slices")
    est = {}
    if args.preset == "demo":
        scale = get_preset("paper").n / get_preset("demo").n
        est = {k: v * scale for k, v in s.seconds.items() if k in ("synth", "preprocess", "features", "evaluate")}
        est["train"] = s.seconds["train"]  # dominated by Ray Train's start-up per fold, not by data
        est["readers"] = s.seconds["readers"]
    print(f"{'stage':12s} {'wall s':>8s} {'CPU s':>8s} {'CPU/wall':>9s} {'driver CPU s':>13s}"
          + (f" {'paper (extrapolated) s':>23s}" if est else ""))
    for k, v in s.seconds.items():
        cpu = s.cpu_seconds[k]
        print(f"{k:12s} {v:8.1f} {cpu:8.1f} {cpu / v if v else 0:9.2f} {s.driver_cpu_seconds[k]:13.1f}"
              + (f" {est[k]:23.0f}" if est else ""))
    print(f"{'in all':12s} {total:8.1f} {total_cpu:8.1f} {total_cpu / total:9.2f} "
          f"{sum(s.driver_cpu_seconds.values()):13.1f}" + (f" {sum(est.values()):23.0f}" if est else ""))
    print(f"target: {args.preset} within {target:.0f} s on this machine -> {'met' if total <= target else 'NOT met'} "
          f"({total / 60:.1f} min wall, {total_cpu / 60:.1f} min of CPU)")
    if est:
        print(f"paper preset: about {sum(est.values()) / 60:.0f} min, extrapolated x{scale:.2f} by patients from the "
              "demo's stages (train kept as measured); `bench/run.py --preset paper` measures it")
    if latencies:
        print(f"predict (real BraTS case, 3 runs): median {statistics.median(latencies):.1f} s "
              f"(min {min(latencies):.1f}, max {max(latencies):.1f}); target < 30 s")
    elif args.preset == "demo":
        print(f"predict: skipped ({BRATS} not found)")
    name = "run" if args.preset == "demo" else f"run-{args.preset}"
    out = save(name, {"preset": args.preset, "seconds": s.seconds, "cpu_seconds": s.cpu_seconds,
                      "driver_cpu_seconds": s.driver_cpu_seconds, "total_s": total,
                      "total_cpu_s": total_cpu, "patients": n_patients, "slices": n_slices,
                      "paper_extrapolated_s": est, "predict_s": latencies})
    print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


def _predict_latencies(tmp: Path) -> list[float]:
    """Seconds of three `gbmmet predict` calls on the real BraTS case against the benchmark's lake."""
    from pipelines.predict import run_predict

    if not BRATS.is_dir():
        return []
    latencies = []
    for _ in range(3):
        t = time.perf_counter()
        run_predict(str(BRATS / "Brats18_2013_3_1_t1ce.nii.gz"), str(BRATS / "Brats18_2013_3_1_t2.nii.gz"),
                    str(BRATS / "Brats18_2013_3_1_seg.nii.gz"), lake_root=str(tmp / "lake"), out=tmp / "predict-out")
        latencies.append(time.perf_counter() - t)
    return latencies


if __name__ == "__main__":
    main()
