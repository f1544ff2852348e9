"""Built-in regulariser ``hsic`` (and the :class:`HSICRegularizer` that ``nhsic`` uses
too; the ``hsic_compare`` experiment, paper Fig. 9, compares them with plain
cross-entropy).

The regularisers reward dependence between the pooled activations of chosen sites and
the labels. With per-site weights β_l ≥ 0 and a global λ ≥ 0 the training loss is

    loss = CE − λ · Σ_l β_l · D(T_l, Y),    D = HSIC (kind ``hsic``) or nHSIC / CKA
                                                (kind ``nhsic``),

so the ``penalty`` a regulariser returns (which the training loop *adds* to the
cross-entropy) is ``−λ Σ_l β_l D_l`` (≤ 0; more dependence = lower loss).
``HSIC = tr(K H L H)/(n−1)²`` (biased estimator, no further normalisation; in units of
the kernels, which are in [0, 1]) over the training batch of n samples: K is the RBF
kernel of the site's (n, C) globally average-pooled activations with σ = median of
the pairwise Euclidean distances (not squared) over the batch's off-diagonal pairs,
treated as a constant (no gradient through σ); L is the delta kernel 1[y_i = y_j].
``nhsic`` divides by sqrt(HSIC(K,K)·HSIC(L,L)), which makes it scale-free in [0, 1].
Both use the activations the training forward pass already produced (no second
forward pass) and cost O(n²·C) per site, on the training device.
"""

from __future__ import annotations

import fnmatch
import math
from typing import TYPE_CHECKING, Any, Literal, Mapping, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mi_probe.plugin import hookimpl

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch


class HSICParams(BaseModel):
    """Reward HSIC dependence between pooled site activations and labels:
    penalty = −lam · Σ_l β_l · HSIC(T_l, Y), added to the cross-entropy."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["hsic"] = "hsic"
    sites: list[str] = Field(["*.post_add"], min_length=1,
                             description="fnmatch patterns of the sites the term is computed "
                             "on (site names, or '*.<kind>')")
    lam: float = Field(0.1, ge=0, description="global weight λ ≥ 0 of the reward; the loss is "
                       "CE − λ Σ_l β_l HSIC_l (0 = plain cross-entropy)")
    betas: dict[str, float] = Field(
        {}, description="per-site weights β_l ≥ 0 by fnmatch pattern over site names; the "
        "first matching pattern (in the order written) wins; unmatched sites get default_beta")
    default_beta: float = Field(1.0, ge=0, description="β of sites no betas pattern matches")
    bandwidth: Literal["median"] | float = Field(
        "median", description="RBF σ: 'median' = median pairwise Euclidean distance (not "
        "squared) within the batch, without gradient; or a fixed positive number")

    @field_validator("betas")
    @classmethod
    def _betas_nonnegative(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"betas must be finite and ≥ 0 (the term is a reward; use lam: 0 "
                             f"to switch it off), got {bad}")
        return value

    @field_validator("bandwidth")
    @classmethod
    def _bandwidth_positive(cls, value: Any) -> Any:
        if not isinstance(value, str) and not (math.isfinite(value) and value > 0):
            raise ValueError(f"bandwidth must be 'median' or a positive number, got {value}")
        return value


class HSICRegularizer:
    """Implements ``interfaces.Regularizer`` for ``hsic`` and ``nhsic``."""

    def __init__(self, params: HSICParams):
        self.params = params
        self.name = params.kind
        self.normalised = params.kind == "nhsic"
        self.site_patterns = list(params.sites)
        #: the last batch's per-site criterion values (detached floats), for inspection
        self.last_values: dict[str, float] = {}

    def beta(self, site: str) -> float:
        for pattern, weight in self.params.betas.items():
            if fnmatch.fnmatchcase(site, pattern):
                return float(weight)
        return float(self.params.default_beta)

    def dependence(self, pooled: Mapping[str, torch.Tensor], labels: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
        """HSIC (or nHSIC) of every site's (n, C) activations with ``labels``, with gradient.
        The RBF kernel enters as K − 1 (expm1): the same value as K, and full precision for
        any bandwidth (docs/hsic.md)."""
        import torch

        from mi_probe.functional.hsic import delta_kernel, hsic, nhsic, rbf_kernel_minus_one

        out: dict[str, torch.Tensor] = {}
        if not pooled:
            return out
        first = next(iter(pooled.values()))
        dtype = first.dtype if first.dtype in (torch.float32, torch.float64) else torch.float32
        l_kernel = delta_kernel(labels.to(first.device), dtype)
        sigma = None if self.params.bandwidth == "median" else float(self.params.bandwidth)
        criterion = nhsic if self.normalised else hsic
        for site, acts in pooled.items():
            x = acts.reshape(acts.shape[0], -1).to(dtype)
            out[site] = criterion(rbf_kernel_minus_one(x, sigma), l_kernel)
        return out

    def penalty(self, pooled: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """−λ Σ_l β_l D(T_l, Y): added to the cross-entropy, so dependence lowers the loss."""
        import torch

        device = next(iter(pooled.values())).device if pooled else labels.device
        lam = float(self.params.lam)
        weights = {site: self.beta(site) for site in pooled}
        active = {site: acts for site, acts in pooled.items() if weights[site] > 0}
        if lam == 0 or not active:
            self.last_values = {}
            return torch.zeros((), device=device)
        values = self.dependence(active, labels)
        self.last_values = {site: float(v.detach()) for site, v in values.items()}
        # a tensor: ``active`` is not empty, so neither is ``values``
        total = cast(torch.Tensor, sum(weights[site] * v for site, v in values.items()))
        return -lam * total


@hookimpl
def mi_probe_register_regularizers(register):
    register("hsic", HSICRegularizer, HSICParams)
