"""mi-probe plugin: neural MI lower bounds ``mine`` and ``infonce``.

Registered through the entry point ``[project.entry-points.mi_probe] mine =
"mi_probe_mine.plugin"``. Uses only mi-probe's public plugin surface (``hookspecs``,
``interfaces``, ``errors``), never the engine.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mi_probe.plugin import EstimatorError, hookimpl, LayerMI

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch


class _NeuralParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(64, gt=0, le=4096, description="hidden units of each critic layer")
    steps: int = Field(300, gt=0, description="training budget: Adam steps per critic")
    batch_size: int = Field(256, ge=2, description="samples per training step (B)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    seed: int = Field(0, ge=0, description="seeds critic init, split and batches")
    eval_fraction: float = Field(0.25, gt=0, lt=1, description=(
        "fraction of the samples held out of training; the reported bound is evaluated "
        "on them only (avoids the upward bias of a critic scored on its training data)"))
    max_channels_batched: int = Field(64, gt=0, description=(
        "channels (or channel pairs) whose critics are trained in parallel as one "
        "batched network; bounds memory, does not change results"))


class MineParams(_NeuralParams):
    """MINE (Belghazi et al. 2018): Donsker-Varadhan bound, moving-average gradient."""

    kind: Literal["mine"] = "mine"
    ema: float = Field(0.01, gt=0, le=1, description=(
        "rate of the moving average of E[e^T] that replaces the denominator of the DV "
        "gradient (MINE's bias correction); 1 = no correction"))


class InfoNCEParams(_NeuralParams):
    """InfoNCE (van den Oord et al. 2018): a lower bound capped at log(batch_size)."""

    kind: Literal["infonce"] = "infonce"


class NeuralEstimator:
    """Per-channel I(T_c;Y) by a critic trained per channel (all channels in parallel),
    reported as the bound on a held-out part of the samples, clipped at 0.

    ``input_mi`` returns None: I(X;T) of a deterministic network is not a quantity these
    bounds estimate (tables hold null). ``layer_mi`` supports ``reduce: mean`` only.
    ``bias`` is 0.0: there is no closed-form figure (an independent channel scores about
    0 up to the hold-out noise; see the plugin README for measured values)."""

    reductions: frozenset[str] = frozenset()
    bound = ""

    def __init__(self, params: _NeuralParams):
        from mi_probe_mine import neural

        self.params = params
        self.name = params.kind
        self.config = neural.TrainConfig(
            bound=self.bound, hidden=params.hidden, steps=params.steps,
            batch_size=params.batch_size, lr=params.lr, seed=params.seed,
            ema=getattr(params, "ema", 1.0), eval_fraction=params.eval_fraction,
            max_channels_batched=params.max_channels_batched)

    # ---------------------------------------------------------------- validation
    def _check_acts(self, acts: Any, what: str = "activations") -> None:
        import torch

        from mi_probe_mine import neural

        if not isinstance(acts, torch.Tensor):
            raise EstimatorError(f"{self.name} estimator expects (N, C) tensor {what}, "
                                 f"got {type(acts).__name__}")
        if acts.ndim != 2:
            raise EstimatorError(f"{self.name} estimator expects (N, C) {what}, got shape "
                                 f"{tuple(acts.shape)}")
        if not acts.is_floating_point():
            raise EstimatorError(f"{self.name} estimator expects floating-point {what}, "
                                 f"got {acts.dtype}")
        if acts.shape[0] < neural.MIN_SAMPLES:
            raise EstimatorError(f"{self.name} estimator needs at least {neural.MIN_SAMPLES} "
                                 f"samples (a training and a hold-out part), got {acts.shape[0]}")
        if not torch.isfinite(acts).all():
            raise EstimatorError(f"{self.name} estimator: {what} hold NaN or Inf values")

    def _check_labels(self, acts: torch.Tensor, labels: Any, num_classes: int) -> None:
        import torch

        if not isinstance(num_classes, int) or num_classes < 1:
            raise EstimatorError(f"{self.name} estimator: num_classes must be a positive "
                                 f"integer, got {num_classes!r}")
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise EstimatorError(f"{self.name} estimator expects (N,) integer labels, got {shape}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise EstimatorError(f"{self.name} estimator expects integer labels, got {labels.dtype}")
        if labels.shape[0] != acts.shape[0]:
            raise EstimatorError(f"{self.name} estimator: {labels.shape[0]} labels for "
                                 f"{acts.shape[0]} activation rows")
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise EstimatorError(f"{self.name} estimator: labels must lie in [0, {num_classes}), "
                                 f"got range [{labels.min().item()}, {labels.max().item()}]")

    # ----------------------------------------------------------------- interface
    def label_mi(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        from mi_probe_mine import neural

        self._check_acts(acts)
        self._check_labels(acts, labels, num_classes)
        return neural.label_mi(acts, labels, num_classes, self.config)

    def pair_mi(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """I(A_i;B_j) of continuous columns, (C1, C2), all pairs trained in parallel."""
        from mi_probe_mine import neural

        self._check_acts(a, "values a")
        self._check_acts(b, "values b")
        if a.shape[0] != b.shape[0]:
            raise EstimatorError(f"{self.name} estimator: pair_mi needs the same number of "
                                 f"rows, got {a.shape[0]} and {b.shape[0]}")
        return neural.pair_mi(a, b.to(a.device), self.config)

    def input_mi(self, acts: torch.Tensor) -> None:
        """Not estimated: I(X;T) of a deterministic network needs a noise convention these
        bounds do not have; tables hold null."""
        return None

    def layer_mi(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 reduce: str) -> LayerMI:
        if reduce != "mean":
            raise EstimatorError(f"{self.name} estimator has no layer reduction {reduce!r}; "
                                 "valid: ['mean']")
        return LayerMI(i_xt=None, i_ty=self.label_mi(acts, labels, num_classes).mean().item())

    def bias(self, n_samples: int, num_classes: int) -> float:
        return 0.0

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {"estimator": self.name, "kind": self.name, "bound": self.bound_text,
                "steps": p.steps, "seed": p.seed, "hidden": p.hidden,
                "batch_size": p.batch_size, "lr": p.lr, "eval_fraction": p.eval_fraction,
                "i_xt": "not estimated (null)", **self._extra()}

    bound_text = ""

    def _extra(self) -> dict[str, Any]:
        return {}


class MineEstimator(NeuralEstimator):
    bound = "dv"
    bound_text = ("Donsker-Varadhan lower bound (MINE, moving-average bias-corrected "
                  "gradient), evaluated on held-out samples")

    def _extra(self) -> dict[str, Any]:
        return {"ema": self.params.ema}


class InfoNCEEstimator(NeuralEstimator):
    bound = "infonce"
    bound_text = ("InfoNCE lower bound, evaluated on every held-out sample in batches of "
                  "batch_size, averaged over random batchings; capped at log(batch_size) nats")

    def _extra(self) -> dict[str, Any]:
        from mi_probe_mine import neural

        return {"cap_nats": math.log(self.params.batch_size),
                "eval_batchings": neural.EVAL_PERMUTATIONS,
                "cap": "log(batch_size): InfoNCE can never exceed it (fewer samples: "
                       "log of the smaller batch)"}


@hookimpl
def mi_probe_register_estimators(register):
    register("mine", MineEstimator, MineParams)
    register("infonce", InfoNCEEstimator, InfoNCEParams)
