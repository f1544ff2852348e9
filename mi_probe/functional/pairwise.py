"""Histogram MI between every pair of channels of two (binned) layers, batched.

Joint counts of all pairs in a block come from one matrix product of one-hot codes:
counts[(c, i), (d, j)] = #samples with a_c in bin i and b_d in bin j, so the work runs
as dense matmuls on the activations' device. Blocks of channel pairs bound memory.
"""

from __future__ import annotations

import math

import torch

from mi_probe.functional.histogram import entropy_from_codes

#: Default bound on the cells of one block: c1 * c2 * B * B (float32 joint counts).
DEFAULT_PAIR_CELLS = 1 << 24


def _one_hot(codes: torch.Tensor, bins: int) -> torch.Tensor:
    """(N, C) codes -> (N, C * B) float32 one-hot (exact counts up to 2**24 samples)."""
    n, c = codes.shape
    out = torch.zeros(n, c * bins, dtype=torch.float32, device=codes.device)
    offsets = torch.arange(c, device=codes.device) * bins
    out.scatter_(1, codes + offsets, 1.0)
    return out


def block_sizes(c1: int, c2: int, bins: int, max_cells: int) -> tuple[int, int]:
    """Channel block sizes (b1, b2) with b1 * b2 * B² <= max_cells."""
    per_pair = bins * bins
    b2 = max(1, min(c2, int(math.sqrt(max_cells / per_pair))))
    b1 = max(1, min(c1, max_cells // (per_pair * b2)))
    return b1, b2


def pair_mi_from_codes(codes_a: torch.Tensor, codes_b: torch.Tensor, bins: int,
                       max_cells: int = DEFAULT_PAIR_CELLS) -> torch.Tensor:
    """I(A_c; B_d) in nats for every channel pair: (C1, C2) float64.

    Equals ``sklearn.metrics.mutual_info_score(codes_a[:, c], codes_b[:, d])``.
    """
    if codes_a.shape[0] != codes_b.shape[0]:
        raise ValueError(f"both layers need the same samples, got {codes_a.shape[0]} and "
                         f"{codes_b.shape[0]}")
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
