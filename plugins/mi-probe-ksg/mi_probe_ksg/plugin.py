"""The ``ksg`` estimator plugin: k-nearest-neighbour (KSG) mutual information.

Registered through the ``mi_probe`` entry point of this distribution
(``ksg = "mi_probe_ksg.plugin"``), so ``estimator: {kind: ksg, k: 3}`` validates in a
spec once ``mi-probe-ksg`` is installed. Imports only the public plugin surface of
mi-probe (``hookspecs``, ``interfaces``, ``errors``), never the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mi_probe.plugin import EstimatorError, hookimpl, LayerMI

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch


class KSGParams(BaseModel):
    """k-nearest-neighbour MI: Ross (2014) for I(T_c;Y), Kraskov et al. (2004) for pairs."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["ksg"] = "ksg"
    k: int = Field(3, ge=1, description="neighbours (k); sklearn's n_neighbors")
    max_samples: int | None = Field(
        None, ge=2, description="estimate from at most this many evaluation rows, drawn "
        "without replacement (same rows for every channel); None uses all rows")
    seed: int = Field(0, description="seed of the max_samples subsample and of the "
                      "tie-breaking noise (deterministic)")
    jitter: bool = Field(
        True, description="break exact ties (a ReLU's zeros, values on a grid) as "
        "scikit-learn does: add Gaussian noise of 1e-10 * max(std, mean|x|) to every "
        "non-constant column, drawn from a CPU generator seeded with seed. Without it, "
        "tied data are biased (a half-zero ReLU channel gives 0)")
    standardize: bool = Field(
        False, description="pair_mi only: divide each column by its standard deviation "
        "first, as sklearn's mutual_info_regression does (the max-norm estimate depends on "
        "the relative scales of the two variables; label_mi is scale-free)")
    # = ksg.DEFAULT_CHUNK_SIZE, written out: importing the kernels here would load torch
    # whenever the plugin registers (tests/test_ksg.py checks the two agree)
    chunk_size: int = Field(1 << 24, gt=0,
                            description="max float64 elements held by the batched "
                            "intermediates of one chunk of channels (bounds memory)")


def _check_2d(name: str, t: Any) -> torch.Tensor:
    import torch

    if not isinstance(t, torch.Tensor):
        raise EstimatorError(f"ksg estimator: {name} must be a torch.Tensor, got "
                             f"{type(t).__name__}")
    if t.ndim != 2:
        raise EstimatorError(f"ksg estimator expects (N, C) {name}, got shape {tuple(t.shape)}")
    if t.is_complex():
        raise EstimatorError(f"ksg estimator: {name} must be real, got dtype {t.dtype}")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise EstimatorError(f"ksg estimator: {name} holds NaN or Inf values")
    return t


def _standardize(t: torch.Tensor) -> torch.Tensor:
    """Columns divided by their standard deviation (ddof 0, not centred, like
    ``sklearn.preprocessing.scale(with_mean=False)``); constant columns are left alone."""
    import torch

    t = t.to(torch.float64)
    std = t.std(dim=0, correction=0)
    return t / torch.where(std > 0, std, torch.ones_like(std))


