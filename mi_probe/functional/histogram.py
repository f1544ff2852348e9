"""Histogram (plug-in) mutual information, batched over channels.

Every function takes an (N, C) matrix (samples x channels) on any device and works on
all channels at once; memory is bounded by processing channels in chunks. Results are
float64 tensors in nats on the input's device.
"""

from __future__ import annotations

import math

import torch

#: Upper bound on the number of int64/float64 cells one chunk may allocate.
DEFAULT_CHUNK_CELLS = 1 << 25  # 32 M cells ≈ 256 MB of float64


def _chunks(n_channels: int, cells_per_channel: int, max_cells: int):
    step = max(1, max_cells // max(1, cells_per_channel))
    for start in range(0, n_channels, step):
        yield slice(start, min(n_channels, start + step))


def _checked_min_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column min and max of an (N, C) float64 matrix; ValueError, naming what was
    found, for an empty matrix or NaN / ±inf values."""
    if x.shape[0] == 0:
        raise ValueError(f"expected at least one sample, got shape {tuple(x.shape)}")
    lo, hi = torch.aminmax(x, dim=0)  # NaN propagates and ±inf shows: one check covers both
    if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
        nan, pos, neg = x.isnan(), x == math.inf, x == -math.inf
        bad = (nan | pos | neg).any(dim=0).nonzero().flatten()
        raise ValueError(f"expected finite activations, found {int(nan.sum())} NaN, "
                         f"{int(pos.sum())} +inf and {int(neg.sum())} -inf values in "
                         f"{bad.numel()} of {x.shape[1]} channels (first: channel {int(bad[0])})")
    return lo, hi


def _quantile_range(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, quantile: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The lower ``quantile`` and upper 1 − ``quantile`` sample values of each column
    (numpy's ``method="lower"`` / ``"higher"``); min / max (``lo``, ``hi``) where that
    range is empty."""
    if not 0 < quantile < 0.5:
        raise ValueError(f"quantile must lie in (0, 0.5), got {quantile}")
    last = x.shape[0] - 1
    # 1-based ranks from the bottom and from the top; topk is several times faster than
    # kthvalue or a sort for tail ranks
    k_lo = math.floor(last * quantile) + 1
    k_hi = last - math.ceil(last * (1.0 - quantile)) + 1
    q_lo = torch.topk(x, k_lo, dim=0, largest=False).values[-1]
    q_hi = torch.topk(x, k_hi, dim=0, largest=True).values[-1]
    empty = q_hi <= q_lo
    return torch.where(empty, lo, q_lo), torch.where(empty, hi, q_hi)


def bin_range(acts: torch.Tensor, quantile: float | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column binning range (lo, hi) of an (N, C) matrix: float64 (C,) each.

    ``quantile=None``: each column's own min and max (the paper's definition). With a
    quantile q in (0, 0.5): the lower q and upper 1 − q sample quantiles, taken as sample
    values (numpy's ``method="lower"`` / ``"higher"``, so the range never reaches past
    the data). A column whose quantile range is empty (roughly 1 − 2q of its samples or
    more share one value, e.g. a mostly-zero ReLU channel) keeps its min and max, so it
    is not mistaken for a constant column. NaN or ±inf values raise ValueError.
    """
    if acts.ndim != 2:
        raise ValueError(f"expected an (N, C) matrix, got shape {tuple(acts.shape)}")
    x = acts.to(torch.float64)
    lo, hi = _checked_min_max(x)
    return (lo, hi) if quantile is None else _quantile_range(x, lo, hi, quantile)


def bin_uniform(acts: torch.Tensor, bins: int, quantile: float | None = None) -> torch.Tensor:
    """Cut each column into ``bins`` uniform bins between its own min and max (with
    ``quantile``: its quantile range, see :func:`bin_range`; values outside it go to the
    first or last bin).

    Returns int64 codes in [0, bins) of shape (N, C). The maximum falls in the last bin;
    a constant column falls entirely in bin 0 (so its MI and entropy are exactly 0).
    NaN or ±inf values raise ValueError; ranges wider than the largest double are fine.
    """
    if acts.ndim != 2:
        raise ValueError(f"expected an (N, C) matrix, got shape {tuple(acts.shape)}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    x = acts.to(torch.float64)
    own = x is not acts  # a copy we may overwrite in place
    col_min, col_max = _checked_min_max(x)
    lo, hi = (col_min, col_max) if quantile is None else _quantile_range(x, col_min, col_max,
                                                                         quantile)
    # Overflow guard (issue 11.4): max − min can exceed the largest double (e.g. ±1e308),
    # giving width = inf and NaN codes. Those columns are halved first; halving is exact,
    # so (x/2 − lo/2) / (hi/2 − lo/2) gives the codes of the exact formula. Every other
    # column is multiplied by nothing and keeps today's arithmetic bit for bit.
    huge = torch.isinf(col_max - col_min)
    if bool(huge.any()):
        half = torch.where(huge, 0.5, 1.0).to(x)
        x, lo, hi, own = x * half, lo * half, hi * half, True
    width = hi - lo
    constant = width <= 0
    # (x - lo) / width * B, floored and clamped, computed in place in one float64 buffer
    scaled = x.sub_(lo) if own else x.sub(lo)
    scaled.div_(torch.where(constant, torch.ones_like(width), width)).mul_(bins)
    codes = scaled.floor_().clamp_(0, bins - 1).to(torch.int64)
    if constant.any():
        codes[:, constant] = 0
    return codes


def _counts(codes: torch.Tensor, n_symbols: int) -> torch.Tensor:
    """Per-column symbol counts: (C, n_symbols) float64."""
    n, c = codes.shape
    offsets = torch.arange(c, device=codes.device, dtype=codes.dtype) * n_symbols
    flat = (codes + offsets).reshape(-1)
    return torch.bincount(flat, minlength=c * n_symbols).view(c, n_symbols).to(torch.float64)


def _entropy_of_counts(counts: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) along the last dim of a count tensor."""
    total = counts.sum(dim=-1, keepdim=True)
    p = counts / total
    # 0.0 - x rather than -x: a one-symbol column gives +0.0, not -0.0 ("-0.0" in tables)
    return 0.0 - torch.special.xlogy(p, p).sum(dim=-1)


def entropy_from_codes(codes: torch.Tensor, n_symbols: int,
                       max_cells: int = DEFAULT_CHUNK_CELLS) -> torch.Tensor:
    """Plug-in entropy H of each column of integer ``codes`` in [0, n_symbols): (C,)."""
    n, c = codes.shape
    out = torch.empty(c, dtype=torch.float64, device=codes.device)
    for sl in _chunks(c, n + n_symbols, max_cells):
        out[sl] = _entropy_of_counts(_counts(codes[:, sl], n_symbols))
    return out


def label_mi_from_codes(codes: torch.Tensor, labels: torch.Tensor, n_symbols: int,
                        num_classes: int, max_cells: int = DEFAULT_CHUNK_CELLS) -> torch.Tensor:
    """Plug-in I(T_c;Y) = H(T_c) + H(Y) - H(T_c,Y) for each column of ``codes``: (C,).

    ``labels`` are integers in [0, num_classes). Identical (up to float64 rounding) to
    ``sklearn.metrics.mutual_info_score(labels, codes[:, c])`` for every column.
    """
    n, c = codes.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    labels = labels.to(device=codes.device, dtype=torch.int64)
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); found "
                         f"[{labels.min().item()}, {labels.max().item()}]")
    h_y = _entropy_of_counts(torch.bincount(labels, minlength=num_classes).to(torch.float64))
    out = torch.empty(c, dtype=torch.float64, device=codes.device)
    joint_symbols = n_symbols * num_classes
    for sl in _chunks(c, n + joint_symbols, max_cells):
        block = codes[:, sl]
        h_t = _entropy_of_counts(_counts(block, n_symbols))
        h_ty = _entropy_of_counts(_counts(block * num_classes + labels[:, None], joint_symbols))
        # 0 <= I <= min(H(T), H(Y)): the clamps only remove float64 rounding (~1e-16), and
        # make a constant column (H(T) == 0) exactly 0 rather than H(Y) - H(T,Y) ~ 4e-16.
        mi = (h_t + h_y - h_ty).clamp_(min=0.0)
        out[sl] = torch.minimum(mi, torch.minimum(h_t, h_y))
    return out


