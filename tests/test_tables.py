"""Tests of mi_probe._core.tables.aggregate_seeds: per-column n, t-intervals, missing values."""

from __future__ import annotations

import math

import polars as pl
import pytest
from scipy import stats

from mi_probe.errors import RunError
from mi_probe._core.tables import aggregate_seeds

NAN = float("nan")


def t_interval(values: list[float]) -> tuple[float, float]:
    """scipy's 95% Student-t interval of the mean of ``values``."""
    low, high = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / len(values),
                                 scale=stats.sem(values))
    return float(low), float(high)


def one_group(values: dict[str, list]) -> dict:
    frame = pl.DataFrame({"g": ["a"] * len(next(iter(values.values()))), **values},
                         schema_overrides={k: pl.Float64 for k in values})
    out = aggregate_seeds(frame, ["g"], list(values))
    assert out.height == 1
    return out.row(0, named=True)


def test_missing_values_do_not_count_towards_n() -> None:
    # the case: three values and two seeds without one (e.g. no plateau reached)
    row = one_group({"plateau_epoch": [1.0, 2.0, 3.0, None, None]})

    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # mean 2, sd 1, n 3
    assert row["plateau_epoch_n"] == 3
    assert row["n_seeds"] == 5  # rows (seeds) in the group, missing values included
    assert row["plateau_epoch_mean"] == pytest.approx(2.0)
    assert row["plateau_epoch_ci_low"] == pytest.approx(2.0 - half, rel=1e-12)
    assert row["plateau_epoch_ci_high"] == pytest.approx(2.0 + half, rel=1e-12)
    assert (round(row["plateau_epoch_ci_low"], 2), round(row["plateau_epoch_ci_high"], 2)) == (
        -0.48, 4.48)


def test_nan_is_missing_like_null() -> None:
    with_nan = one_group({"slope": [1.0, 2.0, 3.0, NAN, NAN]})
    with_null = one_group({"slope": [1.0, 2.0, 3.0, None, None]})
    assert with_nan == with_null
    assert with_nan["slope_n"] == 3 and not math.isnan(with_nan["slope_mean"])


@pytest.mark.parametrize("values", [[0.3, 0.9, 0.4], [1.0, 2.0, 4.0, 8.0, 16.0],
                                    [-1.5, 2.25, 0.0, 7.0]])
def test_interval_equals_scipy_t_interval(values: list[float]) -> None:
    row = one_group({"v": values})
    low, high = t_interval(values)
    assert row["v_n"] == len(values)
    assert row["v_ci_low"] == pytest.approx(low, rel=1e-12)
    assert row["v_ci_high"] == pytest.approx(high, rel=1e-12)


def test_one_value_has_a_mean_but_no_interval_and_no_value_has_neither() -> None:
    frame = pl.DataFrame({"g": ["one", "one", "none", "none", "none"],
                          "v": [5.0, None, None, NAN, None]})
    out = {r["g"]: r for r in aggregate_seeds(frame, ["g"], ["v"]).iter_rows(named=True)}

    assert out["one"] == {"g": "one", "n_seeds": 2, "v_mean": 5.0, "v_ci_low": None,
                          "v_ci_high": None, "v_n": 1}
    assert out["none"] == {"g": "none", "n_seeds": 3, "v_mean": None, "v_ci_low": None,
                           "v_ci_high": None, "v_n": 0}


def test_each_value_column_uses_its_own_n() -> None:
    # one group of five seeds: full has 5 values, partial 3, single 1, empty 0
    row = one_group({"full": [1.0, 2.0, 3.0, 4.0, 5.0],
                     "partial": [NAN, 2.0, None, 4.0, 9.0],
                     "single": [None, None, 7.0, None, None],
                     "empty": [None, NAN, None, None, None]})

    assert row["n_seeds"] == 5
    assert [row[f"{v}_n"] for v in ("full", "partial", "single", "empty")] == [5, 3, 1, 0]
    for name, kept in (("full", [1.0, 2.0, 3.0, 4.0, 5.0]), ("partial", [2.0, 4.0, 9.0])):
        low, high = t_interval(kept)
        assert row[f"{name}_mean"] == pytest.approx(sum(kept) / len(kept))
        assert row[f"{name}_ci_low"] == pytest.approx(low, rel=1e-12)
        assert row[f"{name}_ci_high"] == pytest.approx(high, rel=1e-12)
    assert (row["single_mean"], row["single_ci_low"], row["single_ci_high"]) == (7.0, None, None)
    assert (row["empty_mean"], row["empty_ci_low"], row["empty_ci_high"]) == (None, None, None)


def test_groups_of_different_n_get_their_own_t_quantile() -> None:
    frame = pl.DataFrame({"regularizer": ["none"] * 4 + ["hsic"] * 4,
                          "epochs_to_target": [3, 5, 4, None, 6, None, None, 8]},
                         schema_overrides={"epochs_to_target": pl.Int64})
    out = aggregate_seeds(frame, ["regularizer"], ["epochs_to_target"])
    rows = {r["regularizer"]: r for r in out.iter_rows(named=True)}

    low, high = t_interval([3.0, 5.0, 4.0])
    assert rows["none"]["epochs_to_target_n"] == 3
    assert rows["none"]["epochs_to_target_ci_low"] == pytest.approx(low, rel=1e-12)
    assert rows["none"]["epochs_to_target_ci_high"] == pytest.approx(high, rel=1e-12)
    low, high = t_interval([6.0, 8.0])
    assert rows["hsic"]["epochs_to_target_n"] == 2
    assert rows["hsic"]["epochs_to_target_ci_low"] == pytest.approx(low, rel=1e-12)
    assert rows["hsic"]["epochs_to_target_ci_high"] == pytest.approx(high, rel=1e-12)
    assert list(out["regularizer"]) == ["hsic", "none"]  # sorted by the grouping columns


def test_columns_count_name_and_no_grouping() -> None:
    frame = pl.DataFrame({"seed": [0, 1, 2], "donor": [1, 2, 0], "change": [0.1, 0.3, 0.2],
                          "mass": [0.5, None, 0.7]})
    out = aggregate_seeds(frame, [], ["change", "mass"], count_name="n_pairs")
    assert out.columns == ["n_pairs", "change_mean", "change_ci_low", "change_ci_high",
                           "change_n", "mass_mean", "mass_ci_low", "mass_ci_high", "mass_n"]
    assert out.row(0, named=True)["n_pairs"] == 3 and out.row(0, named=True)["mass_n"] == 2
    # the input frame is left as it was
    assert frame.columns == ["seed", "donor", "change", "mass"]


def test_bad_columns_raise_typed_errors() -> None:
    frame = pl.DataFrame({"g": ["a", "b"], "v": [1.0, 2.0], "label": ["x", "y"]})
    with pytest.raises(RunError, match=r"aggregate_seeds: frame lacks columns \['w'\]; "
                                       r"found \['g', 'v', 'label'\]"):
        aggregate_seeds(frame, ["g"], ["w"])
    with pytest.raises(RunError,
                       match=r"value columns must be numeric, found \{'label': 'String'\}"):
        aggregate_seeds(frame, ["g"], ["v", "label"])
    with pytest.raises(RunError, match=r"\['v'\] are both grouping and value columns"):
        aggregate_seeds(frame, ["g", "v"], ["v"])
