"""Histogram MI of a site read in row chunks: memory bounded by one chunk plus counts,
never the (N, C) matrix.

A site's activations arrive as ``chunks`` (:data:`RowChunks`): a zero-argument callable
returning a fresh iterator over consecutive (n_i, C) row blocks, in order (e.g. read from
the activation store); every call re-reads the same rows from the first. Each quantity
equals what :mod:`mi_probe.functional.histogram` computes on the whole matrix: the codes
are :func:`~mi_probe.functional.histogram.bin_uniform`'s (or
:func:`~mi_probe.functional.histogram.bin_equal_count`'s) bit for bit, counts are
integers, and the statistics come from the same count tables through the same functions,
so label MI, input MI, their Miller–Madow terms and the diagnostics are bit-identical
(pair MI: to float64 rounding, its entropies are summed in another order).

Passes over the chunks: one finds the ranges (:func:`stream_site`); quantile ranges and
equal-count bins need exact order statistics, 4 more passes for float32 (and narrower)
data, 8 for anything else (:func:`order_statistics`); then one pass per counting call,
which counts any number of label vectors (:func:`streamed_statistics`), and one per
block of channel pairs for pair MI (:func:`streamed_pair_mi`). The layer-level pattern
symbols (``reduce: joint``, :func:`~mi_probe.functional.histogram.pattern_symbols`) do
not stream: exact ids need all N ids renumbered after every (62 − log2 N)/log2 B
channels, one pass each (a row hash would take one pass but could collide).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import cache
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from mi_probe.functional.histogram import (BINNINGS, DEFAULT_CHUNK_CELLS, ChannelStatistics,
                                           _as_kernel_input, _check_labels, _chunks,
                                           _entropy_of_counts, _joined, _statistics_of_counts,
                                           _threads, _use_counting_kernels,
                                           joint_counts_from_codes)
from mi_probe.functional.pairwise import DEFAULT_PAIR_CELLS, block_sizes

#: A site's activations as row chunks: each call returns a fresh iterator over its
#: consecutive (n_i, C) row blocks, from the first row.
RowChunks = Callable[[], Iterable[torch.Tensor]]

#: Chunk dtypes whose values are float32 values exactly: their order statistics are
#: selected on 32-bit keys (4 passes instead of 8).
_FLOAT32_VALUES = (torch.float16, torch.bfloat16, torch.float32)

#: Buckets per radix-selection pass (one byte of the key).
_RADIX = 256


# --------------------------------------------------------------------------- the chunks


def _rows(chunks: RowChunks, n_channels: int) -> Iterator[torch.Tensor]:
    """The non-empty chunks of one pass, detached; ValueError for a chunk that is not an
    (n, ``n_channels``) tensor or that sits on another device than the first."""
    device = None
    for chunk in chunks():
        if not isinstance(chunk, torch.Tensor) or chunk.ndim != 2 \
                or chunk.shape[1] != n_channels:
            found = tuple(chunk.shape) if isinstance(chunk, torch.Tensor) else type(chunk)
            raise ValueError(f"expected row chunks of shape (n, {n_channels}), got {found}")
        if device is None:
            device = chunk.device
        elif chunk.device != device:
            raise ValueError(f"expected every row chunk on one device, got {device} and "
                             f"{chunk.device}")
        if chunk.shape[0]:
            yield chunk.detach()


def _pass(chunks: RowChunks, n_rows: int, n_channels: int
          ) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, chunk) of one more pass over chunks that held ``n_rows`` rows on the
    first; ValueError when they hold another number now."""
    start = 0
    for chunk in _rows(chunks, n_channels):
        if start + chunk.shape[0] > n_rows:
            raise ValueError(f"the row chunks held {n_rows} rows on their first pass and "
                             f"more on a later one; each call must re-read the same rows")
        yield start, chunk
        start += chunk.shape[0]
    if start != n_rows:
        raise ValueError(f"the row chunks held {n_rows} rows on their first pass and "
                         f"{start} on a later one; each call must re-read the same rows")


def _accumulate(total: torch.Tensor, index: torch.Tensor) -> None:
    """``total[i] += 1`` for each i of ``index`` (1-D int64), in place: one bincount when
    the index is at least as long as the table, else an index_add (no table-sized
    temporary)."""
    if index.numel() >= total.numel():
        total += torch.bincount(index, minlength=total.numel())
    elif index.numel():
        total.index_add_(0, index, torch.ones(1, dtype=total.dtype,
                                              device=total.device).expand(index.numel()))


