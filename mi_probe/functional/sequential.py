"""Paired, sequential accuracy drops: the interval of ``accuracy(baseline) -
accuracy(intervened)`` on the images seen so far, and when a sweep point may stop.

Each image gives a paired outcome: correct without the intervention (``a``), correct
with it (``b``). The drop is ``mean(a) - mean(b) = (n10 - n01) / n`` with ``n10`` the
images the intervention broke and ``n01`` those it fixed. Its interval is the
Agresti–Min adjusted Wald interval for a paired difference of proportions (half an
image added to each discordant cell and to each concordant one, so that a run of
unchanged images does not give a zero-width interval), at a level corrected for
repeated looks by Bonferroni over the looks a point can have: a sweep point that stops
at its first narrow-enough look keeps the stated coverage however many looks it took.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch


@dataclass(frozen=True)
class PairedDrop:
    """A paired accuracy drop on ``n`` images with its interval."""

    drop: float
    low: float
    high: float
    n: int
    broke: int   # correct before, wrong after
    fixed: int   # wrong before, correct after

    @property
    def width(self) -> float:
        return self.high - self.low


def paired_drop(before: torch.Tensor, after: torch.Tensor, level: float, looks: int = 1
                ) -> PairedDrop:
    """Drop of accuracy from ``before`` to ``after`` (boolean per image, same images)
    with a ``level`` interval that stays valid over ``looks`` looks (Bonferroni)."""
    if before.shape != after.shape:
        raise ValueError(f"paired outcomes differ in shape: {tuple(before.shape)} vs "
                         f"{tuple(after.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    n = int(before.numel())
    if n == 0:
        return PairedDrop(float("nan"), float("nan"), float("nan"), 0, 0, 0)
    before, after = before.bool(), after.bool()
    broke = int((before & ~after).sum())
    fixed = int((~before & after).sum())
    drop = (broke - fixed) / n
    # Agresti-Min: half an image in each of the four cells (n + 2 in all)
    total = n + 2.0
    p10, p01 = (broke + 0.5) / total, (fixed + 0.5) / total
    centre = p10 - p01
    variance = (p10 + p01 - centre ** 2) / total
    alpha = (1.0 - level) / max(1, looks)
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    half = z * math.sqrt(max(variance, 0.0))
    return PairedDrop(drop=drop, low=max(-1.0, centre - half), high=min(1.0, centre + half),
                      n=n, broke=broke, fixed=fixed)


@dataclass(frozen=True)
class SequentialRule:
    """Stop a sweep point once its drop's interval is narrower than ``width``, looking
    after every ``block`` images once ``min_images`` are seen, out of ``n_total``."""

    width: float
    level: float
    min_images: int
    block: int
    n_total: int

    @property
    def looks(self) -> int:
        """The most looks a point can have (each a candidate stopping time)."""
        boundaries = [min(k * self.block, self.n_total)
                      for k in range(1, math.ceil(self.n_total / self.block) + 1)]
        return max(1, sum(b >= min(self.min_images, self.n_total) for b in boundaries))

    def interval(self, before: torch.Tensor, after: torch.Tensor) -> PairedDrop:
        return paired_drop(before, after, self.level, self.looks)

    def done(self, before: torch.Tensor, after: torch.Tensor) -> bool:
        """True when the point may stop on the images seen (``before``/``after``)."""
        n = int(before.numel())
        if n >= self.n_total:
            return True
        if n < self.min_images:
            return False
        return self.interval(before, after).width < self.width