def joint_codes(codes: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Treat each row of ``codes`` as one symbol: returns (N, 1) codes and the number of
    distinct symbols. Used by the ``joint`` layer reduction (Shwartz-Ziv style)."""
    _, inverse = torch.unique(codes, dim=0, return_inverse=True)
    n_symbols = int(inverse.max().item()) + 1 if inverse.numel() else 1
    return inverse.reshape(-1, 1), n_symbols


def plugin_bias(bins: int, num_classes: int, n_samples: int) -> float:
    """First-order upward bias of the plug-in I(T;Y) on independent data:
    (B - 1)(K - 1) / (2N) nats (Miller 1955; Panzeri & Treves 1996)."""
    return (bins - 1) * (num_classes - 1) / (2.0 * max(1, n_samples))


def miller_madow_bias(occupied_bins: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Miller–Madow entropy bias (m - 1) / (2N) for ``occupied_bins`` non-empty bins."""
    return (occupied_bins.to(torch.float64) - 1) / (2.0 * max(1, n_samples))


def log_cap(bins: int) -> float:
    """The largest per-channel entropy (hence I(X;T_c)) a B-bin histogram can report."""
    return math.log(bins)


def occupied(codes: torch.Tensor, n_symbols: int, max_cells: int = DEFAULT_CHUNK_CELLS
             ) -> torch.Tensor:
    """Number of non-empty bins of each column: (C,) int64."""
    n, c = codes.shape
    out = torch.empty(c, dtype=torch.int64, device=codes.device)
    for sl in _chunks(c, n + n_symbols, max_cells):
        out[sl] = (_counts(codes[:, sl], n_symbols) > 0).sum(dim=1)
    return out


def miller_madow_mi_correction(codes: torch.Tensor, labels: torch.Tensor, n_symbols: int,
                               num_classes: int) -> torch.Tensor:
    """Miller–Madow correction of the plug-in I(T_c;Y), to be added to it: each entropy
    gets (m − 1)/(2N) for its m occupied cells, so the MI gets
    [(m_T − 1) + (m_Y − 1) − (m_TY − 1)] / (2N) (usually negative). (C,) float64."""
    n = codes.shape[0]
    labels = labels.to(device=codes.device, dtype=torch.int64)
    m_t = occupied(codes, n_symbols)
    m_y = int((torch.bincount(labels, minlength=num_classes) > 0).sum().item())
    m_ty = occupied(codes * num_classes + labels[:, None], n_symbols * num_classes)
    return ((m_t - 1) + (m_y - 1) - (m_ty - 1)).to(torch.float64) / (2.0 * max(1, n))


def edge_fraction(codes: torch.Tensor, bins: int) -> torch.Tensor:
    """Fraction of samples in the first or last bin, per column: (C,) float64. Values
    near 1 mean most samples sit at the extremes (e.g. saturated or sparse channels)."""
    edge = (codes == 0) | (codes == bins - 1)
    return edge.to(torch.float64).mean(dim=0)
