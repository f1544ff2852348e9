"""Declarative claims over result tables (the ``checks:`` section of a spec).

A small vocabulary, evaluated on the run's tables; nothing in a spec is ever evaluated
as code:

* ``trend``: the mean of ``value`` over seeds (and any other rows) per ``over`` value
  (default ``depth``) has a Spearman correlation with ``over`` of at least
  ``min_spearman`` (``direction: decreasing`` flips the sign).
* ``compare``: the mean of ``value`` for rows whose ``by`` column equals ``greater``
  exceeds the mean for ``lesser`` by more than ``margin``; with ``ci_separated`` the
  two groups' 95% t-intervals over seeds must not overlap either.
* ``bound``: every value (``aggregate: all``) or their mean (``aggregate: mean``) lies
  within [``min``, ``max``].

``filter`` keeps rows whose column equals a value (or is in a list of values) first.
A claim that cannot be evaluated (missing table or column, no rows) fails and says why.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal, Union, cast

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


class TrendCheck(_Check):
    kind: Literal["trend"] = "trend"
    over: str = "depth"
    direction: Literal["increasing", "decreasing"] = "increasing"
    min_spearman: float = Field(0.5, ge=-1, le=1)


class CompareCheck(_Check):
    kind: Literal["compare"] = "compare"
    by: str = Field(description="column naming the groups, e.g. selection or state")
    greater: Scalar = Field(description="group expected to have the larger mean")
    lesser: Scalar = Field(description="group expected to have the smaller mean")
    margin: float = Field(0.0, description="required difference of the means")
    ci_separated: bool = Field(False, description="also require the 95% t-intervals over "
                               "seeds not to overlap")


class BoundCheck(_Check):
    kind: Literal["bound"] = "bound"
    min: float | None = None
    max: float | None = None
    aggregate: Literal["all", "mean"] = "all"

    @model_validator(mode="after")
    def _some_bound(self) -> "BoundCheck":
        if self.min is None and self.max is None:
            raise ValueError("a bound check needs min, max or both")
        return self


Check = Annotated[Union[TrendCheck, CompareCheck, BoundCheck], Field(discriminator="kind")]


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


def _trend(check: TrendCheck, tables) -> tuple[bool, str, float]:
    from scipy.stats import spearmanr

    frame = claim_rows(check, tables, [check.over])
    means = frame.group_by(check.over).agg(pl.col(check.value).mean()).sort(check.over)
    if means.height < 3:
        raise ClaimError(f"a trend needs at least 3 values of {check.over!r}, found {means.height}")
    rho = float(spearmanr(means[check.over].to_numpy(), means[check.value].to_numpy()).statistic)
    signed = rho if check.direction == "increasing" else -rho
    ok = signed >= check.min_spearman
    return ok, (f"Spearman({check.over}, mean {check.value}) = {rho:.3f} over "
                f"{means.height} points; need {'≥' if check.direction == 'increasing' else '≤'} "
                f"{check.min_spearman if check.direction == 'increasing' else -check.min_spearman:g}"), rho


def _group_stats(frame: pl.DataFrame, value: str, interval: bool) -> tuple[float, float, float, int]:
    """Mean of ``value`` and its 95% t-interval over seeds (sites, classes and draws of a
    seed are averaged first: they are not independent observations). ``frame`` holds no
    missing values (``claim_rows`` drops them), so n counts the seeds that have a value."""
    from mi_probe._core.tables import mean_t_interval

    if "seed" in frame.columns:
        per_seed = frame.group_by("seed").agg(pl.col(value).mean())[value]
    elif interval:
        raise ClaimError(f"ci_separated needs a per-seed table with a 'seed' column; "
                         f"found columns {frame.columns}")
    else:
        per_seed = frame[value]
    mean, low, high, n = mean_t_interval(per_seed.to_list())
    # mean_t_interval gives both bounds or neither
    return (mean, mean, mean, n) if low is None or high is None else (mean, low, high, n)


def _compare(check: CompareCheck, tables) -> tuple[bool, str, float]:
    frame = claim_rows(check, tables, [check.by])
    groups = {}
    for label in (check.greater, check.lesser):
        part = frame.filter(pl.col(check.by).cast(pl.Utf8) == str(label))
        if part.height == 0:
            raise ClaimError(f"no rows with {check.by} = {label!r} (values: "
                             f"{sorted(map(str, frame[check.by].unique()))})")
        groups[label] = _group_stats(part, check.value, check.ci_separated)
    (g_mean, g_low, _, n), (l_mean, _, l_high, _) = groups[check.greater], groups[check.lesser]
    diff = g_mean - l_mean
    ok = diff > check.margin
    detail = (f"mean {check.value}: {check.by}={check.greater} {g_mean:.4g} vs "
              f"{check.by}={check.lesser} {l_mean:.4g} (difference {diff:.4g}, need > "
              f"{check.margin:g})")
    if check.ci_separated:
        separated = g_low > l_high
        ok = ok and separated
        detail += (f"; 95% CIs over {n} seed(s) {'do not overlap' if separated else 'overlap'}"
                   + (" (one seed: no interval)" if n < 2 else ""))
    return ok, detail, diff


def _bound(check: BoundCheck, tables) -> tuple[bool, str, float]:
    frame = claim_rows(check, tables, [])
    values = frame[check.value]
    # ``value`` is a numeric column: its mean, min and max are numbers
    observed = float(cast(float, values.mean())) if check.aggregate == "mean" else None
    low, high = (observed, observed) if observed is not None else (
        float(cast(float, values.min())), float(cast(float, values.max())))
    ok = (check.min is None or low >= check.min) and (check.max is None or high <= check.max)
    what = f"mean {observed:.4g}" if observed is not None else f"range [{low:.4g}, {high:.4g}]"
    return ok, f"{check.value} {what}; bounds [{check.min}, {check.max}]", \
        observed if observed is not None else high


EVALUATORS: dict[str, Callable[[Any, dict[str, pl.DataFrame]], tuple[bool, str, float]]] = {
    "trend": _trend, "compare": _compare, "bound": _bound}


def evaluate_checks(checks: list[Any], tables: dict[str, pl.DataFrame]) -> list[dict[str, Any]]:
    """Verdicts ``{name, kind, table, passed, detail, observed}`` in spec order."""
    results = []
    for check in checks:
        try:
            passed, detail, observed = EVALUATORS[check.kind](check, tables)
        except ClaimError as exc:
            passed, detail, observed = False, f"cannot be evaluated: {exc}", None
        results.append({"name": check.name, "kind": check.kind, "table": check.table,
                        "passed": bool(passed), "detail": detail, "observed": observed})
    return results
