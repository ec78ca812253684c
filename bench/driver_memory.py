"""Driver-memory sweep (``bench/scale.py --driver-memory``): the peak RSS of each stage's driver
process (``gbmmet preprocess``, ``features``, ``train``, ``evaluate``) on cohorts of 100, 200 and
400 tiny-preset patients, to show the driver holds no patient data that grows with the cohort.

One simulated Ray cluster (``ray.cluster_utils.Cluster``: a head of no CPU and worker nodes of 1
CPU, on loopback) serves every stage; each stage runs as its own ``gbmmet`` command connected to it
with ``--address``, and its peak RSS is what the kernel reports for that process alone
(``os.wait4``'s ``ru_maxrss``: the workers, raylets and object store are other processes). The
cohorts are the tiny preset with every count multiplied (20 patients x 5, 10, 20).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT

from gbmmet import constants as C

STAGES = ("preprocess", "features", "train", "evaluate")
GROWTH_LIMIT = 0.25  # the target: each stage's driver grows < 25 % from the smallest cohort to the largest


def scaled_tiny(factor: int):
    """The tiny preset with every (split, label) count multiplied by ``factor``, registered in
    ``PRESETS`` under ``tiny-x<factor>`` (synthesis tasks get the preset object itself)."""
    from gbmmet.synth.cohort import PRESETS, SiteCohort

    base = PRESETS["tiny"]
    sites = tuple(SiteCohort(site=s.site, counts=tuple((sp, lab, n * factor) for sp, lab, n in s.counts))
                  for s in base.sites)
    preset = dataclasses.replace(base, name=f"tiny-x{factor}", sites=sites,
                                 description=f"the tiny preset x{factor} (driver-memory benchmark)")
    PRESETS[preset.name] = preset
    return preset


def _peak_rss_mib(cmd: list[str]) -> tuple[float, float, float]:
    """Run ``cmd``; (its own peak RSS in MiB, wall seconds, its CPU seconds). Raises on failure."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:3])} failed ({p.returncode}):\n{err[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t, usage.ru_utime + usage.ru_stime


def sweep(sizes: tuple[int, ...], tmp: Path, *, epochs: int, resamples: int, nodes: int,
          stages: tuple[str, ...] = STAGES) -> list[dict]:
    """Each cohort size through the drivers of ``stages``; one row per (patients, stage). A cohort
    already in ``tmp`` (a kept folder: its ``cohort.json`` written) is not synthesised again, and
    a stage left out finds the lake as an earlier sweep left it (evaluate runs with ``--force``)."""
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.synth import SynthConfig, run_synth

    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", "8")  # as init_ray sets for a local Ray
    gbmmet = str(Path(sys.executable).with_name("gbmmet"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    rows = []
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        for n in sizes:
            preset = scaled_tiny(max(1, n // 20))
            cohort, lake, run = tmp / preset.name, str(tmp / f"lake-{preset.name}"), "sweep"
            if (cohort / "cohort.json").exists():
                found = sorted(cohort.glob(f"*/{C.MANIFEST_FILE}"))
            else:
                s = run_synth(SynthConfig(preset=preset.name, out=cohort), address=cluster.address, show_progress=False)
                assert not s.failed, s.failed
                found = s.manifests
            manifests = [a for m in found for a in ("--manifest", str(m))]
            addr = ["--lake", lake, "--address", cluster.address]
            commands = {
                "preprocess": [gbmmet, "preprocess", *manifests, *addr],
                "features": [gbmmet, "features", *addr],
                "train": [gbmmet, "train", "--run", run, "--epochs", str(epochs), *addr],
                "evaluate": [gbmmet, "evaluate", "--run", run, "--resamples", str(resamples), "--force", *addr],
            }
            for stage in stages:
                rss, wall, cpu = _peak_rss_mib(commands[stage])
                rows.append({"patients": preset.n, "stage": stage, "driver_peak_rss_mib": rss,
                             "wall_s": wall, "driver_cpu_s": cpu})
                print(f"  {preset.n:>4} patients  {stage:<10} driver peak RSS {rss:7.0f} MiB  "
                      f"wall {wall:6.1f} s  driver CPU {cpu:6.1f} s", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return rows


def growth(rows: list[dict]) -> dict[str, float]:
    """Per stage: the driver's peak RSS at the largest cohort over that at the smallest, minus 1."""
    out = {}
    for stage in STAGES:
        mine = sorted((r["patients"], r["driver_peak_rss_mib"]) for r in rows if r["stage"] == stage)
        if len(mine) >= 2:
            out[stage] = mine[-1][1] / mine[0][1] - 1.0
    return out
