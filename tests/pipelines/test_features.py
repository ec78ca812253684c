"""``gbmmet features`` on a real lake: cached once, skipped after, and the cached path gives the
same logits as running the whole network; a patient whose images cannot be decoded fails alone;
on a (faked) GPU node the backbone is loaded once per actor, not once per patient."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from gbmmet import constants as C
from gbmmet.model.backbones import (
    CPU_FORWARD_BATCH,
    GPU_FORWARD_BATCH,
    RANDOM18,
    load_backbone,
    to_network_input,
)
from gbmmet.model.head import FullModel, Head
from pipelines.features import run_features
from pipelines.preprocess import BatchSettings
from storage.codec import decode_images
from storage.lake import Lake


def test_features_are_cached_once_and_match_the_full_network(tiny_lake, ray_local):
    lake_dir, pre, _ = tiny_lake
    s = run_features(str(lake_dir), backbone=RANDOM18, show_progress=False)
    assert len(s.computed) == 20 and not s.failed and s.slices == pre.slices_written
    assert 1 <= s.workers == s.model_loads <= 2 and s.batch_size == 64  # one model per actor, an actor per CPU
    assert s.forward_batch == CPU_FORWARD_BATCH
    lake = Lake(lake_dir)
    feats = lake.read(C.TABLE_FEATURES, filter=pc.field("backbone") == s.backbone_id)
    assert feats.num_rows == pre.slices_written
    assert {len(v) for v in feats.column("vector").to_pylist()} == {512}
    again = run_features(str(lake_dir), backbone=RANDOM18, show_progress=False, workers=0)
    assert not again.computed and len(again.skipped) == 20 and again.commits == 0

    # one patient: head(cached features) == head(backbone(images)), to 1e-4
    pid = feats.column(C.COL_PATIENT_ID)[0].as_py()
    slices = lake.read(C.TABLE_SLICES, filter=pc.field(C.COL_PATIENT_ID) == pid).sort_by("slice_index")
    mine = feats.filter(pc.field(C.COL_PATIENT_ID) == pid).sort_by("slice_index")
    cached = torch.tensor(np.stack(mine.column("vector").to_pylist()), dtype=torch.float32)
    backbone, info = load_backbone(RANDOM18)
    torch.manual_seed(3)
    head = Head(info.feature_dim, hidden=32).eval()
    with torch.inference_mode():
        via_cache = head(cached)
        full = FullModel(backbone, head).eval()(to_network_input(decode_images(slices), info))
    torch.testing.assert_close(via_cache, full, atol=1e-4, rtol=1e-4)
    assert info.id == s.backbone_id


def test_finished_patients_are_committed_in_batches_each_one_commit(tiny_lake, tmp_path):
    lake_dir = tmp_path / "lake"
    shutil.copytree(tiny_lake[0], lake_dir, ignore=shutil.ignore_patterns("runs", "features"))
    lake = Lake(lake_dir)
    s = run_features(str(lake_dir), backbone=RANDOM18, show_progress=False, workers=0,
                     batch=BatchSettings(patients=8, seconds=600))
    assert len(s.computed) == 20 and s.commits == 3  # 8 + 8 + 4 patients
    history = lake.delta(C.TABLE_FEATURES).history()
    writes = [h for h in history if h["operation"] != "OPTIMIZE"]  # a compaction may follow
    assert len(writes) == 3
    assert lake.read(C.TABLE_FEATURES, columns=[C.COL_PATIENT_ID]).num_rows == tiny_lake[1].slices_written


ROOT = Path(__file__).resolve().parents[2]


def _copy_without_features(tiny_lake, tmp_path) -> Path:
    lake_dir = tmp_path / "lake"
    shutil.copytree(tiny_lake[0], lake_dir, ignore=shutil.ignore_patterns("runs", "features", "catalog.duckdb"))
    return lake_dir


def test_a_patient_whose_images_cannot_be_decoded_fails_alone_and_the_others_are_committed(tiny_lake, tmp_path,
                                                                                            ray_local):
    lake_dir = _copy_without_features(tiny_lake, tmp_path)
    lake = Lake(lake_dir)
    slices = lake.read(C.TABLE_SLICES)
    bad = sorted(set(slices.column(C.COL_PATIENT_ID).to_pylist()))[3]
    mine = slices.filter(pc.field(C.COL_PATIENT_ID) == bad)
    broken = mine.set_column(mine.column_names.index("image"), "image",
                             pa.array([b"\x00" * 10] * mine.num_rows, pa.binary()))
    lake.replace(C.TABLE_SLICES, broken, where={C.COL_PATIENT_ID: bad})

    s = run_features(str(lake_dir), backbone=RANDOM18, show_progress=False)
    assert list(s.failed) == [bad] and len(s.computed) == 19
    assert f"patient {bad} cannot decode its images" in s.failed[bad]
    committed = set(lake.read(C.TABLE_FEATURES, columns=[C.COL_PATIENT_ID]).column(0).to_pylist())
    assert len(committed) == 19 and bad not in committed


def test_on_a_gpu_node_the_backbone_is_loaded_once_per_actor_not_per_patient(tiny_lake, tmp_path):
    lake_dir = _copy_without_features(tiny_lake, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "tests.gpu_shaped_job", "features", str(lake_dir)], cwd=ROOT,
                          capture_output=True, text=True, encoding="utf-8", timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-4000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert said["cluster_gpus"] == 1 and said["computed"] == 20 and not said["failed"]
    assert said["workers"] == 1 and said["model_loads"] == 1  # one GPU: one actor, one load, for 20 patients
    # where torch sees no GPU (this machine), the actor ran on the CPU, and the summary says so
    assert said["forward_batch"] == (GPU_FORWARD_BATCH if torch.cuda.is_available() else CPU_FORWARD_BATCH)
    assert Lake(lake_dir).read(C.TABLE_FEATURES, columns=["slice_index"]).num_rows == tiny_lake[1].slices_written
