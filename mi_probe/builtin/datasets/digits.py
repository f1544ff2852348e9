"""Built-in data source ``digits``: scikit-learn's bundled 8x8 handwritten digits,
split stratified and upsampled per item (helpers and conventions: :mod:`mi_probe._core.data`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mi_probe.plugin import CropScale, DataBundle, hookimpl, Register


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
    """Loads the digits and splits them stratified; images are upsampled as they are
    read, so memory does not grow with ``image_size``."""

    def __init__(self, params: DigitsParams):
        self.params = params

    def load(self) -> DataBundle:
        import numpy as np
        import torch
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        from mi_probe.plugin import tensor_train_transform, UpsampledGrayDataset

        p = self.params
        digits = load_digits()
        labels = np.asarray(digits.target, dtype=np.int64)
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)), test_size=p.val_fraction, stratify=labels,
            random_state=p.split_seed)
        train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)

        # kept at 8x8 and upsampled per item: any image_size costs no memory up front
        raw = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / 16.0)
        y = torch.from_numpy(labels)
        val = UpsampledGrayDataset(raw[val_idx], y[val_idx], p.image_size)
        transform = (tensor_train_transform(p.image_size, p.crop_scale, p.hflip,
                                             normalise=True) if p.augment else None)
        train = UpsampledGrayDataset(raw[train_idx], y[train_idx], p.image_size, transform)
        return DataBundle(train=train, val=val, classes=[str(i) for i in range(10)],
                          info={"n_train": len(train), "n_val": len(val),
                                "source": "sklearn.datasets.load_digits"})


@hookimpl
def mi_probe_register_datasets(register: Register) -> None:
    register("digits", DigitsSource, DigitsParams)
