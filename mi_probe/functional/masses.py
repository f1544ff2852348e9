"""Bias-aware channel masses (docs/concepts.md, "Channel masses").

The plug-in I(T_c;Y) of a channel with no label information is not 0 but about
(B−1)(K−1)/(2N): at the paper's N = 3925 that is ~0.022 nats for *every* channel, so raw
masses spread a floor evenly over the layer, lower the Gini and pad MI-mass sets with
noise channels. These kernels remove that floor with a shuffled-label null measured on
the same channels, and test whether any label information is left at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: The per-channel masses a channel-level experiment can use.
MASS_KINDS = ("raw", "null_subtracted", "miller_madow")

#: Pooled-null quantile a channel must exceed to count as carrying label information.
SIGNAL_QUANTILE = 0.99
#: A site "has signal" when its count of such channels is this unlikely under the null.
SIGNAL_LEVEL = 0.01


def null_subtracted(raw: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """max(0, I_c − mean_d I_c^(d)) per channel: (C,) float64.

    ``raw`` is (C,); ``null`` is (D, C), the same estimator on D label permutations.
    """
    if raw.ndim != 1 or null.ndim != 2 or null.shape[1] != raw.shape[0]:
        raise ValueError(f"null_subtracted expects raw (C,) and null (D, C); got "
                         f"{tuple(raw.shape)} and {tuple(null.shape)}")
    return (raw.to(torch.float64) - null.to(torch.float64).mean(dim=0)).clamp_(min=0.0)


def clipped(values: torch.Tensor) -> torch.Tensor:
    """max(0, v) in float64: masses of a bias-corrected estimate that may dip below 0."""
    return values.to(torch.float64).clamp(min=0.0)


@dataclass(frozen=True)
class SignalTest:
    """Whether a site's channels carry label information beyond the shuffled-label null.

    ``signal_channels`` channels exceed the pooled null's ``quantile``; under the null
    about ``expected`` would; ``p_value`` is the binomial tail P(count ≥ observed).
    """

    signal_channels: int
    expected: float
    threshold: float
    p_value: float
    has_signal: bool


def signal_test(raw: torch.Tensor, null: torch.Tensor, quantile: float = SIGNAL_QUANTILE,
                level: float = SIGNAL_LEVEL) -> SignalTest:
    """Count channels above the pooled null's ``quantile`` and test that count.

    All C·D null values of the site are pooled (channels of one site share bins and
    sample size, so their nulls share a distribution). Under independence each channel
    exceeds the threshold with probability 1 − quantile; a site has signal when the
    binomial tail of the observed count is below ``level``. Channels of a layer are
    not independent, so the binomial is an approximation; its use is only to say "no
    structure" instead of reporting a concentration of noise.
    """
    from scipy.stats import binom

    if not 0 < quantile < 1 or not 0 < level < 1:
        raise ValueError(f"quantile and level must lie in (0, 1); got {quantile}, {level}")
    pooled = null.reshape(-1).to(torch.float64).cpu()
    threshold = float(torch.quantile(pooled, quantile)) if pooled.numel() else math.inf
    count = int((raw.to(torch.float64).cpu() > threshold).sum())
    n = int(raw.numel())
    tail = 1.0 - quantile
    p_value = float(binom.sf(count - 1, n, tail)) if count > 0 else 1.0
    return SignalTest(signal_channels=count, expected=n * tail, threshold=threshold,
                      p_value=p_value, has_signal=p_value < level)


def set_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a ∩ b| / |a| for two channel index sets (0.0 when ``a`` is empty)."""
    if a.numel() == 0:
        return 0.0
    common = torch.isin(a.cpu(), b.cpu()).sum().item()
    return float(common) / float(a.numel())
