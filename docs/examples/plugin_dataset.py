from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch.utils.data import TensorDataset

from mi_probe.plugin import DataBundle, hookimpl


class StripesParams(BaseModel, extra="forbid"):
    kind: Literal["stripes"] = "stripes"
    n_per_class: int = Field(64, ge=2)
    image_size: int = Field(16, ge=8)
    noise: float = Field(0.5, ge=0)


class Stripes:
    """Class k: stripes of period k + 2 plus noise; (3, S, S) float images."""

    def __init__(self, params):
        self.p = params

    def _split(self, seed):
        p, gen = self.p, torch.Generator().manual_seed(seed)
        labels = torch.arange(3).repeat_interleave(p.n_per_class)
        x = torch.arange(p.image_size)
        stripes = ((x[None, :] % (labels[:, None] + 2)) == 0).float()  # (N, S)
        images = stripes[:, None, None, :].expand(-1, 3, p.image_size, -1)
        return TensorDataset(images + p.noise * torch.randn(images.shape, generator=gen), labels)

    def load(self):  # a fixed-order evaluation set, separate from the training set
        return DataBundle(self._split(0), self._split(1), ["period2", "period3", "period4"])


@hookimpl
def mi_probe_register_datasets(register):
    register("stripes", Stripes, StripesParams)
