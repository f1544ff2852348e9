"""Channel selections for interventions (ARCHITECTURE.md §2, "MI-mass set at level q").

Channels are sorted by descending mass (ties: lower index first); the top set at level
q is the smallest prefix whose cumulative mass reaches q. Random and bottom controls
have the same size.
"""

from __future__ import annotations

import torch

from mi_probe.functional.concentration import mass

#: Cumulative mass is compared with q minus this slack (float64 rounding).
MASS_SLACK = 1e-12


def descending_order(values: torch.Tensor) -> torch.Tensor:
    """Channel indices by descending value, ties broken by lower index (stable)."""
    return torch.sort(values.to(torch.float64), descending=True, stable=True).indices


def mass_set(values: torch.Tensor, q: float) -> torch.Tensor:
    """The smallest set of top channels whose mass reaches ``q`` (0 < q <= 1).

    Returns an empty tensor when the values are all zero (there is no mass to select).
    """
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    v = values.to(torch.float64).clamp(min=0)
    if v.sum() <= 0:
        return torch.empty(0, dtype=torch.int64, device=values.device)
    order = descending_order(v)
    cumulative = mass(v)[order].cumsum(0)
    size = int((cumulative < q - MASS_SLACK).sum().item()) + 1
    return order[:min(size, v.numel())]


def bottom_set(values: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` channels with the smallest values (ties: lower index first)."""
    order = torch.sort(values.to(torch.float64), descending=False, stable=True).indices
    return order[:size]


def random_set(n_channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` distinct channels drawn uniformly with ``generator`` (CPU)."""
    return torch.randperm(n_channels, generator=generator)[:size].sort().values


def select(values: torch.Tensor, q: float, selection: str, generator: torch.Generator | None = None,
           size: int | None = None) -> torch.Tensor:
    """``top`` (mass set at q), or a ``random`` / ``bottom`` control of the same size."""
    top = mass_set(values, q)
    n = top.numel() if size is None else size
    if selection == "top":
        return top
    if selection == "bottom":
        return bottom_set(values, n).to(values.device)
    if selection == "random":
        if generator is None:
            raise ValueError("a random selection needs a generator")
        return random_set(values.numel(), n, generator).to(values.device)
    raise ValueError(f"unknown selection {selection!r}; valid: top, random, bottom")