# ------------------------------------------------------------------------ the range pass


@dataclass(frozen=True)
class ColumnRange:
    """One pass's facts about a site read in chunks: each column's float64 min and max
    (:func:`~mi_probe.functional.histogram.bin_range`'s values), its rows, the chunks'
    device and the bits of its order-statistic keys (32: every chunk holds float32
    values or narrower floats; else 64)."""

    col_min: torch.Tensor
    col_max: torch.Tensor
    n_rows: int
    device: torch.device
    key_bits: int


def _chunk_min_max(chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Per-column float64 (min, max) of one chunk and whether all its values are
    finite: the compiled range kernel on the CPU, as ``bin_site`` uses it, else torch."""
    if _use_counting_kernels(chunk.device):
        from mi_probe.functional import counting

        low, high, bad = counting.column_range(_as_kernel_input(chunk))
        return torch.from_numpy(low), torch.from_numpy(high), bad == 0
    lo, hi = torch.aminmax(chunk.to(torch.float64), dim=0)
    return lo, hi, bool(torch.isfinite(lo).all() & torch.isfinite(hi).all())


def column_range(chunks: RowChunks, n_channels: int, n_rows: int | None = None
                 ) -> ColumnRange:
    """Each column's min and max over every chunk, in one pass.

    Refuses what :func:`~mi_probe.functional.histogram.bin_range` refuses, with its
    ValueError and message: no rows, and NaN or ±inf values (counted over all chunks, so
    the message names the same totals and first channel as on the whole matrix). Also
    refuses chunks that are not (n, ``n_channels``) or whose rows do not add up to
    ``n_rows`` (when given)."""
    col_min = col_max = None
    device, rows, key_bits = None, 0, 32
    #: NaN, +inf and -inf values, and the channels holding any (counted once one shows)
    nonfinite, bad_channels = [0, 0, 0], None
    for chunk in _rows(chunks, n_channels):
        lo, hi, finite = _chunk_min_max(chunk)
        if not finite or bad_channels is not None:
            x = chunk.to(torch.float64)
            found = (x.isnan(), x == math.inf, x == -math.inf)
            nonfinite = [total + int(f.sum()) for total, f in zip(nonfinite, found)]
            here = (found[0] | found[1] | found[2]).any(dim=0)
            bad_channels = here if bad_channels is None else bad_channels | here
        col_min = lo if col_min is None else torch.minimum(col_min, lo)
        col_max = hi if col_max is None else torch.maximum(col_max, hi)
        device, rows = chunk.device, rows + chunk.shape[0]
        key_bits = key_bits if chunk.dtype in _FLOAT32_VALUES else 64
    if n_rows is not None and rows != n_rows:
        raise ValueError(f"expected row chunks holding n_rows={n_rows} rows, found {rows}")
    if col_min is None or col_max is None or device is None:
        raise ValueError(f"expected at least one sample, got shape (0, {n_channels})")
    if bad_channels is not None:  # the message of histogram._checked_min_max on the matrix
        channels = bad_channels.nonzero().flatten()
        raise ValueError(f"expected finite activations, found {nonfinite[0]} NaN, "
                         f"{nonfinite[1]} +inf and {nonfinite[2]} -inf values in "
                         f"{channels.numel()} of {n_channels} channels (first: channel "
                         f"{int(channels[0])})")
    return ColumnRange(col_min, col_max, rows, device, key_bits)


# -------------------------------------------------------------------- order statistics


def _sort_keys(x: torch.Tensor, key_bits: int) -> torch.Tensor:
    """int64 keys whose order is the order of the values of ``x`` (finite; -0.0 sorts
    just below 0.0): the float32 (``key_bits=32``) or float64 bit patterns with the
    magnitude bits of negative values flipped."""
    if key_bits == 32:
        bits = x.to(torch.float32).view(torch.int32).to(torch.int64)
        return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    bits = x.to(torch.float64).view(torch.int64)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFFFFFFFFFF, bits)


def _key_values(keys: torch.Tensor, key_bits: int) -> torch.Tensor:
    """The float64 values of :func:`_sort_keys` keys."""
    if key_bits == 32:
        bits = torch.where(keys < 0, keys ^ 0x7FFFFFFF, keys)
        return bits.to(torch.int32).view(torch.float32).to(torch.float64)
    return torch.where(keys < 0, keys ^ 0x7FFFFFFFFFFFFFFF, keys).view(torch.float64)


def _radix_select(chunks: RowChunks, n_rows: int, n_channels: int, cols: slice,
                  ranks: torch.Tensor, key_bits: int) -> torch.Tensor:
    """The ``ranks``-th smallest values (1-based, ascending) of the columns ``cols``:
    (c, R) float64. Each pass fixes one more byte of every answer's key: it counts, per
    column, the values whose key shares the answer's bytes so far by their next byte,
    and the rank falls in one bucket. Ranks whose answers share those bytes share one
    histogram (the first of them counts it)."""
    c, r = cols.stop - cols.start, ranks.numel()
    device = ranks.device
    #: key >> shift of each answer (non-decreasing along the ranks)
    prefix = torch.zeros(c, r, dtype=torch.int64, device=device)
    #: each answer's rank among the values sharing its prefix
    remaining = ranks.expand(c, r).clone()
    channel = torch.arange(c, device=device)[:, None]
    for shift in range(key_bits - 8, -1, -8):
        top = shift == key_bits - 8
        counts = torch.zeros(c * r * _RADIX, dtype=torch.int64, device=device)
        for _, chunk in _pass(chunks, n_rows, n_channels):
            keys = _sort_keys(chunk[:, cols], key_bits).T.contiguous()  # (c, n)
            if top:  # every value is a candidate of every rank: histogram 0 of its column
                _accumulate(counts, (channel * (r * _RADIX) + (keys >> shift) + _RADIX // 2)
                            .flatten())
                continue
            high = keys >> (shift + 8)
            first = torch.searchsorted(prefix, high)  # the first rank whose prefix >= high
            hit = (first < r) & (prefix.gather(1, first.clamp(max=r - 1)) == high)
            index = (channel * r + first) * _RADIX + ((keys >> shift) & (_RADIX - 1))
            _accumulate(counts, index[hit])
        head = torch.searchsorted(prefix, prefix)  # the rank that counted each histogram
        hist = counts.view(c, r, _RADIX).gather(1, head[..., None].expand(c, r, _RADIX))
        cum = hist.cumsum(dim=2)
        digit = (cum < remaining[..., None]).sum(dim=2)  # where the cumulative count reaches
        below = cum.gather(2, (digit - 1).clamp(min=0)[..., None])[..., 0]
        remaining -= torch.where(digit > 0, below, 0)
        prefix = digit - _RADIX // 2 if top else prefix * _RADIX + digit
    return _key_values(prefix, key_bits)


def order_statistics(chunks: RowChunks, ranks: Sequence[int], facts: ColumnRange,
                     max_cells: int = DEFAULT_CHUNK_CELLS) -> torch.Tensor:
    """The ``ranks[j]``-th smallest value (1-based) of every column: (C, R) float64 on
    the chunks' device, exact (a tie of -0.0 and 0.0 may give either: equal values).

    Radix selection on the values' bit patterns, one pass per key byte (4 for float32
    data, ``facts.key_bits == 32``, else 8): memory is one chunk's keys plus C·R·256
    counts, channels in blocks of at most ``max_cells`` counts (each block its own
    passes). ``facts``: the site's :func:`column_range` (values already checked finite)."""
    n, c = facts.n_rows, facts.col_min.shape[0]
    if any(not 1 <= k <= n for k in ranks):
        raise ValueError(f"ranks must lie in [1, {n}], got {list(ranks)}")
    unique = sorted(set(ranks))
    out = torch.empty(c, len(unique), dtype=torch.float64, device=facts.device)
    if unique:
        target = torch.tensor(unique, dtype=torch.int64, device=facts.device)
        for cols in _chunks(c, len(unique) * _RADIX, max_cells):
            out[cols] = _radix_select(chunks, n, c, cols, target, facts.key_bits)
    return out[:, [unique.index(k) for k in ranks]]


