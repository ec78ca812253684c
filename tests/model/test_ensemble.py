"""FoldEnsemble: a run's fold checkpoints, written as the trainer writes them, rebuilt into the
ensemble that evaluation, class activation maps and ``gbmmet predict`` use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gbmmet.errors import ConfigError
from gbmmet.model.backbones import RANDOM18, load_backbone, to_network_input
from gbmmet.model.ensemble import FoldEnsemble, ensemble_vote
from gbmmet.model.finetune import FinetuneNet
from gbmmet.model.head import Head
from gbmmet.model.train import HeadConfig, make_head
from pipelines.train import STATE_FILE, load_state

CFG = HeadConfig(hidden=8)


def _save(folder, weights) -> str:
    """A fold's last checkpoint as the trainer saves it (``train_func_per_worker``)."""
    folder.mkdir(parents=True)
    torch.save({"model": weights, "opt": {}, "epoch": 0, "history": [{"epoch": 0, "train_loss": 0.7}],
                "attempt": 0, "oof_prob": np.zeros(3, np.float32)}, folder / STATE_FILE)
    return str(folder)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(RANDOM18)


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, (5, 3, 64, 64), dtype="uint8")


@pytest.fixture
def frozen_run(tmp_path, backbone):
    """Three fold heads (different seeds) and their checkpoint folders."""
    _, info = backbone
    heads = [make_head(info.feature_dim, HeadConfig(hidden=8, seed=k)).eval() for k in range(3)]
    paths = [_save(tmp_path / f"fold{k}", h.state_dict()) for k, h in enumerate(heads)]
    return heads, paths


def _frozen(paths, **kw):
    return FoldEnsemble.from_checkpoints(paths, mode="frozen", head_config=CFG.to_dict(), backbone_name=RANDOM18,
                                         backbone_id=load_backbone(RANDOM18)[1].id, read_state=load_state, **kw)


def _features(backbone, images):
    model, info = backbone
    with torch.inference_mode():
        return model(to_network_input(images, info)).numpy()


def test_from_checkpoints_reproduces_each_fold_heads_outputs(frozen_run, backbone, images):
    heads, paths = frozen_run
    X = _features(backbone, images)
    ens = _frozen(paths)
    assert ens.n_folds == 3 and ens.folds == [0, 1, 2] and ens.info.id == backbone[1].id
    with torch.inference_mode():
        want = np.stack([torch.softmax(h(torch.from_numpy(X)), 1)[:, 1].numpy() for h in heads])
    got = ens.predict_proba(X)
    assert got.shape == (3, 5) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_images_run_the_backbone_first(frozen_run, backbone, images):
    ens = _frozen(frozen_run[1])
    np.testing.assert_allclose(ens.predict_proba(images=images), ens.predict_proba(_features(backbone, images)),
                               rtol=0, atol=1e-6)


def test_a_subset_of_folds_loads_only_those(frozen_run, backbone, images):
    X = _features(backbone, images)
    every = _frozen(frozen_run[1]).predict_proba(X)
    one = _frozen(dict(enumerate(frozen_run[1])), folds=[2], features_only=True)
    assert one.folds == [2] and one.backbone is None
    np.testing.assert_array_equal(one.predict_proba(X), every[2:])
    with pytest.raises(ValueError, match="must name folds of the run"):
        _frozen(frozen_run[1], folds=[7])


def test_a_wrong_backbone_id_names_both_ids(frozen_run, backbone):
    wrong = f"{RANDOM18}@000000000000"
    with pytest.raises(ConfigError, match=f"{backbone[1].id}.*{wrong}"):
        FoldEnsemble.from_checkpoints(frozen_run[1], mode="frozen", head_config=CFG, backbone_name=RANDOM18,
                                      backbone_id=wrong, read_state=load_state)


def test_vote_is_ensemble_vote_of_the_fold_probabilities(frozen_run, images):
    ens = _frozen(frozen_run[1])
    for got, want in zip(ens.vote(images=images), ensemble_vote(ens.predict_proba(images=images)), strict=True):
        np.testing.assert_array_equal(got, want)


def test_grad_cam_maps_are_in_unit_range(frozen_run, images):
    ens = _frozen(frozen_run[1])
    full, small = ens.grad_cam(images), ens.grad_cam(images, size=16)
    assert full.shape == (5, 64, 64) and small.shape == (5, 16, 16)
    for maps in (full, small):
        assert maps.dtype == np.float32 and maps.min() >= 0 and maps.max() <= 1


def test_finetune_folds_keep_their_own_backbone_tails(tmp_path, backbone, images):
    nets = []
    for k in range(2):  # each fold's tail moved its own way
        model, info = load_backbone(RANDOM18)
        torch.manual_seed(k)
        net = FinetuneNet(model, info, Head(info.feature_dim, CFG.hidden, CFG.dropout))
        with torch.no_grad():
            for p in net.backbone.layer4.parameters():
                p.add_(0.05 * torch.randn_like(p))
        nets.append(net.eval())
    paths = {k: _save(tmp_path / f"fold{k}", n.trainable_state()) for k, n in enumerate(nets)}
    ens = FoldEnsemble.from_checkpoints(paths, mode="finetune", head_config=CFG, backbone_name=RANDOM18,
                                        backbone_id=backbone[1].id, read_state=load_state)
    with torch.inference_mode():
        want = np.stack([torch.softmax(n(torch.from_numpy(images)), 1)[:, 1].numpy() for n in nets])
    np.testing.assert_allclose(ens.predict_proba(images=images), want, rtol=0, atol=1e-6)
    assert ens.models[0].backbone is not ens.models[1].backbone
    assert ens.grad_cam(images, size=8).shape == (5, 8, 8)
    with pytest.raises(ValueError, match="pass images="):
        ens.predict_proba(_features(backbone, images))


def test_the_default_forward_pass_is_small_on_the_cpu_and_agrees_with_one_large_pass(frozen_run, images):
    from gbmmet.model.backbones import CPU_FORWARD_BATCH, forward_batch

    ens = _frozen(frozen_run[1])
    assert ens.device.type == "cpu" and forward_batch(ens.device) == CPU_FORWARD_BATCH < len(images)
    np.testing.assert_allclose(ens.predict_proba(images=images), ens.predict_proba(images=images, batch_size=64),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(ens.grad_cam(images), ens.grad_cam(images, batch_size=64), rtol=0, atol=1e-4)
