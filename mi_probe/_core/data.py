"""What the data sources share: datasets, image decoding, transforms and loaders.

The built-in sources (``mi_probe/builtin/datasets/``: ``digits``, ``imagefolder``,
``synthetic``) each turn a validated params model into a :class:`DataBundle`. Every
source yields ``(image, label)`` with ``image`` a float32 tensor (3, S, S) and
``label`` an int. The evaluation (``val``) set has a fixed order and no augmentation,
so activations captured from it are reproducible. Nothing random happens at load time
except what explicit seeds drive; per-item training augmentation draws from torch's
RNG (seeded per worker by :func:`make_loader`'s generator).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mi_probe._core.data_fields import (  # noqa: F401 - re-exported
    CropScale, EVAL_CROP_PCT, IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD)
from mi_probe.errors import DataError

if TYPE_CHECKING:
    from torchvision.transforms import v2

_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


# ----------------------------------------------------------------------------- datasets

class TensorImageDataset(Dataset):
    """Images held in memory as (N, 3, S, S) float32, with an optional per-item
    transform (used for training augmentation and normalisation)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if images.ndim != 4 or images.shape[1] != 3 or len(images) != len(labels):
            raise DataError(f"expected images (N, 3, S, S) and N labels; found images "
                            f"{tuple(images.shape)} and {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class UpsampledGrayDataset(Dataset):
    """Small grayscale images in [0, 1] held at their own size, each upsampled (bilinear)
    to (3, S, S) when it is read, then transformed (or normalised): memory stays that of
    the small images whatever S is."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 normalise: bool = True):
        if images.ndim != 3 or len(images) != len(labels):
            raise DataError(f"expected images (N, H, W) and N labels; found images "
                            f"{tuple(images.shape)} and {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.size = size
        self.transform = transform
        self.normalise = normalise

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        small = self.images[index][None, None]
        image = F.interpolate(small, size=(self.size, self.size), mode="bilinear",
                              align_corners=False)[0].clamp_(0.0, 1.0).expand(3, -1, -1)
        if self.transform is not None:
            image = self.transform(image.contiguous())
        elif self.normalise:
            image = _normalise(image[None])[0]
        return image.contiguous(), int(self.labels[index])


def available_memory() -> int | None:
    """Bytes of memory available now (Linux: MemAvailable), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits_in_memory(n_images: int, image_size: int, what: str,
                         share: float = 0.5) -> None:
    """Refuse to hold ``n_images`` (3, S, S) float32 images in memory when they would
    take more than ``share`` of the memory available, with the estimate."""
    needed = n_images * 3 * image_size * image_size * 4
    available = available_memory()
    if available is not None and needed > share * available:
        raise DataError(f"{what}: {n_images} images of 3x{image_size}x{image_size} float32 "
                        f"would take {needed / 2**30:.1f} GiB in memory, more than "
                        f"{share:.0%} of the {available / 2**30:.1f} GiB available; use a "
                        "smaller image_size or fewer images")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (grayscale, 16-bit, palette, CMYK, RGBA) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids PIL's palette-transparency warning
    if image.mode == "I" or image.mode.startswith("I;16"):
        # 16-bit grayscale: PIL's convert would clip to 255, so rescale explicitly
        array = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file fully as RGB; any decoding failure is a :class:`DataError`
    naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(image)
    except _PIL_ERRORS as exc:
        raise DataError(f"cannot read image {path}: expected a readable image file "
                        f"({', '.join(sorted(IMAGE_EXTENSIONS))}); found "
                        f"{type(exc).__name__}: {exc}") from exc


class ImageFileDataset(Dataset):
    """``(path, label)`` samples decoded on access and passed through ``transform``."""

    def __init__(self, samples: list[tuple[Path, int]],
                 transform: Callable[[Image.Image], torch.Tensor]):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label


def tensor_train_transform(image_size: int, crop_scale: tuple[float, float], hflip: bool,
                            normalise: bool) -> v2.Compose:
    from torchvision.transforms import v2  # torchvision costs ~1 s to import: only when used

    steps: list[Any] = [v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if normalise:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(steps)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


# ----------------------------------------------------------------------------- loaders

def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int | None = None,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose shuffle order (and worker seeds) come from a generator seeded
    with ``seed``, so the same seed gives the same batches."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, persistent_workers=False,
                      pin_memory=pin_memory)
