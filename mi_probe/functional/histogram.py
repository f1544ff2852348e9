"""Histogram (plug-in) mutual information, batched over channels.

Every function takes an (N, C) matrix (samples x channels) on any device and works on
all channels at once; memory is bounded by processing channels in chunks. Results are
float64 tensors in nats on the input's device.

Two binnings of a channel (``BINNINGS``): ``uniform`` (B equal-width bins between its
min and max, or its quantile range: :func:`bin_uniform`) and ``equal_count`` (edges at
its empirical k/B quantiles, so each bin holds about N/B samples: :func:`bin_equal_count`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

#: Upper bound on the number of int64/float64 cells one chunk may allocate.
DEFAULT_CHUNK_CELLS = 1 << 25  # 32 M cells ≈ 256 MB of float64

#: The binnings of a channel: equal-width bins, or equal-count (quantile) bins.
BINNINGS = ("uniform", "equal_count")


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


def _use_counting_kernels(device: torch.device) -> bool:
    """CPU tensors go to the compiled counting kernels (:mod:`.counting`); other devices
    (and a CPU without numba) use the torch path below, which runs wherever torch does."""
    if device.type != "cpu":
        return False
    from mi_probe.functional import counting

    return counting.available()


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _as_kernel_input(acts: torch.Tensor):
    """A C-contiguous numpy view/copy of CPU activations whose values convert to float64
    exactly as ``acts.to(torch.float64)`` does (half types widen to float32 exactly)."""
    import numpy as np

    x = acts.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.to(torch.float32)
    elif x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float64)
    return np.ascontiguousarray(x.numpy())


def _binning(acts: torch.Tensor, bins: int, quantile: float | None):
    """The numpy input and per-column binning parameters of the CPU kernels
    (:class:`~mi_probe.functional.counting.Binning`): the same float64 values
    :func:`_bin_uniform_torch` uses."""
    return _binning_and_range(acts, bins, quantile)[0]


def _binning_and_range(acts: torch.Tensor, bins: int, quantile: float | None):
    """:func:`_binning`, and each column's (min, max) and bin range (:func:`bin_range`'s
    values) as float64 numpy arrays."""
    import numpy as np

    from mi_probe.functional import counting

    if acts.ndim != 2:
        raise ValueError(f"expected an (N, C) matrix, got shape {tuple(acts.shape)}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    x = _as_kernel_input(acts)
    col_min, col_max, bad = counting.column_range(x)
    if bad or x.shape[0] == 0:  # the torch check names what was found
        _checked_min_max(torch.from_numpy(x).to(torch.float64))
    lo, hi = col_min, col_max
    if quantile is not None:
        q_lo, q_hi = _quantile_range(torch.from_numpy(x).to(torch.float64),
                                     torch.from_numpy(col_min), torch.from_numpy(col_max),
                                     quantile)
        lo, hi = q_lo.numpy(), q_hi.numpy()
    with np.errstate(over="ignore"):
        half = np.where(np.isinf(col_max - col_min), 0.5, 1.0)
    range_lo, range_hi = lo, hi
    lo, hi = lo * half, hi * half
    width = hi - lo
    return (counting.Binning(x, lo, np.where(width <= 0, 1.0, width), half, bins),
            col_min, col_max, range_lo, range_hi)


def bin_uniform(acts: torch.Tensor, bins: int, quantile: float | None = None) -> torch.Tensor:
    """Cut each column into ``bins`` uniform bins between its own min and max (with
    ``quantile``: its quantile range, see :func:`bin_range`; values outside it go to the
    first or last bin).

    Returns int64 codes in [0, bins) of shape (N, C): floor((x − lo) / (hi − lo) · B) in
    float64, clamped. The maximum falls in the last bin; a constant column falls entirely
    in bin 0 (so its MI and entropy are exactly 0). NaN or ±inf values raise ValueError;
    ranges wider than the largest double are fine. CPU tensors use the compiled kernel,
    other devices the torch path; both give the same codes.
    """
    if not _use_counting_kernels(acts.device):
        return _bin_uniform_torch(acts, bins, quantile)
    from mi_probe.functional import counting

    return torch.from_numpy(counting.bin_codes(_binning(acts, bins, quantile),
                                               transposed=False, threads=_threads()))


def narrow_codes(acts: torch.Tensor, bins: int, quantile: float | None = None):
    """Codes of CPU activations as a (C, N) numpy array of the narrowest unsigned type
    (one row per channel: the layout of the pair-counting kernel)."""
    from mi_probe.functional import counting

    return counting.bin_codes(_binning(acts, bins, quantile), transposed=True,
                              threads=_threads())


def _bin_uniform_torch(acts: torch.Tensor, bins: int, quantile: float | None = None
                       ) -> torch.Tensor:
    """:func:`bin_uniform` in torch ops, on any device (the reference of the kernel)."""
    return _bin_uniform_torch_and_range(acts, bins, quantile)[0]


def _bin_uniform_torch_and_range(acts: torch.Tensor, bins: int, quantile: float | None
                                 ) -> tuple[torch.Tensor, ...]:
    """:func:`_bin_uniform_torch`'s codes, and each column's float64 (min, max) and bin
    range (:func:`bin_range`'s values)."""
    if acts.ndim != 2:
        raise ValueError(f"expected an (N, C) matrix, got shape {tuple(acts.shape)}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    x = acts.to(torch.float64)
    own = x is not acts  # a copy we may overwrite in place
    col_min, col_max = _checked_min_max(x)
    lo, hi = (col_min, col_max) if quantile is None else _quantile_range(x, col_min, col_max,
                                                                         quantile)
    range_lo, range_hi = lo, hi
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
    return codes, col_min, col_max, range_lo, range_hi


def _equal_count_chunks(acts: torch.Tensor, bins: int, max_cells: int):
    """(column slice, (N, c) int64 codes) of :func:`bin_equal_count`, chunk by chunk, and
    each column's float64 (min, max) first (as ``(None, (min, max))``)."""
    if acts.ndim != 2:
        raise ValueError(f"expected an (N, C) matrix, got shape {tuple(acts.shape)}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    x = acts.to(torch.float64)
    yield None, _checked_min_max(x)  # also refuses no samples, NaN and ±inf
    n, c = x.shape
    # a chunk holds its values, their sorted copy, the sort order and two int64 rank
    # arrays: 5 cells a value
    for sl in _chunks(c, 5 * n, max_cells):
        values, order = x[:, sl].T.contiguous().sort(dim=1)  # rows: ~6x faster to sort
        # rank = how many values of the column are strictly smaller: the sorted position
        # where its run of equal values starts. Tied values share it, so they share a
        # code (equal values are never split between bins; -0.0 ties with 0.0)
        starts = torch.ones_like(values, dtype=torch.bool)
        starts[:, 1:] = values[:, 1:] != values[:, :-1]
        del values
        position = torch.arange(n, device=x.device).expand_as(order)
        first = torch.where(starts, position, 0).cummax(dim=1).values
        below = torch.empty_like(first).scatter_(1, order, first)
        yield sl, below.mul_(bins).div_(n, rounding_mode="floor").T


def bin_equal_count(acts: torch.Tensor, bins: int, max_cells: int = DEFAULT_CHUNK_CELLS
                    ) -> torch.Tensor:
    """Equal-count (quantile) bins of each column: int64 codes in [0, bins), (N, C).

    The code of a value x is floor(B · r / N), r = the number of the column's values
    strictly below x: edge k (k = 1..B−1) is the ⌈kN/B⌉-th smallest value (numpy's
    ``quantile(method="inverted_cdf")`` at k/B, computed in integers) and a bin is
    (edge_k, edge_k+1]. Continuous columns put ⌊N/B⌋ or ⌈N/B⌉ values in each bin. Tied
    values share the lowest code their block reaches and the bins that block spans stay
    empty (duplicate edges collapse): a ReLU channel with exactly half its values 0 has
    them all in bin 0, bins 1..⌊B/2⌋ − 1 empty and B − ⌊B/2⌋ + 1 bins occupied; a
    constant column falls in bin 0 (MI and entropy exactly 0). One sort per column, on
    any device; NaN or ±inf values raise ValueError."""
    out = torch.empty(acts.shape, dtype=torch.int64, device=acts.device)
    for sl, codes in _equal_count_chunks(acts, bins, max_cells):
        if sl is not None:
            out[:, sl] = codes
    return out


def bin_channels(acts: torch.Tensor, bins: int, quantile: float | None = None,
                 binning: str = "uniform", max_cells: int = DEFAULT_CHUNK_CELLS
                 ) -> torch.Tensor:
    """(N, C) int64 codes of ``binning`` (``BINNINGS``): :func:`bin_uniform` (with
    ``quantile``) or :func:`bin_equal_count` (which has no range to clip)."""
    if binning == "uniform":
        return bin_uniform(acts, bins, quantile)
    if binning == "equal_count":
        return bin_equal_count(acts, bins, max_cells)
    raise ValueError(f"unknown binning {binning!r}; valid: {list(BINNINGS)}")


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


def _check_labels(labels: torch.Tensor, n: int, num_classes: int,
                  device: torch.device) -> torch.Tensor:
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    labels = labels.to(device=device, dtype=torch.int64)
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); found "
                         f"[{labels.min().item()}, {labels.max().item()}]")
    return labels


def joint_counts_from_codes(codes: torch.Tensor, labels: torch.Tensor, n_symbols: int,
                            num_classes: int, max_cells: int = DEFAULT_CHUNK_CELLS
                            ) -> torch.Tensor:
    """Counts of (symbol, label) per column of integer ``codes``: (C, n_symbols,
    num_classes) float64, one bincount per chunk of columns (torch, any device)."""
    n, c = codes.shape
    labels = _check_labels(labels, n, num_classes, codes.device)
    joint_symbols = n_symbols * num_classes
    out = torch.empty(c, n_symbols, num_classes, dtype=torch.float64, device=codes.device)
    for sl in _chunks(c, n + joint_symbols, max_cells):
        block = codes[:, sl].to(torch.int64) * num_classes + labels[:, None]
        out[sl] = _counts(block, joint_symbols).view(-1, n_symbols, num_classes)
    return out


@dataclass(frozen=True)
class ChannelStatistics:
    """Plug-in quantities of every channel of one site, all from its (bin, label) counts:
    (C,) tensors on the activations' device."""

    label_mi: torch.Tensor         #: I(T_c;Y), nats (float64)
    entropy: torch.Tensor          #: H(T_c), nats (float64)
    label_mi_mm: torch.Tensor      #: Miller–Madow correction of ``label_mi`` (float64)
    occupied: torch.Tensor         #: non-empty bins of T_c (int64)


def channel_statistics(acts: torch.Tensor, labels: torch.Tensor | None, bins: int,
                       num_classes: int = 1, quantile: float | None = None,
                       max_cells: int = DEFAULT_CHUNK_CELLS, binning: str = "uniform"
                       ) -> ChannelStatistics:
    """I(T_c;Y), H(T_c) and their Miller–Madow terms for every channel of (N, C)
    activations, binned as :func:`bin_uniform`, from one joint (bin, label) count per
    channel (``labels=None``: one class, for entropies only).

    CPU: binning is fused into one counting pass of a compiled kernel (no (N, C)
    intermediate); other devices: :func:`bin_uniform` and one bincount per chunk. Count
    tables of at most ``max_cells`` cells are alive at once (channels in chunks).
    ``binning="equal_count"``: :func:`bin_equal_count` codes, counted as
    :func:`binned_statistics` counts a :func:`bin_site` state (so the two are equal).
    """
    if acts.ndim != 2:
        raise ValueError(f"expected an (N, C) matrix, got shape {tuple(acts.shape)}")
    if binning != "uniform":
        return binned_statistics(bin_site(acts, bins, None, binning, max_cells), labels,
                                 num_classes, max_cells)
    n, c = acts.shape
    if labels is None:
        labels, num_classes = torch.zeros(n, dtype=torch.int64, device=acts.device), 1
    parts: list[tuple[torch.Tensor, ...]] = []
    if _use_counting_kernels(acts.device):
        from mi_probe.functional import counting

        spec = _binning(acts, bins, quantile)
        y = _check_labels(labels, n, num_classes, acts.device).contiguous().numpy()
        for sl in _chunks(c, bins * num_classes, max_cells):
            counts = counting.label_counts(spec, y, num_classes, columns=(sl.start, sl.stop),
                                           threads=_threads())
            parts.append(tuple(map(torch.from_numpy, counting.label_statistics(counts))))
        return _joined(parts, acts.device)
    return _statistics_of_codes(_bin_uniform_torch(acts, bins, quantile), labels, bins,
                                num_classes, max_cells)


def _joined(parts: list[tuple[torch.Tensor, ...]], device: torch.device) -> ChannelStatistics:
    """The statistics of chunks of channels, concatenated."""
    if not parts:  # no channels
        empty = torch.zeros(0, dtype=torch.float64, device=device)
        return ChannelStatistics(empty, empty, empty, empty.to(torch.int64))
    return ChannelStatistics(*(torch.cat(column) for column in zip(*parts)))


def _statistics_of_codes(codes: torch.Tensor, labels: torch.Tensor, bins: int,
                         num_classes: int, max_cells: int) -> ChannelStatistics:
    """:func:`channel_statistics` of (N, C) int64 codes in torch ops (any device)."""
    parts = [_statistics_of_counts(joint_counts_from_codes(codes[:, sl], labels, bins,
                                                           num_classes, max_cells))
             for sl in _chunks(codes.shape[1], bins * num_classes, max_cells)]
    return _joined(parts, codes.device)


def _statistics_of_counts(counts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (label_mi_from_joint(counts), entropy_from_joint(counts),
            miller_madow_from_joint(counts), (counts.sum(dim=2) > 0).sum(dim=1))


def entropy_from_joint(counts: torch.Tensor) -> torch.Tensor:
    """H(T_c) of each channel from its (C, B, K) joint counts: (C,) float64."""
    return _entropy_of_counts(counts.sum(dim=2))


def label_mi_from_joint(counts: torch.Tensor) -> torch.Tensor:
    """Plug-in I(T_c;Y) = H(T_c) + H(Y) − H(T_c,Y) from (C, B, K) joint counts: (C,)."""
    c, n_symbols, num_classes = counts.shape
    if c == 0:
        return torch.zeros(0, dtype=torch.float64, device=counts.device)
    h_t = entropy_from_joint(counts)
    h_y = _entropy_of_counts(counts[0].sum(dim=0))
    h_ty = _entropy_of_counts(counts.reshape(c, n_symbols * num_classes))
    # 0 <= I <= min(H(T), H(Y)): the clamps only remove float64 rounding (~1e-16), and
    # make a constant column (H(T) == 0) exactly 0 rather than H(Y) - H(T,Y) ~ 4e-16.
    mi = (h_t + h_y - h_ty).clamp_(min=0.0)
    return torch.minimum(mi, torch.minimum(h_t, h_y))


def miller_madow_from_joint(counts: torch.Tensor) -> torch.Tensor:
    """Miller–Madow correction of the plug-in I(T_c;Y) from (C, B, K) joint counts, to
    be added to it: [(m_T − 1) + (m_Y − 1) − (m_TY − 1)] / (2N) for m occupied cells
    (usually negative). (C,) float64."""
    c = counts.shape[0]
    if c == 0:
        return torch.zeros(0, dtype=torch.float64, device=counts.device)
    n = counts[0].sum().item()
    m_t = (counts.sum(dim=2) > 0).sum(dim=1)
    m_y = int((counts[0].sum(dim=0) > 0).sum().item())
    m_ty = (counts > 0).sum(dim=(1, 2))
    return ((m_t - 1) + (m_y - 1) - (m_ty - 1)).to(torch.float64) / (2.0 * max(1, n))


def label_mi_from_codes(codes: torch.Tensor, labels: torch.Tensor, n_symbols: int,
                        num_classes: int, max_cells: int = DEFAULT_CHUNK_CELLS) -> torch.Tensor:
    """Plug-in I(T_c;Y) = H(T_c) + H(Y) - H(T_c,Y) for each column of ``codes``: (C,).

    ``labels`` are integers in [0, num_classes). Identical (up to float64 rounding) to
    ``sklearn.metrics.mutual_info_score(labels, codes[:, c])`` for every column. One
    joint count per chunk of columns gives both marginals.
    """
    return label_mi_from_joint(joint_counts_from_codes(codes, labels, n_symbols, num_classes,
                                                       max_cells))


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
    return miller_madow_from_joint(joint_counts_from_codes(codes, labels, n_symbols,
                                                           num_classes))


def edge_fraction(codes: torch.Tensor, bins: int) -> torch.Tensor:
    """Fraction of samples in the first or last bin, per column: (C,) float64. Values
    near 1 mean most samples sit at the extremes (e.g. saturated or sparse channels)."""
    edge = (codes == 0) | (codes == bins - 1)
    return edge.to(torch.float64).mean(dim=0)


# ------------------------------------------------------------------- one site, binned once


@dataclass
class BinnedSite:
    """One site's (N, C) activations binned once (:func:`bin_site`), so that every
    plug-in quantity of it (label MI for any label vector, entropies, edge bins) is
    counted from the same codes: equal, bit for bit, to the same function of ``acts``.

    ``codes`` are :func:`bin_uniform`'s (``binning="equal_count"``: :func:`bin_equal_count`'s),
    (N, C): a numpy array of the narrowest unsigned type on the CPU counting path, else an
    int64 tensor on the activations' device. ``lo`` / ``hi`` are :func:`bin_range`'s
    values (equal-count: each column's min and max); ``col_min`` / ``col_max`` each
    column's own. The rest caches what the first answer counted.
    """

    acts: torch.Tensor
    bins: int
    quantile: float | None
    codes: Any
    col_min: torch.Tensor  #: float64 (C,)
    col_max: torch.Tensor  #: float64 (C,)
    lo: torch.Tensor       #: float64 (C,)
    hi: torch.Tensor       #: float64 (C,)
    #: (C, bins) int64 bin counts (counting path), from the first count of any labels
    marginal: Any = None
    #: the labels=None statistics, once asked for
    entropies: ChannelStatistics | None = None
    #: ``uniform`` or ``equal_count`` (``BINNINGS``)
    binning: str = "uniform"

    @property
    def on_kernels(self) -> bool:
        """Whether the codes are for the compiled counting kernels (a numpy array)."""
        return not isinstance(self.codes, torch.Tensor)


def bin_site(acts: torch.Tensor, bins: int, quantile: float | None = None,
             binning: str = "uniform", max_cells: int = DEFAULT_CHUNK_CELLS) -> BinnedSite:
    """Bin an (N, C) matrix once, as :func:`bin_uniform` (or, with ``binning=
    "equal_count"``, :func:`bin_equal_count`) does (same errors), keeping its ranges:
    the prepared state of the histogram estimator."""
    if acts.ndim != 2:
        raise ValueError(f"expected an (N, C) matrix, got shape {tuple(acts.shape)}")
    if binning == "equal_count":
        return _bin_site_equal_count(acts, bins, max_cells)
    if binning != "uniform":
        raise ValueError(f"unknown binning {binning!r}; valid: {list(BINNINGS)}")
    if _use_counting_kernels(acts.device):
        from mi_probe.functional import counting

        spec, np_min, np_max, np_lo, np_hi = _binning_and_range(acts, bins, quantile)
        kernel_codes = counting.bin_codes(spec, transposed=False, narrow=True,
                                          threads=_threads())
        t_min, t_max, t_lo, t_hi = (torch.from_numpy(v) for v in (np_min, np_max, np_lo, np_hi))
        return BinnedSite(acts, bins, quantile, kernel_codes, t_min, t_max, t_lo, t_hi)
    codes, col_min, col_max, lo, hi = _bin_uniform_torch_and_range(acts, bins, quantile)
    return BinnedSite(acts, bins, quantile, codes, col_min, col_max, lo, hi)


def _bin_site_equal_count(acts: torch.Tensor, bins: int, max_cells: int) -> BinnedSite:
    """:func:`bin_site` with :func:`bin_equal_count` codes: narrow numpy codes for the
    counting kernels on the CPU (filled chunk by chunk), else an int64 tensor."""
    chunks = _equal_count_chunks(acts, bins, max_cells)
    _, (col_min, col_max) = next(chunks)
    codes: Any
    if _use_counting_kernels(acts.device):
        import numpy as np

        from mi_probe.functional import counting

        codes = np.empty(tuple(acts.shape), counting.code_dtype(bins))
        for sl, part in chunks:
            codes[:, sl] = part.numpy()
    else:
        codes = torch.empty(acts.shape, dtype=torch.int64, device=acts.device)
        for sl, part in chunks:
            codes[:, sl] = part
    return BinnedSite(acts, bins, None, codes, col_min, col_max, col_min, col_max,
                      binning="equal_count")


def binned_statistics(site: BinnedSite, labels: torch.Tensor | None, num_classes: int = 1,
                      max_cells: int = DEFAULT_CHUNK_CELLS) -> ChannelStatistics:
    """:func:`channel_statistics` of ``site.acts`` from its codes (bit for bit the same
    values, without binning again). ``labels=None`` (entropies only) is counted once and
    kept; on the CPU it comes from the bin counts of an earlier label count, as H(T_c)
    and the occupied bins do not depend on the labels."""
    if labels is None:
        if site.entropies is None:
            site.entropies = _binned_entropies(site, max_cells)
        return site.entropies
    n, c = site.acts.shape
    if not site.on_kernels:
        return _statistics_of_codes(site.codes, labels, site.bins, num_classes, max_cells)
    import numpy as np

    from mi_probe.functional import counting

    y = _check_labels(labels, n, num_classes, site.acts.device).contiguous().numpy()
    marginal = np.empty((c, site.bins), np.int64) if site.marginal is None else None
    parts = []
    for sl in _chunks(c, site.bins * num_classes, max_cells):
        counts = counting.label_counts_from_codes(site.codes, site.bins, y, num_classes,
                                                  columns=(sl.start, sl.stop),
                                                  threads=_threads())
        if marginal is not None:
            marginal[sl] = counts.sum(axis=2)
        parts.append(tuple(map(torch.from_numpy, counting.label_statistics(counts))))
    if marginal is not None:
        site.marginal = marginal
    return _joined(parts, site.acts.device)


def _binned_entropies(site: BinnedSite, max_cells: int) -> ChannelStatistics:
    n = site.acts.shape[0]
    if not site.on_kernels:
        return _statistics_of_codes(site.codes, torch.zeros(n, dtype=torch.int64,
                                                            device=site.codes.device),
                                    site.bins, 1, max_cells)
    if site.marginal is None:  # no labels counted yet: count with one class
        return binned_statistics(site, torch.zeros(n, dtype=torch.int64), 1, max_cells)
    import numpy as np

    from mi_probe.functional import counting

    # the kernel's per-channel sums do not depend on chunks: one call over all channels,
    # on counts laid out as label_counts returns them (one compiled signature)
    counts = np.ascontiguousarray(site.marginal[None], dtype=np.int32).transpose(1, 2, 0)
    if counts.shape[0] == 0:
        return _joined([], site.acts.device)
    return ChannelStatistics(*map(torch.from_numpy, counting.label_statistics(counts)))


def binned_edge_fraction(site: BinnedSite) -> torch.Tensor:
    """:func:`edge_fraction` of the site's codes: (C,) float64. On the CPU from its bin
    counts (an exact count over N, as the float64 mean of 0/1 values is)."""
    if not site.on_kernels:
        return edge_fraction(site.codes, site.bins)
    if site.marginal is None:
        binned_statistics(site, None)
    edges = torch.from_numpy(site.marginal[:, 0] + site.marginal[:, -1])
    return edges.to(torch.float64) / site.acts.shape[0]


def clipped_fraction(acts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> float:
    """Share of all values of (N, C) ``acts`` outside their column's [lo, hi]."""
    x = acts.to(torch.float64)
    return float(((x < lo) | (x > hi)).double().mean().item())


# ------------------------------------------------- joint symbols, resamples, label facts


def _as_tensor_codes(codes: Any) -> torch.Tensor:
    """(N, C) codes as a tensor: a numpy array (the counting path's narrow codes) is
    viewed without a copy; a tensor is returned as it is."""
    return codes if isinstance(codes, torch.Tensor) else torch.from_numpy(codes)


def _compact(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Integer ids renumbered 0..m−1 in sorted order, and m."""
    uniques, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    return inverse.reshape(-1), int(uniques.numel())


def pattern_symbols(codes: Any, bins: int) -> tuple[torch.Tensor, int]:
    """Each row's tuple of C codes in [0, bins) as one symbol: (N,) int64 ids in [0, m)
    on the codes' device (in lexicographic order of the rows) and m, the number of
    distinct rows.

    Exact and memory-bounded for any C: blocks of columns are folded into the running
    id in base ``bins`` (while it stays below 2^62) and the ids renumbered after each
    block, so nothing but the N ids is held besides the codes. ``codes``: an (N, C)
    tensor or numpy array (:attr:`BinnedSite.codes`)."""
    x = _as_tensor_codes(codes)
    if x.ndim != 2:
        raise ValueError(f"expected (N, C) codes, got shape {tuple(x.shape)}")
    n, c = x.shape
    ids = torch.zeros(n, dtype=torch.int64, device=x.device)
    count, start, limit = 1, 0, 1 << 62
    while start < c:
        span, width = count, 0
        while start + width < c and span * bins <= limit:
            span, width = span * bins, width + 1
        for j in range(start, start + width):  # Horner, one in-place pass per column
            ids.mul_(bins).add_(x[:, j])
        ids, count = _compact(ids)
        start += width
    return ids, count


def label_entropy(labels: torch.Tensor, num_classes: int) -> float:
    """Plug-in Ĥ(Y) in nats of integer labels in [0, num_classes)."""
    labels = _check_labels(labels, labels.shape[0], num_classes, labels.device)
    return float(_entropy_of_counts(torch.bincount(labels, minlength=num_classes)
                                    .to(torch.float64)).item())


def resampled_statistics(site: BinnedSite, rows: torch.Tensor, labels: torch.Tensor,
                         num_classes: int, max_cells: int = DEFAULT_CHUNK_CELLS
                         ) -> ChannelStatistics:
    """:func:`channel_statistics` of the rows ``rows`` (int64 indices, repeats allowed:
    a bootstrap resample) of a site, on its full-data codes: the bins stay those of the
    whole sample, only the counts change."""
    n, c = site.acts.shape
    labels = _check_labels(labels, n, num_classes, site.acts.device)
    if not site.on_kernels:
        on_device = rows.to(site.codes.device)
        return _statistics_of_codes(site.codes[on_device], labels[on_device], site.bins,
                                    num_classes, max_cells)
    import numpy as np

    from mi_probe.functional import counting

    index = rows.cpu().numpy()
    resampled = np.ascontiguousarray(site.codes[index])
    y = np.ascontiguousarray(labels.cpu().numpy()[index])
    parts = []
    for sl in _chunks(c, site.bins * num_classes, max_cells):
        counts = counting.label_counts_from_codes(resampled, site.bins, y, num_classes,
                                                  columns=(sl.start, sl.stop),
                                                  threads=_threads())
        parts.append(tuple(map(torch.from_numpy, counting.label_statistics(counts))))
    return _joined(parts, site.acts.device)


def symbol_mi(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plug-in I(A;B) of two (N,) int64 symbol vectors (any values), and its
    Miller–Madow term [(m_A − 1) + (m_B − 1) − (m_AB − 1)]/(2N): two 0-d float64 tensors.
    Counts come from ``torch.unique``, so the symbol alphabets may be as large as N."""
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two (N,) symbol vectors, got shapes {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a, n_a = _compact(a)
    b, n_b = _compact(b)
    counts_a = torch.bincount(a, minlength=n_a).to(torch.float64)
    counts_b = torch.bincount(b, minlength=n_b).to(torch.float64)
    counts_ab = torch.unique(a * n_b + b, return_counts=True)[1].to(torch.float64)
    h_a, h_b, h_ab = (_entropy_of_counts(t) for t in (counts_a, counts_b, counts_ab))
    # the clamps only remove float64 rounding, as in label_mi_from_joint
    mi = torch.minimum((h_a + h_b - h_ab).clamp(min=0.0), torch.minimum(h_a, h_b))
    mm = ((n_a - 1) + (n_b - 1) - (counts_ab.numel() - 1)) / (2.0 * max(1, a.numel()))
    return mi, torch.tensor(mm, dtype=torch.float64, device=mi.device)


#: The joint histogram's default keeps this many expected samples per joint cell (N / b^d).
JOINT_SAMPLES_PER_CELL = 10


def joint_bins(n_samples: int, dims: int, bins: int) -> int:
    """Bins per dimension of a d-dimensional joint histogram of N samples: the largest b
    with b^d ≤ N / 10 (at least 10 samples per joint cell on average), clipped to
    [2, bins]. E.g. N = 4000: d = 2 → 20 (at bins = 20), d = 4 → 4."""
    cells = n_samples / JOINT_SAMPLES_PER_CELL
    b = max(2, int(cells ** (1.0 / dims)))
    while b > 2 and b ** dims > cells:  # float roots can land one above
        b -= 1
    while (b + 1) ** dims <= cells:     # or one below
        b += 1
    return max(2, min(bins, b))
