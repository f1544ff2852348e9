"""What data-source params and file scans share, without torch: the crop-scale field
type, the ImageNet statistics, the image file extensions and the evaluation crop.

:mod:`mi_probe._core.data` (datasets, transforms, loaders) re-exports them; they live
here so that registering the built-in data sources (their params models name
:data:`CropScale`) does not import torch, and ``mi-probe plugins`` / ``schema`` stay fast.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

#: ImageNet channel statistics (RGB) used to normalise every real-image source.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: File extensions an image folder source reads (compared case-insensitively).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

#: Fraction of the resized image kept by the evaluation center crop (timm's default).
EVAL_CROP_PCT = 0.875


def _check_crop_scale(value: tuple[float, float]) -> tuple[float, float]:
    lo, hi = value
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"must satisfy 0 < min <= max <= 1 (got ({lo}, {hi}))")
    return value


CropScale = Annotated[tuple[float, float], AfterValidator(_check_crop_scale)]
