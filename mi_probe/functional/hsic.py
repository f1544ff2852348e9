"""HSIC and CKA kernels (pure torch, batched over leading dimensions, any device).

Definitions (ARCHITECTURE.md §2):

* ``HSIC(K, L) = tr(K H L H) / (n − 1)²`` with the centering matrix
  ``H = I − 11ᵀ/n`` — the biased empirical estimator of Gretton et al. (2005).
  H is never formed: ``tr(K H L H) = Σ_ij (H K H)_ij · L_ji`` and ``H K H`` is K minus
  its row means, minus its column means, plus its grand mean.
* Features use the RBF kernel ``K_ij = exp(−‖x_i − x_j‖² / (2σ²))``.
* **Median heuristic**: σ is the median of the pairwise Euclidean *distances*
  ``‖x_i − x_j‖`` (not squared distances) over the off-diagonal pairs i < j of the
  batch (the usual median: the mean of the two middle values for an even count). It
  is computed under ``torch.no_grad()``: σ is treated as a constant of the batch, so
  gradients flow through the distances inside the kernel but not through the
  bandwidth. A zero median (more than half the pairs identical, e.g. a dead ReLU
  site) falls back to the mean distance, and to σ = 1 when every distance is zero
  (the kernel is then all ones and HSIC is exactly 0).
* Labels use the delta kernel ``L_ij = 1[y_i = y_j]``.
* ``nhsic(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` (kernel CKA, in [0, 1]
  for PSD kernels); 0 where the denominator is not positive (a constant kernel, or a
  batch with one class).

Cost per feature matrix of shape (n, d): O(n²·d) for the distances, O(n²) for the rest.
Everything accepts leading batch dimensions: ``x`` (..., n, d), kernels (..., n, n).
"""

from __future__ import annotations

import torch

__all__ = ["center", "delta_kernel", "hsic", "hsic_centered", "median_bandwidth", "nhsic",
           "pairwise_sq_dists", "rbf_kernel"]


def pairwise_sq_dists(x: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (..., n, n) between the rows of ``x`` (..., n, d).

    Uses the Gram matrix of the mean-centred rows (distances are translation invariant;
    centring limits cancellation), clamped at 0, with an exact zero diagonal.
    Differentiable (no square root, so no infinite gradient at zero distance).
    """
    x = x - x.mean(dim=-2, keepdim=True)
    sq = (x * x).sum(-1)
    d2 = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (x @ x.transpose(-1, -2))
    d2 = d2.clamp_min(0.0)
    n = x.shape[-2]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    return d2.masked_fill(eye, 0.0)


def median_bandwidth(sq_dists: torch.Tensor) -> torch.Tensor:
    """σ by the median heuristic from squared distances (..., n, n): the median of the
    Euclidean distances sqrt(d²_ij) over pairs i < j. Computed without gradient.
    Shape (...,). See the module docstring for the fallbacks on degenerate batches."""
    with torch.no_grad():
        n = sq_dists.shape[-1]
        if n < 2:
            return torch.ones(sq_dists.shape[:-2], dtype=sq_dists.dtype, device=sq_dists.device)
        rows, cols = torch.triu_indices(n, n, offset=1, device=sq_dists.device)
        dist = sq_dists[..., rows, cols].clamp_min(0.0).sqrt()
        ordered = dist.sort(dim=-1).values
        m = ordered.shape[-1]
        median = 0.5 * (ordered[..., (m - 1) // 2] + ordered[..., m // 2])
        mean = dist.mean(dim=-1)
        sigma = torch.where(median > 0, median, mean)
        return torch.where(sigma > 0, sigma, torch.ones_like(sigma))


def rbf_kernel(x: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
    """RBF (Gaussian) kernel ``exp(−‖x_i − x_j‖² / (2σ²))`` of the rows of ``x`` (..., n, d).

    ``sigma=None`` uses the median heuristic on Euclidean distances (no gradient through
    σ); a float or a (...,) tensor fixes it.
    """
    d2 = pairwise_sq_dists(x)
    if sigma is None:
        sigma = median_bandwidth(d2)
    sigma = torch.as_tensor(sigma, dtype=d2.dtype, device=d2.device)
    if bool((sigma <= 0).any()):
        raise ValueError(f"RBF bandwidth must be positive, got {sigma}")
    scale = (2.0 * sigma * sigma)
    if scale.dim():
        scale = scale[..., None, None]
    return torch.exp(-d2 / scale)


def delta_kernel(labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``L_ij = 1[y_i = y_j]`` for integer labels (..., n): shape (..., n, n)."""
    return (labels.unsqueeze(-1) == labels.unsqueeze(-2)).to(dtype)


def center(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` without forming H: K − row means − column means + grand mean."""
    row = k.mean(dim=-1, keepdim=True)
    col = k.mean(dim=-2, keepdim=True)
    grand = k.mean(dim=(-2, -1), keepdim=True)
    return k - row - col + grand


def _norm(n: int) -> float:
    return float((n - 1) ** 2)


def hsic_centered(k_centered: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """HSIC from an already centred ``H K H`` and any ``L``: Σ_ij (HKH)_ij L_ji / (n−1)².
    (Centring one of the two kernels is enough, since H is idempotent.) 0 when n < 2."""
    n = k_centered.shape[-1]
    if n < 2:
        return k_centered.new_zeros(k_centered.shape[:-2])
    return (k_centered * l.transpose(-1, -2)).sum(dim=(-2, -1)) / _norm(n)


def hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Biased empirical HSIC ``tr(K H L H) / (n − 1)²`` of two kernel matrices (..., n, n)."""
    if k.shape[-2:] != l.shape[-2:] or k.shape[-1] != k.shape[-2]:
        raise ValueError(f"hsic: kernels must be square and of the same size, got "
                         f"{tuple(k.shape)} and {tuple(l.shape)}")
    return hsic_centered(center(k), l)


def nhsic(k: torch.Tensor, l: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Normalised HSIC (kernel CKA): ``HSIC(K,L) / sqrt(HSIC(K,K)·HSIC(L,L))``; 0 where
    the denominator is ≤ ``eps`` (a constant kernel carries no dependence)."""
    kc, lc = center(k), center(l)
    kl = hsic_centered(kc, l)
    kk = hsic_centered(kc, k)
    ll = hsic_centered(lc, l)
    denom = kk * ll
    ok = denom > eps
    safe = torch.where(ok, denom, torch.ones_like(denom)).sqrt()
    return torch.where(ok, kl / safe, torch.zeros_like(kl))
