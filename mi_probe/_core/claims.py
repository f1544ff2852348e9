"""Claim statistics: the one place that turns a ``checks:`` entry and a run's tables
into a verdict. ``mi-probe run`` (index.html, ``run.json``) and ``mi-probe study``
(docs/reproduction.md) both call :func:`judge`, so one claim gets one verdict.

The rule, for every kind:

1. **Per-seed effects.** Sites, classes and draws of a seed are averaged first (they
   are not independent observations); the claim's effect is then one number per seed:
   a paired difference (``compare``, ``equivalence`` with ``by``), a per-seed Spearman
   correlation (``trend``), or a per-seed mean, minimum or maximum (``bound``,
   ``equivalence`` without ``by``).
2. **An interval over seeds** at level 1 − 2α (90% for α = 0.05): its ends are the
   one-sided α-level bounds the decisions use. It is a t-interval, except for bounded
   quantities (Spearman correlations, ``scale: correlation``), whose per-seed values
   are Fisher-z transformed, averaged with a t-interval and transformed back, so the
   interval stays inside (−1, 1).
3. **The decision.** A directional claim "effect > margin" *holds* when the one-sided
   test passes (the lower bound lies above the margin), *does not hold* when the
   interval excludes every effect at least ``sesoi`` above the margin (the upper bound
   lies below margin + sesoi), and is *inconclusive* otherwise. An equivalence claim
   "|effect − center| < bound" holds by TOST (the interval lies inside
   (center − bound, center + bound)), does not hold when the interval lies wholly
   outside it. A two-sided ``bound`` holds when the interval lies within [min, max].
   One seed gives no interval: inconclusive.
4. **Family-wise correction** (:func:`holm`): over a family of claims (a study), the
   p-values of "holds" and of "does not hold" are Holm-adjusted separately; the
   adjusted verdict uses the adjusted p-values at the same α. Both are reported.

``bound`` with ``aggregate: all`` is not a test over seeds but a fact about the rows
(every value lies within the bounds); it holds or does not hold with no interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import polars as pl

from mi_probe._core.checks import ClaimError, claim_rows

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
#: Fisher z needs |r| < 1: a per-seed Spearman of exactly ±1 is clipped to this
_R_CLIP = 0.9999


@dataclass
class ClaimResult:
    """A claim's verdict and the numbers behind it (``low``/``high``: the 1 − 2α
    interval over seeds of ``mean``)."""
    name: str
    kind: str
    table: str
    verdict: str
    reason: str
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    n: int = 0
    quantity: str = ""
    #: one-sided p-values of "holds" and of "does not hold" (None: no test)
    p_holds: float | None = None
    p_fails: float | None = None
    #: the verdict after the family-wise correction (``holm``); the raw one until then
    adjusted: str = ""
    level: float = 0.90
    role: str | None = None
    paper: str | None = None
    #: seeds with rows for the claim that give no per-seed value (left out)
    excluded: tuple[int, ...] = ()
    values: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The record ``run.json`` keeps (``passed``: the claim holds)."""
        return {"name": self.name, "kind": self.kind, "table": self.table,
                "verdict": self.verdict, "passed": self.verdict == HOLDS,
                "detail": describe(self), "observed": self.mean, "low": self.low,
                "high": self.high, "n": self.n, "level": self.level,
                "p_holds": self.p_holds, "p_fails": self.p_fails, "role": self.role,
                "paper": self.paper}


# ------------------------------------------------------------------ intervals and tests

def _t_cdf(x: float, df: int) -> float:
    from scipy.stats import t

    return float(t.cdf(x, df))


