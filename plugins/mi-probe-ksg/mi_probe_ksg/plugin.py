"""The ``ksg`` estimator plugin: k-nearest-neighbour (KSG) mutual information.

Registered through the ``mi_probe`` entry point of this distribution
(``ksg = "mi_probe_ksg.plugin"``), so ``estimator: {kind: ksg, k: 3}`` validates in a
spec once ``mi-probe-ksg`` is installed. Imports only the public plugin surface of
mi-probe (``mi_probe.plugin``, ``mi_probe.functional``), never the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mi_probe.plugin import EstimatorError, hookimpl, Interval, LayerMI

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import numpy as np
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
        False, description="pair_mi and joint_mi: divide each column by its standard "
        "deviation first, as sklearn's mutual_info_regression does (the max-norm estimate "
        "depends on the relative scales of the variables; label_mi is scale-free)")
    neighbors: Literal["auto", "kdtree", "faiss"] = Field(
        "auto", description="joint_mi's neighbour search: kdtree = scikit-learn's KDTree "
        "(chebyshev); faiss = faiss-cpu's IndexFlat (METRIC_Linf, float32 candidates "
        "certified in float64; extra mi-probe-ksg[faiss]); auto = kdtree, the faster "
        "wherever measured. Every backend gives the same numbers")
    interval_folds: int = Field(
        10, ge=2, description="disjoint subsamples behind label_mi_interval and "
        "joint_mi_interval (each holds N // interval_folds rows; a bootstrap is not valid "
        "for KSG: resampled duplicates sit at distance 0)")
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
    the continuous–continuous KSG estimator 1 of Kraskov et al. (2004), and
    ``joint_mi(x, y)`` the same for multivariate x and y (``mi_probe_ksg.joint``).
    Intervals come from disjoint subsamples: a bootstrap's duplicated rows sit at
    distance 0, which KSG reads as infinite density.
    """

    name = "ksg"
    reductions: frozenset[str] = frozenset()
    #: joint_mi accepts any dx + dy (``interfaces.JointMI``)
    max_joint_dims: int | None = None
    #: intervals from disjoint subsamples (``interfaces.Intervals``, ``JointMIIntervals``)
    interval_method = "subsample"

    def __init__(self, params: KSGParams | None = None):
        self.params = params if params is not None else KSGParams.model_validate({})
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

    def _label_inputs(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked activations and labels, subsampled (``max_samples``) and with the
        tie-breaking noise added: what ``label_mi`` estimates from."""
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
            return acts, labels
        rows = self._rows(acts.shape[0], device)
        if rows is not None:
            acts, labels = acts[rows], labels[rows]
        gen = self._noise_generator()
        if gen is not None:
            acts = K.add_tie_noise(acts, gen)
        return acts, labels

    def _label_mi_of(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int
                     ) -> torch.Tensor:
        """The Ross (2014) kernel on prepared inputs, with the estimator's typed error."""
        import torch

        from mi_probe_ksg import ksg as K

        if acts.shape[1] == 0:
            return torch.zeros(0, dtype=torch.float64, device=acts.device)
        try:
            return K.label_mi_cd(acts, labels, self.k, int(num_classes), self.params.chunk_size)
        except ValueError as exc:
            raise EstimatorError(f"ksg estimator: {exc} (got {acts.shape[0]} samples)") from exc

    # -- interfaces.Estimator -----------------------------------------------------
    def label_mi(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        return self._label_mi_of(*self._label_inputs(acts, labels, num_classes), num_classes)

    def input_mi(self, acts: torch.Tensor) -> None:
        """Not estimated: KSG gives no I(X;T_c) under the histogram convention."""
        return None

    def _pair_inputs(self, a: torch.Tensor, b: torch.Tensor, method: str
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked (N, C1) and (N, C2) float64 on ``a``'s device (1-D inputs count as one
        column), subsampled (``max_samples``, the same rows for both), standardized
        (``standardize``) and with the tie-breaking noise added (a's columns first, then
        b's, from one generator): what ``pair_mi`` and ``joint_mi`` estimate from."""
        import torch

        from mi_probe_ksg import ksg as K

        if isinstance(a, torch.Tensor) and a.ndim == 1:
            a = a[:, None]
        if isinstance(b, torch.Tensor) and b.ndim == 1:
            b = b[:, None]
        first, second = ("a", "b") if method == "pair_mi" else ("x", "y")
        a, b = _check_2d(first, a), _check_2d(second, b)
        if a.shape[0] != b.shape[0]:
            raise EstimatorError(f"ksg estimator: {method} needs the same rows in {first} and "
                                 f"{second}, got {a.shape[0]} and {b.shape[0]}")
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
            raise EstimatorError(f"ksg estimator: {method} needs more than k={self.k} "
                                 f"samples, got {a.shape[0]}")
        return a.to(torch.float64), b.to(torch.float64)

    def pair_mi(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """I(a_i; b_j) in nats for every column pair: (C1, C2) float64 on ``a``'s device.
        1-D inputs count as one column. Loops over the columns of ``a``; each is batched
        over all columns of ``b``."""
        import torch

        from mi_probe_ksg import ksg as K

        a, b = self._pair_inputs(a, b, "pair_mi")
        out = torch.empty(a.shape[1], b.shape[1], dtype=torch.float64, device=a.device)
        if out.numel():
            for i in range(a.shape[1]):
                out[i] = K.pair_mi_cc(a[:, i], b, self.k, self.params.chunk_size)
        return out

    # -- interfaces.JointMI / JointMIIntervals / Intervals ------------------------
    def _joint_arrays(self, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``joint_mi``'s prepared inputs as float64 NumPy arrays on the CPU."""
        x, y = self._pair_inputs(x, y, "joint_mi")
        if x.shape[1] == 0 or y.shape[1] == 0:
            raise EstimatorError(f"ksg estimator: joint_mi needs dx >= 1 and dy >= 1 columns, "
                                 f"got dx={x.shape[1]}, dy={y.shape[1]}")
        return x.cpu().numpy(), y.cpu().numpy()

    def _joint_mi_of(self, x: np.ndarray, y: np.ndarray) -> float:
        """The joint kernel on prepared arrays, with the estimator's typed error."""
        import torch

        from mi_probe_ksg import joint as J

        if self.params.neighbors == "faiss" and not J.faiss_available():
            raise EstimatorError("ksg estimator: neighbors: faiss needs the faiss-cpu package "
                                 "(pip install 'mi-probe-ksg[faiss]'), not installed; "
                                 "expected an importable faiss, found none")
        try:
            return J.joint_mi_cc(x, y, self.k, self.params.neighbors,
                                 workers=torch.get_num_threads())
        except ValueError as exc:
            raise EstimatorError(f"ksg estimator: {exc}") from exc

    def joint_mi(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Kraskov et al. (2004) estimator 1 of I(X;Y) in nats for (N, dx) and (N, dy)
        samples (1-D inputs count as one column), with the max-norm: at dx = dy = 1 it is
        ``pair_mi``. Same preparation as ``pair_mi`` (``max_samples``, ``standardize``,
        tie noise on x's columns then y's); neighbours from ``neighbors``."""
        return self._joint_mi_of(*self._joint_arrays(x, y))

    def _folds(self, n: int, seed: int) -> list[torch.Tensor]:
        """``interval_folds`` disjoint row sets of ``n // interval_folds`` rows (sorted),
        from a CPU generator seeded with ``seed``."""
        import torch

        from mi_probe.functional.intervals import disjoint_folds

        folds = self.params.interval_folds
        if n // folds <= self.k:
            raise EstimatorError(f"ksg estimator: interval subsamples of N // interval_folds "
                                 f"= {n} // {folds} = {n // folds} rows; KSG needs more than "
                                 f"k={self.k} (expected N > {(self.k + 1) * folds - 1})")
        try:
            parts = disjoint_folds(n, folds, torch.Generator().manual_seed(int(seed)))
        except ValueError as exc:
            raise EstimatorError(f"ksg estimator: {exc}") from exc
        return [p.sort().values for p in parts]

    def _subsample(self, estimate: torch.Tensor, subs: torch.Tensor, n: int, n_sub: int,
                   level: float) -> Interval:
        from mi_probe.functional.intervals import subsample_interval

        try:
            _, low, high = subsample_interval(estimate, subs, n, n_sub, level)
        except ValueError as exc:  # a level outside (0, 1)
            raise EstimatorError(f"ksg estimator: {exc}") from exc
        return Interval(estimate=estimate, low=low, high=high, level=level,
                        method=self.interval_method)

    def label_mi_interval(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int,
                          level: float, seed: int) -> tuple[Interval, Interval]:
        """Subsample intervals of I(T_c;Y) per channel and of their mean: the rows
        ``label_mi`` uses (after ``max_samples`` and the tie noise) are cut into
        ``interval_folds`` disjoint subsamples (seeded by ``seed``), every channel is
        estimated on each, and their spread, scaled to N, gives a t interval around
        ``label_mi``'s values (``functional.intervals.subsample_interval``)."""
        import torch

        acts, labels = self._label_inputs(acts, labels, num_classes)
        estimate = self._label_mi_of(acts, labels, num_classes)
        n = acts.shape[0]
        folds = self._folds(n, seed)
        subs = torch.stack([self._label_mi_of(acts[f.to(acts.device)], labels[f.to(acts.device)],
                                              num_classes) for f in folds])
        n_sub = folds[0].numel()
        return (self._subsample(estimate, subs, n, n_sub, level),
                self._subsample(estimate.mean(), subs.mean(dim=1), n, n_sub, level))

    def joint_mi_interval(self, x: torch.Tensor, y: torch.Tensor, level: float, seed: int
                          ) -> Interval:
        """Subsample interval of ``joint_mi`` (0-d tensors), made as in
        :meth:`label_mi_interval` from its prepared rows."""
        import torch

        xa, ya = self._joint_arrays(x, y)
        estimate = torch.tensor(self._joint_mi_of(xa, ya), dtype=torch.float64)
        folds = self._folds(xa.shape[0], seed)
        subs = torch.tensor([self._joint_mi_of(xa[f.numpy()], ya[f.numpy()]) for f in folds],
                            dtype=torch.float64)
        return self._subsample(estimate, subs, xa.shape[0], folds[0].numel(), level)

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
                "pair_mi": "Kraskov et al. 2004 estimator 1 (max-norm)",
                "joint_mi": "Kraskov et al. 2004 estimator 1, max-norm in the joint space",
                "neighbors": self.params.neighbors,
                "interval": f"{self.interval_method}, {self.params.interval_folds} disjoint folds"}


@hookimpl
def mi_probe_register_estimators(register):
    register("ksg", KSGEstimator, KSGParams)
