"""Pictures of slices for people (predict's PNGs, the dashboard): no torch, numpy and Pillow only.

Slices are the lake's ``channels x height x width`` uint8 arrays (CE-T1 then T2); class activation
maps are float arrays in [0, 1] or the lake's uint8 maps (0..255), any size.
"""

from __future__ import annotations

import numpy as np

ROI_COLOUR = (0, 200, 255)


def overlay(image_uint8: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 (H, W, 3): the slice's CE-T1 channel in grey with the map in a red-yellow ramp.

    ``cam`` is in [0, 1] at the slice's size (``resize_map`` brings a stored map there).
    """
    grey = image_uint8[0].astype(np.float32) / 255.0
    heat = np.stack([np.clip(cam * 2, 0, 1), np.clip(cam * 2 - 1, 0, 1), np.zeros_like(cam)], axis=-1)
    a = alpha * cam[..., None]
    rgb = (1 - a) * grey[..., None] + a * heat
    return (rgb * 255).round().clip(0, 255).astype(np.uint8)


def resize_map(cam_uint8: np.ndarray, height: int, width: int) -> np.ndarray:
    """A stored uint8 map (0..255) as float [0, 1] at ``height`` x ``width`` (bilinear)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(cam_uint8, dtype=np.uint8)).resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def grey_rgb(channel_uint8: np.ndarray) -> np.ndarray:
    """One uint8 channel (H, W) as an RGB uint8 image."""
    return np.repeat(np.asarray(channel_uint8, dtype=np.uint8)[..., None], 3, axis=-1)


def roi_rect(i_min: int, i_max: int, j_min: int, j_max: int, size: int) -> tuple[int, int, int, int]:
    """The ROI's bounding rectangle in the pixels of its square crop: (col0, row0, col1, row1).

    The crop is the rectangle made square about its centre (``gbmmet.preprocess.slices``), so the
    rectangle's long side spans the crop and the short side is centred. Assumes square in-plane
    T2 pixels (the lake does not keep the T2's spacing).
    """
    w, h = i_max - i_min + 1, j_max - j_min + 1
    side = max(w, h)
    cw, ch = w / side * size, h / side * size
    c0, r0 = (size - cw) / 2.0, (size - ch) / 2.0
    return (int(round(c0)), int(round(r0)), int(round(c0 + cw)) - 1, int(round(r0 + ch)) - 1)


def draw_rect(rgb: np.ndarray, rect: tuple[int, int, int, int], colour=ROI_COLOUR, width: int = 2) -> np.ndarray:
    """A copy of ``rgb`` with the rectangle's outline drawn ``width`` pixels wide, inside the image."""
    out = rgb.copy()
    h, w = out.shape[:2]
    c0, r0, c1, r1 = max(0, rect[0]), max(0, rect[1]), min(w - 1, rect[2]), min(h - 1, rect[3])
    for k in range(width):
        out[min(r0 + k, h - 1), c0:c1 + 1] = colour
        out[max(r1 - k, 0), c0:c1 + 1] = colour
        out[r0:r1 + 1, min(c0 + k, w - 1)] = colour
        out[r0:r1 + 1, max(c1 - k, 0)] = colour
    return out