def _t_quantile(p: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def fisher_z(r: float) -> float:
    """atanh of a correlation, clipped so that ±1 stays finite."""
    return math.atanh(max(-_R_CLIP, min(_R_CLIP, r)))


@dataclass(frozen=True)
class Interval:
    """Mean and 1 − 2α interval of per-seed values on their scale, with what the
    one-sided tests need (the mean and standard error on the test scale)."""
    mean: float
    low: float | None
    high: float | None
    n: int
    correlation: bool
    centre: float  # mean on the test scale (z for correlations)
    se: float | None

    def to_test(self, value: float) -> float:
        return fisher_z(value) if self.correlation else value

    def p_above(self, value: float) -> float:
        """One-sided p-value of "the effect is above ``value``" (H0: effect ≤ value)."""
        return self._p(self.centre - self.to_test(value))

    def p_below(self, value: float) -> float:
        """One-sided p-value of "the effect is below ``value``" (H0: effect ≥ value)."""
        return self._p(self.to_test(value) - self.centre)

    def _p(self, gap: float) -> float:
        assert self.se is not None and self.n >= 2  # tests need an interval
        if self.se == 0:  # every seed gave the same value
            return 0.0 if gap > 0 else 1.0
        return 1.0 - _t_cdf(gap / self.se, self.n - 1)


def interval(values: Sequence[float], alpha: float, correlation: bool = False) -> Interval:
    """Mean and 1 − 2α interval over independent per-seed ``values`` (Fisher z for
    correlations: the interval then stays in (−1, 1))."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    scaled = [fisher_z(v) for v in values] if correlation else list(values)
    centre = sum(scaled) / n
    back = math.tanh if correlation else (lambda v: v)
    mean = back(centre) if correlation else centre
    if n < 2:
        return Interval(mean, None, None, n, correlation, centre, None)
    sd = math.sqrt(sum((v - centre) ** 2 for v in scaled) / (n - 1))
    se = sd / math.sqrt(n)
    half = _t_quantile(1 - alpha, n - 1) * se
    return Interval(mean, back(centre - half), back(centre + half), n, correlation, centre, se)


# ------------------------------------------------------------------ per-seed values

def _filtered(check: Any, tables: dict[str, pl.DataFrame]) -> tuple[pl.DataFrame, set[int]]:
    """The claim's rows with a value, and every seed that has rows for it."""
    extra = ["seed", *([check.by] if getattr(check, "by", None) else []),
             *([check.over] if getattr(check, "over", None) else [])]
    frame = claim_rows(check, tables, extra, drop_missing=False)
    seeds = set(frame["seed"].to_list())
    frame = frame.drop_nulls(check.value)
    if frame.height == 0:
        raise ClaimError(f"no rows of {check.table!r} matching {check.filter} have a value")
    return frame, seeds


def _difference(check: Any, frame: pl.DataFrame, first: Any, second: Any
                ) -> tuple[dict[int, float], str]:
    by = pl.col(check.by).cast(pl.Utf8)
    means = {}
    for label in (first, second):
        part = frame.filter(by == str(label))
        if part.height == 0:
            raise ClaimError(f"no rows with {check.by} = {label!r} (values: "
                             f"{sorted(map(str, frame[check.by].unique()))})")
        part = part.group_by("seed").agg(pl.col(check.value).mean())
        means[label] = dict(zip(part["seed"].to_list(), part[check.value].to_list()))
    seeds = sorted(set(means[first]) & set(means[second]))
    return ({s: means[first][s] - means[second][s] for s in seeds},
            f"{check.value}: {check.by}={first} minus {check.by}={second}")


def _spearman_per_seed(frame: pl.DataFrame, over: str, value: str) -> dict[int, float]:
    """Spearman correlation of the per-``over`` means of ``value`` with ``over``, per seed
    (seeds with fewer than 3 points, or a constant value, give none)."""
    from scipy.stats import spearmanr

    values = {}
    for seed in sorted(frame["seed"].unique().to_list()):
        per = frame.filter(pl.col("seed") == seed).group_by(over).agg(
            pl.col(value).mean()).sort(over)
        if per.height >= 3 and per[value].n_unique() > 1:
            values[seed] = float(spearmanr(per[over].to_numpy(), per[value].to_numpy()).statistic)
    if not values:
        raise ClaimError(f"a trend needs at least 3 values of {over!r} (and a value that "
                         "varies) within a seed")
    return values


def per_seed_values(check: Any, tables: dict[str, pl.DataFrame]
                    ) -> tuple[dict[int, float], str, set[int]]:
    """The claim's effect for each seed, what it is, and the seeds that have rows for
    the claim but no value (a side missing, too few points for a trend, only nulls)."""
    frame, seeds = _filtered(check, tables)
    if check.kind == "compare":
        values, quantity = _difference(check, frame, check.greater, check.lesser)
    elif check.kind == "equivalence" and check.by:
        values, quantity = _difference(check, frame, *check.groups)
    elif getattr(check, "over", None):
        values = _spearman_per_seed(frame, check.over, check.value)
        quantity = f"Spearman({check.over}, {check.value}) per seed"
    else:
        how = getattr(check, "aggregate", "mean")
        how = "mean" if how == "all" else how
        per = frame.group_by("seed").agg(getattr(pl.col(check.value), how)())
        values = dict(zip(per["seed"].to_list(), per[check.value].to_list()))
        quantity = f"{how} {check.value} per seed"
    return values, quantity, seeds - set(values)


# ------------------------------------------------------------------ the decision

def _is_correlation(check: Any) -> bool:
    scale = getattr(check, "scale", None)
    if scale in (None, "auto"):
        return check.kind == "trend" or bool(getattr(check, "over", None))
    return scale == "correlation"


def decide(check: Any, values: Sequence[float]) -> tuple[str, str, Interval | None,
                                                           float | None, float | None]:
    """(verdict, reason, interval, p_holds, p_fails) of per-seed ``values`` under the
    module's rule; the function every branch of which the unit tests reach."""
    alpha = check.alpha
    if not values:
        return INCONCLUSIVE, "no seed has a value", None, None, None
    iv = interval(values, alpha, _is_correlation(check))
    if iv.n < 2:
        return INCONCLUSIVE, "one seed: no interval to decide on", iv, None, None
    assert iv.low is not None and iv.high is not None
    pct = f"{100 * (1 - 2 * alpha):g}%"
    if check.kind == "equivalence":
        lo, hi = check.center - check.bound, check.center + check.bound
        return _inside(iv, lo, hi, alpha, "TOST: the {pct} interval lies inside ({lo:.4g}, "
                       "{hi:.4g})", f"({lo:.4g}, {hi:.4g})")
    if check.kind == "bound" and check.min is not None and check.max is not None:
        return _inside(iv, check.min, check.max, alpha, "the {pct} interval lies within "
                       "[{lo:g}, {hi:g}]", f"[{check.min:g}, {check.max:g}]")
    # directional: effect > margin (or < margin)
    margin, sign = directional_target(check)
    edge = margin + sign * check.sesoi
    word = "above" if sign > 0 else "below"
    if sign > 0:
        p_holds, p_fails = iv.p_above(margin), iv.p_below(edge)
    else:
        p_holds, p_fails = iv.p_below(margin), iv.p_above(edge)
    if p_holds < alpha:
        small = (f"; but every effect in it is within {check.sesoi:g} of {margin:g}, below "
                 "the smallest effect of interest" if check.sesoi > 0 and p_fails < alpha
                 else "")
        return HOLDS, f"one-sided test: the {pct} interval lies {word} {margin:g}{small}", \
            iv, p_holds, p_fails
    if p_fails < alpha:
        what = (f"every effect at least {check.sesoi:g} {word} {margin:g}" if check.sesoi
                else f"every effect {word} {margin:g}")
        return FAILS, f"the {pct} interval excludes {what}", iv, p_holds, p_fails
    return INCONCLUSIVE, (f"the {pct} interval reaches both {margin:g} and {edge:g}"
                          if check.sesoi else f"the {pct} interval contains {margin:g}"), \
        iv, p_holds, p_fails


def _inside(iv: Interval, lo: float, hi: float, alpha: float, holds: str, region: str
            ) -> tuple[str, str, Interval, float, float]:
    """Two-sided region claim: holds when both one-sided tests put the effect inside
    (lo, hi) (TOST), does not hold when one puts it outside."""
    pct = f"{100 * (1 - 2 * alpha):g}%"
    p_holds = max(iv.p_above(lo), iv.p_below(hi))
    p_fails = min(iv.p_above(hi), iv.p_below(lo))
    if p_holds < alpha:
        return HOLDS, holds.format(pct=pct, lo=lo, hi=hi), iv, p_holds, p_fails
    if p_fails < alpha:
        return FAILS, f"the {pct} interval lies outside {region}", iv, p_holds, p_fails
    return INCONCLUSIVE, f"the {pct} interval overlaps an edge of {region}", iv, p_holds, p_fails


def directional_target(check: Any) -> tuple[float, int]:
    """(margin, sign) of a directional claim: the claim is sign · (effect − margin) > 0."""
    if check.kind == "compare":
        return check.margin, 1
    if check.kind == "trend":
        return (check.min_spearman, 1) if check.direction == "increasing" else \
            (0.0 - check.min_spearman, -1)  # 0.0 - x: never a printed "-0"
    # a one-sided bound
    return (check.min, 1) if check.min is not None else (check.max, -1)


def _all_rows(check: Any, tables: dict[str, pl.DataFrame], base: dict[str, Any]
              ) -> ClaimResult:
    frame = claim_rows(check, tables, [])
    low, high = float(frame[check.value].min()), float(frame[check.value].max())  # type: ignore[arg-type]
    ok = (check.min is None or low >= check.min) and (check.max is None or high <= check.max)
    wanted = (f"[{check.min:g}, {check.max:g}]" if check.min is not None and check.max is not None
              else f"≥ {check.min:g}" if check.min is not None else f"≤ {check.max:g}")
    return ClaimResult(**base, verdict=HOLDS if ok else FAILS, adjusted=HOLDS if ok else FAILS,
                       reason=(f"every one of {frame.height} values is {wanted}" if ok else
                               f"values range over [{low:.4g}, {high:.4g}], not all {wanted}")
                       + " (a fact about the rows, not a test)",
                       mean=None, low=low, high=high, n=frame.height,
                       quantity=f"range of {check.value}")


def judge(check: Any, tables: dict[str, pl.DataFrame]) -> ClaimResult:
    """The claim's verdict from the run's tables (rules in the module docstring); seeds
    that give no value are named in the reason, never silently dropped."""
    base = dict(name=check.name, kind=check.kind, table=check.table,
                role=getattr(check, "role", None), paper=getattr(check, "paper", None),
                level=1 - 2 * check.alpha)
    try:
        if check.kind == "bound" and check.aggregate == "all":
            return _all_rows(check, tables, base)
        values, quantity, excluded = per_seed_values(check, tables)
    except (ClaimError, pl.exceptions.PolarsError) as exc:
        return ClaimResult(**base, verdict=INCONCLUSIVE, adjusted=INCONCLUSIVE,
                           reason=f"cannot be evaluated: {exc}")
    ordered = [values[s] for s in sorted(values)]
    verdict, reason, iv, p_holds, p_fails = decide(check, ordered)
    result = ClaimResult(**base, verdict=verdict, adjusted=verdict, reason=reason,
                         quantity=quantity, p_holds=p_holds, p_fails=p_fails,
                         values=tuple(ordered))
    if iv is not None:
        result.mean, result.low, result.high, result.n = iv.mean, iv.low, iv.high, iv.n
    if excluded:
        result.excluded = tuple(sorted(excluded))
        result.reason += (f"; seed(s) {list(result.excluded)} have rows but no value "
                          "(e.g. one side missing) and are left out")
    return result


def _holm_adjust(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (monotone, capped at 1)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted = [0.0] * len(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def holm(results: Sequence[ClaimResult], alpha: float = 0.05) -> list[ClaimResult]:
    """The results with ``adjusted`` verdicts after Holm's correction across the family:
    "holds" needs its Holm-adjusted p-value below α, "does not hold" likewise (the two
    families of tests are adjusted separately). Claims without a test keep their
    verdict."""
    tested = [i for i, r in enumerate(results) if r.p_holds is not None]
    out = [replace(r) for r in results]
    if not tested:
        return out
    holds = _holm_adjust([cast_float(results[i].p_holds) for i in tested])
    fails = _holm_adjust([cast_float(results[i].p_fails) for i in tested])
    for i, ph, pf in zip(tested, holds, fails):
        out[i].adjusted = HOLDS if ph < alpha else FAILS if pf < alpha else INCONCLUSIVE
    return out


def cast_float(value: float | None) -> float:
    return 1.0 if value is None else float(value)


def verdict_of(record: Mapping[str, Any]) -> str:
    """The verdict of a claim record of ``run.json`` (runs written before verdicts had
    three values carry only ``passed``)."""
    return record.get("verdict") or (HOLDS if record.get("passed") else FAILS)


def describe(result: ClaimResult) -> str:
    """One line: the quantity, its mean and interval with n, and why the verdict."""
    if result.mean is None and result.low is None:
        return result.reason
    if result.mean is None:
        return f"{result.quantity}: [{result.low:.4g}, {result.high:.4g}]; {result.reason}"
    shown = (f"{result.mean:.4g} [{result.low:.4g}, {result.high:.4g}] "
             f"({100 * result.level:g}% interval over seeds)"
             if result.low is not None and result.high is not None
             else f"{result.mean:.4g} (no interval)")
    return f"{result.quantity}: {shown}, n = {result.n}; {result.reason}"


def evaluate_checks(checks: Sequence[Any], tables: dict[str, pl.DataFrame]
                    ) -> list[dict[str, Any]]:
    """Verdict records (:meth:`ClaimResult.as_dict`) of a run's claims, in spec order."""
    return [judge(check, tables).as_dict() for check in checks]
