"""Channel selections for interventions (ARCHITECTURE.md §2, "MI-mass set at level q").

Channels are sorted by descending mass (ties: lower index first); the top set at level
q is the smallest prefix whose cumulative mass reaches q. Random and bottom controls
have the same size.
"""

from __future__ import annotations

import torch

from mi_probe.functional.concentration import mass

#: Cumulative mass is compared with q minus this slack (float64 rounding). Values that
#: arrive in a lower precision (float32 MI vectors, hand-written masses such as
#: [0.5, 0.3, 0.2]) carry their own rounding, so the slack grows to a few units of that
#: dtype's epsilon (see :func:`mass_slack`).
MASS_SLACK = 1e-12


def mass_slack(dtype: torch.dtype) -> float:
    """Tolerance for "cumulative mass reaches q" given the dtype the values came in."""
    if not dtype.is_floating_point:
        return MASS_SLACK
    return max(MASS_SLACK, 4 * torch.finfo(dtype).eps)


def descending_order(values: torch.Tensor) -> torch.Tensor:
    """Channel indices by descending value, ties broken by lower index (stable)."""
    return torch.sort(values.to(torch.float64), descending=True, stable=True).indices


def mass_set(values: torch.Tensor, q: float) -> torch.Tensor:
    """The smallest set of top channels whose mass reaches ``q`` (0 < q <= 1).

    Returns an empty tensor when the values are all zero (there is no mass to select).
    """
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    if values.ndim != 1:
        raise ValueError(f"mass_set expects a 1-D vector of channel values, got shape "
                         f"{tuple(values.shape)}")
    if values.is_floating_point() and not torch.isfinite(values).all():
        raise ValueError("mass_set: channel values contain NaN or Inf")
    v = values.to(torch.float64).clamp(min=0)
    if v.sum() <= 0:
        return torch.empty(0, dtype=torch.int64, device=values.device)
    order = descending_order(v)
    cumulative = mass(v)[order].cumsum(0)
    size = int((cumulative < q - mass_slack(values.dtype)).sum().item()) + 1
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
