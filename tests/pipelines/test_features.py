"""``gbmmet features`` on a real lake: cached once, skipped after, and the cached path gives the
same logits as running the whole network."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.compute as pc
import torch

from gbmmet import constants as C
from gbmmet.model.backbones import RANDOM18, load_backbone, to_network_input
from gbmmet.model.head import FullModel, Head
from pipelines.features import run_features
from pipelines.preprocess import BatchSettings
from storage.codec import decode_images
from storage.lake import Lake


def test_features_are_cached_once_and_match_the_full_network(tiny_lake, ray_local):
    lake_dir, pre, _ = tiny_lake
    s = run_features(str(lake_dir), backbone=RANDOM18, show_progress=False)
    assert len(s.computed) == 20 and not s.failed and s.slices == pre.slices_written
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
