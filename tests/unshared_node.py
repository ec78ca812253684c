"""Run in its own process by tests/test_multinode.py: a cluster of two nodes on this machine where
the second node does not see the driver's working folder (it runs in its own mount namespace with
an empty tmpfs mounted over that folder, as a second machine's disk would be). Prints a JSON line:
the nodes, and what ``require_shared`` said of a folder inside the hidden one and of one outside.

    python -m tests.unshared_node HIDDEN_FOLDER VISIBLE_FOLDER
    python -m tests.unshared_node node GCS_ADDRESS   (the blind node itself, in its namespace)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _start_blind_node(gcs_address: str, hidden: str) -> subprocess.Popen:
    """A worker node (``python -m tests.unshared_node node GCS``) in a mount namespace of its own
    where an empty tmpfs covers ``hidden``."""
    script = 'mount -t tmpfs tmpfs "$1" && shift && exec "$@"'
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", hidden,
                             sys.executable, "-m", "tests.unshared_node", "node", gcs_address],
                            cwd=Path(__file__).resolve().parents[1], start_new_session=True)


def node(gcs_address: str) -> None:
    """Join the cluster at ``gcs_address`` as one worker node with 1 CPU, as
    ``ray.cluster_utils.Cluster.add_node`` does (``ray start`` refuses a second node where Ray
    binds loopback only); stay until terminated."""
    import signal

    import ray._private.node
    import ray._private.parameter

    params = ray._private.parameter.RayParams(
        gcs_address=gcs_address, num_cpus=1, num_gpus=0, object_store_memory=150 * 1024 * 1024,
        min_worker_port=0, max_worker_port=0, include_log_monitor=False, node_manager_port=0)
    params.dashboard_agent_listen_port = None
    ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    deadline = time.monotonic() + 600  # never outlives a test
    while time.monotonic() < deadline:
        time.sleep(1)


def main(hidden: str, visible: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from gbmmet.errors import ConfigError
    from pipelines.ray_runtime import init_ray, require_shared

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    blind = _start_blind_node(cluster.gcs_address, hidden)
    out: dict = {}
    try:
        init_ray(address=cluster.address)
        deadline = time.monotonic() + 60
        while sum(n["Alive"] for n in ray.nodes()) < 2 and time.monotonic() < deadline and blind.poll() is None:
            time.sleep(0.5)
        out["nodes"] = sum(n["Alive"] for n in ray.nodes())
        for name, path in (("hidden", os.path.join(hidden, "lake")), ("visible", visible)):
            try:
                require_shared(path)
                out[name] = "ok"
            except ConfigError as exc:
                out[name] = str(exc)
    finally:
        ray.shutdown()
        os.killpg(blind.pid, 15)
        try:
            blind.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(blind.pid, 9)
        cluster.shutdown()
        shutil.rmtree(os.path.join(hidden, "lake"), ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "node":
        node(sys.argv[2])
    else:
        main(*sys.argv[1:3])
