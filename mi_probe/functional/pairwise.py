"""Histogram MI between every pair of channels of two (binned) layers.

Two exact kernels, chosen per device and size by :func:`pair_method`:

* ``counting`` (CPU, compiled): one increment per sample per pair into a B×B table,
  entropies from a p·log p lookup table, and only the pairs i <= j of a layer with
  itself. Cost ≈ N + B² operations per pair.
* ``onehot`` (torch, any device): joint counts of a block of pairs from one float32
  matrix product of one-hot codes, counts[(c, i), (d, j)] = #samples with a_c in bin i
  and b_d in bin j. Exact: 0/1 inputs and float32 accumulation count exactly below 2²⁴
  samples (TF32 too: 0 and 1 are exact in it). Cost ≈ 2·N·B² multiply-adds per pair, at
  matmul speed; blocks of channel pairs bound memory.

Both equal ``sklearn.metrics.mutual_info_score`` on the same codes to float64 rounding.
"""

from __future__ import annotations

import math

import torch

from mi_probe.functional.histogram import _bin_uniform_torch, entropy_from_codes, narrow_codes

#: Default bound on the cells of one block: c1 * c2 * B * B (float32 joint counts).
DEFAULT_PAIR_CELLS = 1 << 24

#: Cost model (seconds per operation, one thread), measured by
#: benchmarks/bench_histogram.py on a 2-CPU x86 machine and on an H200 (see
#: benchmarks/README.md, "Kernel choice"). Only their ratios matter.
CPU_SECONDS_PER_INCREMENT = 1.5e-9    # counting: one table increment (N per pair)
CPU_SECONDS_PER_TABLE_CELL = 1.0e-9   # counting: one p·log p lookup (B² per pair)
CPU_SECONDS_PER_MATMUL_FLOP = 1 / 40e9  # onehot on CPU: float32 GEMM, ~40 GFLOP/s
CPU_SECONDS_PER_ENTROPY_CELL = 3.0e-8   # onehot: float64 convert + xlogy per B² cell

METHODS = ("auto", "counting", "onehot")


def pair_method(device: torch.device | str, n: int, bins: int) -> str:
    """The pair kernel for ``device``: ``onehot`` on accelerators (tensor-core matmuls,
    no atomics); on the CPU whichever the cost model prices lower per pair — counting
    (N increments + B² lookups) unless B is tiny (B <= 4 at typical N), where the 2·N·B²
    matmul flops are cheaper than N scattered increments."""
    if torch.device(device).type != "cpu":
        return "onehot"
    from mi_probe.functional import counting as kernels

    if not kernels.available():
        return "onehot"
    counting = n * CPU_SECONDS_PER_INCREMENT + bins * bins * CPU_SECONDS_PER_TABLE_CELL
    onehot = (2 * n * bins * bins * CPU_SECONDS_PER_MATMUL_FLOP
              + bins * bins * CPU_SECONDS_PER_ENTROPY_CELL)
    return "counting" if counting <= onehot else "onehot"


def _one_hot(codes: torch.Tensor, bins: int) -> torch.Tensor:
    """(N, C) codes -> (N, C * B) float32 one-hot (exact counts up to 2**24 samples)."""
    n, c = codes.shape
    out = torch.zeros(n, c * bins, dtype=torch.float32, device=codes.device)
    offsets = torch.arange(c, device=codes.device) * bins
    out.scatter_(1, codes.to(torch.int64) + offsets, 1.0)
    return out


