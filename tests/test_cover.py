"""The ``cover`` experiment (paper App. D): the redundant-set rule on hand-made data
(planted redundancy, disjointness, mass matching, running out of channels), the
experiment through the engine, and an end-to-end CLI run."""

from __future__ import annotations

from types import SimpleNamespace

import polars as pl
import pytest
import torch
from pydantic import ValidationError

from mi_probe.builtin.experiments.cover import (CoverExperiment, CoverParams, mean_pair_mi,
                                                redundant_set)
from mi_probe.functional.concentration import mass
from mi_probe.functional.histogram import bin_uniform, label_mi_from_codes
from mi_probe.functional.pairwise import pair_mi_from_codes
from mi_probe.functional.selection import mass_set

TINY = """\
name: tiny_cover
seeds: [0, 1]
data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 60, image_size: 16, noise: 0.5}
model:
  arch: test_resnet
  weights: train
  train: {epochs: 2, batch_size: 16, lr: 0.05}
sites: {include: ["*.post_add"]}
estimator: {kind: histogram, bins: 8}
report: {formats: [png]}
"""

BINS = 8


pytestmark = pytest.mark.usefixtures("one_thread")




def _planted(n=600, seed=0):
    """Channel 0 carries the label, channel 3 is a (monotone) copy of it, channel 5 is a
    noisier view of the label, the rest are noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    acts = torch.randn(n, 8, generator=gen)
    acts[:, 0] = labels.double().float() + 0.3 * torch.randn(n, generator=gen)
    acts[:, 3] = 2.0 * acts[:, 0] + 1.0
    acts[:, 5] = labels.float() + 1.5 * torch.randn(n, generator=gen)
    codes = bin_uniform(acts, BINS)
    values = label_mi_from_codes(codes, labels, BINS, 4)
    return acts, labels, codes, values


def _pair_block(codes, cover):
    return pair_mi_from_codes(codes[:, cover], codes, BINS)


def test_planted_duplicate_is_picked_first():
    _, _, codes, values = _planted()
    assert torch.isclose(values[0], values[3])  # a copy carries the same label MI
    cover = mass_set(values, 0.05)
    assert cover.tolist() == [0]  # ties go to the lower index
    red, achieved, reached = redundant_set(values, cover, _pair_block(codes, cover))
    assert red.tolist()[0] == 3
    # the copy alone matches the cover's mass, so the set stops there
    assert red.tolist() == [3] and reached
    assert achieved == pytest.approx(float(mass(values)[0]))


def _spread(n=600, channels=16, seed=1):
    """Every channel a noisy view of the label, from clear to nearly pure noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    sigma = torch.linspace(1.0, 3.0, channels)
    acts = labels.float()[:, None] + sigma * torch.randn(n, channels, generator=gen)
    codes = bin_uniform(acts, BINS)
    return codes, label_mi_from_codes(codes, labels, BINS, 4)


@pytest.mark.parametrize("q", [0.1, 0.25, 0.4])
def test_redundant_set_is_disjoint_and_mass_matched(q):
    codes, values = _spread()
    cover = mass_set(values, q)
    red, achieved, reached = redundant_set(values, cover, _pair_block(codes, cover))
    p = mass(values)
    assert not set(red.tolist()) & set(cover.tolist())
    assert len(set(red.tolist())) == red.numel()
    assert achieved == pytest.approx(float(p[red].sum()))
    assert reached and achieved >= float(p[cover].sum()) - 1e-12
    # minimal in its own order: without its last channel it would fall short
    assert float(p[red[:-1]].sum()) < float(p[cover].sum())
    # channels were added by descending max pair MI to the cover
    score = _pair_block(codes, cover).max(dim=0).values[red]
    assert torch.all(score[:-1] >= score[1:])


def test_running_out_of_channels_is_flagged():
    _, _, codes, values = _planted(seed=2)
    cover = mass_set(values, 0.9)
    red, achieved, reached = redundant_set(values, cover, _pair_block(codes, cover))
    p = mass(values)
    assert not reached
    assert sorted(red.tolist() + cover.tolist()) == list(range(8))  # everything else
    assert achieved == pytest.approx(1.0 - float(p[cover].sum()))
    assert achieved < float(p[cover].sum())
    # a cover of every channel leaves nothing
    everything = torch.arange(8)
    red, achieved, reached = redundant_set(values, everything, _pair_block(codes, everything))
    assert red.numel() == 0 and achieved == 0.0 and not reached


def test_ties_in_pair_mi_go_to_the_lower_index():
    values = torch.tensor([1.0, 0.5, 0.5, 0.5])
    cover = torch.tensor([0])
    block = torch.tensor([[9.0, 0.2, 0.7, 0.7]])
    red, _, reached = redundant_set(values, cover, block)
    assert red.tolist() == [2, 3] and reached


def test_mean_pair_mi_skips_self_pairs():
    block = torch.tensor([[5.0, 1.0, 2.0], [1.0, 5.0, 4.0]])  # rows: cover [0, 1]
    cover = torch.tensor([0, 1])
    assert mean_pair_mi(block, cover, cover) == pytest.approx(1.0)  # only (0,1) and (1,0)
    assert mean_pair_mi(block, cover, torch.tensor([2])) == pytest.approx(3.0)
    assert mean_pair_mi(block[:1], torch.tensor([0]), torch.tensor([0])) is None


