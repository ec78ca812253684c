"""Run in its own process by tests/test_multinode.py: the tiny pipeline on a multi-node Ray cluster
faked on this machine (``ray.cluster_utils.Cluster``: a head that only schedules and two worker
nodes, each holding one site's custom resource), then the same on a single local node, into two
lakes that share one pseudonym key. Prints a JSON line: the node id of each site.

    python -m tests.cluster_job COHORT LAKE_MULTI LAKE_SINGLE
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from gbmmet import constants as C
from gbmmet.evaluation import EvaluationSettings
from gbmmet.model.backbones import RANDOM18
from gbmmet.model.train import HeadConfig
from gbmmet.preprocess.params import PreprocessParams
from pipelines.features import run_features
from pipelines.preprocess import run_preprocess
from pipelines.readers import import_reads
from pipelines.run import evaluate_synthetic
from pipelines.train import run_train
from storage.lake import SECRET_DIR, Lake

RUN = "multi"
SITES = ("siteA", "siteB")


def pipeline(cohort: Path, lake: Path, *, pin_sites: bool, address: str | None) -> None:
    manifests = [cohort / s / C.MANIFEST_FILE for s in SITES]
    summary = run_preprocess(manifests, lake, params=PreprocessParams(iso_mm=2.0), address=address,
                             pin_sites=pin_sites, show_progress=False)
    assert not summary.failed, summary.failed
    assert not run_features(str(lake), backbone=RANDOM18, address=address, show_progress=False).failed
    run_train(str(lake), RUN, folds=3, head=HeadConfig(hidden=16, epochs=4, checkpoint_every=2), address=address,
              show_progress=False, echo=lambda *_: None)
    for s in SITES:
        import_reads(cohort / s / C.READS_FILE, str(lake))
    evaluate_synthetic(str(lake), RUN, settings=EvaluationSettings(n_resamples=100), address=address,
                       show_progress=False, echo=lambda *_: None)


def main(cohort: str, lake_multi: str, lake_single: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cohort, lake_multi, lake_single = Path(cohort), Path(lake_multi), Path(lake_single)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = {s: cluster.add_node(num_cpus=1, resources={C.SITE_RESOURCE_PREFIX + s: 1}) for s in SITES}
    cluster.wait_for_nodes()
    try:
        pipeline(cohort, lake_multi, pin_sites=True, address=cluster.address)
        node_ids = {s: n.node_id for s, n in nodes.items()}
    finally:
        ray.shutdown()
        cluster.shutdown()
    # the single-node run, with the same pseudonym key (so the same patient ids)
    (lake_single / SECRET_DIR).mkdir(parents=True)
    shutil.copy2(lake_multi / SECRET_DIR / "pseudonym.key", lake_single / SECRET_DIR / "pseudonym.key")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        pipeline(cohort, lake_single, pin_sites=False, address=None)
    finally:
        ray.shutdown()
    assert Lake(lake_multi).secret() == Lake(lake_single).secret()
    print(json.dumps({"nodes": node_ids}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
