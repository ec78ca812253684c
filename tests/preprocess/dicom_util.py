"""Write a volume as a real DICOM series (SimpleITK's GDCM writer), for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_series(img: sitk.Image, folder: Path, series_uid: str, prefix: str = "IM",
                 tags: dict[str, str] | None = None) -> list[Path]:
    """``tags`` ("gggg|eeee" -> value) are added to every slice (series description, echo time...)."""
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.Cast(sitk.RescaleIntensity(img, 0, 4000), sitk.sitkInt16)
    direction = img.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k in range(img.GetDepth()):
        s = img[:, :, k]
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        meta = {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.6f}" for p in pos),
            "0020|0037": orientation,
            "0028|0030": f"{img.GetSpacing()[1]:.6f}\\{img.GetSpacing()[0]:.6f}",
            "0018|0050": f"{img.GetSpacing()[2]:.6f}",
            "0008|0018": f"{series_uid}.{k + 1}",
            **(tags or {}),
        }
        for key, value in meta.items():
            s.SetMetaData(key, value)
        path = folder / f"{prefix}{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(s)
        paths.append(path)
    return paths


def volume(rng: np.random.Generator, size=(24, 20, 8), spacing=(1.0, 1.2, 3.0)) -> sitk.Image:
    arr = rng.uniform(100, 1000, size[::-1]).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-10.0, 20.0, 5.0))
    return img
