"""bench/gpu.py run as a user runs it: skips cleanly without a GPU, and its CPU smoke mode
measures every section (feature throughput, one fine-tune fold, folds in processes of their own,
the evaluation ensemble; its GPU-against-CPU difference means something only on a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def _run(*args: str, env_extra: dict | None = None, timeout: float = 180):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=SCRIPT.parents[1])


def test_without_a_gpu_it_says_so_exits_0_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu.json"
    proc = _run("--out", str(out), env_extra={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines == ["bench/gpu.py: no GPU found (torch.cuda.is_available() is False): nothing measured."]
    assert not out.exists()


def test_asking_for_cuda_without_a_gpu_fails(tmp_path):
    proc = _run("--device", "cuda", "--out", str(tmp_path / "gpu.json"),
                env_extra={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert "no GPU found" in proc.stdout
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.slow  # 20-60 s on 2 shared cores: three processes import torch
def test_cpu_smoke_run_measures_every_section(tmp_path):
    out = tmp_path / "nested" / "gpu.json"
    proc = _run("--device", "cpu", "--quick", "--folds", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    res = json.loads(out.read_text())
    rates = {(r["backbone"], r["precision"]): r["slices_per_s"] for r in res["features"]}
    assert set(rates) == {(b, p) for b in ("resnet50", "resnet18") for p in ("fp32", "bf16")}
    assert all(v > 0 for v in rates.values())
    assert [r["precision"] for r in res["finetune"]] == ["bf16", "fp32"]
    assert all(r["train_s_per_epoch"] > 0 and r["train_slices_per_s"] > 0 for r in res["finetune"])
    folds = res["folds"]
    assert [r["fold"] for r in folds["folds"]] == [0, 1] and folds["errors"] == []
    assert all(r["device"] == "cpu" and r["train_wall_s"] > 0 for r in folds["folds"])
    assert folds["one_fold_train_wall_s"] > 0 and folds["folds_train_wall_s"] > 0
    ens = res["ensemble"]
    assert ens["score_slices_per_s"] > 0 and ens["cam_slices_per_s"] > 0 and ens["forward_batch"] == 4
    # the same ensemble moved to the device (here the CPU again) computes the same numbers
    assert ens["compared_slices"] == 4 and ens["max_prob_diff"] < 1e-5 and ens["max_cam_diff"] < 1e-4
    assert proc.stdout.rstrip().endswith(f"wrote {out}")
