"""HSIC and CKA kernels (pure torch, batched over leading dimensions, any device).

Definitions (ARCHITECTURE.md §2; conventions and how they relate to other code in
docs/hsic.md):

* ``HSIC(K, L) = tr(K H L H) / (n − 1)²`` with the centering matrix
  ``H = I − 11ᵀ/n`` — the biased empirical estimator of Gretton et al. (2005).
  H is never formed: ``tr(K H L H) = Σ_ij (H K H)_ij · (H L H)_ji`` and ``H K H`` is K
  minus its row means, minus its column means, plus its grand mean. Both kernels are
  centred (H is idempotent, so centring one would do in exact arithmetic): this removes
  their constant parts before they are multiplied, which would otherwise cancel in
  floating point.
* Features use the RBF kernel ``K_ij = exp(−‖x_i − x_j‖² / (2σ²))``. HSIC and nHSIC do
  not change when a constant is added to a kernel (``H 1 = 0``), so the HSIC functions
  should be given ``rbf_kernel_minus_one`` = ``K − 1 = expm1(−‖x_i − x_j‖² / (2σ²))``:
  it keeps full relative precision for any σ. ``exp`` rounds K to float steps near 1
  (6e-8 in float32), which is all that is left of ``1 − K`` when σ is large: at σ = 100 ×
  the median distance ``1 − K`` is ~5e-5 for a typical pair (about three digits); at
  1000× a few steps, and ``nhsic`` then reports the kernel as constant (0).
* **Median heuristic**: σ is the median of the pairwise Euclidean *distances*
  ``‖x_i − x_j‖`` (not squared) over the off-diagonal pairs i < j of the batch (the
  usual median: the mean of the two middle values for an even count). It is computed
  under ``torch.no_grad()``: σ is treated as a constant of the batch, so gradients flow
  through the distances inside the kernel but not through the bandwidth. A zero median
  (more than half the pairs identical, e.g. a dead ReLU site) falls back to the mean
  distance, and to σ = 1 when every distance is zero (the kernel is then constant and
  HSIC is exactly 0).
* Labels use the delta kernel ``L_ij = 1[y_i = y_j]``.
* ``nhsic(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` (kernel CKA, in [0, 1]
  for PSD kernels; invariant to scaling either kernel). It is 0 where a kernel is
  constant up to rounding — a relative test, never an absolute threshold, so a kernel
  whose entries are all tiny (a large σ) is not mistaken for a constant one.

Cost per feature matrix of shape (n, d): O(n²·d) for the distances, O(n²) for the rest.
Everything accepts leading batch dimensions: ``x`` (..., n, d), kernels (..., n, n).
"""

from __future__ import annotations

import torch

__all__ = ["CONSTANT_KERNEL_RTOL", "center", "delta_kernel", "hsic", "hsic_centered",
           "median_bandwidth", "nhsic", "pairwise_sq_dists", "rbf_kernel",
           "rbf_kernel_minus_one"]

#: nhsic treats a kernel as constant when the RMS of its centred form is at most this
#: many machine epsilons (of the kernel's dtype) times its largest absolute entry.
#: Centring an exactly constant float32 kernel leaves an RMS of at most ~3.3 eps
#: (measured for n ≤ 1024), so 32 leaves a tenfold margin.
CONSTANT_KERNEL_RTOL = 32.0


def _check_features(x: torch.Tensor) -> None:
    if x.dim() < 2:
        raise ValueError(f"expected features of shape (..., n, d), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected floating-point features, got dtype {x.dtype}")


def _check_kernels(k: torch.Tensor, l: torch.Tensor, name: str) -> None:
    if (k.dim() < 2 or k.shape[-1] != k.shape[-2] or k.shape[-2:] != l.shape[-2:]):
        raise ValueError(f"{name}: kernels must be square and of the same size, got "
                         f"{tuple(k.shape)} and {tuple(l.shape)}")


