"""Depth columns of the built-in experiments' site tables.

``Site.depth`` is the site's index among all the model's sites and ``Site.rel_depth``
that index scaled to [0, 1] (see ``interfaces.Site``), so one site has one depth in
every run of a model. Every table with a ``depth`` column carries ``rel_depth`` beside
it; these helpers put it there. Where an experiment means "how many selected sites
apart" (layer-pair distances), it ranks the selected sites with ``selected_rank``
instead of subtracting depths, which are no longer consecutive.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import polars as pl

from mi_probe.plugin import Site, site_row


def site_columns(seed: int, state: str, site: Site) -> dict[str, Any]:
    """``site_row`` (seed, state, site, depth, site_kind) with ``rel_depth`` right after
    ``depth``."""
    row = site_row(seed, state, site)
    if "rel_depth" in row:
        return row
    out: dict[str, Any] = {}
    for key, value in row.items():
        out[key] = value
        if key == "depth":
            out["rel_depth"] = site.rel_depth
    return out


def with_rel_depth(keys: Sequence[str], frame: pl.DataFrame, *, after: str = "depth",
                   column: str = "rel_depth") -> list[str]:
    """``keys`` with ``column`` inserted after ``after`` when ``frame`` has it: grouping
    keys that keep ``rel_depth`` in summaries and still work on tables without it
    (hand-made frames, tables of runs written before it existed)."""
    keys = list(keys)
    if column in keys or column not in frame.columns or after not in keys:
        return keys
    at = keys.index(after) + 1
    return keys[:at] + [column] + keys[at:]


def selected_rank(sites: Iterable[Site]) -> dict[str, int]:
    """Each site's 0-based position among ``sites`` in depth order: "how many selected
    sites deeper", what ``depth`` meant before it became the model's own index."""
    return {s.name: i for i, s in enumerate(sorted(sites, key=lambda s: s.depth))}
