"""Multi-node on one machine: a head and two worker nodes, each standing for a site by a custom
resource; preprocess with each site's patients pinned to its node, then train and evaluate into a
lake on a shared path. The results equal a single-node run's with the same seed, bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from gbmmet import constants as C
from pipelines.preprocess import site_resources
from storage.lake import Lake

ROOT = Path(__file__).resolve().parents[1]


def _sorted(lake: Lake, table: str, keys: list[str], drop: tuple[str, ...] = ()) -> list[dict]:
    t = lake.read(table)
    t = t.select([c for c in t.column_names if c not in drop])
    rows = t.sort_by([(k, "ascending") for k in keys]).to_pylist()
    # NaN (an undefined metric) equals itself here: compare it as a marker
    return [{k: ("NaN" if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]


@pytest.mark.slow
def test_sites_pinned_to_their_nodes_and_results_equal_a_single_node_run(tiny_cohort, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, cohort)
    multi, single = tmp_path / "shared" / "lake", tmp_path / "single" / "lake"
    proc = subprocess.run([sys.executable, "-m", "tests.cluster_job", str(cohort), str(multi), str(single)],
                          cwd=ROOT, capture_output=True, text=True, encoding="utf-8", timeout=1200, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-4000:]
    nodes = json.loads(proc.stdout.strip().splitlines()[-1])["nodes"]
    assert len(set(nodes.values())) == 2

    M, S = Lake(multi), Lake(single)
    runs = M.read(C.TABLE_PREPROCESS_RUNS).to_pylist()
    assert len(runs) == 20
    for r in runs:  # every patient ran on its own site's node
        assert r["status"] == "ok" and r["ray_node"] == nodes[r[C.COL_SITE]], r
    assert {r["ray_node"] for r in S.read(C.TABLE_PREPROCESS_RUNS).to_pylist()} - set(nodes.values())

    assert _sorted(M, C.TABLE_SLICES, [C.COL_PATIENT_ID, "slice_index"]) == \
        _sorted(S, C.TABLE_SLICES, [C.COL_PATIENT_ID, "slice_index"])  # the images, byte for byte
    assert _sorted(M, C.TABLE_FEATURES, [C.COL_PATIENT_ID, "slice_index"]) == \
        _sorted(S, C.TABLE_FEATURES, [C.COL_PATIENT_ID, "slice_index"])
    for table, keys in ((C.TABLE_FOLDS, [C.COL_PATIENT_ID]), (C.TABLE_TRAIN_HISTORY, ["fold", "epoch"]),
                        (C.TABLE_SLICE_PREDICTIONS, [C.COL_PATIENT_ID, "slice_index", "model"]),
                        (C.TABLE_PATIENT_PREDICTIONS, [C.COL_PATIENT_ID, "cutoff_kind"]),
                        (C.TABLE_CAMS, [C.COL_PATIENT_ID, "slice_index"]),
                        (C.TABLE_DIFFERENCES, ["cohort", "a", "b", "metric"]),
                        (C.TABLE_CALIBRATION, ["cohort", "curve", "x"]),
                        (C.TABLE_FLOW, ["cohort", "site", "stage", "detail"])):
        assert _sorted(M, table, keys) == _sorted(S, table, keys), table
    metric_keys = ["cohort", "subgroup", "rater", "assisted", "cutoff_kind", "metric", "ci_choice"]
    m, s = _sorted(M, C.TABLE_METRICS, metric_keys), _sorted(S, C.TABLE_METRICS, metric_keys)
    assert len(m) == len(s) > 100 and m == s
    assert M.read(C.TABLE_RUNS, filter=pc.field("kind") == "train").num_rows == 1


def test_pinning_needs_a_node_per_site():
    assert site_resources(["siteA", "siteB", "siteA"], {"CPU": 2, "site:siteA": 1, "site:siteB": 1}) == {
        "siteA": {"site:siteA": 0.001}, "siteB": {"site:siteB": 0.001}}
    from gbmmet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no node of the cluster has site:siteB .*ray start --address HEAD:6379"):
        site_resources(["siteA", "siteB"], {"CPU": 2, "site:siteA": 1})


def _can_unshare_mounts() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare_mounts(), reason="needs unshare --mount (root or CAP_SYS_ADMIN)")
def test_a_local_lake_that_a_node_does_not_see_is_refused_with_what_to_use_instead(tmp_path):
    # the second node runs in its own mount namespace, an empty tmpfs over `hidden`: a second machine's disk
    hidden, visible = tmp_path / "hidden", tmp_path / "visible"
    hidden.mkdir()
    proc = subprocess.run([sys.executable, "-m", "tests.unshared_node", str(hidden), str(visible)], cwd=ROOT,
                          capture_output=True, text=True, encoding="utf-8", timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-4000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert said["nodes"] == 2
    assert said["hidden"].startswith(f"{hidden / 'lake'} is a local folder that 1 of the cluster's 2 nodes do not see")
    assert "use object storage (--lake s3://bucket/lake) or a folder on a mount every node shares" in said["hidden"]
    assert said["visible"] == "ok"  # a folder both nodes see passes
