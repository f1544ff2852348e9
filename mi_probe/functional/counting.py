"""Counting kernels for histogram MI on the CPU, compiled with numba.

Histogram MI needs counts, and counting is one increment per sample: binning and the
joint count of a channel with the labels (or with another channel) run fused in one
pass over the data, with narrow integer codes and integer counts. Entropies of the
channel-pair tables come from a per-call lookup table of p·log p over the possible
counts 0..N, so a pair costs N increments plus B² table reads, and I(i;j) = I(j;i) is
used when both sides are the same layer.

Binning reproduces :func:`mi_probe.functional.histogram.bin_uniform` bit for bit: codes
are floor((x·h − lo) / width · B) in float64, clamped (h = ½ only for columns whose range
overflows a double). The kernels multiply by B / width and recompute, by that quotient,
the rare values within 1e-12·B of a bin edge, where the two could differ.

Kernels release the GIL; the wrappers split the work over ``threads`` Python threads
(each output cell is computed by one thread in a fixed order, so results do not depend
on the thread count). numba is imported on first use only, and compiled kernels are
cached on disk (numba's ``cache=True``), so only the first call on a machine compiles.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from types import SimpleNamespace

import numpy as np


@cache
def available() -> bool:
    """Whether numba imports here. Without it the CPU falls back to the torch kernels
    (same values, several times slower) with one warning."""
    try:
        import numba  # noqa: F401
    except Exception as exc:  # broken or missing install: not fatal, only slower
        import warnings

        warnings.warn(f"numba is unavailable ({exc!r}); histogram MI on the CPU uses the "
                      f"slower torch kernels. `pip install numba` restores the fast path.",
                      RuntimeWarning, stacklevel=3)
        return False
    return True


@cache
def _kernels():
    """Compile (or load from numba's cache) the kernels: imported lazily, because
    importing numba costs a few hundred ms that most commands never need."""
    import numba

    jit = numba.njit(cache=True, nogil=True)

    @jit
    def column_range(x, out_lo, out_hi):
        """Per-column min / max in float64 and the number of NaN / ±inf values (the caller
        refuses data that has any). Branch-free, so the loop vectorises."""
        n, c = x.shape
        bad = 0
        for j in range(c):
            out_lo[j] = np.inf
            out_hi[j] = -np.inf
        for i in range(n):
            row = x[i]
            for j in range(c):
                v = np.float64(row[j])
                bad += v - v != 0.0  # NaN or ±inf
                out_lo[j] = min(out_lo[j], v)
                out_hi[j] = max(out_hi[j], v)
        return bad

    # Binning, shared by the two kernels below and inlined into them. Columns are indexed
    # by unsigned integers over whole arrays: signed indices (negative-index wraparound
    # checked per access) and array slices cost numba its vectorisation. Multiplying by
    # the float64 B / width instead of dividing lets the loop vectorise. The product
    # differs from the reference quotient by a few ulp, which can only change a code
    # within 1e-12·B of an inner bin edge, so exactly those values (and columns whose
    # B / width is not finite) are recomputed by the reference formula
    # floor((x·h − lo) / width · B): every code equals bin_uniform's bit for bit.

    @numba.njit(nogil=True, inline="always")
    def bin_row(row, c0, m, half, lo, inv, width, slow, bins, codes):
        """Codes of columns [c0, c0 + m) of one row of samples into ``codes``."""
        top, last, eps = np.float64(bins), np.int32(bins - 1), 1e-12 * bins
        suspects = 0
        for k in range(m):
            j = np.uint64(c0 + k)
            t = min(max((np.float64(row[j]) * half[j] - lo[j]) * inv[j], 0.0), top)
            suspects += (np.int32(t + eps) != np.int32(t - eps)) | slow[j]
            codes[k] = min(np.int32(t), last)
        if suspects:
            for k in range(m):
                j = np.uint64(c0 + k)
                t = min(max((np.float64(row[j]) * half[j] - lo[j]) * inv[j], 0.0), top)
                if (np.int32(t + eps) != np.int32(t - eps)) | slow[j]:
                    e = math.floor((np.float64(row[j]) * half[j] - lo[j]) / width[j] * bins)
                    codes[k] = np.int32(min(max(e, 0.0), last))

    @jit
    def bin_columns(x, half, lo, inv, width, slow, bins, c0, c1, out, transposed):
        """Codes of columns [c0, c1) into ``out`` ((N, C) or, transposed, (C, N))."""
        n = x.shape[0]
        m = c1 - c0
        codes = np.empty(m, np.int32)
        for i in range(n):
            bin_row(x[i], c0, m, half, lo, inv, width, slow, bins, codes)
            if transposed:
                for k in range(m):
                    out[c0 + k, i] = codes[k]
            else:  # the branch outside the loop and unsigned indices: it vectorises
                row = out[i]
                for k in range(m):
                    row[np.uint64(c0 + k)] = codes[k]

    @jit
    def label_counts(x, half, lo, inv, width, slow, bins, labels, c0, c1, counts, offset):
        """counts[y, j − offset, b] += 1 for each sample of class y whose column j (in
        [c0, c1)) falls in bin b: binning fused into the count, one pass over the rows.
        Class-major counts keep one row's increments within C·B cells (cache-resident)."""
        n = x.shape[0]
        m = c1 - c0
        flat = counts.reshape(-1)
        per_class = counts.shape[1] * bins
        codes = np.empty(m, np.int32)
        for i in range(n):
            bin_row(x[i], c0, m, half, lo, inv, width, slow, bins, codes)
            base = np.uint64(labels[i] * per_class + (c0 - offset) * bins)
            for k in range(m):
                flat[base + np.uint64(k * bins + codes[k])] += 1

    @jit
    def code_label_counts(codes, labels, c0, c1, counts, offset):
        """:func:`label_counts` from (N, C) codes already binned: counts[y, j − offset,
        b] += 1 for each sample of class y whose column j (in [c0, c1)) has code b. Reads
        narrow codes instead of binning floats, so counting one site for several label
        vectors bins it once."""
        n = codes.shape[0]
        m = c1 - c0
        bins = counts.shape[2]
        flat = counts.reshape(-1)
        per_class = counts.shape[1] * bins
        for i in range(n):
            row = codes[i]
            base = np.uint64(labels[i] * per_class + (c0 - offset) * bins)
            for k in range(m):
                flat[base + np.uint64(k * bins + row[np.uint64(c0 + k)])] += 1

    @jit
    def label_statistics(counts, plogp, mi, h_t, mm, occupied):
        """Per column of (C, B, K) counts: I(T;Y), H(T), the Miller–Madow term of I(T;Y)
        and the occupied bins of T, with entropies from the −p·log p table."""
        c, bins, k = counts.shape
        n = plogp.shape[0] - 1
        h_y, m_y = 0.0, 0
        if c:
            for y in range(k):
                total = 0
                for b in range(bins):
                    total += counts[0, b, y]
                h_y += plogp[total]
                m_y += total > 0
        for j in range(c):
            ht, hty, mt, mty = 0.0, 0.0, 0, 0
            for b in range(bins):
                row = 0
                for y in range(k):
                    v = counts[j, b, y]
                    row += v
                    hty += plogp[v]
                    mty += v > 0
                ht += plogp[row]
                mt += row > 0
            value = ht + h_y - hty
            if value < 0.0:  # float64 rounding only; a constant column (H(T) = 0) gives 0
                value = 0.0
            mi[j] = min(value, min(ht, h_y))
            h_t[j] = ht
            occupied[j] = mt
            mm[j] = ((mt - 1) + (m_y - 1) - (mty - 1)) / (2.0 * max(1, n))

    @jit
    def column_entropies(codes, bins, plogp, out):
        """H of each row of (C, N) codes from the −p·log p table."""
        c, n = codes.shape
        m = np.zeros(bins, np.int64)
        for j in range(c):
            m[:] = 0
            for i in range(n):
                m[codes[j, i]] += 1
            h = 0.0
            for b in range(bins):
                h += plogp[m[b]]
            out[j] = h

    @jit
    def pair_rows(codes_a, codes_b, bins, plogp, h_a, h_b, rows, symmetric, out):
        """I(a_r; b_s) for each r in ``rows`` and every s (s >= r when ``symmetric``:
        the mirror cell is written too)."""
        n = codes_a.shape[1]
        c2 = codes_b.shape[0]
        joint = np.zeros((bins, bins), np.int32)
        for r in rows:
            ra = codes_a[r]
            for s in range(r if symmetric else 0, c2):
                joint[:, :] = 0
                rb = codes_b[s]
                for i in range(n):
                    joint[ra[i], rb[i]] += 1
                h_ab = 0.0
                for u in range(bins):
                    for v in range(bins):
                        h_ab += plogp[joint[u, v]]
                mi = h_a[r] + h_b[s] - h_ab
                if mi < 0.0:  # float64 rounding only (~1e-16)
                    mi = 0.0
                out[r, s] = mi
                if symmetric:
                    out[s, r] = mi

    return SimpleNamespace(column_range=column_range, bin_columns=bin_columns,
                           label_counts=label_counts, code_label_counts=code_label_counts,
                           label_statistics=label_statistics,
                           column_entropies=column_entropies, pair_rows=pair_rows)


def column_range(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-column (min, max) of an (N, C) float array as float64, and the number of
    NaN / ±inf values (0 for finite data; min/max then ignore them)."""
    c = x.shape[1]
    lo, hi = np.empty(c), np.empty(c)
    with _FIRST_CALL:  # short; see _run
        bad = _kernels().column_range(x, lo, hi)
    return lo, hi, int(bad)


def _column_chunks(c: int, threads: int, min_columns: int = 8) -> list[tuple[int, int]]:
    parts = max(1, min(threads, c // min_columns))
    edges = np.linspace(0, c, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


#: Below this many sample-column (or sample-pair) steps, about 20 ms of one core, a call
#: runs on one thread: starting threads and waiting for the slowest costs more than it
#: saves (measured in benchmarks/bench_histogram.py, where 2M steps ran 2x slower on two
#: threads of a loaded 2-CPU machine than on one).
PARALLEL_MIN_STEPS = 1 << 24


def _threads_for(steps: int, threads: int) -> int:
    return threads if steps >= PARALLEL_MIN_STEPS else 1


#: numba compiles (or loads from its cache) on a kernel's first call for given argument
#: types, and that step is not thread-safe: the first task of every call runs alone.
_FIRST_CALL = threading.Lock()


def _run(tasks, threads: int, prime) -> None:
    """Run zero-argument callables (GIL-free kernels) on up to ``threads`` threads, after
    ``prime``: the same kernel with the same argument types on no work, run under a lock
    so that compiling or loading happens once, on one thread."""
    with _FIRST_CALL:
        prime()
    if threads <= 1 or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(task) for task in tasks]:
            future.result()


def code_dtype(bins: int) -> np.dtype:
    """The narrowest unsigned integer type that holds codes in [0, bins)."""
    return np.dtype(np.uint8) if bins <= 256 else np.dtype(np.uint16) if bins <= 65536 \
        else np.dtype(np.int64)


class Binning:
    """Per-column binning of an (N, C) float array, in the float64 terms of
    ``bin_uniform``: x·half − lo over width, times B. ``half`` is ½ only for columns whose
    range overflows a double; constant columns have width 1 (every code 0)."""

    def __init__(self, x: np.ndarray, lo: np.ndarray, width: np.ndarray, half: np.ndarray,
                 bins: int):
        self.x, self.lo, self.width, self.half, self.bins = x, lo, width, half, bins
        with np.errstate(divide="ignore", over="ignore"):
            inv = bins / width
        #: columns whose B / width is not a usable float: every code by the reference
        self.slow = ~np.isfinite(inv) | (inv == 0)
        self.inv = np.where(self.slow, 0.0, inv)

    def args(self) -> tuple:
        return self.x, self.half, self.lo, self.inv, self.width, self.slow, self.bins


def bin_codes(binning: Binning, *, transposed: bool, threads: int = 1,
              narrow: bool | None = None) -> np.ndarray:
    """Codes: (C, N) when ``transposed``, else (N, C) (the layout of ``bin_uniform``);
    of the narrowest unsigned type when ``narrow`` (default: when ``transposed``), else
    int64 (the type of ``bin_uniform``)."""
    n, c = binning.x.shape
    threads = _threads_for(n * c, threads)
    dtype = code_dtype(binning.bins) if (transposed if narrow is None else narrow) \
        else np.dtype(np.int64)
    out = np.empty((c, n) if transposed else (n, c), dtype)
    kernel = _kernels().bin_columns
    _run([lambda a=a, b=b: kernel(*binning.args(), a, b, out, transposed)
          for a, b in _column_chunks(c, threads)], threads,
         prime=lambda: kernel(*binning.args(), 0, 0, out, transposed))
    return out


def label_counts(binning: Binning, labels: np.ndarray, num_classes: int,
                 columns: tuple[int, int] | None = None, threads: int = 1) -> np.ndarray:
    """Joint counts of each column's bin with the label, for the columns [start, stop)
    (default all): (stop − start, bins, num_classes) int32 (a view of class-major
    storage), binning fused into the count (``labels`` int64 in [0, num_classes))."""
    start, stop = columns if columns is not None else (0, binning.x.shape[1])
    threads = _threads_for(binning.x.shape[0] * (stop - start), threads)
    counts = np.zeros((num_classes, stop - start, binning.bins), np.int32)
    kernel = _kernels().label_counts
    # each thread counts its own columns (disjoint cells of ``counts``)
    _run([lambda a=a, b=b: kernel(*binning.args(), labels, start + a, start + b, counts, start)
          for a, b in _column_chunks(stop - start, threads)], threads,
         prime=lambda: kernel(*binning.args(), labels, start, start, counts, start))
    return counts.transpose(1, 2, 0)


def label_counts_from_codes(codes: np.ndarray, bins: int, labels: np.ndarray,
                            num_classes: int, columns: tuple[int, int] | None = None,
                            threads: int = 1) -> np.ndarray:
    """:func:`label_counts` from (N, C) codes in [0, bins) (``bin_codes`` with
    ``transposed=False``): the same (stop − start, bins, num_classes) int32 counts."""
    start, stop = columns if columns is not None else (0, codes.shape[1])
    threads = _threads_for(codes.shape[0] * (stop - start), threads)
    counts = np.zeros((num_classes, stop - start, bins), np.int32)
    kernel = _kernels().code_label_counts
    _run([lambda a=a, b=b: kernel(codes, labels, start + a, start + b, counts, start)
          for a, b in _column_chunks(stop - start, threads)], threads,
         prime=lambda: kernel(codes, labels, start, start, counts, start))
    return counts.transpose(1, 2, 0)


def label_statistics(counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """(I(T;Y), H(T), Miller–Madow term of I(T;Y), occupied bins of T) per column of
    (C, B, K) int32 counts: float64, float64, float64, int64 arrays of shape (C,)."""
    c = counts.shape[0]
    n = int(counts[0].sum()) if c else 0
    mi, h_t, mm = np.empty(c), np.empty(c), np.empty(c)
    occupied = np.empty(c, np.int64)
    with _FIRST_CALL:  # short; see _run
        _kernels().label_statistics(counts, plogp_table(max(n, 1)), mi, h_t, mm, occupied)
    return mi, h_t, mm, occupied


def plogp_table(n: int) -> np.ndarray:
    """−(k/n)·log(k/n) for k = 0..n (0 at k = 0 and at k = n), float64."""
    p = np.arange(n + 1, dtype=np.float64) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        table = 0.0 - p * np.log(p)
    table[0] = 0.0
    return table


def pair_mi(codes_a: np.ndarray, codes_b: np.ndarray, bins: int, *, symmetric: bool,
            threads: int = 1) -> np.ndarray:
    """I(A_r; B_s) in nats for every pair of rows of (C1, N) and (C2, N) codes: (C1, C2)
    float64. ``symmetric``: both are the same layer, so only r <= s is counted."""
    c1, n = codes_a.shape
    c2 = codes_b.shape[0]
    kernels = _kernels()
    entropies, rows_kernel = kernels.column_entropies, kernels.pair_rows
    plogp = plogp_table(n)
    h_a, h_b = np.empty(c1), np.empty(c2)
    with _FIRST_CALL:  # short; see _run
        entropies(codes_a, bins, plogp, h_a)
        if symmetric:
            h_b = h_a
        else:
            entropies(codes_b, bins, plogp, h_b)
    out = np.empty((c1, c2))
    threads = _threads_for(n * c1 * c2 // (2 if symmetric else 1), threads)
    # many small row groups, dealt round-robin: with the symmetric triangle, early rows
    # hold more pairs than late ones, so contiguous blocks would leave threads idle
    groups = max(1, min(c1, 8 * threads)) if threads > 1 else 1
    tasks = [lambda g=g: rows_kernel(codes_a, codes_b, bins, plogp, h_a, h_b,
                                     np.arange(g, c1, groups), symmetric, out)
             for g in range(groups)]
    _run(tasks, threads, prime=lambda: rows_kernel(codes_a, codes_b, bins, plogp, h_a, h_b,
                                                   np.arange(0), symmetric, out))
    return out


def warm_up() -> None:
    """Compile (or load) every kernel on a tiny input; for benchmarks and startup checks."""
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    lo, hi, _ = column_range(x)
    binning = Binning(x, lo, hi - lo, np.ones(3), 2)
    codes = bin_codes(binning, transposed=True)
    bin_codes(binning, transposed=False)
    rows = bin_codes(binning, transposed=False, narrow=True)
    label_statistics(label_counts(binning, np.zeros(4, np.int64), 1))
    label_counts_from_codes(rows, 2, np.zeros(4, np.int64), 1)
    pair_mi(codes, codes, 2, symmetric=True)