def pairwise_sq_dists(x: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (..., n, n) between the rows of ``x`` (..., n, d).

    Uses the Gram matrix of the mean-centred rows (distances are translation invariant;
    centring limits cancellation), clamped at 0, with an exact zero diagonal.
    Differentiable (no square root, so no infinite gradient at zero distance).
    """
    _check_features(x)
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


def _scaled_sq_dists(x: torch.Tensor, sigma: float | torch.Tensor | None) -> torch.Tensor:
    """``‖x_i − x_j‖² / (2σ²)`` with σ from the median heuristic when ``sigma`` is None."""
    d2 = pairwise_sq_dists(x)
    if sigma is None:
        sigma = median_bandwidth(d2)  # positive by construction: no check, no device sync
    else:
        sigma = torch.as_tensor(sigma, dtype=d2.dtype, device=d2.device)
        if not bool(((sigma > 0) & torch.isfinite(sigma)).all()):
            raise ValueError(f"RBF bandwidth must be positive and finite, got {sigma}")
    scale = 2.0 * sigma * sigma
    if scale.dim():
        scale = scale[..., None, None]
    return d2 / scale


def rbf_kernel(x: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
    """RBF (Gaussian) kernel ``exp(−‖x_i − x_j‖² / (2σ²))`` of the rows of ``x`` (..., n, d).

    ``sigma=None`` uses the median heuristic on Euclidean distances (no gradient through
    σ); a positive float or a (...,) tensor fixes it. For HSIC use
    ``rbf_kernel_minus_one``, which gives the same HSIC without rounding at large σ.
    """
    return torch.exp(-_scaled_sq_dists(x, sigma))


def rbf_kernel_minus_one(x: torch.Tensor,
                         sigma: float | torch.Tensor | None = None) -> torch.Tensor:
    """``K − 1 = expm1(−‖x_i − x_j‖² / (2σ²))``: the RBF kernel shifted by the constant −1.

    HSIC, nHSIC and ``center`` are unchanged by the shift, and ``expm1`` keeps full
    relative precision of ``1 − K`` however large σ is (``exp`` loses it to rounding
    near 1). Same arguments and gradients as ``rbf_kernel``.
    """
    return torch.expm1(-_scaled_sq_dists(x, sigma))


def delta_kernel(labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``L_ij = 1[y_i = y_j]`` for integer labels (..., n): shape (..., n, n)."""
    if labels.dim() < 1:
        raise ValueError(f"expected labels of shape (..., n), got a scalar {labels}")
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
    """HSIC from an already centred ``H K H`` and any ``L``: Σ_ij (HKH)_ij (HLH)_ji / (n−1)².

    L is centred here too (one more O(n²) pass): the value is the same in exact
    arithmetic, and it stops an L that is nearly constant (e.g. an RBF kernel ≈ 1 at
    large σ) from cancelling in floating point. 0 when n < 2."""
    n = k_centered.shape[-1]
    if n < 2:
        return k_centered.new_zeros(k_centered.shape[:-2])
    return (k_centered * center(l).transpose(-1, -2)).sum(dim=(-2, -1)) / _norm(n)


def hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Biased empirical HSIC ``tr(K H L H) / (n − 1)²`` of two kernel matrices (..., n, n)."""
    _check_kernels(k, l, "hsic")
    return hsic_centered(center(k), l)


def nhsic(k: torch.Tensor, l: torch.Tensor, rtol: float = CONSTANT_KERNEL_RTOL) -> torch.Tensor:
    """Normalised HSIC (kernel CKA): ``HSIC(K,L) / sqrt(HSIC(K,K)·HSIC(L,L))``.

    0 where either kernel is constant up to rounding (RMS of its centred form at most
    ``rtol`` machine epsilons times its largest absolute entry — relative, so scaling a
    kernel never changes the answer) or the denominator is not positive. Finite
    gradients everywhere. Pass ``rbf_kernel_minus_one`` rather than ``rbf_kernel`` for K.
    """
    _check_kernels(k, l, "nhsic")
    if not rtol >= 0:
        raise ValueError(f"nhsic: rtol must be ≥ 0, got {rtol}")
    if k.shape[-1] < 2:
        return k.new_zeros(k.shape[:-2])
    kc, lc = center(k), center(l)
    # nHSIC is invariant to scaling either kernel: divide each centred kernel by its
    # largest entry (a constant of the batch, no gradient needed) so that the products
    # below neither underflow nor overflow, whatever the size of the kernels' entries.
    kc, k_top = _unit_scale(kc)
    lc, l_top = _unit_scale(lc)
    kl = (kc * lc.transpose(-1, -2)).sum(dim=(-2, -1))
    kk = (kc * kc.transpose(-1, -2)).sum(dim=(-2, -1))
    ll = (lc * lc.transpose(-1, -2)).sum(dim=(-2, -1))
    ok = _varies(k, kk, k_top, rtol) & _varies(l, ll, l_top, rtol)
    one = torch.ones_like(kk)
    denom = torch.where(ok, kk, one).sqrt() * torch.where(ok, ll, one).sqrt()
    return torch.where(ok, kl / denom, torch.zeros_like(kl))


def _unit_scale(k_centered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``k_centered / max|k_centered|`` per matrix (unchanged where it is all zero), and
    that maximum (shape (...,), no gradient)."""
    with torch.no_grad():
        top = k_centered.abs().amax(dim=(-2, -1))
        divisor = torch.where(top > 0, top, torch.ones_like(top))
    return k_centered / divisor[..., None, None], top


def _varies(k: torch.Tensor, kk_unit: torch.Tensor, top: torch.Tensor,
            rtol: float) -> torch.Tensor:
    """False where the centred kernel is rounding noise: its RMS, sqrt(kk_unit/n²)·top,
    is at most rtol·eps·max|K| (also False where kk_unit is not positive)."""
    with torch.no_grad():
        n = k.shape[-1]
        eps = torch.finfo(k.dtype).eps
        rms = (kk_unit.detach().clamp_min(0) / (n * n)).sqrt() * top
        return (kk_unit.detach() > 0) & (rms > rtol * eps * k.abs().amax(dim=(-2, -1)))
