"""Decoding the ``slices`` table's image bytes (layout in ``storage.schemas``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def decode_images(table: pa.Table) -> np.ndarray:
    """(N, channels, height, width) uint8 from a slices table (``image``, ``channels``,
    ``height``, ``width`` columns)."""
    if table.num_rows == 0:
        return np.zeros((0, 3, 224, 224), np.uint8)
    c, h, w = (int(table.column(k)[0].as_py()) for k in ("channels", "height", "width"))
    return np.stack([np.frombuffer(b, np.uint8).reshape(c, h, w) for b in table.column("image").to_pylist()])
