"""mi-probe plugin: neural MI lower bounds ``mine`` and ``infonce``.

Registered through the entry point ``[project.entry-points.mi_probe] mine =
"mi_probe_mine.plugin"``. Uses only mi-probe's public plugin surface (``hookspecs``,
``interfaces``, ``errors``), never the engine.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mi_probe.plugin import EstimatorError, hookimpl, Interval, LayerMI

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch

    from mi_probe_mine.neural import Folds, TrainConfig


_JOINT_STEPS = ("Adam steps of joint_mi's one critic on whole vectors x, y (replaces steps "
                "there); chosen on Gaussian tasks at N = 5000, see the README")
_JOINT_LR = "peak Adam learning rate of joint_mi's critic (cosine decay to 0; replaces lr there)"


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
    # defaults per kind (MineParams, InfoNCEParams)
    joint_steps: int = Field(gt=0, description=_JOINT_STEPS)
    joint_lr: float = Field(gt=0, description=_JOINT_LR)
    interval_folds: int = Field(10, ge=2, description=(
        "k of the 'kfold' interval: the trained critic's bound is evaluated on k disjoint "
        "folds of the held-out rows, and their spread gives a t interval"))


class MineParams(_NeuralParams):
    """MINE (Belghazi et al. 2018): Donsker-Varadhan bound, moving-average gradient."""

    kind: Literal["mine"] = "mine"
    joint_steps: int = Field(1000, gt=0, description=_JOINT_STEPS)
    joint_lr: float = Field(3e-3, gt=0, description=_JOINT_LR)
    ema: float = Field(0.01, gt=0, le=1, description=(
        "rate of the moving average of E[e^T] that replaces the denominator of the DV "
        "gradient (MINE's bias correction); 1 = no correction"))


class InfoNCEParams(_NeuralParams):
    """InfoNCE (van den Oord et al. 2018): a lower bound capped at log(batch_size)."""

    kind: Literal["infonce"] = "infonce"
    #: fewer steps than MINE: the separable critic overfits 3,750 training rows sooner
    joint_steps: int = Field(600, gt=0, description=_JOINT_STEPS)
    joint_lr: float = Field(1e-3, gt=0, description=_JOINT_LR)


class NeuralEstimator:
    """Per-channel I(T_c;Y) by a critic trained per channel (all channels in parallel),
    reported as the bound on a held-out part of the samples, clipped at 0.

    ``input_mi`` returns None: I(X;T) of a deterministic network is not a quantity these
    bounds estimate (tables hold null). ``layer_mi`` supports ``reduce: mean`` only.
    ``bias`` is 0.0: there is no closed-form figure (an independent channel scores about
    0 up to the hold-out noise; see the plugin README for measured values)."""

    reductions: frozenset[str] = frozenset()
    bound = ""
    #: intervals: the trained critic's bound on k disjoint folds of the hold-out rows
    #: (one training); covers that critic's bound, which is below the true MI
    interval_method = "kfold"
    #: joint_mi takes vectors of any size (the critic's first layer grows with them)
    max_joint_dims: int | None = None

    def __init__(self, params: _NeuralParams):
        from dataclasses import replace

        from mi_probe_mine import neural

        self.params = params
        self.name = params.kind
        self.config = neural.TrainConfig(
            bound=self.bound, hidden=params.hidden, steps=params.steps,
            batch_size=params.batch_size, lr=params.lr, seed=params.seed,
            ema=getattr(params, "ema", 1.0), eval_fraction=params.eval_fraction,
            max_channels_batched=params.max_channels_batched)
        self.joint_config = replace(self.config, steps=params.joint_steps, lr=params.joint_lr)

    # ---------------------------------------------------------------- validation
    def _check_acts(self, acts: Any, what: str = "activations", shape: str = "(N, C)") -> None:
        import torch

        from mi_probe_mine import neural

        if not isinstance(acts, torch.Tensor):
            raise EstimatorError(f"{self.name} estimator expects {shape} tensor {what}, "
                                 f"got {type(acts).__name__}")
        if acts.ndim != 2:
            raise EstimatorError(f"{self.name} estimator expects {shape} {what}, got shape "
                                 f"{tuple(acts.shape)}")
        if not acts.is_floating_point():
            raise EstimatorError(f"{self.name} estimator expects floating-point {what}, "
                                 f"got {acts.dtype}")
        if acts.shape[0] < neural.MIN_SAMPLES:
            raise EstimatorError(f"{self.name} estimator needs at least {neural.MIN_SAMPLES} "
                                 f"samples (a training and a hold-out part), got {acts.shape[0]}")
        if not torch.isfinite(acts).all():
            bad = int((~torch.isfinite(acts)).sum().item())
            raise EstimatorError(f"{self.name} estimator: {what} hold NaN or Inf values "
                                 f"(expected finite values, found {bad} non-finite)")

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

    def joint_mi(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """I(X;Y) of (N, dx) and (N, dy) continuous samples (row i with row i): the bound of
        one critic on whole vectors, trained with ``joint_steps`` / ``joint_lr``."""
        from mi_probe_mine import neural

        self._check_joint(x, y)
        return float(neural.joint_mi(x, y.to(x.device), self.joint_config)[0])

    def joint_mi_interval(self, x: torch.Tensor, y: torch.Tensor, level: float, seed: int
                          ) -> Interval:
        """0-d interval of :meth:`joint_mi` (same estimate) from ``interval_folds`` folds of
        the hold-out rows, drawn with ``seed``."""
        from mi_probe_mine import neural

        self._check_joint(x, y)
        folds = self._folds(x.shape[0], self.joint_config, level, seed)
        value, fold_values = neural.joint_mi(x, y.to(x.device), self.joint_config, folds)
        assert fold_values is not None
        return self._interval(value, fold_values, folds, x.shape[0], self.joint_config, level)

    def label_mi_interval(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int,
                          level: float, seed: int) -> tuple[Interval, Interval]:
        """Intervals of I(T_c;Y) per channel and of their mean (estimates equal
        ``label_mi`` and its mean), from the same ``interval_folds`` hold-out folds."""
        from mi_probe_mine import neural

        self._check_acts(acts)
        self._check_labels(acts, labels, num_classes)
        folds = self._folds(acts.shape[0], self.config, level, seed)
        values, fold_values = neural.label_mi_folds(acts, labels, num_classes, self.config, folds)
        n = acts.shape[0]
        return (self._interval(values, fold_values, folds, n, self.config, level),
                self._interval(values.mean(), fold_values.mean(1), folds, n, self.config, level))

    def _check_joint(self, x: Any, y: Any) -> None:
        self._check_acts(x, "x", "(N, dx)")
        self._check_acts(y, "y", "(N, dy)")
        if x.shape[0] != y.shape[0]:
            raise EstimatorError(f"{self.name} estimator: joint_mi needs paired rows, got "
                                 f"{x.shape[0]} rows of x and {y.shape[0]} of y")
        if x.shape[1] == 0 or y.shape[1] == 0:
            raise EstimatorError(f"{self.name} estimator: joint_mi expects at least one "
                                 f"column in x and in y, got shapes {tuple(x.shape)} and "
                                 f"{tuple(y.shape)}")

    def _folds(self, n: int, cfg: TrainConfig, level: float, seed: int) -> Folds:
        from mi_probe_mine import neural

        if not (isinstance(level, float) and 0.0 < level < 1.0):
            raise EstimatorError(f"{self.name} estimator: interval level must be a float in "
                                 f"(0, 1), got {level!r}")
        k = self.params.interval_folds
        n_eval = neural.holdout_size(n, cfg)
        if n_eval // k < 2:
            raise EstimatorError(
                f"{self.name} estimator: a {k}-fold interval needs at least {2 * k} hold-out "
                f"rows, got {n_eval} (eval_fraction {cfg.eval_fraction} of {n} samples)")
        return neural.make_folds(n_eval, k, seed)

    def _interval(self, estimate: torch.Tensor, fold_values: torch.Tensor, folds: Folds,
                  n: int, cfg: TrainConfig, level: float) -> Interval:
        """t interval around ``estimate`` from the spread of the fold values, scaled from
        fold size to the whole hold-out set; clipped at 0 like the estimate."""
        from mi_probe.functional.intervals import subsample_interval
        from mi_probe_mine import neural

        _, low, high = subsample_interval(estimate, fold_values, neural.holdout_size(n, cfg),
                                          folds.size, level)
        return Interval(estimate=estimate, low=low.clamp_min(0.0),
                        high=high.clamp_min(0.0), level=level, method=self.interval_method)

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
                "joint_steps": p.joint_steps, "joint_lr": p.joint_lr,
                "interval_method": self.interval_method, "interval_folds": p.interval_folds,
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
