"""Scale benchmark: `gbmmet preprocess` throughput on 1, 2, ... simulated Ray nodes, and the cost
model the deploy README sizes clusters with.

Nodes are simulated on this machine with ``ray.cluster_utils.Cluster`` (a head that only
schedules, worker nodes of 1 CPU each), as far as its cores allow (2 here: 1 and 2 nodes; more
would oversubscribe the cores and measure contention, not scaling). The same demo patients run on
each cluster into a fresh lake; measured side by side in one run:

- wall time and patients per second per node count, and the speed-up over 1 node;
- seconds per patient per core (the median of the tasks' own timings, one thread each);
- peak memory of one patient's task (a fresh process preprocessing one demo patient, max RSS).

Writes bench/out/scale.json with the cost model and a sizing for 10,000 patients.

    .venv/bin/python bench/scale.py [--cohort data/demo] [--patients 8] [--max-nodes N]

With ``--driver-memory``, instead: the driver-memory sweep of ``bench/driver_memory.py`` (each
stage's driver peak RSS on tiny-preset cohorts of 100, 200 and 400 patients, and its growth from
the smallest to the largest; the target is under 25 %), written to bench/out/scale-driver-memory.json.

    .venv/bin/python bench/scale.py --driver-memory [--sizes 100,200,400] [--max-nodes N]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, save, use_ray_tmpdir
from preprocess import _cohort, _subset_manifest

TARGET_PATIENTS = 10_000
NODE_CORES = 16  # the cpu-workers of deploy/kuberay/raycluster.yaml (c6i.4xlarge in deploy/ray-up)
NODE_MEMORY_GIB = 32


def _one_patient_peak_rss_gib(manifest: Path) -> float:
    """Max RSS of a fresh process that preprocesses the manifest's first patient (1 thread)."""
    code = (
        "import csv, sys, SimpleITK as sitk\n"
        "sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)\n"
        "from gbmmet.preprocess.patient import preprocess_patient\n"
        f"r = next(csv.DictReader(open({str(manifest)!r})))\n"
        "preprocess_patient(r['t1c_path'], r['t2_path'], r['roi_path'], patient_id=r['patient_id'])\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(after, before) / (1024 ** 2)  # KiB -> GiB (the largest child so far: this one)


def _run_on_nodes(n_nodes: int, manifest: Path, tmp: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from gbmmet import constants as C
    from pipelines.preprocess import run_preprocess
    from storage.lake import Lake

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(n_nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    lake = tmp / f"lake-{n_nodes}"
    try:
        t = time.perf_counter()
        s = run_preprocess([manifest], lake, address=cluster.address, show_progress=False)
        wall = time.perf_counter() - t
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert not s.failed, s.failed
    runs = Lake(lake).read(C.TABLE_PREPROCESS_RUNS).to_pylist()
    return {"nodes": n_nodes, "patients": len(s.ok), "wall_s": wall, "patients_per_s": len(s.ok) / wall,
            "task_s_median": statistics.median(r["total_s"] for r in runs),
            "distinct_nodes_used": len({r["ray_node"] for r in runs})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohort", default=str(ROOT / "data" / "demo"))
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--max-nodes", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--driver-memory", action="store_true", help="the driver-memory sweep instead")
    ap.add_argument("--sizes", default="100,200,400", help="cohort sizes of the driver-memory sweep")
    ap.add_argument("--epochs", type=int, default=20, help="training epochs in the driver-memory sweep")
    ap.add_argument("--keep", help="driver-memory sweep: keep cohorts and lakes in this folder (reused when it "
                                   "holds them) instead of a temporary one")
    ap.add_argument("--stages", default=",".join(("preprocess", "features", "train", "evaluate")),
                    help="driver-memory sweep: the stages to measure (the others' lakes as a kept folder holds them)")
    args = ap.parse_args()
    if args.driver_memory:
        return _driver_memory(args)
    tmp = Path(tempfile.mkdtemp(prefix="gbmmet-bench-scale-"))
    use_ray_tmpdir(tmp)
    try:
        cohort = _cohort(Path(args.cohort), args.patients, tmp)
        manifest = _subset_manifest(cohort, args.patients, tmp)
        rss = _one_patient_peak_rss_gib(manifest)
        results = [_run_on_nodes(n, manifest, tmp) for n in range(1, args.max_nodes + 1)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = results[0]
    print(f"preprocess, {args.patients} demo patients, default parameters (1 mm), nodes of 1 CPU each:")
    print(f"{'nodes':>5}{'wall s':>9}{'patients/s':>12}{'speed-up':>10}{'efficiency':>12}{'task s (median)':>17}")
    for r in results:
        r["speedup"] = base["wall_s"] / r["wall_s"]
        r["efficiency"] = r["speedup"] / r["nodes"]
        print(f"{r['nodes']:>5}{r['wall_s']:>9.1f}{r['patients_per_s']:>12.3f}{r['speedup']:>9.2f}x"
              f"{r['efficiency']:>11.0%}{r['task_s_median']:>17.2f}")

    s_per_core = statistics.median(r["task_s_median"] for r in results)
    efficiency = results[-1]["efficiency"]
    core_hours = TARGET_PATIENTS * s_per_core / 3600 / efficiency
    tasks_per_node = min(NODE_CORES, int(NODE_MEMORY_GIB * 0.8 // max(rss, 0.1)))
    sizing = {}
    for hours in (0.25, 1.0, 4.0):
        nodes = math.ceil(TARGET_PATIENTS * s_per_core / efficiency / (tasks_per_node * hours * 3600))
        sizing[f"{hours:g}h"] = {"cpu_worker_nodes": nodes, "cores": nodes * NODE_CORES}
    model = {"seconds_per_patient_per_core": s_per_core, "peak_memory_gib_per_task": rss,
             "parallel_efficiency": efficiency, "node": {"cores": NODE_CORES, "memory_gib": NODE_MEMORY_GIB,
                                                         "tasks_at_once": tasks_per_node},
             "patients": TARGET_PATIENTS, "core_hours": core_hours, "sizing": sizing}
    print(f"cost model: {s_per_core:.2f} s per patient per core, {rss:.2f} GiB peak per task, "
          f"parallel efficiency {efficiency:.0%} at {results[-1]['nodes']} nodes")
    print(f"{TARGET_PATIENTS:,} patients: {core_hours:.1f} core-hours; on {NODE_CORES}-core / {NODE_MEMORY_GIB} GiB "
          f"nodes ({tasks_per_node} tasks at once each), CPU worker nodes needed: "
          + ", ".join(f"{v['cpu_worker_nodes']} to finish in {k}" for k, v in sizing.items()))
    path = save("scale", {"runs": results, "cost_model": model, "machine_cores": os.cpu_count()})
    print(f"written {path}")


def _driver_memory(args) -> None:
    from driver_memory import GROWTH_LIMIT, STAGES, growth, sweep

    sizes = tuple(int(x) for x in args.sizes.split(","))
    stages = tuple(s for s in args.stages.split(",") if s)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"--stages: unknown {unknown}; choose from {STAGES}")
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gbm-dm-"))
    tmp.mkdir(parents=True, exist_ok=True)
    use_ray_tmpdir(Path(tempfile.mkdtemp(prefix="gbm-dm-ray-")) if args.keep else tmp)
    print(f"driver peak RSS per stage, tiny-preset cohorts of {', '.join(map(str, sizes))} patients, "
          f"{args.max_nodes} worker node(s) of 1 CPU:", flush=True)
    t = time.perf_counter()
    try:
        rows = sweep(sizes, tmp, epochs=args.epochs, resamples=200, nodes=args.max_nodes, stages=stages)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    grown = growth(rows)
    print(f"{'stage':<11}" + "".join(f"{n:>9}" for n in sorted({r['patients'] for r in rows})) + "   growth (MiB)")
    for stage in stages:
        mine = sorted((r["patients"], r["driver_peak_rss_mib"]) for r in rows if r["stage"] == stage)
        verdict = "ok" if grown.get(stage, 0.0) < GROWTH_LIMIT else f"over {GROWTH_LIMIT:.0%}"
        print(f"{stage:<11}" + "".join(f"{v:>9.0f}" for _, v in mine) + f"   {grown.get(stage, 0.0):+.1%} {verdict}")
    name = "scale-driver-memory" if set(stages) == set(STAGES) else "scale-driver-memory-" + "-".join(stages)
    path = save(name, {"rows": rows, "growth": grown, "limit": GROWTH_LIMIT,
                                        "machine_cores": os.cpu_count(), "wall_s": time.perf_counter() - t})
    print(f"written {path} ({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