class KSGEstimator:
    """Per-channel I(T_c;Y) by the mixed continuous–discrete KSG estimator of Ross (2014),
    with scikit-learn's ``mutual_info_classif`` conventions: its 1e-10-relative seeded
    noise breaks exact ties (``jitter``; the estimate is scale-free, so no scaling).

    ``input_mi`` is None: KSG does not give I(X;T_c) under the information-plane
    (histogram entropy) convention, so ``i_xt`` columns hold null. ``pair_mi(a, b)`` is
    the continuous–continuous KSG estimator 1 of Kraskov et al. (2004).
    """

    name = "ksg"
    reductions: frozenset[str] = frozenset()

    def __init__(self, params: KSGParams | None = None):
        self.params = params if params is not None else KSGParams()
        self.k = self.params.k

    # -- helpers ------------------------------------------------------------------
    def _rows(self, n: int, device: torch.device) -> torch.Tensor | None:
        """Row indices of the deterministic subsample, or None to use every row."""
        import torch

        cap = self.params.max_samples
        if cap is None or n <= cap:
            return None
        gen = torch.Generator().manual_seed(self.params.seed)
        rows = torch.randperm(n, generator=gen)[:cap]
        return rows.sort().values.to(device)

    def _noise_generator(self) -> torch.Generator | None:
        """A fresh CPU generator for the tie-breaking noise (None when ``jitter`` is off),
        so every call with the same input gives the same values."""
        import torch

        if not self.params.jitter:
            return None
        return torch.Generator().manual_seed(self.params.seed)

    # -- interfaces.Estimator -----------------------------------------------------
    def label_mi(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        import torch

        from mi_probe_ksg import ksg as K

        acts = _check_2d("activations", acts)
        n = acts.shape[0]
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != n:
            shape = (tuple(labels.shape) if isinstance(labels, torch.Tensor)
                     else type(labels).__name__)
            raise EstimatorError(f"ksg estimator: labels must be a ({acts.shape[0]},) tensor "
                                 f"matching the activations' rows, got {shape}")
        if labels.dtype.is_floating_point or labels.is_complex() or labels.dtype == torch.bool:
            raise EstimatorError(f"ksg estimator: labels must be integers, got dtype "
                                 f"{labels.dtype}")
        if int(num_classes) < 1:
            raise EstimatorError(f"ksg estimator: num_classes must be >= 1, got {num_classes}")
        device = acts.device
        labels = labels.to(device=device, dtype=torch.long)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise EstimatorError(f"ksg estimator: labels must lie in [0, {num_classes}), got "
                                 f"[{int(labels.min())}, {int(labels.max())}]")
        if acts.shape[1] == 0:
            return torch.zeros(0, dtype=torch.float64, device=device)
        rows = self._rows(acts.shape[0], device)
        if rows is not None:
            acts, labels = acts[rows], labels[rows]
        gen = self._noise_generator()
        if gen is not None:
            acts = K.add_tie_noise(acts, gen)
        try:
            return K.label_mi_cd(acts, labels, self.k, int(num_classes), self.params.chunk_size)
        except ValueError as exc:
            raise EstimatorError(f"ksg estimator: {exc} (got {acts.shape[0]} samples)") from exc

    def input_mi(self, acts: torch.Tensor) -> None:
        """Not estimated: KSG gives no I(X;T_c) under the histogram convention."""
        return None

    def pair_mi(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """I(a_i; b_j) in nats for every column pair: (C1, C2) float64 on ``a``'s device.
        1-D inputs count as one column. Loops over the columns of ``a``; each is batched
        over all columns of ``b``."""
        import torch

        from mi_probe_ksg import ksg as K

        if isinstance(a, torch.Tensor) and a.ndim == 1:
            a = a[:, None]
        if isinstance(b, torch.Tensor) and b.ndim == 1:
            b = b[:, None]
        a, b = _check_2d("a", a), _check_2d("b", b)
        if a.shape[0] != b.shape[0]:
            raise EstimatorError(f"ksg estimator: pair_mi needs the same rows in a and b, got "
                                 f"{a.shape[0]} and {b.shape[0]}")
        device = a.device
        b = b.to(device)
        rows = self._rows(a.shape[0], device)
        if rows is not None:
            a, b = a[rows], b[rows]
        if self.params.standardize:
            a, b = _standardize(a), _standardize(b)
        gen = self._noise_generator()
        if gen is not None:  # a's noise first, then b's, from one generator
            a, b = K.add_tie_noise(a, gen), K.add_tie_noise(b, gen)
        if a.shape[0] <= self.k:
            raise EstimatorError(f"ksg estimator: pair_mi needs more than k={self.k} samples, "
                                 f"got {a.shape[0]}")
        out = torch.empty(a.shape[1], b.shape[1], dtype=torch.float64, device=device)
        if out.numel():
            for i in range(a.shape[1]):
                out[i] = K.pair_mi_cc(a[:, i], b, self.k, self.params.chunk_size)
        return out

    def layer_mi(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 reduce: str) -> LayerMI:
        if reduce != "mean":
            raise EstimatorError(f"ksg estimator has no layer reduction {reduce!r}; valid: "
                                 "['mean'] (the mean of the per-channel I(T_c;Y); I(X;T) is "
                                 "not estimated)")
        return LayerMI(i_xt=None, i_ty=self.label_mi(acts, labels, num_classes).mean().item())

    def bias(self, n_samples: int, num_classes: int) -> float:
        return 0.0

    def describe(self) -> dict[str, Any]:
        from mi_probe_ksg import ksg as K

        return {"estimator": "ksg", "k": self.k, "i_xt": "not estimated",
                "max_samples": self.params.max_samples, "seed": self.params.seed,
                "standardize": self.params.standardize, "jitter": self.params.jitter,
                "tie_noise": (f"{K.TIE_NOISE:g} * max(std, mean|x|) Gaussian, seed {self.params.seed}"
                              if self.params.jitter else "none (exact ties kept)"),
                "label_mi": "Ross 2014 mixed continuous-discrete KSG, sklearn "
                            "mutual_info_classif conventions (tie noise, no scaling)",
                "pair_mi": "Kraskov et al. 2004 estimator 1 (max-norm)"}


@hookimpl
def mi_probe_register_estimators(register):
    register("ksg", KSGEstimator, KSGParams)
