"""Built-in data source ``imagenette``: Imagenette2 (10 ImageNet classes) through
torchvision's own loader, which downloads it when asked (``download: true``).

Files are then read like ``imagefolder`` (lazily, decoded on access, the same
transforms); class names are torchvision's (``tench``, ``English springer``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mi_probe.builtin.datasets.imagefolder import ImageFolderParams, ImageFolderSource
from mi_probe.plugin import DataError, hookimpl, Register

#: torchvision's size names and the folder each extracts to under ``root``
SIZES = {"full": "imagenette2", "320px": "imagenette2-320", "160px": "imagenette2-160"}


class ImagenetteParams(ImageFolderParams):
    """Imagenette2 via ``torchvision.datasets.Imagenette``: ``root`` is where the
    archive is (or will be) extracted, ``size`` picks the full, 320 px or 160 px
    release."""

    # a registered params model names its own kind; pydantic validates each subclass's
    # literal, which mypy sees as narrowing the parent's
    kind: Literal["imagenette"] = Field(  # type: ignore[assignment]
        "imagenette", description="data source name")
    size: Literal["full", "320px", "160px"] = Field(
        "160px", description="which release: full (1.5 GB), 320px (0.3 GB) or 160px (0.1 GB)")
    download: bool = Field(False, description="download and extract the release into root "
                           "when it is not there (needs the internet once)")
    train_dir: Literal["train"] = "train"
    val_dir: Literal["val"] = "val"


class ImagenetteSource(ImageFolderSource):
    """``imagefolder`` over the folder torchvision downloads and checks."""

    params: ImagenetteParams

    @property
    def root(self) -> Path:
        return super().root / SIZES[self.params.size]

    def check_source(self) -> None:
        """Refuse a ``data.root`` that is a file, and a release that is not there when it
        will not be downloaded; what the release holds is torchvision's to check."""
        p, base = self.params, super().root
        if base.exists() and not base.is_dir():
            raise DataError(f"data.root: data folder {base} is a file; expected the folder "
                            f"Imagenette2 ({p.size}) is (or will be) extracted into")
        if not p.download and not self.root.is_dir():
            raise DataError(f"Imagenette2 ({p.size}) is not in {self.root}: expected the "
                            f"extracted folder {SIZES[p.size]}/ with train/ and val/ under "
                            f"data.root {base} (set data.download: true to fetch it)")

    def _torchvision(self, split: str):
        try:
            from torchvision.datasets import Imagenette
        except ImportError:
            import torchvision

            raise DataError(f"data kind imagenette needs torchvision >= 0.17 (it has "
                            f"datasets.Imagenette); found {torchvision.__version__}") from None

        p = self.params
        try:
            return Imagenette(str(super().root), split=split, size=p.size,
                              download=p.download and split == "train")
        except RuntimeError as exc:  # "Dataset not found. You can use download=True ..."
            hint = ("set data.download: true to fetch it" if not p.download
                    else "the download failed")
            raise DataError(f"Imagenette2 ({p.size}) is not in {self.root}: {exc} ({hint})"
                            ) from None
        except OSError as exc:  # no network, a partial archive, a full disk
            raise DataError(f"could not download Imagenette2 ({p.size}) into "
                            f"{super().root}: {exc}") from None

    def scan(self):
        """Classes in torchvision's order (sorted WordNet ids) with their first name,
        and the (path, label) samples of both splits."""
        train_set, val_set = self._torchvision("train"), self._torchvision("val")
        if train_set.wnids != val_set.wnids:
            raise DataError(f"the val split of {self.root} has classes {val_set.wnids}, the "
                            f"train split {train_set.wnids}; expected the same ten")
        classes = [names[0] for names in train_set.classes]
        cap = self.params.max_per_class

        def samples(dataset):
            out, taken = [], {}
            for path, label in sorted(dataset._samples):
                if cap is None or taken.get(label, 0) < cap:
                    taken[label] = taken.get(label, 0) + 1
                    out.append((Path(path), label))
            return sorted(out, key=lambda s: (s[1], s[0]))

        train, val = samples(train_set), samples(val_set)
        if not train or not val:
            raise DataError(f"{self.root} holds no .JPEG images in train/ or val/")
        return classes, train, val


@hookimpl
def mi_probe_register_datasets(register: Register) -> None:
    register("imagenette", ImagenetteSource, ImagenetteParams)
