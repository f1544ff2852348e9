from typing import Literal

import torch
from pydantic import BaseModel, Field

from mi_probe.plugin import EstimatorError, hookimpl, LayerMI


class RankBinsParams(BaseModel, extra="forbid"):
    kind: Literal["rank_bins"] = "rank_bins"
    bins: int = Field(8, ge=2, description="equal-frequency bins per channel")


class RankBins:
    name, reductions = "rank_bins", frozenset()  # layer reduction: the default mean only
    def __init__(self, params): self.bins = params.bins
    def input_mi(self, acts): return None  # not estimated: I(X;T) columns hold null
    def bias(self, n, k): return (self.bins - 1) * (k - 1) / (2 * n)  # Miller–Madow
    def describe(self): return {"name": self.name, "bins": self.bins}

    def label_mi(self, acts, labels, num_classes):  # (N, C), (N,) -> (C,) float64 nats
        (n, c), b, k = acts.shape, self.bins, num_classes
        codes = acts.argsort(dim=0, stable=True).argsort(0) * b // n  # rank -> bin; ties: by order
        cells = (torch.arange(c, device=acts.device) * b + codes) * k + labels[:, None]
        p = torch.bincount(cells.flatten(), minlength=c * b * k).double().view(c, b, k) / n
        outer = p.sum(2, keepdim=True) * p.sum(1, keepdim=True)
        return torch.where(p > 0, p * (p / outer).log(), 0.0).sum((1, 2))

    def layer_mi(self, acts, labels, num_classes, reduce):
        if reduce != "mean":
            raise EstimatorError(f"rank_bins reduces a layer by 'mean' only, not {reduce!r}")
        return LayerMI(None, self.label_mi(acts, labels, num_classes).mean().item())


@hookimpl
def mi_probe_register_estimators(register):
    register("rank_bins", RankBins, RankBinsParams)
