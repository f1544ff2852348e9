"""Data sources: each turns a validated params model into a :class:`DataBundle`.

Every source yields ``(image, label)`` with ``image`` a float32 tensor (3, S, S) and
``label`` an int. The evaluation (``val``) set has a fixed order and no augmentation,
so activations captured from it are reproducible. Nothing random happens at load time
except what explicit seeds drive; per-item training augmentation draws from torch's
RNG (seeded per worker by :func:`make_loader`'s generator).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from mi_probe.errors import DataError
from mi_probe.interfaces import DataBundle

#: ImageNet channel statistics (RGB) used to normalise every real-image source.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: File extensions an image folder source reads (compared case-insensitively).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

#: Fraction of the resized image kept by the evaluation center crop (timm's default).
EVAL_CROP_PCT = 0.875

_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _check_crop_scale(value: tuple[float, float]) -> tuple[float, float]:
    lo, hi = value
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"must satisfy 0 < min <= max <= 1 (got ({lo}, {hi}))")
    return value


CropScale = Annotated[tuple[float, float], AfterValidator(_check_crop_scale)]


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


def _tensor_train_transform(image_size: int, crop_scale: tuple[float, float], hflip: bool,
                            normalise: bool) -> v2.Compose:
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


# ----------------------------------------------------------------------------- digits

class DigitsParams(BaseModel):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, no
    download), upsampled to ``image_size``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["digits"] = Field("digits", description="data source name")
    image_size: int = Field(32, ge=8, le=1024,
                            description="side S of the (3, S, S) images (bilinear upsampling)")
    val_fraction: float = Field(0.5, ge=0.01, le=0.99,
                                description="share of images in the evaluation set; large "
                                "because the plug-in MI bias scales as 1/N_val")
    split_seed: int = Field(0, ge=0, description="seed of the stratified train/val split")
    augment: bool = Field(True, description="apply training augmentation (crop, flip)")
    crop_scale: CropScale = Field((0.6, 1.0),
                                  description="RandomResizedCrop area range for training")
    hflip: bool = Field(False, description="random horizontal flips in training (off: "
                        "flipped digits are other digits)")


class DigitsSource:
    """Loads the digits, splits them stratified and upsamples them once in memory."""

    def __init__(self, params: DigitsParams):
        self.params = params

    def load(self) -> DataBundle:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        p = self.params
        digits = load_digits()
        labels = np.asarray(digits.target, dtype=np.int64)
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)), test_size=p.val_fraction, stratify=labels,
            random_state=p.split_seed)
        train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)

        raw = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / 16.0)
        images = F.interpolate(raw[:, None], size=(p.image_size, p.image_size),
                               mode="bilinear", align_corners=False)
        images = images.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()
        y = torch.from_numpy(labels)

        val = TensorImageDataset(_normalise(images[val_idx]), y[val_idx])
        if p.augment:
            train = TensorImageDataset(
                images[train_idx], y[train_idx],
                _tensor_train_transform(p.image_size, p.crop_scale, p.hflip, normalise=True))
        else:
            train = TensorImageDataset(_normalise(images[train_idx]), y[train_idx])
        return DataBundle(train=train, val=val, classes=[str(i) for i in range(10)],
                          info={"n_train": len(train), "n_val": len(val),
                                "source": "sklearn.datasets.load_digits"})


# ----------------------------------------------------------------------------- image folder

class ImageFolderParams(BaseModel):
    """Images in the Imagenette2 layout: ``root/<train_dir>/<class>/*.jpg`` and
    ``root/<val_dir>/<class>/*``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["imagefolder"] = Field("imagefolder", description="data source name")
    root: str = Field(..., min_length=1, description="dataset folder (~ is expanded)")
    train_dir: str = Field("train", min_length=1, description="training split subfolder")
    val_dir: str = Field("val", min_length=1, description="evaluation split subfolder")
    image_size: int = Field(224, ge=8, le=4096, description="side S of the (3, S, S) images")
    max_per_class: int | None = Field(None, ge=1,
                                      description="use only the first n files (sorted) of "
                                      "each class in both splits, for quick runs")
    augment: bool = Field(True, description="apply training augmentation (crop, flip)")
    crop_scale: CropScale = Field((0.08, 1.0),
                                  description="RandomResizedCrop area range for training")
    hflip: bool = Field(True, description="random horizontal flips in training")


class ImageFolderSource:
    """Reads an image folder lazily; the folder structure is checked in :meth:`load`
    and each file is decoded when accessed."""

    def __init__(self, params: ImageFolderParams):
        self.params = params

    @property
    def root(self) -> Path:
        return Path(os.path.expanduser(self.params.root))

    def _layout(self) -> str:
        p = self.params
        return f"root/{p.train_dir}/<class>/, root/{p.val_dir}/<class>/"

    def _class_dirs(self, split: Path) -> dict[str, Path]:
        if not split.is_dir():
            found = sorted(d.name for d in self.root.iterdir() if d.is_dir())
            raise DataError(f"split folder {split} does not exist; expected the Imagenette2 "
                            f"layout {self._layout()}; found subfolders {found} in {self.root}")
        dirs = {d.name: d for d in sorted(split.iterdir())
                if d.is_dir() and not d.name.startswith(".")}
        if not dirs:
            n_files = sum(1 for f in split.iterdir() if f.is_file())
            raise DataError(f"split folder {split} has no class folders; expected "
                            f"{split}/<class>/ holding images; found {n_files} loose files")
        return dirs

    def _files(self, split: Path, dirs: dict[str, Path]) -> dict[str, list[Path]]:
        files = {name: sorted(f for f in d.iterdir()
                              if f.is_file() and not f.name.startswith(".")
                              and f.suffix.lower() in IMAGE_EXTENSIONS)
                 for name, d in dirs.items()}
        empty = [name for name, fs in files.items() if not fs]
        if empty:
            raise DataError(f"class folders without images in {split}: {', '.join(empty)}; "
                            f"expected files with extensions "
                            f"{', '.join(sorted(IMAGE_EXTENSIONS))}")
        if self.params.max_per_class is not None:
            files = {name: fs[:self.params.max_per_class] for name, fs in files.items()}
        return files

    def scan(self) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, int]]]:
        """Check the folder structure and list ``(classes, train samples, val samples)``."""
        p, root = self.params, self.root
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist; expected the Imagenette2 "
                            f"layout {self._layout()}")
        train_split, val_split = root / p.train_dir, root / p.val_dir
        train_dirs = self._class_dirs(train_split)
        val_dirs = self._class_dirs(val_split)
        if set(train_dirs) != set(val_dirs):
            missing = sorted(set(train_dirs) - set(val_dirs))
            extra = sorted(set(val_dirs) - set(train_dirs))
            raise DataError(f"class folders of {val_split} differ from {train_split}: "
                            f"missing in {p.val_dir}: {missing}; only in {p.val_dir}: {extra}")
        classes = sorted(train_dirs)
        index = {name: i for i, name in enumerate(classes)}
        train_files = self._files(train_split, train_dirs)
        val_files = self._files(val_split, val_dirs)
        train = [(f, index[c]) for c in classes for f in train_files[c]]
        val = [(f, index[c]) for c in classes for f in val_files[c]]
        return classes, train, val

    def eval_transform(self) -> v2.Compose:
        """Resize the shorter side to ``round(S / 0.875)``, center-crop S, normalise."""
        size = self.params.image_size
        return v2.Compose([
            v2.Resize(round(size / EVAL_CROP_PCT), antialias=True),
            v2.CenterCrop(size),
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def train_transform(self) -> v2.Compose:
        """RandomResizedCrop + optional flip, normalise (the eval transform when
        ``augment`` is off)."""
        p = self.params
        if not p.augment:
            return self.eval_transform()
        steps: list[Any] = [v2.RandomResizedCrop(p.image_size, scale=p.crop_scale,
                                                 antialias=True)]
        if p.hflip:
            steps.append(v2.RandomHorizontalFlip())
        steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                  v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        return v2.Compose(steps)

    def load(self) -> DataBundle:
        classes, train, val = self.scan()
        return DataBundle(
            train=ImageFileDataset(train, self.train_transform()),
            val=ImageFileDataset(val, self.eval_transform()),
            classes=classes,
            info={"n_train": len(train), "n_val": len(val), "root": str(self.root),
                  "source": "imagefolder"})

    def verify(self) -> list[str]:
        """Decode every file the source would use; return the paths that fail."""
        _, train, val = self.scan()
        bad = []
        for path, _ in train + val:
            try:
                load_rgb(path)
            except DataError:
                bad.append(str(path))
        return bad


# ----------------------------------------------------------------------------- synthetic

class SyntheticParams(BaseModel):
    """Generated images with planted class structure (for tests): a smooth random
    template per class plus gaussian noise. Values are already roughly zero-mean, unit
    scale, so no ImageNet normalisation is applied."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["synthetic"] = Field("synthetic", description="data source name")
    n_classes: int = Field(4, ge=2, le=1000, description="number of classes")
    n_train: int = Field(256, ge=1, description="training images (labels cycle over classes)")
    n_val: int = Field(256, ge=1, description="evaluation images (labels cycle over classes)")
    image_size: int = Field(16, ge=8, le=1024, description="side S of the (3, S, S) images")
    noise: float = Field(1.0, ge=0.0, description="std of the gaussian noise added to templates")
    seed: int = Field(0, ge=0, description="seed of templates and noise")
    augment: bool = Field(False, description="apply training augmentation (crop, flip)")
    crop_scale: CropScale = Field((0.6, 1.0),
                                  description="RandomResizedCrop area range for training")
    hflip: bool = Field(False, description="random horizontal flips in training")


class SyntheticSource:
    """``image = template[y] + noise * N(0, 1)``, generated deterministically from
    ``seed``; train and val noise come from separate seeded streams, so the val set does
    not change with ``n_train``."""

    def __init__(self, params: SyntheticParams):
        self.params = params

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.params.seed)

    @staticmethod
    def _templates(gen: torch.Generator, n_classes: int, size: int) -> torch.Tensor:
        low = max(2, size // 4)
        base = torch.randn(n_classes, 3, low, low, generator=gen)
        return F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)

    def templates(self) -> torch.Tensor:
        """The (n_classes, 3, S, S) class templates (noise-free class means)."""
        p = self.params
        return self._templates(self._generator(), p.n_classes, p.image_size)

    def _split(self, templates: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % len(templates)
        noise = torch.randn(n, *templates.shape[1:], generator=gen)
        return templates[labels] + self.params.noise * noise, labels

    def load(self) -> DataBundle:
        p = self.params
        gen = self._generator()
        templates = self._templates(gen, p.n_classes, p.image_size)
        train_seed, val_seed = (int(s) for s in torch.randint(0, 2**62, (2,), generator=gen))
        x_train, y_train = self._split(templates, p.n_train, train_seed)
        x_val, y_val = self._split(templates, p.n_val, val_seed)
        transform = (_tensor_train_transform(p.image_size, p.crop_scale, p.hflip,
                                             normalise=False) if p.augment else None)
        return DataBundle(
            train=TensorImageDataset(x_train, y_train, transform),
            val=TensorImageDataset(x_val, y_val),
            classes=[f"class_{i}" for i in range(p.n_classes)],
            info={"n_train": p.n_train, "n_val": p.n_val, "source": "synthetic"})


# ----------------------------------------------------------------------------- loaders

def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int | None = None,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose shuffle order (and worker seeds) come from a generator seeded
    with ``seed``, so the same seed gives the same batches."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, persistent_workers=False,
                      pin_memory=pin_memory)
