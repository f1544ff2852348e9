"""Concentration of label information over the channels of a site.

For per-channel values v (e.g. I(T_c;Y)), the mass of channel c is p_c = v_c / Σ v.
A site whose values are all zero has no label mass to concentrate: its mass is taken
as equal shares (Gini 0, top-k share ⌈kC⌉/C, normalised entropy 1), which keeps every
metric finite; tables also carry the total so such sites can be told apart.
"""

from __future__ import annotations

import math

import torch


def mass(values: torch.Tensor) -> torch.Tensor:
    """p_c = v_c / Σ v (float64); equal shares when Σ v == 0. Negative values are
    clipped to 0 (estimators clip MI at 0 already)."""
    v = values.to(torch.float64).clamp(min=0)
    total = v.sum()
    if total <= 0:
        return torch.full_like(v, 1.0 / max(1, v.numel()))
    return v / total


def _no_mass(values: torch.Tensor) -> bool:
    """True when no channel holds positive mass (equal shares by convention)."""
    return not bool((values.to(torch.float64).clamp(min=0).sum() > 0).item())


def gini(values: torch.Tensor) -> float:
    """Gini coefficient of the mass distribution: 0 = equal, → 1 = one channel."""
    p = mass(values).sort().values
    n = p.numel()
    if n < 2 or _no_mass(values):
        return 0.0
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=p.device)
    # clamp: equal shares give 0 up to rounding (e.g. -2e-18), never a negative Gini
    return min(1.0, max(0.0, float(((2 * ranks - n - 1) * p).sum() / (n * p.sum()))))


def top_k_count(n_channels: int, k: float) -> int:
    """⌈k·C⌉ channels, at least 1."""
    return max(1, min(n_channels, math.ceil(k * n_channels - 1e-9)))


def top_k_share(values: torch.Tensor, k: float) -> float:
    """Mass held by the ⌈k·C⌉ channels with the largest values."""
    p = mass(values)
    return float(p.topk(top_k_count(p.numel(), k)).values.sum())


def normalized_entropy(values: torch.Tensor) -> float:
    """H(p) / log C in [0, 1]: 1 = mass spread evenly; 1.0 for a single channel."""
    p = mass(values)
    n = p.numel()
    if n < 2 or _no_mass(values):
        return 1.0
    return min(1.0, max(0.0, float(-(torch.special.xlogy(p, p)).sum() / math.log(n))))


def signal_values(values: torch.Tensor, raw: torch.Tensor, threshold: float) -> torch.Tensor:
    """The (null-corrected) ``values`` of the channels whose raw MI exceeds the
    shuffled-label null's ``threshold`` (:class:`~mi_probe.functional.masses.SignalTest`).

    Concentration over these channels alone is not an artefact of clipping: a Gini over
    max(0, I − null) of every channel counts each channel at the noise floor as a zero,
    so a layer with few informative channels (a random network) reads as concentrated.
    Scaling every channel's MI and the null by one constant leaves the subset and the
    masses unchanged, so the measure too."""
    keep = raw.to(torch.float64) > threshold
    return values[keep.to(values.device)]


def signal_measures(values: torch.Tensor, top_k: list[float]) -> dict[str, float] | None:
    """Gini, normalised entropy and top-k% shares (``top_k_share@k``) of the signal
    channels' values (:func:`signal_values`); None with fewer than two such channels,
    where no spread can be measured."""
    if values.numel() < 2:
        return None
    out = {"gini": gini(values), "norm_entropy": normalized_entropy(values)}
    out.update({f"top_k_share@{k}": top_k_share(values, k) for k in top_k})
    return out
