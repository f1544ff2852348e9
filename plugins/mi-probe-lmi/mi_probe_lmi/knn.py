"""Pure torch kernels: k-nearest-neighbour MI of multivariate samples (max-norm), the two
estimators LMI runs on its latent codes.

* :func:`ksg_joint` — continuous X (N, dx) vs continuous Y (N, dy): Kraskov, Stögbauer &
  Grassberger (2004, Phys. Rev. E 69 066138) estimator 1;
* :func:`ksg_label` — continuous X (N, d) vs a discrete label: the mixed estimator of
  Ross (2014, PLoS ONE 9(2) e87357).

Conventions are those of the ``ksg`` plugin's 1-D kernels (``mi_probe_ksg.ksg``, which
follow scikit-learn): the k-th neighbour distance ``d`` excludes the point itself, a
count is of the points strictly closer than ``d`` (scikit-learn's ``nextafter(d, 0)``
radius), in the max-norm over the dimensions of each variable. With ``d = 1`` the two
kernels give the ``ksg`` plugin's numbers (tested to 1e-12).

* ``ksg_joint``: ``I = psi(N) + psi(k) - <psi(n_x + 1)> - <psi(n_y + 1)>``, n_x and n_y
  the marginal counts without the point itself;
* ``ksg_label``: points whose class has a single sample are dropped (``N`` too); a class
  of ``n_c`` samples uses ``k_c = min(k, n_c - 1)``;
  ``I = psi(N) + <psi(k_c)> - <psi(n_c)> - <psi(m)>``, ``m`` the points (the point
  itself included) strictly closer than the k_c-th same-class neighbour.

Both are clipped at 0. Distances are computed exhaustively (float64, rows in chunks):
O(N^2 d) work, memory bounded by ``chunk_size`` elements; LMI's latents have a few
dimensions and at most some thousands of rows. Exact ties (duplicated points) bias
KSG; callers break them first (the plugin adds the ``ksg`` plugin's 1e-10-relative
seeded noise).
"""

from __future__ import annotations

import torch

#: default bound on the float64 elements of one chunk's (rows, N, d) difference tensor
DEFAULT_CHUNK_SIZE = 1 << 24


def _psi(t: torch.Tensor) -> torch.Tensor:
    return torch.special.digamma(t.to(torch.float64))


def _rows_per_chunk(n: int, dims: int, chunk_size: int) -> int:
    return max(1, chunk_size // max(1, n * dims))


def _maxnorm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, B) max-norm distances between the rows of ``a`` (A, d) and ``b`` (B, d)."""
    return (a[:, None, :] - b[None, :, :]).abs().amax(dim=-1)


def _check(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, d), got shape {tuple(x.shape)}")
    return x.to(torch.float64)


def ksg_joint(x: torch.Tensor, y: torch.Tensor, k: int = 3,
              chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """KSG estimator 1 of I(X;Y) in nats from paired rows of ``x`` (N, dx), ``y`` (N, dy)."""
    x, y = _check(x, "x"), _check(y, "y")
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x and y need the same rows, got {n} and {y.shape[0]}")
    if n <= k:
        raise ValueError(f"KSG needs more than k={k} samples, got {n}")
    step = _rows_per_chunk(n, max(x.shape[1], y.shape[1]), chunk_size)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, n, step):
        rows = torch.arange(start, min(n, start + step), device=x.device)
        dx, dy = _maxnorm(x[rows], x), _maxnorm(y[rows], y)
        at = torch.arange(rows.numel(), device=x.device)
        dx[at, rows] = torch.inf  # the point itself is no neighbour
        dy[at, rows] = torch.inf
        eps = torch.maximum(dx, dy).kthvalue(k, dim=1).values[:, None]
        nx, ny = (dx < eps).sum(1), (dy < eps).sum(1)
        total += (_psi(nx + 1) + _psi(ny + 1)).sum()
    value = _psi(torch.tensor(n)) + _psi(torch.tensor(k)) - total.cpu() / n
    return max(0.0, float(value))


def ksg_label(x: torch.Tensor, labels: torch.Tensor, k: int = 3,
              chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """Ross (2014) estimate of I(X;Y) in nats for ``x`` (N, d) and integer ``labels`` (N,).

    Raises ``ValueError`` when no class has two samples."""
    x = _check(x, "x")
    labels = labels.to(device=x.device, dtype=torch.long)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must be ({x.shape[0]},), got {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("no samples")
    counts = torch.bincount(labels)
    keep = counts[labels] > 1  # scikit-learn: points with a unique label are ignored
    if not bool(keep.any()):
        raise ValueError("every class has a single sample; KSG needs a class with >= 2")
    x, labels = x[keep], labels[keep]
    n = x.shape[0]
    n_c = counts[labels]
    k_c = torch.clamp(n_c - 1, max=k)
    step = _rows_per_chunk(n, x.shape[1], chunk_size)
    psi_m = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, n, step):
        rows = torch.arange(start, min(n, start + step), device=x.device)
        dist = _maxnorm(x[rows], x)
        dist[torch.arange(rows.numel(), device=x.device), rows] = torch.inf
        same = torch.where(labels[rows, None] == labels[None, :], dist, torch.inf)
        nearest = torch.topk(same, min(k, n - 1), dim=1, largest=False, sorted=True).values
        d = nearest.gather(1, (k_c[rows] - 1)[:, None])
        m = (dist < d).sum(1) + 1  # the point itself included
        psi_m += _psi(m).sum()
    value = (_psi(torch.tensor(n)) + _psi(k_c).mean().cpu() - _psi(n_c).mean().cpu()
             - psi_m.cpu() / n)
    return max(0.0, float(value))
