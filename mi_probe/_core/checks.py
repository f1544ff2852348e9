"""Declarative claims over result tables: the ``checks:`` vocabulary of a spec.

Nothing in a spec is ever evaluated as code. The kinds (the statistics that judge
them live in :mod:`mi_probe._core.claims`, one rule for runs and studies):

* ``compare``: the per-seed difference of ``value`` between rows whose ``by`` column
  equals ``greater`` and ``lesser`` exceeds ``margin``.
* ``trend``: the per-seed Spearman correlation of ``value`` with ``over`` (default
  ``depth``) exceeds ``min_spearman`` (``direction: decreasing``: lies below its
  negative).
* ``bound``: the per-seed mean (``aggregate: mean``), minimum or maximum of ``value``
  lies above ``min`` and/or below ``max``; ``aggregate: all`` asks every row to.
* ``equivalence``: the per-seed difference between ``groups`` of ``by`` (with ``over``,
  the per-seed Spearman correlation with it; with neither, the per-seed mean of
  ``value``) lies within ``center`` ± ``bound`` (TOST).

Every claim has ``alpha`` (one-sided level), ``sesoi`` (smallest effect of interest:
a directional claim "does not hold" once its interval excludes every effect that far
beyond the margin), and may carry ``paper`` (the sentence of the paper it encodes)
and ``role`` (``paper``, ``ours`` for the project's reading, ``sanity`` for a check
that the pipeline works rather than a finding). ``filter`` keeps rows whose column
equals a value (or is in a list of values) first. A claim that cannot be evaluated
(missing table or column, no rows) is inconclusive and says why.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

Scalar = Union[str, int, float, bool]


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="what the claim says, shown with its verdict")
    table: str = Field(description="result table, e.g. layer_mi, knockout")
    value: str = Field(description="numeric column the claim is about")
    filter: dict[str, Union[Scalar, list[Scalar]]] = Field(
        {}, description="keep rows whose column equals the value (or is in the list)")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="level of each one-sided test "
                         "(the interval shown is 1 - 2 alpha)")
    sesoi: float = Field(0.0, ge=0, description="smallest effect of interest beyond the "
                         "margin: the claim does not hold once the interval excludes it")
    paper: str | None = Field(None, description="the paper's sentence this claim encodes")
    role: Literal["paper", "ours", "sanity"] | None = Field(
        None, description="paper: the paper's statement; ours: the project's reading; "
        "sanity: a check that the measurement works, not a finding")
    scale: Literal["auto", "linear", "correlation"] = Field(
        "auto", description="correlation: per-seed values in [-1, 1], averaged in Fisher "
        "z so the interval stays in range (auto: correlation for trends)")


class TrendCheck(_Check):
    kind: Literal["trend"] = "trend"
    over: str = "depth"
    direction: Literal["increasing", "decreasing"] = "increasing"
    min_spearman: float = Field(0.0, gt=-1, lt=1, description="the claim: the per-seed "
                                "Spearman correlation exceeds this (its negative for a "
                                "decreasing trend)")


class CompareCheck(_Check):
    kind: Literal["compare"] = "compare"
    by: str = Field(description="column naming the groups, e.g. selection or state")
    greater: Scalar = Field(description="group expected to have the larger mean")
    lesser: Scalar = Field(description="group expected to have the smaller mean")
    margin: float = Field(0.0, description="the claim: greater - lesser exceeds this")


class BoundCheck(_Check):
    kind: Literal["bound"] = "bound"
    min: float | None = None
    max: float | None = None
    aggregate: Literal["all", "mean", "min", "max"] = Field(
        "all", description="all: every row lies within the bounds (a fact, no test); mean, "
        "min, max: that per-seed statistic is tested over seeds")

    @model_validator(mode="after")
    def _some_bound(self) -> "BoundCheck":
        if self.min is None and self.max is None:
            raise ValueError("a bound check needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"a bound check needs min <= max; found min {self.min} > "
                             f"max {self.max}")
        return self


class EquivalenceCheck(_Check):
    kind: Literal["equivalence"] = "equivalence"
    by: str | None = Field(None, description="column naming the two groups; without it, "
                           "the per-seed mean of value is tested")
    groups: tuple[Scalar, Scalar] | None = Field(
        None, description="the two groups of by whose per-seed difference (first minus "
        "second) is tested")
    over: str | None = Field(None, description="with it, the effect is the per-seed "
                             "Spearman correlation of value with this column (\"flat in "
                             "depth\": over depth, center 0)")
    center: float = Field(0.0, description="the value the effect is claimed to equal")
    bound: float = Field(gt=0, description="equivalence margin: |effect - center| < bound")

    @model_validator(mode="after")
    def _groups_with_by(self) -> "EquivalenceCheck":
        if (self.by is None) != (self.groups is None):
            raise ValueError("an equivalence check names both by and groups, or neither")
        if self.by is not None and self.over is not None:
            raise ValueError("an equivalence check compares groups (by) or a trend (over), "
                             "not both")
        return self


Check = Annotated[Union[TrendCheck, CompareCheck, BoundCheck, EquivalenceCheck],
                  Field(discriminator="kind")]


class ClaimError(Exception):
    """A claim could not be evaluated (it then fails with this message)."""


def claim_rows(check: _Check, tables: dict[str, pl.DataFrame], extra: list[str],
               drop_missing: bool = True) -> pl.DataFrame:
    """The rows of the claim's table that its filter keeps, with NaN read as missing
    (and missing values dropped unless ``drop_missing`` is False)."""
    frame = tables.get(check.table)
    if frame is None:
        raise ClaimError(f"no table {check.table!r} in this run (tables: {sorted(tables)})")
    needed = [check.value, *extra, *check.filter]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ClaimError(f"table {check.table!r} has no column(s) {missing}; "
                         f"columns: {frame.columns}")
    for column, wanted in check.filter.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        frame = frame.filter(pl.col(column).is_in(values))
    if frame.schema[check.value].is_float():  # NaN is missing, like null
        frame = frame.with_columns(pl.col(check.value).fill_nan(None))
    if drop_missing:
        frame = frame.drop_nulls(check.value)
    if frame.height == 0:
        raise ClaimError(f"no rows of {check.table!r} match filter {check.filter}")
    return frame
