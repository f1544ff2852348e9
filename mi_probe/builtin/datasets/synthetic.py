"""Built-in data source ``synthetic``: generated images with planted class structure,
for tests (helpers and conventions: :mod:`mi_probe._core.data`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from mi_probe.plugin import CropScale, DataBundle, hookimpl, Register

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch


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
        import torch

        return torch.Generator().manual_seed(self.params.seed)

    @staticmethod
    def _templates(gen: torch.Generator, n_classes: int, size: int) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        low = max(2, size // 4)
        base = torch.randn(n_classes, 3, low, low, generator=gen)
        return F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)

    def templates(self) -> torch.Tensor:
        """The (n_classes, 3, S, S) class templates (noise-free class means)."""
        p = self.params
        return self._templates(self._generator(), p.n_classes, p.image_size)

    def _split(self, templates: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
        import torch

        gen = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % len(templates)
        noise = torch.randn(n, *templates.shape[1:], generator=gen)
        return templates[labels] + self.params.noise * noise, labels

    def load(self) -> DataBundle:
        import torch

        from mi_probe.plugin import (check_fits_in_memory, tensor_train_transform,
                                     TensorImageDataset)

        p = self.params
        check_fits_in_memory(p.n_train + p.n_val, p.image_size, "data (synthetic)")
        gen = self._generator()
        templates = self._templates(gen, p.n_classes, p.image_size)
        train_seed, val_seed = (int(s) for s in torch.randint(0, 2**62, (2,), generator=gen))
        x_train, y_train = self._split(templates, p.n_train, train_seed)
        x_val, y_val = self._split(templates, p.n_val, val_seed)
        transform = (tensor_train_transform(p.image_size, p.crop_scale, p.hflip,
                                             normalise=False) if p.augment else None)
        return DataBundle(
            train=TensorImageDataset(x_train, y_train, transform),
            val=TensorImageDataset(x_val, y_val),
            classes=[f"class_{i}" for i in range(p.n_classes)],
            info={"n_train": p.n_train, "n_val": p.n_val, "source": "synthetic"})


@hookimpl
def mi_probe_register_datasets(register: Register) -> None:
    register("synthetic", SyntheticSource, SyntheticParams)