def quantile_ranks(n_rows: int, quantile: float) -> tuple[int, int]:
    """1-based ranks from the bottom of the lower ``quantile`` and upper 1 − ``quantile``
    sample values of :func:`~mi_probe.functional.histogram.bin_range` (its ``topk``
    ranks, the upper one counted from the bottom)."""
    if not 0 < quantile < 0.5:
        raise ValueError(f"quantile must lie in (0, 0.5), got {quantile}")
    last = n_rows - 1
    k_lo = math.floor(last * quantile) + 1
    k_hi = last - math.ceil(last * (1.0 - quantile)) + 1
    return k_lo, n_rows - k_hi + 1


def equal_count_ranks(n_rows: int, bins: int) -> list[int]:
    """Ranks ⌈kN/B⌉ (k = 1..B−1) of the equal-count edges: a value's code
    floor(B·r/N) (r = values strictly below it) is the number of edges below it."""
    return [-(-k * n_rows // bins) for k in range(1, bins)]


# ----------------------------------------------------------------------- one site's state


@dataclass
class StreamedSite:
    """One site read in row chunks, its bins found (:func:`stream_site`): the streaming
    counterpart of :class:`~mi_probe.functional.histogram.BinnedSite`, with the same
    ``bins``, ``quantile``, ``binning``, ``col_min`` / ``col_max`` and ``lo`` / ``hi``,
    holding no codes: each count is one pass over ``chunks``. Valid while ``chunks``
    re-reads the same rows."""

    chunks: RowChunks
    n_rows: int
    n_channels: int
    bins: int
    quantile: float | None
    binning: str
    device: torch.device
    col_min: torch.Tensor  #: float64 (C,)
    col_max: torch.Tensor  #: float64 (C,)
    lo: torch.Tensor       #: float64 (C,): the bin range (equal-count: min)
    hi: torch.Tensor       #: float64 (C,): the bin range (equal-count: max)
    #: equal-count edges, (C, bins − 1) float64: value ⌈kN/B⌉ of each column; else None
    edges: torch.Tensor | None = None
    max_cells: int = DEFAULT_CHUNK_CELLS
    #: (C, bins) int64 bin counts, from the first counting pass
    marginal: torch.Tensor | None = None
    #: values outside [lo, hi] over every row and channel (``quantile`` only), idem
    clipped: int | None = None
    #: the labels=None statistics, once asked for
    entropies: ChannelStatistics | None = None
    #: whether chunks are binned and counted by the compiled CPU kernels (else torch
    #: ops), chosen once as ``bin_site`` chooses
    on_kernels: bool = False


def stream_site(chunks: RowChunks, n_rows: int, n_channels: int, bins: int,
                quantile: float | None = None, binning: str = "uniform",
                max_cells: int = DEFAULT_CHUNK_CELLS) -> StreamedSite:
    """A site's ranges (and equal-count edges) from its row chunks: one pass, plus the
    order-statistic passes of a quantile range or equal-count bins. The same errors as
    :func:`~mi_probe.functional.histogram.bin_site` on the whole matrix."""
    if binning not in BINNINGS:
        raise ValueError(f"unknown binning {binning!r}; valid: {list(BINNINGS)}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    if quantile is not None and not 0 < quantile < 0.5:
        raise ValueError(f"quantile must lie in (0, 0.5), got {quantile}")
    facts = column_range(chunks, n_channels, n_rows)
    lo, hi, edges = facts.col_min, facts.col_max, None
    if binning == "equal_count":
        quantile = None  # equal-count bins have no range to clip (as bin_site)
        edges = order_statistics(chunks, equal_count_ranks(n_rows, bins), facts, max_cells)
    elif quantile is not None:
        q = order_statistics(chunks, quantile_ranks(n_rows, quantile), facts, max_cells)
        empty = q[:, 1] <= q[:, 0]  # as histogram._quantile_range: keep min / max
        lo, hi = torch.where(empty, lo, q[:, 0]), torch.where(empty, hi, q[:, 1])
    return StreamedSite(chunks, n_rows, n_channels, bins, quantile, binning, facts.device,
                        facts.col_min, facts.col_max, lo, hi, edges, max_cells,
                        on_kernels=_use_counting_kernels(facts.device))


# ----------------------------------------------------------------------------- binning


def _uniform_arithmetic(site: StreamedSite, cols: slice
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-column (half, lo, divisor, constant) of ``bin_uniform``'s float64 arithmetic
    for the columns ``cols``, from the site's whole-matrix ranges: codes are
    floor((x·half − lo) / width · B), clamped, with half = ½ only where max − min
    overflows a double and a constant column's width replaced by 1 (its codes are 0):
    the numbers ``histogram._binning_and_range`` and
    ``histogram._bin_uniform_torch_and_range`` compute from the whole matrix."""
    col_min, col_max = site.col_min[cols], site.col_max[cols]
    half = torch.where(torch.isinf(col_max - col_min), 0.5, 1.0).to(torch.float64)
    lo, hi = site.lo[cols] * half, site.hi[cols] * half
    width = hi - lo
    constant = width <= 0
    return half, lo, torch.where(constant, torch.ones_like(width), width), constant


def _kernel_codes(site: StreamedSite, chunk: torch.Tensor, cols: slice, narrow: bool):
    """A CPU chunk's uniform codes for the columns ``cols`` from the compiled binning
    kernel (``bin_site``'s): an (n, c) numpy array, of the narrowest unsigned type when
    ``narrow``, else int64."""
    from mi_probe.functional import counting

    half, lo, divisor, _ = (t.numpy() for t in _uniform_arithmetic(site, cols))
    spec = counting.Binning(_as_kernel_input(chunk[:, cols]), lo, divisor, half, site.bins)
    return counting.bin_codes(spec, transposed=False, narrow=narrow, threads=_threads())


def _torch_codes(site: StreamedSite, chunk: torch.Tensor, cols: slice) -> torch.Tensor:
    """A chunk's uniform codes for the columns ``cols`` in torch ops (any device), as
    ``histogram._bin_uniform_torch`` computes them: (n, c) int64."""
    half, lo, divisor, constant = _uniform_arithmetic(site, cols)
    x = chunk[:, cols].to(torch.float64)
    if bool((half != 1.0).any()):
        x = x * half
    scaled = x.sub(lo).div_(divisor).mul_(site.bins)
    codes = scaled.floor_().clamp_(0, site.bins - 1).to(torch.int64)
    if constant.any():
        codes[:, constant] = 0
    return codes


def _equal_count_codes(site: StreamedSite, chunk: torch.Tensor, cols: slice) -> torch.Tensor:
    """A chunk's equal-count codes for the columns ``cols``: the number of the column's
    edges strictly below each value (= ``bin_equal_count``'s floor(B·r/N)), (n, c) int64."""
    assert site.edges is not None
    values = chunk[:, cols].to(torch.float64).T.contiguous()
    return torch.searchsorted(site.edges[cols].contiguous(), values).T


def chunk_codes(site: StreamedSite, chunk: torch.Tensor, cols: slice = slice(None)
                ) -> torch.Tensor:
    """The codes of one chunk's columns ``cols`` with the site's bins: (n, c) int64 on
    the chunk's device, equal to the rows of
    :func:`~mi_probe.functional.histogram.bin_channels` on the whole matrix."""
    cols = slice(*cols.indices(site.n_channels))
    if site.binning == "equal_count":
        return _equal_count_codes(site, chunk, cols)
    if site.on_kernels:
        return torch.from_numpy(_kernel_codes(site, chunk, cols, narrow=False))
    return _torch_codes(site, chunk, cols)


def _narrow_codes(site: StreamedSite, chunk: torch.Tensor):
    """One CPU chunk's codes as the counting kernels read them: (n, C) C-contiguous numpy
    array of the narrowest unsigned type (``BinnedSite.codes``' rows)."""
    if site.binning == "uniform":
        return _kernel_codes(site, chunk, slice(0, site.n_channels), narrow=True)
    import numpy as np

    from mi_probe.functional import counting

    return np.ascontiguousarray(_equal_count_codes(site, chunk, slice(0, site.n_channels))
                                .numpy(), dtype=counting.code_dtype(site.bins))


# ---------------------------------------------------------------------------- counting


def _count_pass(site: StreamedSite, labels: Sequence[torch.Tensor], num_classes: int
                ) -> list[Any]:
    """One pass: joint (bin, label) counts of every channel for each label vector
    ((C, B, K) int32 numpy views of class-major storage on the kernels, as
    ``counting.label_counts`` returns them; else float64 tensors), one chunk's codes
    shared by all; fills ``site.marginal`` (counting one class when no labels are
    given) and ``site.clipped`` the first time."""
    ys = [_check_labels(y, site.n_rows, num_classes, site.device) for y in labels]
    count = _kernel_counts if site.on_kernels else _torch_counts
    totals, marginal, clipped = count(site, ys, num_classes if ys else 1)
    if site.marginal is None:
        site.marginal = marginal
    if site.clipped is None:
        site.clipped = clipped
    return totals if ys else []


def _kernel_counts(site: StreamedSite, ys: list[torch.Tensor], num_classes: int
                   ) -> tuple[list[Any], torch.Tensor, int]:
    """:func:`_count_pass` on the compiled kernels: (counts per label vector, one class
    when there is none; (C, B) int64 bin counts; clipped values)."""
    import numpy as np

    from mi_probe.functional import counting

    n, c, bins = site.n_rows, site.n_channels, site.bins
    labels = [y.contiguous().numpy() for y in ys]
    totals = [np.zeros((num_classes, c, bins), np.int32).transpose(1, 2, 0)
              for _ in range(max(1, len(ys)))]
    clipped = 0
    for start, chunk in _pass(site.chunks, n, c):
        codes = _narrow_codes(site, chunk)
        rows = [y[start:start + chunk.shape[0]] for y in labels] or \
            [np.zeros(chunk.shape[0], np.int64)]
        for y, total in zip(rows, totals):
            total += counting.label_counts_from_codes(codes, bins, y, num_classes,
                                                      threads=_threads())
        clipped += _clipped_in(site, chunk)
    return totals, torch.from_numpy(totals[0].sum(axis=2, dtype=np.int64)), clipped


def _torch_counts(site: StreamedSite, ys: list[torch.Tensor], num_classes: int
                  ) -> tuple[list[Any], torch.Tensor, int]:
    """:func:`_count_pass` in torch ops (any device), as ``joint_counts_from_codes``
    counts: float64 (C, B, K) tables."""
    n, c, bins = site.n_rows, site.n_channels, site.bins
    totals = [torch.zeros(c, bins, num_classes, dtype=torch.float64, device=site.device)
              for _ in range(max(1, len(ys)))]
    clipped = 0
    for start, chunk in _pass(site.chunks, n, c):
        codes = chunk_codes(site, chunk)
        rows = [y[start:start + chunk.shape[0]] for y in ys] or \
            [torch.zeros(chunk.shape[0], dtype=torch.int64, device=site.device)]
        for y, total in zip(rows, totals):
            total += joint_counts_from_codes(codes, y, bins, num_classes, site.max_cells)
        clipped += _clipped_in(site, chunk)
    return totals, totals[0].sum(dim=2).to(torch.int64), clipped


def _clipped_in(site: StreamedSite, chunk: torch.Tensor) -> int:
    """Values of one chunk outside their column's [lo, hi] (0 without a quantile range,
    or once counted)."""
    if site.quantile is None or site.clipped is not None:
        return 0
    x = chunk.to(torch.float64)
    return int(((x < site.lo) | (x > site.hi)).sum().item())


def _statistics(site: StreamedSite, counts: Any, num_classes: int) -> ChannelStatistics:
    """:class:`~mi_probe.functional.histogram.ChannelStatistics` from one (C, B, K)
    count table, channels in the chunks ``histogram.channel_statistics`` uses (the same
    kernel or torch functions on the same counts: the same bits)."""
    parts: list[tuple[torch.Tensor, ...]] = []
    blocks = _chunks(site.n_channels, site.bins * num_classes, site.max_cells)
    if site.on_kernels:
        from mi_probe.functional import counting

        for sl in blocks:
            parts.append(tuple(map(torch.from_numpy, counting.label_statistics(counts[sl]))))
    else:
        parts = [_statistics_of_counts(counts[sl]) for sl in blocks]
    return _joined(parts, site.device)


def streamed_statistics(site: StreamedSite, labels: Sequence[torch.Tensor],
                        num_classes: int) -> list[ChannelStatistics]:
    """:func:`~mi_probe.functional.histogram.channel_statistics` of the site for each
    label vector ((N,) integers in [0, num_classes); a list, or the rows of an (L, N)
    tensor), all counted in one pass: equal bit for bit to the statistics of the whole
    matrix. Memory: one chunk's codes plus C·B·K counts per label vector."""
    labels = list(labels)
    if not labels:
        return []
    return [_statistics(site, counts, num_classes)
            for counts in _count_pass(site, labels, num_classes)]


def streamed_entropies(site: StreamedSite) -> ChannelStatistics:
    """The labels=None statistics (H(T_c), occupied bins) of the site from its bin
    counts (one pass when no counting pass ran yet), kept on the site."""
    if site.entropies is not None:
        return site.entropies
    if site.marginal is None:
        _count_pass(site, [], 1)
    assert site.marginal is not None
    if not site.on_kernels:
        stats = _statistics(site, site.marginal.to(torch.float64)[..., None], 1)
    elif not site.n_channels:
        stats = _joined([], site.device)
    else:
        import numpy as np

        from mi_probe.functional import counting

        # laid out as counting.label_counts returns counts (one compiled signature), as
        # histogram._binned_entropies does
        counts = np.ascontiguousarray(site.marginal.numpy()[None], dtype=np.int32)
        stats = ChannelStatistics(*map(torch.from_numpy,
                                       counting.label_statistics(counts.transpose(1, 2, 0))))
    site.entropies = stats
    return stats


def edge_fraction(site: StreamedSite) -> torch.Tensor:
    """Share of each channel's samples in its first or last bin: (C,) float64 (as
    ``histogram.binned_edge_fraction``, from the bin counts)."""
    if site.marginal is None:
        streamed_entropies(site)
    assert site.marginal is not None
    edges = site.marginal[:, 0] + site.marginal[:, -1]
    return edges.to(torch.float64) / site.n_rows


def clipped_fraction(site: StreamedSite) -> float:
    """Share of all values outside their column's [lo, hi] (0.0 without a quantile
    range; NaN with no channels, as the mean of nothing)."""
    if site.quantile is None:
        return 0.0
    if site.clipped is None:
        _count_pass(site, [], 1)
    assert site.clipped is not None
    cells = site.n_rows * site.n_channels
    return site.clipped / cells if cells else math.nan


# ----------------------------------------------------------------------------- pair MI


def _paired_rows(site_a: StreamedSite, site_b: StreamedSite
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Row-aligned pieces of two sites' chunks, whatever their chunk sizes: views of
    the current chunk of each, never a concatenation."""
    rows_a = (chunk for _, chunk in _pass(site_a.chunks, site_a.n_rows, site_a.n_channels))
    if site_b is site_a:
        for chunk in rows_a:
            yield chunk, chunk
        return
    rows_b = (chunk for _, chunk in _pass(site_b.chunks, site_b.n_rows, site_b.n_channels))
    b, at = None, 0
    for a in rows_a:
        done = 0
        while done < a.shape[0]:
            if b is None or at == b.shape[0]:
                b, at = next(rows_b), 0  # both hold n_rows rows: checked by _pass
                if b.device != a.device:
                    raise ValueError(f"both layers must be on one device, got {a.device} "
                                     f"and {b.device}")
            take = min(a.shape[0] - done, b.shape[0] - at)
            yield a[done:done + take], b[at:at + take]
            done, at = done + take, at + take
    for _ in rows_b:  # runs _pass's row check on the rest of b
        pass


def streamed_pair_mi(site_a: StreamedSite, site_b: StreamedSite,
                     max_cells: int = DEFAULT_PAIR_CELLS) -> torch.Tensor:
    """I(A_c;B_d) in nats for every channel pair of two streamed sites with the same
    rows: (C1, C2) float64, what :func:`~mi_probe.functional.pairwise.pair_mi` (or
    ``pair_mi_from_codes``) gives on the whole matrices, to float64 rounding.

    The joint counts of one block of channel pairs (``pairwise.block_sizes``: at most
    ``max_cells`` cells, int32 on the CPU kernels, else int64) are accumulated over one
    pass; one pass per block. The
    same site twice: only the blocks that hold pairs c <= d are counted, then mirrored."""
    if site_a.n_rows != site_b.n_rows:
        raise ValueError(f"both layers need the same samples, got {site_a.n_rows} and "
                         f"{site_b.n_rows}")
    if site_a.bins != site_b.bins:
        raise ValueError(f"both layers need the same bins, got {site_a.bins} and "
                         f"{site_b.bins}")
    same = site_b is site_a
    n, bins = site_a.n_rows, site_a.bins
    c1, c2 = site_a.n_channels, site_b.n_channels
    out = torch.zeros(c1, c2, dtype=torch.float64, device=site_a.device)
    b1, b2 = block_sizes(c1, c2, bins, max_cells)
    for s1 in range(0, c1, b1):
        for s2 in range(0, c2, b2):
            if same and s2 + b2 <= s1:  # below the diagonal: mirrored at the end
                continue
            a_cols, b_cols = slice(s1, min(c1, s1 + b1)), slice(s2, min(c2, s2 + b2))
            out[a_cols, b_cols] = _block_pair_mi(site_a, site_b, a_cols, b_cols, n,
                                                 max_cells)
    if same and c1:
        lower = torch.tril_indices(c1, c1, -1, device=out.device)
        out[lower[0], lower[1]] = out[lower[1], lower[0]]
    return out


def _block_pair_mi(site_a: StreamedSite, site_b: StreamedSite, a_cols: slice,
                   b_cols: slice, n: int, max_cells: int) -> torch.Tensor:
    """I(A_c;B_d) for c in ``a_cols`` and d in ``b_cols``: one pass accumulating their
    (k1, k2, B, B) joint counts, then plug-in entropies of them (as the one-hot pair
    kernel computes them)."""
    count = _kernel_pair_counts if site_a.on_kernels else _torch_pair_counts
    joint = count(site_a, site_b, a_cols, b_cols, max_cells)
    h_a = _entropy_of_counts(joint[:, 0].sum(dim=2).to(torch.float64))   # (k1,)
    h_b = _entropy_of_counts(joint[0].sum(dim=1).to(torch.float64))      # (k2,)
    p = joint.to(torch.float64) / n
    h_ab = -torch.special.xlogy(p, p).sum(dim=(2, 3))
    return (h_a[:, None] + h_b[None, :] - h_ab).clamp_(min=0.0)


def _torch_pair_counts(site_a: StreamedSite, site_b: StreamedSite, a_cols: slice,
                       b_cols: slice, max_cells: int) -> torch.Tensor:
    """(k1, k2, B, B) int64 joint counts of the channel pairs, in torch ops (any device):
    one bincount of cell indices per block of rows (at most ``max_cells`` indices)."""
    bins = site_a.bins
    k1, k2 = a_cols.stop - a_cols.start, b_cols.stop - b_cols.start
    device = site_a.device
    counts = torch.zeros(k1 * k2 * bins * bins, dtype=torch.int64, device=device)
    # the cell of sample i and pair (u, v): ((u·k2 + v)·B + a_u(i))·B + b_v(i)
    pair = (torch.arange(k1, device=device)[:, None] * k2
            + torch.arange(k2, device=device)[None, :]) * (bins * bins)
    step = max(1, max_cells // (k1 * k2))
    for a, b in _paired_rows(site_a, site_b):
        codes_a = chunk_codes(site_a, a, a_cols)
        codes_b = chunk_codes(site_b, b, b_cols)
        for r in range(0, a.shape[0], step):
            index = pair + codes_a[r:r + step, :, None] * bins + codes_b[r:r + step, None, :]
            _accumulate(counts, index.flatten())
    return counts.view(k1, k2, bins, bins)


def _kernel_pair_counts(site_a: StreamedSite, site_b: StreamedSite, a_cols: slice,
                        b_cols: slice, max_cells: int) -> torch.Tensor:
    """:func:`_torch_pair_counts` on the CPU by a compiled loop (the layout of the
    in-memory pair kernel: one row of narrow codes per channel, each pair's B x B table
    filled in one sweep over the chunk's samples), int32 counts."""
    import numpy as np

    bins = site_a.bins
    k1, k2 = a_cols.stop - a_cols.start, b_cols.stop - b_cols.start
    counts = np.zeros((k1, k2, bins, bins), np.int32)  # a block's counts are at most N
    kernel = _pair_count_kernel()
    for a, b in _paired_rows(site_a, site_b):
        codes_a = _channel_rows(site_a, a, a_cols)
        codes_b = codes_a if (site_b is site_a and b_cols == a_cols) else \
            _channel_rows(site_b, b, b_cols)
        with _COMPILING:  # numba compiles (or loads) on the first call: not thread-safe
            kernel(codes_a[:0], codes_b[:0], counts[:0, :0])
        kernel(codes_a, codes_b, counts)
    return torch.from_numpy(counts)


def _channel_rows(site: StreamedSite, chunk: torch.Tensor, cols: slice):
    """A CPU chunk's codes for the columns ``cols`` as (c, n) C-contiguous numpy codes
    of the narrowest unsigned type (``histogram.narrow_codes``' layout)."""
    import numpy as np

    from mi_probe.functional import counting

    if site.binning == "uniform":
        half, lo, divisor, _ = (t.numpy() for t in _uniform_arithmetic(site, cols))
        spec = counting.Binning(_as_kernel_input(chunk[:, cols]), lo, divisor, half,
                                site.bins)
        return counting.bin_codes(spec, transposed=True, threads=_threads())
    return np.ascontiguousarray(_equal_count_codes(site, chunk, cols).T.numpy(),
                                dtype=counting.code_dtype(site.bins))


#: held while a compiled kernel of this module is first called (numba's compile step)
_COMPILING = threading.Lock()


@cache
def _pair_count_kernel():
    """The compiled pair-count loop (numba, imported and compiled on first use, cached
    on disk as the kernels of :mod:`.counting` are)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def pair_counts(codes_a, codes_b, counts):
        """counts[u, v, i, j] += 1 for each sample whose code in row u of ``codes_a``
        is i and in row v of ``codes_b`` is j ((k1, n) and (k2, n) codes)."""
        k1, n = codes_a.shape
        k2 = codes_b.shape[0]
        for u in range(k1):
            row_a = codes_a[u]
            for v in range(k2):
                row_b = codes_b[v]
                table = counts[u, v]
                for s in range(n):
                    table[row_a[s], row_b[s]] += 1

    return pair_counts
