"""Run in its own process by the tests: a stage on a Ray cluster faked on this machine
(``ray.cluster_utils.Cluster``: a head that only schedules and one worker node of 2 CPUs declaring
a GPU it does not have), so the GPU path runs on the CPU. Prints one JSON line.

    python -m tests.gpu_shaped_job features LAKE   # gbmmet features --gpus 1: its summary
    python -m tests.gpu_shaped_job train LAKE      # 2 folds of 1 GPU each: what the driver said,
                                                   # each fold's seconds and checkpoint
    python -m tests.gpu_shaped_job evaluate LAKE   # gbmmet evaluate --gpus 1's scoring (with maps)
                                                   # of the lake's latest run: its Ray Data plan
"""

from __future__ import annotations

import json
import sys

from gbmmet.model.backbones import RANDOM18


def features(lake: str, address: str) -> dict:
    import ray

    from pipelines.features import run_features

    s = run_features(lake, backbone=RANDOM18, address=address, gpus=1, show_progress=False)
    return {"computed": len(s.computed), "failed": s.failed, "slices": s.slices, "workers": s.workers,
            "model_loads": s.model_loads, "batch_size": s.batch_size,
            "forward_batch": s.forward_batch,
            "cluster_gpus": ray.cluster_resources().get("GPU", 0)}


def train(lake: str, address: str) -> dict:
    from gbmmet.model.train import HeadConfig
    from pipelines.train import run_train

    lines: list[str] = []
    s = run_train(lake, "gpu-shaped", folds=2, gpus_per_worker=1.0, address=address,
                  head=HeadConfig(hidden=8, epochs=30), show_progress=False, echo=lines.append)
    return {"lines": lines, "fold_seconds": {str(k): v for k, v in s.fold_seconds.items()},
            "fold_checkpoints": sorted(s.fold_checkpoints)}


def evaluate(lake: str, address: str) -> dict:
    import ray

    from gbmmet import constants as C
    from pipelines.evaluate import score_run, train_run_record
    from pipelines.ray_runtime import init_ray
    from storage.lake import Lake

    init_ray(address=address)
    the_lake = Lake(lake)
    rec = train_run_record(the_lake)
    score_run(the_lake, rec, cams=True, force=True, gpus=1, show_progress=False, echo=lambda *_: None)
    (score,) = [r for r in the_lake.read(C.TABLE_RUNS).to_pylist() if r["kind"] == "score" and
                r["run_id"] == rec["run_id"]]
    return {"run": rec["run_id"], "plan": json.loads(score["config"])["ray_data"],
            "cluster_gpus": ray.cluster_resources().get("GPU", 0)}


def main(stage: str, lake: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    try:
        said = {"features": features, "train": train, "evaluate": evaluate}[stage](lake, cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(said))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
