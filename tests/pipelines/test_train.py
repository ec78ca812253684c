"""``gbmmet train`` on a real local Ray and a real lake: folds, history, out-of-fold predictions,
the run record, re-runs, a killed worker resuming from its checkpoint, and fine-tune mode with DDP."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from gbmmet import constants as C
from gbmmet.errors import ConfigError
from gbmmet.model.backbones import RANDOM18
from gbmmet.model.train import HeadConfig, encode_labels
from pipelines.cli import main
from pipelines.features import run_features
from pipelines.train import DONE_FILE, STATE_FILE, fold_room, fold_rows, run_train, worker_device
from storage import catalog
from storage.lake import Lake
from tests.pipelines.test_evaluate import staged_maps


@pytest.fixture(scope="module")
def feature_lake(tiny_lake, tmp_path_factory, ray_local):
    """A copy of the tiny lake with ResNet-18 (random) features."""
    src, _, _ = tiny_lake
    lake_dir = tmp_path_factory.mktemp("train") / "lake"
    shutil.copytree(src, lake_dir, ignore=shutil.ignore_patterns("runs"))
    s = run_features(str(lake_dir), backbone=RANDOM18, show_progress=False)
    assert not s.failed
    return lake_dir


def _final_state(summary, fold):
    with open(os.path.join(summary.fold_checkpoints[fold], STATE_FILE), "rb") as fh:
        return torch.load(fh, map_location="cpu", weights_only=False)


def test_five_folds_by_patient_history_oof_and_run_record(feature_lake, ray_local):
    lines = []
    s = run_train(str(feature_lake), "five", folds=5, head=HeadConfig(hidden=16, epochs=3, checkpoint_every=2),
                  show_progress=False, echo=lines.append)
    lake = Lake(feature_lake)
    assert any("folds: all 5 submitted, 2 fit now (the cluster has 2 CPU free and a fold takes 1 CPU)" in ln
               for ln in lines), lines

    patients = lake.read(C.TABLE_PATIENTS).to_pylist()
    split_of = {p[C.COL_PATIENT_ID]: p[C.COL_SPLIT] for p in patients}
    label_of = {p[C.COL_PATIENT_ID]: p[C.COL_LABEL] for p in patients}
    folds = lake.read(C.TABLE_FOLDS, filter=pc.field("run_id") == "five").to_pylist()
    fold_of = {r[C.COL_PATIENT_ID]: r["fold"] for r in folds}
    assert len(fold_of) == len(folds)  # no patient in two folds
    assert set(fold_of) == {p for p, sp in split_of.items() if sp == C.TRAIN}  # all training, nothing else
    for k in range(5):  # 5 GBM + 5 MET: one of each per fold
        assert sorted(label_of[p] for p, f in fold_of.items() if f == k) == [C.GBM, C.MET]

    hist = lake.read(C.TABLE_TRAIN_HISTORY, filter=pc.field("run_id") == "five").to_pylist()
    assert sorted((r["fold"], r["epoch"]) for r in hist) == [(k, e) for k in range(5) for e in range(3)]
    assert all(0 <= r["val_acc"] <= 1 and r["train_loss"] > 0 and r["attempt"] == 0 for r in hist)

    # out-of-fold: every training slice once, predicted by the model of its patient's fold
    oof = lake.read(C.TABLE_SLICE_PREDICTIONS, filter=pc.field("run_id") == "five").to_pylist()
    train_slices = lake.read(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID, "slice_index"],
                             filter=pc.field(C.COL_SPLIT) == C.TRAIN).to_pylist()
    assert sorted((r[C.COL_PATIENT_ID], r["slice_index"]) for r in oof) == sorted(
        (r[C.COL_PATIENT_ID], r["slice_index"]) for r in train_slices)
    assert all(r["model"] == f"fold{fold_of[r[C.COL_PATIENT_ID]]}" and 0 <= r["prob_gbm"] <= 1 for r in oof)

    rec = lake.read(C.TABLE_RUNS, filter=pc.field("run_id") == "five").to_pylist()
    assert len(rec) == 1 and rec[0]["status"] == "ok" and rec[0]["mode"] == "frozen"
    rec = rec[0]
    assert rec["backbone_id"] == s.backbone_id and rec["backbone_id"].startswith(RANDOM18 + "@")
    assert s.backbone_id.split("@")[1] == rec["weights_sha256"][:12]
    assert len(rec["git_commit"]) in (0, 40)
    assert json.loads(rec["config"])["head"]["epochs"] == 3
    assert set(json.loads(rec["versions"])) >= {"gbmmet", "torch", "ray"}
    assert set(json.loads(rec["timings"])["fold_s"]) == {"0", "1", "2", "3", "4"}
    assert json.loads(rec["lake_versions"])[C.TABLE_FEATURES] == lake.version(C.TABLE_FEATURES)  # what it read
    assert all(os.path.isfile(os.path.join(p, STATE_FILE)) for p in json.loads(rec["fold_checkpoints"]).values())
    # the catalog sees it
    n = catalog.query(lake, "select count(*) from train_history where run_id = ?", ["five"]).column(0)[0].as_py()
    assert n == 15

    # same settings: reused, nothing trained; other settings: refused
    again = run_train(str(feature_lake), "five", folds=5, head=HeadConfig(hidden=16, epochs=3, checkpoint_every=2),
                      show_progress=False, echo=lines.append)
    assert again.reused and again.fold_checkpoints == s.fold_checkpoints
    with pytest.raises(ConfigError, match=r"run 'five' exists .* other settings \(head.epochs: 3 -> 4\)"):
        run_train(str(feature_lake), "five", folds=5, head=HeadConfig(hidden=16, epochs=4, checkpoint_every=2),
                  show_progress=False, echo=lines.append)


def _kill_train_workers_after_checkpoint(run_dir: str, deadline: float, killed: list) -> None:
    """Once every started fold of the run has three checkpoints, SIGKILL its Ray Train workers (once).

    Three, because a checkpoint's folder is written before its report is handed over, and a report
    waits only until the one before it was taken by the controller (a queue of one, polled every
    2 s): once the third folder exists, the second report was handed over, so the first was taken
    and is the checkpoint a restarted worker resumes from (with two, a restart could find none and
    begin again from epoch 0).
    """
    import psutil

    while time.monotonic() < deadline:
        folds = glob.glob(os.path.join(run_dir, "fold*"))
        if folds and all(len(glob.glob(os.path.join(f, "checkpoint_*"))) >= 3 for f in folds):
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
            if killed:
                return
        time.sleep(0.02)


def test_same_seed_same_weights_and_a_killed_worker_resumes_from_its_checkpoint(feature_lake, ray_local):
    head = HeadConfig(hidden=16, epochs=60, checkpoint_every=10, checkpoint_min_s=0.0, seed=7)  # 6 checkpoints
    a = run_train(str(feature_lake), "seed-a", folds=2, head=head, show_progress=False, echo=lambda *_: None)

    killed: list[int] = []
    watcher = threading.Thread(target=_kill_train_workers_after_checkpoint,
                               args=(str(feature_lake / "runs" / "seed-b"), time.monotonic() + 120, killed),
                               daemon=True)
    watcher.start()
    b = run_train(str(feature_lake), "seed-b", folds=2, head=head, show_progress=False, echo=lambda *_: None)
    watcher.join(timeout=5)
    assert killed, "no training worker was killed"

    lake = Lake(feature_lake)
    hist = lake.read(C.TABLE_TRAIN_HISTORY, filter=pc.field("run_id") == "seed-b").to_pylist()
    assert sorted((r["fold"], r["epoch"]) for r in hist) == [(k, e) for k in range(2) for e in range(60)]
    assert max(r["attempt"] for r in hist) >= 1  # a fold resumed from its checkpoint ...
    for k in range(2):  # ... and ended exactly where the uninterrupted run did
        sa, sb = _final_state(a, k), _final_state(b, k)
        assert sa["epoch"] == sb["epoch"] == 59
        for key, ta in sa["model"].items():
            assert torch.equal(ta, sb["model"][key]), key
        np.testing.assert_array_equal(sa["oof_prob"], sb["oof_prob"])
    fa = lake.read(C.TABLE_FOLDS, filter=pc.field("run_id") == "seed-a").drop_columns(["run_id"])
    fb = lake.read(C.TABLE_FOLDS, filter=pc.field("run_id") == "seed-b").drop_columns(["run_id"])
    assert fa.sort_by(C.COL_PATIENT_ID).equals(fb.sort_by(C.COL_PATIENT_ID))


def test_interrupted_run_keeps_finished_folds(feature_lake, ray_local):
    head = HeadConfig(hidden=8, epochs=2, checkpoint_every=1)
    first = run_train(str(feature_lake), "resume", folds=2, head=head, show_progress=False, echo=lambda *_: None)
    run_dir = feature_lake / "runs" / "resume"
    # as if the driver died after fold 0: fold 1's completion and the run record are gone
    (run_dir / "fold1" / DONE_FILE).unlink()
    Lake(feature_lake).delete(C.TABLE_RUNS, {"run_id": "resume", "kind": "train"})
    lines: list[str] = []
    second = run_train(str(feature_lake), "resume", folds=2, head=head, show_progress=False, echo=lines.append)
    assert any("resuming: folds [0] already finished" in ln for ln in lines), lines
    assert second.fold_checkpoints[0] == first.fold_checkpoints[0]
    assert not second.reused


@pytest.fixture(scope="module")
def finetune_run(feature_lake, ray_local):
    """Run "ft": two fine-tune folds of two DDP workers each, and the lines the driver printed."""
    lines: list[str] = []
    s = run_train(str(feature_lake), "ft", folds=2, mode="finetune", backbone=RANDOM18, workers=2,
                  head=HeadConfig(hidden=8, epochs=1, batch_size=16), show_progress=False, echo=lines.append)
    return s, lines


def test_finetune_mode_trains_the_last_stage_with_ddp(feature_lake, finetune_run):
    s, lines = finetune_run
    assert any("2 worker(s) per fold (DDP)" in ln for ln in lines)
    assert any("folds: all 2 submitted, 1 fit now" in ln for ln in lines), lines  # 2 CPUs, a fold takes 2: one waits
    state = _final_state(s, 0)
    tail = state["model"]["tail"]
    assert tail and all(k.startswith("layer4.") for k in tail)
    assert set(state["model"]["head"]) == {"net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias"}
    lake = Lake(feature_lake)
    oof = lake.read(C.TABLE_SLICE_PREDICTIONS, filter=pc.field("run_id") == "ft")
    n_train = lake.read(C.TABLE_SLICES, columns=["slice_index"], filter=pc.field(C.COL_SPLIT) == C.TRAIN).num_rows
    assert oof.num_rows == n_train
    rec = lake.read(C.TABLE_RUNS, filter=pc.field("run_id") == "ft").to_pylist()[0]
    assert rec["mode"] == "finetune" and "random weights" in rec["backbone_reason"]


def test_a_finetune_runs_actors_score_every_eval_slice_and_map_the_test_and_external_ones(feature_lake, finetune_run,
                                                                                          tmp_path):
    from gbmmet.model.ensemble import FoldEnsemble
    from pipelines.evaluate import (
        CAM_SIZE,
        CAM_SPLITS,
        EVAL_SPLITS,
        _run_ensemble,
        _score_slices,
        train_run_record,
    )
    from pipelines.train import load_slice_images, load_state

    lake = Lake(shutil.copytree(feature_lake, tmp_path / "lake")).pinned()  # the actors stage maps in it
    rec = train_run_record(lake, "ft")
    scored, _ = _run_ensemble(lake, rec, cams=True, show_progress=False)
    predictions, n = _score_slices(scored, rec)
    loaded = [load_slice_images(lake, split) for split in EVAL_SPLITS]
    images = np.concatenate([x for _, x in loaded])
    splits = np.concatenate([m.column(C.COL_SPLIT).to_numpy(zero_copy_only=False) for m, _ in loaded])
    ensemble = FoldEnsemble.from_run_record(rec, load_state)
    want = ensemble.predict_proba(images=images)
    assert n == len(images)
    for k in range(len(want)):
        fold = predictions.filter(pc.field("model") == f"fold{k}")
        np.testing.assert_allclose(fold.column("prob_gbm").to_numpy(), want[k], rtol=0, atol=1e-6)
    keys, got = staged_maps(lake, scored)
    mapped = np.isin(splits, CAM_SPLITS)
    assert len(keys) == mapped.sum() and {k[0] for k in keys} <= set(CAM_SPLITS)
    expected = np.round(ensemble.grad_cam(images[mapped], size=CAM_SIZE) * 255).astype(np.uint8)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_cli_train_errors_are_clear(feature_lake, tmp_path, capsys):
    assert main(["train", "--lake", str(feature_lake), "--run", "x", "--mode", "bogus"]) == 2
    assert "--mode must be one of ('frozen', 'finetune')" in capsys.readouterr().err
    empty = tmp_path / "empty"
    assert main(["train", "--lake", str(empty), "--run", "x"]) == 2
    assert "no features in the lake" in capsys.readouterr().err
    assert main(["train", "--lake", str(feature_lake), "--run", "x", "--backbone", "resnet50-imagenet"]) == 2
    assert "no features for backbone 'resnet50-imagenet'" in capsys.readouterr().err


def test_a_fold_fits_where_every_resource_it_takes_fits_the_whole_cluster():
    assert fold_room({"CPU": 2.0, "GPU": 0.0}, {"CPU": 2.0}) is None
    assert fold_room({"CPU": 1.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}) is None


def test_a_fold_larger_than_the_cluster_says_which_resource_is_short():
    assert fold_room({"CPU": 1.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}) == \
        "a fold takes 2 GPU (the cluster has at most 1)"
    assert fold_room({"CPU": 1.0, "GPU": 1.0}, {"CPU": 8.0}) == "a fold takes 1 GPU (the cluster has at most 0)"


def test_a_fold_larger_than_the_cluster_is_refused_before_training(feature_lake, ray_local):
    with pytest.raises(ConfigError, match=r"no room for one fold: a fold takes 3 CPU \(the cluster has at most 2\)"):
        run_train(str(feature_lake), "too-big", folds=2, workers=3, head=HeadConfig(hidden=8, epochs=1),
                  show_progress=False, echo=lambda *_: None)


def test_a_fold_waits_for_room_past_ray_trains_start_timeout_without_using_its_failures(
        feature_lake, ray_local, monkeypatch):
    # one fold at a time (a fold takes both CPUs): the second waits for the first, far past a 1 s
    # start timeout; Ray Train retries the start, and max_failures=0 shows it is not a failure
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "1")
    lines: list[str] = []
    s = run_train(str(feature_lake), "queued", folds=2, cpus_per_worker=2.0, max_failures=0,
                  head=HeadConfig(hidden=8, epochs=30), show_progress=False, echo=lines.append)
    assert any("folds: all 2 submitted, 1 fit now" in ln for ln in lines), lines
    assert sorted(s.fold_checkpoints) == [0, 1]
    (first, a), (second, b) = sorted(s.fold_seconds.items(), key=lambda kv: kv[1])
    assert b > a + 1.0  # the later fold's time includes its wait for the first


def test_a_fine_tune_worker_orders_its_slices_as_the_driver_does_and_holds_out_its_fold():
    import pyarrow as pa

    img = [bytes([v] * 4) for v in (30, 10, 20, 40)]  # 1 x 2 x 2 images, one value each
    table = pa.table({C.COL_PATIENT_ID: ["p2", "p1", "p1", "p3"], "slice_index": [0, 1, 0, 0],
                      C.COL_LABEL: [C.MET, C.GBM, C.GBM, C.MET], "image": img,
                      "channels": [1] * 4, "height": [2] * 4, "width": [2] * 4})
    X, y, train_rows, held_rows = fold_rows(table, {"p1": 0, "p2": 1, "p3": 0}, fold=1)
    assert X[:, 0, 0, 0].tolist() == [20, 10, 30, 40]  # (p1, 0), (p1, 1), (p2, 0), (p3, 0)
    assert held_rows.tolist() == [2] and train_rows.tolist() == [0, 1, 3]
    assert y.tolist() == encode_labels([C.GBM, C.GBM, C.MET, C.MET]).tolist()


def test_a_worker_trains_on_its_gpu_only_where_torch_sees_one():
    assert worker_device(use_gpu=False, cuda_available=True).type == "cpu"
    assert worker_device(use_gpu=True, cuda_available=False).type == "cpu"


def test_on_a_gpu_shaped_cluster_folds_wait_for_the_gpu_instead_of_refusing(feature_lake, tmp_path):
    # one node, 1 (declared) GPU, folds of 1 GPU each: the second fold waits for the first's GPU
    lake_dir = tmp_path / "lake"
    shutil.copytree(feature_lake, lake_dir, ignore=shutil.ignore_patterns("runs"))
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "tests.gpu_shaped_job", "train", str(lake_dir)], cwd=root,
                          capture_output=True, text=True, encoding="utf-8", timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-4000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert any("folds: all 2 submitted, 1 fit now" in ln and "1 GPU free" in ln for ln in said["lines"]), said
    assert said["fold_checkpoints"] == [0, 1]
    a, b = sorted(said["fold_seconds"].values())
    assert b > a + 1.0  # the later fold's time includes its wait for the GPU
    assert sum("sees none: it trained on the CPU" in ln for ln in said["lines"]) == 2  # and says so
