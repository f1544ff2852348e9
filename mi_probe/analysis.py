"""Helpers shared by experiment plugins (built-in and third-party): seed units, site
rows, per-site channel MI. Pure functions over the run context; no engine imports."""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from mi_probe.interfaces import Captured, RunContext, Site


def seed_units(ctx: RunContext) -> list[str]:
    """One unit per seed: ``seed=<n>``."""
    return [f"seed={seed}" for seed in ctx.spec.seeds]


def unit_seed(unit: str) -> int:
    return int(unit.split("=", 1)[1])


def site_row(seed: int, state: str, site: Site) -> dict[str, Any]:
    """The columns every per-site table row starts with."""
    return {"seed": seed, "state": state, "site": site.name, "depth": site.depth,
            "site_kind": site.kind}


def channel_label_mi(ctx: RunContext, cap: Captured) -> dict[str, torch.Tensor]:
    """Per-site I(T_c;Y) vectors (on the capture device) for a captured model."""
    return {site.name: ctx.estimator.label_mi(cap.acts[site.name], cap.labels, ctx.num_classes)
            for site in cap.sites}


def class_accuracies(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Accuracy per class, float64 (NaN for a class with no samples)."""
    correct = (logits.argmax(1) == labels).to(torch.float64)
    totals = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    hits = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    hits.scatter_add_(0, labels, correct)
    return hits / totals


def mean_over_draws(frame: pl.DataFrame, keys: list[str], values: list[str]) -> pl.DataFrame:
    """Average random draws within each seed before aggregating over seeds."""
    return frame.group_by(keys, maintain_order=True).agg([pl.col(v).mean() for v in values])


def check_mass_levels(value: list[float]) -> list[float]:
    """Validator for MI-mass levels q: each must lie in (0, 1]."""
    bad = [q for q in value if not 0 < q <= 1]
    if bad:
        raise ValueError(f"MI-mass levels must lie in (0, 1], got {bad}")
    return value
