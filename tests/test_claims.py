"""The claim statistics of mi_probe._core.claims: every branch of the decision function
on synthetic per-seed values, intervals that stay in range for correlations, p-values
equal to scipy's one-sample t-test, and Holm's correction across a family."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from mi_probe._core.checks import BoundCheck, CompareCheck, EquivalenceCheck, TrendCheck
from mi_probe._core.claims import (FAILS, HOLDS, INCONCLUSIVE, ClaimResult, decide, holm,
                                   interval)

T95_2 = 2.919985580355516  # t quantile 0.95 with 2 degrees of freedom


def compare(**kw) -> CompareCheck:
    return CompareCheck(name="c", table="t", value="v", by="g", greater="a", lesser="b", **kw)


def trend(**kw) -> TrendCheck:
    return TrendCheck(name="t", table="t", value="v", **kw)


def equivalence(**kw) -> EquivalenceCheck:
    return EquivalenceCheck(name="e", table="t", value="v", **kw)


# ------------------------------------------------------------------ directional claims

def test_directional_claim_holds_when_the_one_sided_test_passes():
    verdict, reason, iv, p_holds, _ = decide(compare(), [0.2, 0.3, 0.25])
    assert verdict == HOLDS and "lies above 0" in reason
    # a 90% t-interval (one-sided 5% bounds): mean 0.25, sd 0.05, n 3
    assert iv.low == pytest.approx(0.25 - T95_2 * 0.05 / math.sqrt(3), rel=1e-9)
    assert iv.high == pytest.approx(0.25 + T95_2 * 0.05 / math.sqrt(3), rel=1e-9)
    # the p-value is scipy's one-sided one-sample t-test
    assert p_holds == pytest.approx(
        stats.ttest_1samp([0.2, 0.3, 0.25], 0.0, alternative="greater").pvalue, rel=1e-9)


def test_directional_claim_does_not_hold_on_the_wrong_side():
    verdict, reason, _, _, p_fails = decide(compare(), [-0.2, -0.3, -0.25])
    assert verdict == FAILS and "excludes every effect above 0" in reason
    assert p_fails == pytest.approx(
        stats.ttest_1samp([-0.2, -0.3, -0.25], 0.0, alternative="less").pvalue, rel=1e-9)


def test_a_null_effect_does_not_hold_once_it_excludes_the_smallest_effect_of_interest():
    """Without a smallest effect of interest a true zero stays inconclusive for ever;
    with one, a tight interval around zero says the claim does not hold."""
    null = [0.01, 0.0, -0.01]
    assert decide(compare(), null)[0] == INCONCLUSIVE
    verdict, reason, _, _, _ = decide(compare(sesoi=0.1), null)
    assert verdict == FAILS and "excludes every effect at least 0.1 above 0" in reason


def test_directional_claim_is_inconclusive_when_the_interval_reaches_both_sides():
    verdict, reason, *_ = decide(compare(sesoi=0.05), [-0.2, 0.3, 0.05])
    assert verdict == INCONCLUSIVE and "reaches both 0 and 0.05" in reason


def test_a_real_but_negligible_effect_holds_and_says_it_is_below_the_sesoi():
    verdict, reason, *_ = decide(compare(sesoi=0.1), [0.01, 0.011, 0.012])
    assert verdict == HOLDS and "below the smallest effect of interest" in reason


def test_margin_moves_the_null_value():
    verdict, reason, *_ = decide(compare(margin=0.5), [0.2, 0.3, 0.25])
    assert verdict == FAILS and "above 0.5" in reason


def test_one_seed_or_none_is_inconclusive():
    assert decide(compare(), [0.9])[:2] == (INCONCLUSIVE, "one seed: no interval to decide on")
    assert decide(compare(), [])[:2] == (INCONCLUSIVE, "no seed has a value")


def test_identical_seeds_decide_without_dividing_by_zero():
    assert decide(compare(), [0.2, 0.2, 0.2])[0] == HOLDS
    assert decide(compare(), [0.0, 0.0, 0.0])[0] == INCONCLUSIVE


# ------------------------------------------------------------------ trends: bounded intervals

def test_spearman_intervals_stay_inside_minus_one_one():
    rhos = [1.0, 1.0, 0.9]
    iv = interval(rhos, alpha=0.05, correlation=True)
    assert -1 < iv.low < iv.mean < iv.high < 1
    # a t-interval on the raw correlations leaves the range
    mean, sd = sum(rhos) / 3, stats.tstd(rhos)
    assert mean + T95_2 * sd / math.sqrt(3) > 1
    # the centre is the back-transformed mean of the Fisher z values
    z = [math.atanh(min(r, 0.9999)) for r in rhos]
    assert iv.mean == pytest.approx(math.tanh(sum(z) / 3))


def test_trend_claims_use_the_same_rule_as_comparisons():
    assert decide(trend(), [0.9, 0.8, 0.95])[0] == HOLDS
    assert decide(trend(direction="decreasing"), [-0.9, -0.8, -0.95])[0] == HOLDS
    assert decide(trend(direction="decreasing"), [0.9, 0.8, 0.95])[0] == FAILS
    # a weak but consistent trend, where the claim asks for a correlation above 0.3
    weak = [0.05, 0.07, 0.09]
    verdict, reason, iv, _, _ = decide(trend(min_spearman=0.3), weak)
    assert verdict == FAILS and iv.high < 0.3
    # and a trend that goes both ways across seeds is inconclusive
    assert decide(trend(), [0.8, -0.2, 0.5])[0] == INCONCLUSIVE


# ------------------------------------------------------------------ equivalence (TOST)

def test_equivalence_holds_fails_and_is_inconclusive():
    check = equivalence(bound=0.02)
    verdict, reason, _, p_holds, _ = decide(check, [0.001, -0.002, 0.0005])
    assert verdict == HOLDS and "TOST" in reason
    # TOST's p-value is the larger of the two one-sided t-tests
    values = [0.001, -0.002, 0.0005]
    assert p_holds == pytest.approx(max(
        stats.ttest_1samp(values, -0.02, alternative="greater").pvalue,
        stats.ttest_1samp(values, 0.02, alternative="less").pvalue), rel=1e-9)
    assert decide(check, [0.1, 0.12, 0.11])[0] == FAILS
    assert decide(check, [0.0, 0.03, -0.03])[0] == INCONCLUSIVE
    shifted = equivalence(bound=0.02, center=1.0)
    assert decide(shifted, [1.001, 0.999, 1.0])[0] == HOLDS


def test_equivalence_check_names_by_and_groups_together():
    with pytest.raises(ValueError, match="names both by and groups, or neither"):
        equivalence(bound=0.1, by="selection")
    with pytest.raises(ValueError, match="greater than 0"):
        equivalence(bound=0.0)


# ------------------------------------------------------------------ bounds

def test_two_sided_bounds():
    check = BoundCheck(name="b", table="t", value="v", min=0.0, max=1.0)
    assert decide(check, [0.5, 0.52, 0.51])[0] == HOLDS
    assert decide(check, [1.5, 1.6, 1.55])[0] == FAILS
    assert decide(check, [0.9, 1.1, 1.0])[0] == INCONCLUSIVE
    one_sided = BoundCheck(name="b", table="t", value="v", min=0.0)
    assert decide(one_sided, [0.5, 0.52, 0.51])[0] == HOLDS
    below = BoundCheck(name="b", table="t", value="v", max=0.0)
    assert decide(below, [0.5, 0.52, 0.51])[0] == FAILS
    with pytest.raises(ValueError, match="needs min <= max"):
        BoundCheck(name="b", table="t", value="v", min=1.0, max=0.0)


# ------------------------------------------------------------------ family-wise correction

def _result(p_holds: float, p_fails: float = 1.0) -> ClaimResult:
    verdict = HOLDS if p_holds < 0.05 else FAILS if p_fails < 0.05 else INCONCLUSIVE
    return ClaimResult("c", "compare", "t", verdict, "", p_holds=p_holds, p_fails=p_fails,
                       adjusted=verdict)


def test_holm_adjusts_raw_verdicts_across_the_family():
    family = [_result(0.01), _result(0.04), _result(0.03), _result(0.9, p_fails=0.001),
              ClaimResult("untested", "bound", "t", HOLDS, "facts", adjusted=HOLDS)]
    adjusted = holm(family)
    assert [r.verdict for r in adjusted] == [HOLDS, HOLDS, HOLDS, FAILS, HOLDS]
    # p (0.01, 0.04, 0.03, 0.9) -> Holm (0.04, 0.09, 0.09, 0.9): only the first holds;
    # the fails-family p (1, 1, 1, 0.001) -> 0.004: it still does not hold
    assert [r.adjusted for r in adjusted] == [HOLDS, INCONCLUSIVE, INCONCLUSIVE, FAILS, HOLDS]
    # the raw verdicts are kept beside the adjusted ones
    assert [r.verdict for r in family] == [r.verdict for r in adjusted]


def test_equivalence_over_a_trend_is_flatness_in_fisher_z():
    import polars as pl

    from mi_probe._core.claims import judge

    # per seed, a profile that goes up and down: Spearman 0 in every seed
    flat = pl.DataFrame([{"seed": s, "depth": d, "v": [1.0, 3.0, 2.0, 3.0, 1.0][d] + s}
                         for s in range(4) for d in range(5)])
    check = equivalence(bound=0.5, over="depth")
    result = judge(check, {"t": flat})
    assert result.verdict == HOLDS and result.mean == pytest.approx(0.0, abs=1e-12)
    assert result.quantity == "Spearman(depth, v) per seed"
    rising = pl.DataFrame([{"seed": s, "depth": d, "v": d + 0.1 * s}
                           for s in range(4) for d in range(5)])
    assert judge(check, {"t": rising}).verdict == FAILS
    with pytest.raises(ValueError, match="not both"):
        equivalence(bound=0.5, over="depth", by="g", groups=("a", "b"))
