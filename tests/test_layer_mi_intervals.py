"""layer_mi's `interval` parameter: confidence intervals from the estimator's own method,
refused where the estimator has none, and the spec hash of older specs kept."""

from __future__ import annotations

import polars as pl
import pytest

from mi_probe.builtin.experiments.layer_mi import LayerMIExperiment, LayerMIParams
from mi_probe.errors import SpecError


def test_interval_columns_come_from_the_estimators_method(run_cli, tiny_spec_file, tmp_path):
    spec = tiny_spec_file(text=open(tiny_spec_file()).read().replace(
        "experiment: {kind: layer_mi}", "experiment: {kind: layer_mi, interval: 0.9}"),
        name="ci.yaml")
    code, _, err = run_cli(spec, "--out", tmp_path / "r")
    assert code == 0, err
    layer = pl.read_parquet(tmp_path / "r" / "tables" / "layer_mi.parquet")
    assert set(layer["ci_method"].unique()) == {"bootstrap"}
    assert set(layer["ci_level"].unique()) == {0.9}
    assert (layer["i_ty_ci_low"] <= layer["i_ty_ci_high"]).all()
    assert (layer["i_ty_ci_high"] > layer["i_ty_ci_low"]).any()  # not degenerate everywhere
    channel = pl.read_parquet(tmp_path / "r" / "tables" / "channel_mi.parquet")
    assert channel["i_ty_ci_low"].null_count() == 0
    assert (channel["i_ty_ci_low"] <= channel["i_ty_ci_high"]).all()
    # the site's interval is of the mean over its channels: it lies within the range of
    # the channels' own bounds
    for (state, site), part in channel.group_by(["state", "site"]):
        row = layer.filter((pl.col("state") == state) & (pl.col("site") == site))
        assert part["i_ty_ci_low"].min() <= row["i_ty_ci_low"].item() + 1e-12
        assert row["i_ty_ci_high"].item() <= part["i_ty_ci_high"].max() + 1e-12


def test_without_interval_the_tables_have_no_interval_columns(run_cli, tiny_spec_file, tmp_path):
    code, _, err = run_cli(tiny_spec_file(), "--out", tmp_path / "r")
    assert code == 0, err
    layer = pl.read_parquet(tmp_path / "r" / "tables" / "layer_mi.parquet")
    assert "i_ty_ci_low" not in layer.columns


class _NoIntervals:
    name = "plain"
    reductions = frozenset({"joint"})


def test_an_estimator_without_intervals_is_refused():
    exp = LayerMIExperiment(LayerMIParams(interval=0.95))
    with pytest.raises(SpecError, match="estimator 'plain' has no interval method"):
        exp.check_spec(None, _NoIntervals())


class _WithIntervals(_NoIntervals):
    name = "withci"
    interval_method = "bootstrap"

    def label_mi_interval(self, acts, labels, num_classes, level, seed):
        raise AssertionError("not called by check_spec")


def test_interval_needs_the_mean_reduction():
    est = _WithIntervals()
    exp = LayerMIExperiment(LayerMIParams(interval=0.95, reduce="joint"))
    with pytest.raises(SpecError, match="interval is for reduce: mean.*'joint'"):
        exp.check_spec(None, est)


def test_interval_level_is_validated():
    with pytest.raises(ValueError, match="less than 1"):
        LayerMIParams(interval=1.5)


def test_an_unset_interval_keeps_the_spec_hash(tiny_spec_file, pm):
    from mi_probe._core.runner.rundir import spec_hash
    from mi_probe._core.spec import load_spec

    plain = load_spec(tiny_spec_file(), pm=pm)
    explicit = load_spec(tiny_spec_file(text=open(tiny_spec_file()).read().replace(
        "experiment: {kind: layer_mi}", "experiment: {kind: layer_mi, interval: null}"),
        name="explicit.yaml"), pm=pm)
    assert spec_hash(plain) == spec_hash(explicit)
    data = plain.model_dump(mode="json")
    assert "interval" not in data["experiment"] or data["experiment"]["interval"] is None
