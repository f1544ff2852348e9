"""Built-in data source ``imagefolder``: images in the Imagenette2 folder layout, read
lazily and decoded on access (helpers and conventions: :mod:`mi_probe._core.data`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mi_probe.plugin import (CropScale, DataBundle, DataError, EVAL_CROP_PCT, hookimpl,
                             IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, Register)

if TYPE_CHECKING:  # imported where used: torchvision is slow to import
    from torchvision.transforms import v2


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
    train_per_class: int | None = Field(
        None, ge=1, description="train on only the first n (sorted) training images of each "
        "class, after the selection images are held back (for training-set-size studies; "
        "the selection and evaluation images stay the same)")
    selection_fraction: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="hold back this fraction of each class's training images (the same "
        "files for every seed: ordered by a hash of their names) to choose the checkpoint "
        "and stop early, so that the evaluation images, which the analysis uses, never "
        "choose the model; 0: the evaluation images choose it too")


def hold_back(samples: list[tuple[Path, int]], fraction: float, root: Path
              ) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Split ``samples`` into (kept, held back): ``round(fraction * n)`` files of each
    class, at least one and never all, chosen by the SHA-1 of their path below ``root``,
    so the choice is the same for every seed and run and does not depend on the order
    files were listed in. Both parts keep the input order."""
    if fraction <= 0:
        return samples, []
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)

    def rank(sample: tuple[Path, int]) -> str:
        path = sample[0]
        name = path.relative_to(root) if path.is_relative_to(root) else path
        return hashlib.sha1(name.as_posix().encode()).hexdigest()

    held: set[Path] = set()
    for label, members in by_class.items():
        if len(members) < 2:
            raise DataError(f"selection_fraction {fraction} needs at least 2 training images "
                            f"per class to hold one back; class {label} has {len(members)}")
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        held.update(s[0] for s in sorted(members, key=rank)[:count])
    return ([s for s in samples if s[0] not in held], [s for s in samples if s[0] in held])


def first_per_class(samples: list[tuple[Path, int]], cap: int) -> list[tuple[Path, int]]:
    """The first ``cap`` samples of each label, in the input order."""
    taken: dict[int, int] = {}
    kept = []
    for sample in samples:
        taken[sample[1]] = taken.get(sample[1], 0) + 1
        if taken[sample[1]] <= cap:
            kept.append(sample)
    return kept


def few_per_class(samples: list[tuple[Path, int]], classes: list[str], folder: Path,
                  what: str) -> list[str]:
    """A warning naming the classes of ``samples`` with fewer than 2 images: a class
    statistic (class-conditional MI, per-class accuracy) from one image is noise."""
    counts = dict.fromkeys(range(len(classes)), 0)
    for _, label in samples:
        counts[label] += 1
    few = [f"{classes[k]} ({n})" for k, n in counts.items() if n < 2]
    if not few:
        return []
    return [f"class(es) with fewer than 2 {what} images in {folder}: {', '.join(few)}; "
            "per-class results for them rest on one image or none"]


class ImageFolderSource:
    """Reads an image folder lazily; the folder structure is checked in :meth:`load`
    (and, without listing images, by :meth:`check_source`) and each file is decoded when
    accessed."""

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
            state = "is a file, not a folder" if split.exists() else "does not exist"
            raise DataError(f"split folder {split} {state}; expected the Imagenette2 "
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

    def _folders(self) -> tuple[dict[str, Path], dict[str, Path]]:
        """The class folders of both splits, checked from folder names alone: the root
        is a folder holding both splits, which hold the same classes, at least two."""
        p, root = self.params, self.root
        if not root.is_dir():
            state = "is a file" if root.exists() else "does not exist"
            raise DataError(f"data.root: data folder {root} {state}; expected a folder "
                            f"holding {p.train_dir}/ and {p.val_dir}/ with one subfolder of "
                            f"images per class (the Imagenette2 layout {self._layout()})")
        train_split, val_split = root / p.train_dir, root / p.val_dir
        train_dirs = self._class_dirs(train_split)
        val_dirs = self._class_dirs(val_split)
        if set(train_dirs) != set(val_dirs):
            missing = sorted(set(train_dirs) - set(val_dirs))
            extra = sorted(set(val_dirs) - set(train_dirs))
            raise DataError(f"class folders of {val_split} differ from {train_split}: "
                            f"missing in {p.val_dir}: {missing}; only in {p.val_dir}: {extra}")
        if len(train_dirs) < 2:
            raise DataError(f"{train_split} has one class folder, {next(iter(train_dirs))!r}; "
                            "expected at least 2 classes (the mutual information between "
                            "activations and a single label is zero by construction)")
        return train_dirs, val_dirs

    def check_source(self) -> None:
        """Refuse a root that is not a folder, a missing split or fewer than 2 classes
        (``mi-probe validate``: class folder names only; images are neither listed nor
        decoded)."""
        self._folders()

    def scan(self) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, int]]]:
        """Check the folder structure and list ``(classes, train samples, val samples)``."""
        p, root = self.params, self.root
        train_split, val_split = root / p.train_dir, root / p.val_dir
        train_dirs, val_dirs = self._folders()
        classes = sorted(train_dirs)
        index = {name: i for i, name in enumerate(classes)}
        train_files = self._files(train_split, train_dirs)
        val_files = self._files(val_split, val_dirs)
        train = [(f, index[c]) for c in classes for f in train_files[c]]
        val = [(f, index[c]) for c in classes for f in val_files[c]]
        return classes, train, val

    def eval_transform(self) -> "v2.Compose":
        """Resize the shorter side to ``round(S / 0.875)``, center-crop S, normalise."""
        import torch
        from torchvision.transforms import v2

        size = self.params.image_size
        return v2.Compose([
            v2.Resize(round(size / EVAL_CROP_PCT), antialias=True),
            v2.CenterCrop(size),
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def train_transform(self) -> "v2.Compose":
        """RandomResizedCrop + optional flip, normalise (the eval transform when
        ``augment`` is off)."""
        import torch
        from torchvision.transforms import v2

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
        """The three image sets; a class with fewer than 2 training or evaluation images
        is a warning of the bundle (counted from file names, nothing decoded)."""
        from mi_probe.plugin import ImageFileDataset

        p = self.params
        classes, train, val = self.scan()
        warnings = (few_per_class(train, classes, self.root / p.train_dir, "training")
                    + few_per_class(val, classes, self.root / p.val_dir, "evaluation"))
        train, held = hold_back(train, self.params.selection_fraction, self.root)
        if self.params.train_per_class is not None:
            train = first_per_class(train, self.params.train_per_class)
        info = {"n_train": len(train), "n_val": len(val), "root": str(self.root),
                "source": self.params.kind}
        if held:
            info["n_selection"] = len(held)
        return DataBundle(
            train=ImageFileDataset(train, self.train_transform()),
            val=ImageFileDataset(val, self.eval_transform()),
            classes=classes, info=info,
            selection=ImageFileDataset(held, self.eval_transform()) if held else None,
            warnings=warnings)

    def verify(self) -> list[str]:
        """Decode every file the source would use; return the paths that fail."""
        from mi_probe.plugin import load_rgb

        _, train, val = self.scan()
        bad = []
        for path, _ in train + val:
            try:
                load_rgb(path)
            except DataError:
                bad.append(str(path))
        return bad


@hookimpl
def mi_probe_register_datasets(register: Register) -> None:
    register("imagefolder", ImageFolderSource, ImageFolderParams)
