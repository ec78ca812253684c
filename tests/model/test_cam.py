"""Grad-CAM: on synthetic cases whose class is decided by a lesion at a random place (ring-enhancing
vs solid, in noisy grey tissue), a head trained on frozen ImageNet features looks at the lesion:
the map's mass inside the lesion is several times its area share, case by case."""

from __future__ import annotations

import numpy as np
import torch

from gbmmet.model.backbones import EFFNET_LITE0, load_backbone, to_network_input
from gbmmet.model.cam import grad_cam
from gbmmet.model.train import HeadConfig, epoch_order, epoch_seed, loss_fn, make_head, train_epoch
from gbmmet.render import overlay

SIZE = 224


def _case(rng, ring: bool):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.integers(50, SIZE - 50, 2)
    r = rng.uniform(18, 28)
    d = np.hypot(yy - cy, xx - cx)
    img = 90 + 12 * np.sin(xx / rng.uniform(9, 15)) * np.cos(yy / rng.uniform(9, 15)) + rng.normal(0, 6, (SIZE, SIZE))
    if ring:  # enhancing rim, necrotic core
        img = np.where(d < r, 45, img)
        img = np.where((d >= r - 5) & (d < r), 220, img)
    else:  # solid enhancement
        img = np.where(d < r, 200, img)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.stack([img, img, img]), d < r + 4


def _cases(rng, n):
    rings = np.arange(n) % 2 == 0
    pairs = [_case(rng, bool(g)) for g in rings]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), rings.astype(np.int64)


def test_grad_cam_mass_falls_inside_the_lesion():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    backbone, info = load_backbone(EFFNET_LITE0)
    X_img, _, y = _cases(rng, 40)
    with torch.inference_mode():
        X = torch.cat([backbone(to_network_input(X_img[i:i + 20], info)) for i in range(0, 40, 20)])
    cfg = HeadConfig(hidden=32, epochs=40)
    heads = []
    for seed in (0, 1):  # two "folds": the ensemble's map is their mean
        cfg_k = HeadConfig(hidden=32, epochs=40, seed=seed)
        head = make_head(X.shape[1], cfg_k)
        opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
        yt = torch.tensor(y)
        for e in range(cfg.epochs):
            torch.manual_seed(epoch_seed(seed, 0, e))
            train_epoch(head, opt, loss_fn(cfg, y), X, yt, 16, epoch_order(len(X), seed, 0, e))
        heads.append(head.eval())
        with torch.no_grad():
            assert (head(X).argmax(1).numpy() == y).mean() > 0.9

    T_img, T_mask, _ = _cases(np.random.default_rng(1), 12)
    cams = grad_cam([(backbone, h) for h in heads], info, T_img)
    assert cams.shape == (12, SIZE, SIZE) and cams.min() >= 0 and np.isclose(cams.max(), 1)
    share = T_mask.mean(axis=(1, 2))  # about 5 % of the image
    mass = (cams * T_mask).sum(axis=(1, 2)) / cams.sum(axis=(1, 2))
    ratio = mass / share
    print("cam mass / area share per case:", np.round(ratio, 1))
    assert np.median(ratio) > 3, ratio
    assert (mass > share).mean() >= 0.8, ratio
    # a map that ignored the lesion would give ratio ~1: the same maps shifted off it do
    shifted = np.roll(cams, SIZE // 2, axis=2)
    assert np.median((shifted * T_mask).sum(axis=(1, 2)) / shifted.sum(axis=(1, 2)) / share) < np.median(ratio) / 2

    rgb = overlay(T_img[0], cams[0])
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