def block_sizes(c1: int, c2: int, bins: int, max_cells: int) -> tuple[int, int]:
    """Channel block sizes (b1, b2) with b1 * b2 * B² <= max_cells."""
    per_pair = bins * bins
    b2 = max(1, min(c2, int(math.sqrt(max_cells / per_pair))))
    b1 = max(1, min(c1, max_cells // (per_pair * b2)))
    return b1, b2


def _check(codes_a: torch.Tensor, codes_b: torch.Tensor, method: str) -> None:
    if codes_a.ndim != 2 or codes_b.ndim != 2:
        raise ValueError(f"expected (N, C) matrices, got shapes {tuple(codes_a.shape)} and "
                         f"{tuple(codes_b.shape)}")
    if codes_a.shape[0] != codes_b.shape[0]:
        raise ValueError(f"both layers need the same samples, got {codes_a.shape[0]} and "
                         f"{codes_b.shape[0]}")
    if codes_a.device != codes_b.device:
        raise ValueError(f"both layers must be on one device, got {codes_a.device} and "
                         f"{codes_b.device}")
    if method not in METHODS:
        raise ValueError(f"unknown pair method {method!r}; valid: {list(METHODS)}")


def _resolve(method: str, device: torch.device, n: int, bins: int) -> str:
    if method == "auto":
        return pair_method(device, n, bins)
    if method == "counting" and device.type != "cpu":
        raise ValueError(f"the counting kernel runs on the CPU; got tensors on {device}")
    return method


def pair_mi(acts_a: torch.Tensor, acts_b: torch.Tensor, bins: int,
            quantile: float | None = None, max_cells: int = DEFAULT_PAIR_CELLS,
            method: str = "auto") -> torch.Tensor:
    """I(A_c; B_d) in nats for every channel pair of two (N, C) activation matrices, each
    channel binned as :func:`~mi_probe.functional.histogram.bin_uniform`: (C1, C2)
    float64 on their device. Passing the same tensor twice counts only i <= j."""
    _check(acts_a, acts_b, method)
    n = acts_a.shape[0]
    method = _resolve(method, acts_a.device, n, bins)
    if method == "counting":
        from mi_probe.functional import counting
        from mi_probe.functional.histogram import _threads

        if not counting.available():
            raise ValueError("the counting kernel needs numba, which does not import here")
        same = acts_a is acts_b
        codes_a = narrow_codes(acts_a, bins, quantile)
        codes_b = codes_a if same else narrow_codes(acts_b, bins, quantile)
        return torch.from_numpy(counting.pair_mi(codes_a, codes_b, bins, symmetric=same,
                                                 threads=_threads()))
    codes_a = _bin_uniform_torch(acts_a, bins, quantile)
    codes_b = codes_a if acts_a is acts_b else _bin_uniform_torch(acts_b, bins, quantile)
    return _pair_mi_onehot(codes_a, codes_b, bins, max_cells)


def pair_mi_from_codes(codes_a: torch.Tensor, codes_b: torch.Tensor, bins: int,
                       max_cells: int = DEFAULT_PAIR_CELLS, method: str = "auto"
                       ) -> torch.Tensor:
    """I(A_c; B_d) in nats for every pair of columns of two (N, C) integer code matrices
    in [0, bins): (C1, C2) float64 on their device.

    Equals ``sklearn.metrics.mutual_info_score(codes_a[:, c], codes_b[:, d])``.
    """
    _check(codes_a, codes_b, method)
    for codes in (codes_a, codes_b):
        if codes.numel() and (codes.min() < 0 or codes.max() >= bins):
            raise ValueError(f"codes must lie in [0, {bins}); found "
                             f"[{codes.min().item()}, {codes.max().item()}]")
    method = _resolve(method, codes_a.device, codes_a.shape[0], bins)
    if method == "counting":
        from mi_probe.functional import counting
        from mi_probe.functional.histogram import _threads

        if not counting.available():
            raise ValueError("the counting kernel needs numba, which does not import here")
        dtype = counting.code_dtype(bins)
        same = codes_a is codes_b
        a = codes_a.T.numpy().astype(dtype, order="C")
        b = a if same else codes_b.T.numpy().astype(dtype, order="C")
        return torch.from_numpy(counting.pair_mi(a, b, bins, symmetric=same,
                                                 threads=_threads()))
    return _pair_mi_onehot(codes_a, codes_b, bins, max_cells)


def _pair_mi_onehot(codes_a: torch.Tensor, codes_b: torch.Tensor, bins: int,
                    max_cells: int) -> torch.Tensor:
    n, c1 = codes_a.shape
    c2 = codes_b.shape[1]
    if n >= 2**24:
        raise ValueError(f"pairwise counts are exact up to 2**24 samples, got {n}")
    h_a = entropy_from_codes(codes_a, bins)
    h_b = entropy_from_codes(codes_b, bins)
    out = torch.empty(c1, c2, dtype=torch.float64, device=codes_a.device)
    b1, b2 = block_sizes(c1, c2, bins, max_cells)
    for s1 in range(0, c1, b1):
        oa = _one_hot(codes_a[:, s1:s1 + b1], bins)
        k1 = oa.shape[1] // bins
        for s2 in range(0, c2, b2):
            ob = _one_hot(codes_b[:, s2:s2 + b2], bins)
            k2 = ob.shape[1] // bins
            joint = (oa.T @ ob).view(k1, bins, k2, bins).permute(0, 2, 1, 3)
            p = joint.to(torch.float64) / n
            h_ab = -torch.special.xlogy(p, p).sum(dim=(2, 3))
            mi = h_a[s1:s1 + k1, None] + h_b[None, s2:s2 + k2] - h_ab
            out[s1:s1 + k1, s2:s2 + k2] = mi.clamp_(min=0.0)
    return out
