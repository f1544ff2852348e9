"""Confidence intervals for MI estimates: the pure arithmetic shared by estimator plugins.

Which method is valid depends on the estimator, so each plugin chooses (and declares it
as ``interval_method``):

* :func:`basic_bootstrap` — for plug-in estimators that are smooth functions of cell
  counts (the histogram): replicates from resampled rows; the *basic* (pivotal) interval
  ``[2θ̂ − q_hi, 2θ̂ − q_lo]`` carries the bootstrap's estimate of the plug-in bias, which
  the percentile interval would double instead of removing. Not valid for KSG: a
  resample holds duplicate rows at distance 0, which nearest-neighbour estimators read
  as infinite density.
* :func:`subsample_interval` — for any estimator, from estimates on ``k`` disjoint
  subsamples of ``n_sub`` rows (no duplicates): their spread, scaled by
  ``sqrt(n_sub / n)`` to the full sample (variance ∝ 1/N), gives a t interval around the
  full estimate; with ``extrapolate`` the centre moves to the ``N → ∞`` intercept of
  ``I(N) = I∞ + a/N`` through the full and subsample means (the subsample-and-
  extrapolate idea of NeuralMI and of Strong et al. 1998), for estimators whose
  finite-sample bias is of order 1/N.
* :func:`disjoint_folds` — the row sets for ``subsample_interval`` and for ``kfold``
  intervals (the neural plugins: a critic trained once, its bound evaluated on k
  disjoint folds of the held-out rows, whose spread gives the interval of the bound).
"""

from __future__ import annotations

import math

import torch


def _two_sided(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must be in (0, 1); got {level!r}")
    return (1.0 - level) / 2.0


def resample_rows(n: int, draws: int, generator: torch.Generator) -> torch.Tensor:
    """(draws, n) int64 row indices drawn with replacement (CPU generator)."""
    if n < 2 or draws < 2:
        raise ValueError(f"a bootstrap needs n >= 2 rows and >= 2 draws; got n={n}, draws={draws}")
    return torch.randint(0, n, (draws, n), generator=generator)


def basic_bootstrap(estimate: torch.Tensor, replicates: torch.Tensor, level: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) of the basic bootstrap interval of ``estimate`` (any shape S) from
    ``replicates`` (draws, *S): ``[2θ̂ − q_{1−α/2}, 2θ̂ − q_{α/2}]``."""
    alpha = _two_sided(level)
    reps = replicates.to(torch.float64)
    q = torch.quantile(reps, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64,
                                          device=reps.device), dim=0)
    est = estimate.to(torch.float64)
    return 2.0 * est - q[1], 2.0 * est - q[0]


def disjoint_folds(n: int, folds: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``folds`` disjoint index sets of ``n // folds`` rows each (a random permutation cut
    into equal parts; the remainder is left out), for subsample and k-fold intervals."""
    if folds < 2 or n // folds < 2:
        raise ValueError(f"need >= 2 folds of >= 2 rows; got n={n}, folds={folds}")
    order = torch.randperm(n, generator=generator)
    size = n // folds
    return [order[i * size:(i + 1) * size] for i in range(folds)]


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t  # scipy comes with scikit-learn, a core dependency

    return float(t.ppf(p, df))


def subsample_interval(estimate: torch.Tensor, sub_estimates: torch.Tensor, n: int,
                       n_sub: int, level: float, extrapolate: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centre, low, high) from the full estimate (shape S, on ``n`` rows) and estimates
    on k disjoint subsamples of ``n_sub`` rows (``sub_estimates``: (k, *S)).

    Half width: ``t_{k−1, 1−α/2} · sd(sub) · sqrt(n_sub / n)``. The centre is the full
    estimate, or with ``extrapolate`` ``θ̂ − a/n`` where ``a = (mean(sub) − θ̂) /
    (1/n_sub − 1/n)``; the half width then grows by the extrapolation's own spread
    (``|θ̂∞ − θ̂|`` is added, a conservative bound on its error)."""
    k = sub_estimates.shape[0]
    if k < 2:
        raise ValueError(f"a subsample interval needs >= 2 subsamples; got {k}")
    if not 2 <= n_sub < n:
        raise ValueError(f"subsamples must hold 2 <= n_sub < n rows; got n_sub={n_sub}, n={n}")
    alpha = _two_sided(level)
    subs = sub_estimates.to(torch.float64)
    est = estimate.to(torch.float64)
    half = t_quantile(1.0 - alpha, k - 1) * subs.std(dim=0, unbiased=True) * math.sqrt(n_sub / n)
    centre = est
    if extrapolate:
        slope = (subs.mean(dim=0) - est) / (1.0 / n_sub - 1.0 / n)
        centre = est - slope / n
        half = half + (centre - est).abs()
    return centre, centre - half, centre + half


def coverage(low: torch.Tensor, high: torch.Tensor, truth: float | torch.Tensor) -> float:
    """Share of intervals [low, high] (same shape) that contain ``truth``."""
    inside = (low <= truth) & (truth <= high)
    return float(inside.to(torch.float64).mean())
