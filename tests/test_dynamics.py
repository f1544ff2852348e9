"""The ``dynamics`` experiment: tracking leaves training unchanged, the plateau rule and
slopes, and a tiny end-to-end run (tables, figures, cached tracked values)."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch

from mi_probe import cli
from mi_probe.builtin.experiments.dynamics import (Dynamics, DynamicsParams, final_sites,
                                                   ls_slope, plateau_epoch, summarise)
from mi_probe._core.runner.context import Engine
from mi_probe._core.spec import load_spec

TINY = """\
name: tiny_dynamics
seeds: [0]
data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 60, image_size: 16, noise: 0.5}
model:
  arch: test_resnet
  weights: train
  train: {epochs: 2, batch_size: 16, lr: 0.05}
sites: {include: ["*.post_add"]}
estimator: {kind: histogram, bins: 8}
experiment: {kind: dynamics, acts: [relu, tanh], channel_values: true}
report: {formats: [png]}
"""


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tracking_does_not_change_training(tmp_path, pm):
    path = tmp_path / "d.yaml"
    path.write_text(TINY)
    spec = load_spec(path, pm=pm)
    engine = Engine(spec, pm, cache_dir=tmp_path / "cache", log=lambda _m: None, progress=False)
    experiment = Dynamics(spec.experiment)
    calls = []
    tracker = experiment.tracker(engine)

    def track(model, epoch):
        calls.append((epoch, model.training))
        return tracker(model, epoch)

    plain, plain_hist = engine.train(0, model_overrides={"act": "tanh"})
    tracked, tracked_hist = engine.train(0, model_overrides={"act": "tanh"}, track=track,
                                         track_key=experiment.track_key(engine))
    assert _same(plain, tracked)  # bit-identical weights and buffers
    assert [r["val_acc"] for r in plain_hist] == [r["val_acc"] for r in tracked_hist]
    assert [r["train_loss"] for r in plain_hist] == [r["train_loss"] for r in tracked_hist]
    assert [e for e, _ in calls] == [0, 1, 2]
    assert all(training for _, training in calls[1:])  # called on the model being trained
    assert all("tracked" not in r for r in plain_hist)
    first = tracked_hist[0]["tracked"]
    assert set(first["sites"]) == {s.name for s in engine.sites(tracked)}
    entry = first["sites"]["layer1.0.post_add"]
    assert 0 <= entry["i_ty"] and 0 < entry["i_xt"] <= math.log(8) + 1e-9
    assert len(entry["i_ty_c"]) == len(entry["i_xt_c"]) > 1
    assert entry["i_ty"] == pytest.approx(sum(entry["i_ty_c"]) / len(entry["i_ty_c"]))
    # the tracked values are persisted with the cached model: a second call trains nothing
    calls.clear()
    cached, cached_hist = engine.train(0, model_overrides={"act": "tanh"}, track=track,
                                       track_key=experiment.track_key(engine))
    assert calls == [] and cached_hist == tracked_hist and _same(cached, tracked)


def test_tracker_records_the_edge_bin_share_that_follows_the_tails():
    """Issue 11.8: the tracker stores, per site and epoch, the share of samples in a
    channel's first or last bin (mean over channels). Planted: 3925 N(0, 1) samples per
    channel; in site "spiked" one sample of channel 0 sits at 40, which stretches its
    min/max range: 345 of 3925 samples then fall in an edge bin (8.8%) against 8 (0.2%)
    without the outlier (the other channel: 9), and I(X;T) of that channel drops from
    2.50 to 0.79 nats. With range: quantile the channel has 24 edge samples (0.6%, the
    clipped 0.1% tails included) with or without the outlier, and keeps its I(X;T)."""
    from types import SimpleNamespace

    from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams
    from mi_probe.interfaces import Captured, Site

    g = torch.Generator().manual_seed(0)
    clean = torch.randn(3925, 1, generator=g, dtype=torch.float64)
    spiked = clean.clone()
    spiked[17, 0] = 40.0
    other = torch.randn(3925, 1, generator=g, dtype=torch.float64)
    acts = {"clean": torch.cat([clean, other], 1), "spiked": torch.cat([spiked, other], 1)}
    sites = [Site(name, name, "block", 2, depth) for depth, name in enumerate(acts)]
    labels = torch.arange(3925) % 3

    def tracked(range_: str) -> dict:
        ctx = SimpleNamespace(
            estimator=HistogramEstimator(HistogramParams(bins=20, range=range_)),
            num_classes=3, sites=lambda model: sites,
            evaluate=lambda model, sites: Captured(acts=dict(acts), labels=labels,
                                                   logits=torch.zeros(3925, 3), sites=sites))
        return Dynamics(DynamicsParams()).tracker(ctx)(None, 0)["sites"]

    minmax = tracked("minmax")
    assert minmax["clean"]["frac_edge_bins"] == pytest.approx((8 + 9) / 2 / 3925, abs=1e-12)
    assert minmax["spiked"]["frac_edge_bins"] == pytest.approx((345 + 9) / 2 / 3925, abs=1e-12)
    assert minmax["clean"]["i_xt"] - minmax["spiked"]["i_xt"] == pytest.approx(
        (2.4995 - 0.7932) / 2, abs=1e-4)
    quantile = tracked("quantile")
    for name in ("clean", "spiked"):
        assert quantile[name]["frac_edge_bins"] == pytest.approx((24 + 21) / 2 / 3925,
                                                                 abs=1e-12)
    assert abs(quantile["clean"]["i_xt"] - quantile["spiked"]["i_xt"]) < 0.005


def test_plateau_rule_final_sites_and_slopes():
    epochs = list(range(8))
    rising = [0.0, 0.5, 0.8, 0.9, 0.95, 0.96, 0.965, 0.97]
    # relative: tolerance 5% of the rise 0.97 -> 0.0485 nats/epoch; increases after
    # epoch 3 are 0.05 (no), after 4: 0.01, 0.005 -> plateau at epoch 4
    p, tol = plateau_epoch(epochs, rising, 0.05, 2, "relative")
    assert p == 4 and tol == pytest.approx(0.0485)
    assert plateau_epoch(epochs, rising, 0.2, 2, "absolute")[0] == 2
    assert plateau_epoch(epochs, rising, 0.2, 1, "absolute")[0] == 2
    assert plateau_epoch(epochs, [0.0, 1.0, 2.0, 3.0], 0.05, 2, "relative")[0] is None
    assert plateau_epoch(epochs, [1.0, 0.9, 0.8], 0.05, 2, "relative")[0] == 0  # never rises
    # a flat start before learning begins is not a plateau once min_progress asks for
    # half the rise first
    late = [0.0, 0.001, 0.002, 0.5, 0.9, 0.95, 0.951, 0.952]
    assert plateau_epoch(epochs, late, 0.05, 2, "relative", 0.0)[0] == 0
    assert plateau_epoch(epochs, late, 0.05, 2, "relative", 0.5)[0] == 5
    assert final_sites(list(range(8)), 1 / 3) == [5, 6, 7]
    assert final_sites(list(range(13)), 1 / 3) == [8, 9, 10, 11, 12]
    assert final_sites(list(range(3)), 1 / 3) == [2] and final_sites([0, 1], 0.01) == [1]
    assert ls_slope([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0]) == pytest.approx(2.0)
    assert ls_slope([0], [1.0]) is None

    rows = []
    for epoch in epochs:
        for depth in range(6):
            rows.append({"epoch": epoch, "site": f"s{depth}", "depth": depth, "site_kind": "b",
                         "i_xt": 2.0 - 0.1 * epoch * (depth >= 4), "i_ty": rising[epoch],
                         "val_acc": [0.1, 0.5, 0.7, 0.8, 0.9, 0.85, 0.9, 0.88][epoch]})
    summary, slopes = summarise(pl.DataFrame(rows), DynamicsParams(plateau_tol=0.05))
    assert summary["best_epoch"] == 4 and summary["n_final_sites"] == 2
    assert summary["delta_i_xt"] == pytest.approx(-0.4)  # epoch 4 vs 0 at depths 4, 5
    assert summary["plateau_epoch"] == 4
    assert summary["post_plateau_slope_i_xt"] == pytest.approx(-0.1)
    assert [s["slope_i_xt"] for s in slopes if not s["final_site"]] == [pytest.approx(0.0)] * 4


def test_params_are_validated():
    with pytest.raises(ValueError, match="distinct"):
        DynamicsParams(acts=["relu", "relu"])
    with pytest.raises(ValueError):
        DynamicsParams(acts=["gelu"])
    with pytest.raises(ValueError):
        DynamicsParams(final_fraction=0)


def test_dynamics_end_to_end_and_cached_tracking(run_cli, tiny_spec_file, tmp_path):
    spec = tiny_spec_file(text=TINY, name="d.yaml")
    code, _, err = run_cli(spec, "--out", tmp_path / "r")
    assert code == 0, err
    tables = tmp_path / "r" / "tables"
    dyn = pl.read_parquet(tables / "dynamics.parquet")
    # ARCHITECTURE.md's contract, written out (not read from the declared schema)
    assert {"seed", "epoch", "act", "i_xt", "i_ty", "val_acc"} <= set(dyn.columns)
    assert sorted(dyn["act"].unique()) == ["relu", "tanh"]
    for act in ("relu", "tanh"):
        part = dyn.filter(pl.col("act") == act)
        assert sorted(part["epoch"].unique()) == [0, 1, 2]
        assert part.height == 3 * 4  # epochs x post_add sites of test_resnet
    assert dyn["i_xt"].is_finite().all() and (dyn["i_ty"] >= 0).all()
    assert dyn["frac_edge_bins"].is_between(0, 1).all()  # recorded for every epoch and site
    assert set(dyn["state"].unique()) == {"epoch_0", "epoch_1", "epoch_2"}
    # the recorded val_acc is the training history's
    train = pl.read_parquet(tables / "training.parquet")
    assert sorted(train["act"].unique()) == ["relu", "tanh"]
    joined = dyn.join(train.select("seed", "act", "epoch", pl.col("val_acc").alias("h")),
                      on=["seed", "act", "epoch"])
    assert joined.height == dyn.height and (joined["val_acc"] == joined["h"]).all()
    summary = pl.read_parquet(tables / "dynamics_summary.parquet")
    assert summary.height == 2
    for row in summary.iter_rows(named=True):
        final = dyn.filter((pl.col("act") == row["act"]) & pl.col("final_site"))
        at = {e: final.filter(pl.col("epoch") == e)["i_xt"].mean() for e in (0, row["best_epoch"])}
        assert row["delta_i_xt"] == pytest.approx(at[row["best_epoch"]] - at[0])
        assert row["n_final_sites"] == 2 and row["arch"] == "test_resnet"
    channels = pl.read_parquet(tables / "dynamics_channels.parquet")
    means = channels.group_by(["act", "epoch", "site"]).agg(pl.col("i_ty").mean().alias("m"))
    check = dyn.join(means, on=["act", "epoch", "site"])
    assert check.height == dyn.height and (check["i_ty"] - check["m"]).abs().max() < 1e-9
    assert (tables / "summary_dynamics.parquet").is_file()
    sites_summary = pl.read_parquet(tables / "summary_dynamics_sites.parquet")
    assert sites_summary["frac_edge_bins_mean"].is_between(0, 1).all()
    for name in ("accuracy_vs_delta_i_xt", "information_plane", "i_xt_vs_epoch",
                 "i_ty_vs_epoch", "frac_edge_bins_vs_epoch"):
        assert (tmp_path / "r" / "figures" / f"{name}.png").is_file(), name



# --------------------------------------------------------------------------- track_samples

def _engine(tmp_path, pm, extra: str = ""):
    path = tmp_path / "d.yaml"
    path.write_text(TINY.replace("channel_values: true}", "channel_values: true" + extra + "}"))
    spec = load_spec(path, pm=pm)
    return Engine(spec, pm, cache_dir=tmp_path / "cache", log=lambda _m: None, progress=False)


def test_stratified_subsample_is_proportional_seeded_and_reproducible():
    from mi_probe.builtin.experiments.dynamics import stratified_subsample

    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)[torch.randperm(
        100, generator=torch.Generator().manual_seed(1))]
    idx = stratified_subsample(labels, 20, seed=0)
    assert idx.dtype == torch.long and idx.tolist() == sorted(set(idx.tolist()))
    assert torch.bincount(labels[idx], minlength=4).tolist() == [10, 6, 3, 1]  # n·N_k/N
    # largest remainder: quotas 3.5, 2.1, 1.05, 0.35 -> 3 + 2 + 1 + 1 (each class >= 1)
    assert torch.bincount(labels[stratified_subsample(labels, 7, 0)],
                          minlength=4).tolist() == [3, 2, 1, 1]
    # one row per class at n = number of classes; all rows at n = N
    assert torch.bincount(labels[stratified_subsample(labels, 4, 0)]).tolist() == [1] * 4
    assert stratified_subsample(labels, 100, 3).tolist() == list(range(100))
    # the seed alone fixes the rows; another seed draws other rows of the same classes
    assert torch.equal(stratified_subsample(labels, 20, 0), idx)
    other = stratified_subsample(labels, 20, 1)
    assert not torch.equal(other, idx)
    assert torch.bincount(labels[other], minlength=4).tolist() == [10, 6, 3, 1]
    with pytest.raises(ValueError):
        stratified_subsample(labels, 3, 0)
    with pytest.raises(ValueError):
        stratified_subsample(labels, 101, 0)


def test_track_samples_tracks_the_same_stratified_rows_every_epoch(tmp_path, pm):
    """track_samples: n -> every tracker call captures the same n evaluation rows (the
    seeded stratified subsample of the evaluation labels), its values are the
    estimator's on exactly those rows of a full capture, training is unchanged, and the
    rows carry n_samples and the plug-in bias (B-1)(K-1)/(2n)."""
    from mi_probe.builtin.experiments.dynamics import eval_labels, stratified_subsample

    engine = _engine(tmp_path, pm, ", track_samples: 21, track_seed: 5")
    experiment = Dynamics(engine.spec.experiment)
    labels = eval_labels(engine.eval_set)
    assert labels.tolist() == [int(engine.eval_set[i][1]) for i in range(60)]
    expected = stratified_subsample(labels, 21, 5)
    assert torch.bincount(labels[expected], minlength=3).tolist() == [7, 7, 7]
    seen, real_evaluate = [], engine.evaluate

    def evaluate(model, *args, **kwargs):
        seen.append(kwargs.get("subset"))
        return real_evaluate(model, *args, **kwargs)

    engine.evaluate = evaluate
    tracker = experiment.tracker(engine)
    values = {}

    def track(model, epoch):
        out = tracker(model, epoch)
        engine.evaluate = real_evaluate  # the reference: all rows, then index them
        full = real_evaluate(model, sites=engine.sites(model))
        engine.evaluate = evaluate
        rows = expected.to(full.labels.device)
        for site in engine.sites(model):
            acts = full.acts[site.name][rows]
            values[(epoch, site.name)] = (
                engine.estimator.label_mi(acts, full.labels[rows], 3).mean().item(),
                engine.estimator.input_mi(acts).mean().item())
        return out

    key = experiment.track_key(engine)
    tracked, history = engine.train(0, model_overrides={"act": "relu"}, track=track,
                                    track_key=key)
    assert len(seen) == 3 and all(torch.equal(s, expected) for s in seen)  # epochs 0, 1, 2
    for record in history:
        assert record["tracked"]["n_samples"] == 21
        for name, entry in record["tracked"]["sites"].items():
            i_ty, i_xt = values[(record["epoch"], name)]
            assert entry["i_ty"] == pytest.approx(i_ty, abs=1e-12)
            assert entry["i_xt"] == pytest.approx(i_xt, abs=1e-12)
    plain, _ = engine.train(0, model_overrides={"act": "relu"})
    assert _same(plain, tracked)
    # a new tracker (another process, a resumed run) picks the same rows
    seen.clear()
    experiment.tracker(engine)(tracked, 9)
    assert torch.equal(seen[0], expected)
    # the unit's rows: n_samples and the plug-in bias at n
    frames = experiment.run_unit(engine, "act=relu,seed=0", experiment.plan(engine))
    dyn = frames["dynamics"]
    assert (dyn["n_samples"] == 21).all()
    assert dyn["i_ty_bias"].to_list() == pytest.approx([7 * 2 / (2 * 21)] * dyn.height)


def test_track_samples_is_part_of_the_cache_key_and_the_default_key_is_unchanged(tmp_path, pm):
    import hashlib
    import json

    from mi_probe.builtin.experiments.dynamics import TRACK_VERSION

    engine = _engine(tmp_path, pm)
    spec = engine.spec
    old = {"v": TRACK_VERSION, "estimator": spec.estimator.model_dump(mode="json"),
           "sites": spec.sites.model_dump(mode="json"),
           "eval_max_samples": spec.eval.max_samples, "channel_values": True}
    digest = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert Dynamics(spec.experiment).track_key(engine) == f"dynamics:{digest}"
    keys = {Dynamics(spec.experiment.model_copy(update=u)).track_key(engine)
            for u in ({}, {"track_samples": 30}, {"track_samples": 30, "track_seed": 1},
                      {"track_samples": 31})}
    assert len(keys) == 4


def test_track_samples_is_validated(tmp_path, pm, run_cli, tiny_spec_file):
    from pydantic import ValidationError

    from mi_probe.errors import SpecError

    for bad in (1, 0, -5, "many"):
        with pytest.raises(ValidationError):
            DynamicsParams(track_samples=bad)
    with pytest.raises(ValidationError):
        DynamicsParams(track_seed=-1)
    assert DynamicsParams().track_samples is None  # default: the whole evaluation set
    for n, message in ((61, r"61 is larger than the evaluation set \(60 samples\)"),
                       (2, r"2 is smaller than the number of classes \(3\)")):
        engine = _engine(tmp_path, pm, f", track_samples: {n}")
        with pytest.raises(SpecError, match=r"experiment\.track_samples: " + message):
            engine.experiment.plan(engine)
    for n in (3, 60):  # the bounds themselves are fine
        engine = _engine(tmp_path, pm, f", track_samples: {n}")
        assert list(engine.experiment.plan(engine).units) == ["act=relu,seed=0", "act=tanh,seed=0"]
    # from the command line: exit 2 and the message, before any training
    spec = tiny_spec_file(text=TINY, name="v.yaml")
    code, _, err = run_cli(spec, "--set", "experiment.track_samples=500", "--out",
                           tmp_path / "r")
    assert code == 2 and "track_samples: 500 is larger than the evaluation set" in err
    assert not (tmp_path / "cache" / "models").exists()
    code, _, err = run_cli(spec, "--set", "experiment.track_samples=1", "--out", tmp_path / "r2")
    assert code == 2 and "track_samples" in err