def test_params_and_bins():
    with pytest.raises(ValidationError, match=r"must lie in \(0, 1\]"):
        CoverParams(q=[1.5])
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        CoverParams(sets_of=["cover"])
    with pytest.raises(ValidationError, match="greater than or equal to 2"):
        CoverParams(pair_bins=1)
    # pairs come from the estimator's own pair_mi; one without it needs pair_bins
    from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams
    from mi_probe.errors import SpecError

    no_pairs = SimpleNamespace(name="ksg")
    CoverExperiment(CoverParams()).check_spec(None, HistogramEstimator(HistogramParams()))
    CoverExperiment(CoverParams(pair_bins=5)).check_spec(None, no_pairs)
    with pytest.raises(SpecError, match="estimator 'ksg' has no pair_mi; set "
                       r"experiment.pair_bins \(e.g. 20\)"):
        CoverExperiment(CoverParams()).check_spec(None, no_pairs)


def test_redundancy_uses_the_estimators_pairs_or_the_requested_histogram():
    """Default: the estimator's pair_mi (its bins and range); pair_bins: a min/max
    histogram of that many bins, whatever the estimator."""
    from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams
    from mi_probe.functional.pairwise import pair_mi

    g = torch.Generator().manual_seed(3)
    acts = torch.randn(400, 6, generator=g)
    acts[:, 1] = acts[:, 0] + 0.1 * torch.randn(400, generator=g)
    rows = torch.tensor([0, 4])
    est = HistogramEstimator(HistogramParams(bins=12, range="quantile"))
    ctx = SimpleNamespace(estimator=est)
    own = CoverExperiment(CoverParams())._pair_block(ctx, acts, rows)
    assert torch.equal(own, est.pair_mi(acts[:, rows], acts))
    assert torch.equal(own, pair_mi(acts[:, rows], acts, 12, quantile=0.001))
    fixed = CoverExperiment(CoverParams(pair_bins=5))._pair_block(ctx, acts, rows)
    assert torch.equal(fixed, pair_mi(acts[:, rows], acts, 5))
    assert fixed[0, 1] > fixed[0, 2]  # the planted near-copy is the most redundant


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_engine):
    return tiny_engine(tmp_path_factory.mktemp("cover"), TINY.replace(
        '["*.post_add"]', '["layer3.*.post_add", "layer4.*.post_add"]')
        + "experiment: {kind: cover, q: [0.3, 0.8], random_draws: 2, mass: raw}\n")


def test_run_unit_through_the_engine(engine):
    exp = engine.experiment
    frame = exp.run_unit(engine, "seed=0", exp.plan(engine))["cover"]
    model = engine.model(0, "trained")
    cap = engine.capture(0, "trained")
    assert {"seed", "state", "site", "depth", "site_kind", "q", "set", "n_channels", "mass",
            "mean_pair_mi_to_cover", "accuracy", "baseline_accuracy", "drop"} <= set(frame.columns)
    assert set(frame["set"]) == {"cover", "redundant", "random"}
    assert ((frame["baseline_accuracy"] - frame["accuracy"] - frame["drop"]).abs() < 1e-12).all()
    cover = frame.filter(pl.col("set") == "cover")
    assert (cover["n_channels"] == cover["cover_size"]).all() and cover["mass_reached"].all()
    assert ((cover["mass"] - cover["cover_mass"]).abs() < 1e-12).all()
    rnd = frame.filter(pl.col("set") == "random")
    assert (rnd["n_channels"] == rnd["cover_size"]).all()
    red = frame.filter(pl.col("set") == "redundant")
    assert (red.filter(pl.col("mass_reached"))["mass"] >= red.filter(pl.col("mass_reached"))
            ["cover_mass"] - 1e-12).all()
    short = red.filter(~pl.col("mass_reached"))
    assert short.height > 0  # at q = 0.8 the rest cannot match the cover
    assert ((short["mass"] + short["cover_mass"] - 1).abs() < 1e-9).all()
    channels_of = {s.name: s.channels for s in cap.sites}
    for row in short.iter_rows(named=True):  # every non-cover channel was taken
        assert row["n_channels"] + row["cover_size"] == channels_of[row["site"]]
    # the cover row is the knockout of the mass-q set, evaluated independently here
    site = next(s for s in cap.sites if s.name == "layer4.0.post_add")
    v = engine.estimator.label_mi(cap.acts[site.name], cap.labels, engine.num_classes)
    channels = mass_set(v, 0.3)
    iv = engine.plugin("interventions", "knockout")
    acc = engine.evaluate(model, [(site, iv, channels)]).accuracy
    row = cover.filter((pl.col("site") == site.name) & (pl.col("q") == 0.3))
    assert row["accuracy"].item() == acc and row["n_channels"].item() == channels.numel()
    engine.end_unit()
    out = exp.finalize(engine, {"cover": frame})
    assert set(out["summary_cover"]["set"]) == {"cover", "redundant", "random"}
    assert set(out["summary_cover_by_q"]["q"]) == {0.3, 0.8}


def test_cli_run_writes_tables_and_figures(cli_run_writes):
    run = cli_run_writes(
        TINY.replace("seeds: [0, 1]", "seeds: [0]")
        + "experiment: {kind: cover, q: [0.2], random_draws: 1}\n",
        ("tables/cover.parquet", "tables/summary_cover.parquet",
         "figures/cover_drop_by_depth.png", "figures/cover_drop_vs_q.png", "index.html"))
    frame = pl.read_parquet(run / "tables" / "cover.parquet")
    assert frame["site"].n_unique() == 4 and frame.height == 4 * 3
