"""Pairwise MI, Miller–Madow, the shuffled-label null, diagnostics, and the layer_pairs
and estimator_sweep experiments."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch
from sklearn.metrics import mutual_info_score

from mi_probe import cli
from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams
from mi_probe.builtin.experiments.layer_pairs import LayerPairs, LayerPairsParams
from mi_probe.functional.histogram import bin_uniform
from mi_probe.functional.pairwise import block_sizes, pair_mi_from_codes
from mi_probe.interfaces import Plan
from mi_probe.testing import gaussian_mi


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_pair_mi_equals_sklearn_for_every_pair_and_block_size():
    g = gen()
    a = torch.randn(700, 9, generator=g)
    b = torch.cat([a[:, :4] + 0.3 * torch.randn(700, 4, generator=g),
                   torch.randn(700, 3, generator=g)], dim=1)
    ca, cb = bin_uniform(a, 12), bin_uniform(b, 12)
    ref = torch.tensor([[mutual_info_score(ca[:, i].numpy(), cb[:, j].numpy()) for j in range(7)]
                        for i in range(9)], dtype=torch.float64)
    for cells in (144, 1000, 1 << 24):  # one pair per block, several, everything at once
        got = pair_mi_from_codes(ca, cb, 12, max_cells=cells)
        assert got.shape == (9, 7)
        assert (got - ref).abs().max() < 1e-9
    assert block_sizes(9, 7, 12, 144) == (1, 1)


def test_pair_mi_of_a_channel_with_itself_is_its_entropy():
    codes = bin_uniform(torch.randn(400, 5, generator=gen(1)), 10)
    mi = pair_mi_from_codes(codes, codes, 10)
    from mi_probe.functional.histogram import entropy_from_codes

    assert torch.allclose(mi.diagonal(), entropy_from_codes(codes, 10), atol=1e-12)
    assert torch.allclose(mi, mi.T, atol=1e-12)


@pytest.mark.parametrize("rho", [0.5, 0.75, 0.9])
def test_histogram_pair_mi_on_correlated_gaussians(rho):
    """N = 200 000, B = 50: the binned estimate is within 0.015 nats of −½ ln(1 − ρ²)
    (measured: +0.002, +0.001, −0.009; coarse bins lose information at high ρ, the
    plug-in bias adds about (B−1)²/(2N) = 0.006)."""
    g = gen(2)
    z = torch.randn(200_000, 2, generator=g, dtype=torch.float64)
    a = z[:, :1]
    b = rho * a + math.sqrt(1 - rho * rho) * z[:, 1:]
    est = HistogramEstimator(HistogramParams(bins=50))
    got = est.pair_mi(a.float(), b.float()).item()
    assert abs(got - gaussian_mi(rho)) < 0.015, (got, gaussian_mi(rho))


def test_permutation_null_of_pair_mi_is_the_bias_only():
    g = gen(3)
    a = torch.randn(5000, 1, generator=g)
    b = torch.randn(5000, 1, generator=g)
    est = HistogramEstimator(HistogramParams(bins=20))
    assert est.pair_mi(a, b).item() < 3 * (19 * 19) / (2 * 5000)


def test_miller_madow_removes_most_of_the_bias_on_independent_data():
    """N = 5000, B = 20, K = 10, 64 independent channels: plug-in ≈ bias 0.0171 nats;
    Miller–Madow brings the mean within 0.004 of zero."""
    g = gen(4)
    x = torch.randn(5000, 64, generator=g)
    y = torch.randint(0, 10, (5000,), generator=g)
    plain = HistogramEstimator(HistogramParams())
    mm = HistogramEstimator(HistogramParams(correction="miller_madow"))
    raw = plain.label_mi(x, y, 10).mean().item()
    corrected = mm.label_mi(x, y, 10).mean().item()
    assert abs(raw - plain.bias(5000, 10)) < 0.003
    assert abs(corrected) < 0.004 and mm.bias(5000, 10) == 0.0
    assert abs(corrected) < raw / 4


def test_miller_madow_stays_close_to_the_closed_form():
    from mi_probe.testing import closed_form_label_mi, uniform_shift_sample

    acts, labels = uniform_shift_sample(100_000, 10, 2, gen(5))
    mm = HistogramEstimator(HistogramParams(bins=22, correction="miller_madow"))
    assert (mm.label_mi(acts, labels, 10) - closed_form_label_mi(10)).abs().max() < 0.01


def test_diagnostics_flag_constant_saturated_and_edge_heavy_channels():
    n = 1000
    g = gen(6)
    uniform = torch.rand(n, 1, generator=g)  # fills the bins evenly: near the log B cap
    constant = torch.zeros(n, 1)
    sparse = (torch.rand(n, 1, generator=g) < 0.1).float()  # all samples in edge bins
    diag = HistogramEstimator(HistogramParams(bins=10)).diagnostics(
        torch.cat([uniform, constant, sparse], dim=1))
    assert diag["n_constant"] == 1
    assert diag["frac_near_cap"] == pytest.approx(1 / 3)
    # uniform: 2/10 of samples in edge bins; constant: all in bin 0; sparse: all
    assert diag["frac_edge_bins"] == pytest.approx((0.2 + 1 + 1) / 3, abs=0.03)
    assert diag["i_xt_cap"] == pytest.approx(math.log(10))


class PlantedContext:
    """The parts of a run context that layer_pairs and estimator_sweep use, holding
    planted activations (one capture for every seed and state)."""

    def __init__(self, acts: dict[str, torch.Tensor], bins: int = 20, num_classes: int = 3):
        from mi_probe.interfaces import Captured, Site

        n = next(iter(acts.values())).shape[0]
        self.estimator = HistogramEstimator(HistogramParams(bins=bins))
        self.num_classes = num_classes
        sites = [Site(name, f"m.{name}", "block", a.shape[1], depth)
                 for depth, (name, a) in enumerate(acts.items())]
        labels = torch.arange(n) % num_classes
        self.cap = Captured(acts=acts, labels=labels, sites=sites)

    def capture(self, seed, state, need_logits=True):
        return self.cap

    def rng(self, seed, purpose):
        from mi_probe._core.train import derive_seed

        return torch.Generator().manual_seed(derive_seed(seed, purpose))

    def progress(self, message):
        pass


def planted_layers(n: int = 4000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three 8-channel layers: a and b independent N(0, 1); c = a + 0.5 · noise, so
    only its 8 channel pairs (a_i, c_i) depend, each with I = ½ ln 5 = 0.805 nats."""
    g = gen(seed)
    a = torch.randn(n, 8, generator=g, dtype=torch.float64)
    b = torch.randn(n, 8, generator=g, dtype=torch.float64)
    c = a + 0.5 * torch.randn(n, 8, generator=g, dtype=torch.float64)
    return {"a": a, "b": b, "c": c}


def test_layer_pairs_null_is_the_floor_and_the_excess_shows_planted_dependence():
    """Issue 11.7, planted: N = 4000, B = 20 (first-order pair bias (B−1)²/2N = 0.0451).
    Independent layer pairs (and c ≠ d within a layer) have mean pair MI ≈ 0.037, all
    floor: their row-permuted null equals it within 0.002 (the null sd over draws is
    ~4e-4), so mi_excess ≈ 0. The dependent pair (a, c) has 8 strong pairs of 64:
    mi_excess ≈ (1/8)·½ ln 5 = 0.101 (measured 0.094: 20 bins lose a little of each
    pair's 0.805 nats). Without the null, a/b (0.037) and a/c (0.131) differ by less
    than 4×, with it by > 40×."""
    ctx = PlantedContext(planted_layers())
    exp = LayerPairs(LayerPairsParams(states=["trained"], null_draws=3))
    frame = exp.run_unit(ctx, "seed=0", Plan(("seed=0",)))["layer_pairs"]
    rows = {(r["site"], r["site_b"]): r for r in frame.iter_rows(named=True)}
    assert len(rows) == 9
    bias = 19 * 19 / (2 * 4000)
    for (x, y), row in rows.items():
        assert row["mi_bias"] == pytest.approx(bias) and row["n_samples"] == 4000
        assert row["mi_excess"] == row["mi"] - row["mi_null"]  # not clipped
        assert 0 < row["mi_null_sd"] < 0.002
        assert 0.6 * bias < row["mi_null"] < bias  # empty tail cells: below first order
        mirror = rows[(y, x)]  # the matrix is symmetric
        assert all(mirror[v] == row[v] for v in ("mi", "mi_null", "mi_null_sd", "mi_excess"))
        if {x, y} != {"a", "c"}:
            assert abs(row["mi_excess"]) < 0.002, (x, y, row)
    dependent = rows[("a", "c")]
    assert abs(dependent["mi_excess"] - 0.5 * math.log(5) / 8) < 0.012
    assert dependent["mi_excess"] > 40 * abs(rows[("a", "b")]["mi_excess"])
    assert dependent["mi"] < 4 * rows[("a", "b")]["mi"]
    # layer distance, and the planted pair ranks first among pairs of distinct sites
    assert dependent["distance"] == 2 and rows[("a", "a")]["distance"] == 0
    assert dependent["pair_rank"] == rows[("c", "a")]["pair_rank"] == 1
    assert rows[("a", "a")]["pair_rank"] is None
    assert sorted({r["pair_rank"] for r in rows.values() if r["distance"]}) == [1, 2, 3]


def test_layer_pairs_null_is_seeded_row_permutations_of_one_side():
    """mi_null is the mean over null_draws of the mean pair MI of (a[perm], b), with perm
    drawn from ctx.rng(seed, "pairs-null/<state>/<a>/<b>/<draw>"), exactly; mi_null_sd
    is their sample sd; the same unit twice gives identical rows."""
    acts = planted_layers(n=600)
    ctx = PlantedContext(acts, bins=10)
    exp = LayerPairs(LayerPairsParams(states=["random"], null_draws=3))
    frame = exp.run_unit(ctx, "seed=5", Plan(("seed=5",)))["layer_pairs"]
    assert frame.equals(exp.run_unit(ctx, "seed=5", Plan(("seed=5",)))["layer_pairs"])
    draws = []
    for d in range(3):
        perm = torch.randperm(600, generator=ctx.rng(5, f"pairs-null/random/a/c/{d}"))
        draws.append(ctx.estimator.pair_mi(acts["a"][perm], acts["c"]).mean().item())
    row = frame.filter((pl.col("site") == "a") & (pl.col("site_b") == "c")).row(0, named=True)
    assert row["mi_null"] == sum(draws) / 3
    assert row["mi_null_sd"] == torch.tensor(draws, dtype=torch.float64).std().item()
    within = []
    for d in range(3):
        perm = torch.randperm(600, generator=ctx.rng(5, f"pairs-null/random/b/b/{d}"))
        mi = ctx.estimator.pair_mi(acts["b"][perm], acts["b"])
        within.append(mi[~torch.eye(8, dtype=torch.bool)].mean().item())
    row = frame.filter((pl.col("site") == "b") & (pl.col("site_b") == "b")).row(0, named=True)
    assert row["mi_null"] == sum(within) / 3 and row["n_pairs"] == 56


@pytest.mark.parametrize("draws", [0, 1, 2])
def test_layer_pairs_null_cost_and_columns(draws, monkeypatch):
    """Each null draw is one more pair_mi call per layer pair (the default, one draw,
    doubles the cost); one draw gives mi_null without an sd; none gives null columns
    and no null figures."""
    ctx = PlantedContext(planted_layers(n=300), bins=8)
    calls = []
    real = ctx.estimator.pair_mi
    monkeypatch.setattr(ctx.estimator, "pair_mi", lambda a, b: calls.append(1) or real(a, b))
    exp = LayerPairs(LayerPairsParams(states=["trained", "random"], null_draws=draws))
    frame = exp.run_unit(ctx, "seed=0", Plan(("seed=0",)))["layer_pairs"]
    assert len(calls) == 2 * 6 * (1 + draws)  # states x layer pairs (3 sites) x (1 + draws)
    assert frame["mi_null"].null_count() == (frame.height if draws == 0 else 0)
    assert frame["mi_excess"].null_count() == (frame.height if draws == 0 else 0)
    assert frame["mi_null_sd"].null_count() == (0 if draws > 1 else frame.height)
    tables = {"layer_pairs": frame}
    tables.update(exp.finalize(None, tables))
    figs = exp.figures(tables)
    excess = {"layer_pairs_excess_trained", "layer_pairs_excess_random",
              "layer_pairs_delta_excess"}
    assert excess <= set(figs) if draws else not excess & set(figs)
    assert {"layer_pairs_trained", "layer_pairs_random", "layer_pairs_delta"} <= set(figs)
    assert LayerPairsParams().null_draws == 1


def test_layer_pairs_states_what_the_quantity_can_and_cannot_show():
    """The null-subtracted figure's subtitle says what the quantity shows (dependence
    above the plug-in floor, relative) and what it cannot (absolute MI: log B cap, the
    (B−1)²/2N bias, the mean over pairs); the raw figure gives the measured floor; the
    notes repeat it with this run's numbers."""
    ctx = PlantedContext(planted_layers(n=300), bins=8)
    exp = LayerPairs(LayerPairsParams(states=["trained"]))
    tables = {"layer_pairs": exp.run_unit(ctx, "seed=0", Plan(("seed=0",)))["layer_pairs"]}
    figs = exp.figures(tables)
    excess = figs["layer_pairs_excess_trained"].title
    assert "above the row-permuted null" in excess.text
    text = " ".join(excess.subtitle)
    for phrase in ("more than the plug-in floor", "relative to other pairs", "absolute MI",
                   "capped at log B", "(B−1)²/2N", "many weak pairs with few strong ones"):
        assert phrase in text, phrase
    floor = tables["layer_pairs"]["mi_null"].mean()
    assert f"mean {floor:.3f} nats" in figs["layer_pairs_trained"].title.subtitle[0]
    notes = " ".join(exp.notes(tables))
    assert "Cannot show: an absolute MI" in notes and f"{floor:.4f}" in notes
    assert f"(B−1)²/2N = {49 / 600:.4f}" in notes


@pytest.fixture
def run_spec(tmp_path, monkeypatch, pm, capsys, tiny_spec_file):
    monkeypatch.setenv("MI_PROBE_CACHE", str(tmp_path / "cache"))

    def call(experiment: str, extra: str = ""):
        from conftest import TINY_SPEC

        text = TINY_SPEC.replace("experiment: {kind: layer_mi}", f"experiment: {experiment}")
        path = tiny_spec_file(extra, text=text, name="s.yaml")
        out = tmp_path / "run"
        code = cli.main(["run", str(path), "--out", str(out), "--no-progress"], pm=pm)
        assert code == 0, capsys.readouterr().err
        return {p.stem: pl.read_parquet(p) for p in (out / "tables").glob("*.parquet")}, out

    return call


def test_layer_pairs_matrix(run_spec):
    tables, out = run_spec("{kind: layer_pairs, max_channels: 16}")
    pairs = tables["layer_pairs"]
    sites = pairs["site"].unique().to_list()
    assert len(sites) == 4  # the four post_add sites of test_resnet
    for state in ("trained", "random"):
        part = pairs.filter(pl.col("state") == state)
        assert part.height == 16  # full symmetric 4 x 4 matrix
        matrix = {(r["site"], r["site_b"]): r["mi"] for r in part.iter_rows(named=True)}
        for (a, b), value in matrix.items():
            assert value == pytest.approx(matrix[(b, a)])
            assert value >= 0
    diag = pairs.filter(pl.col("site") == pl.col("site_b"))
    assert (diag["n_pairs"] == 16 * 15).all()  # c != d within a (subsampled) layer
    assert "layer_pairs_delta" in tables
    # the row-permuted null (one draw by default) and the value above it
    assert pairs["mi_null"].is_finite().all() and pairs["mi_null_sd"].is_null().all()
    assert ((pairs["mi"] - pairs["mi_null"] - pairs["mi_excess"]).abs() < 1e-15).all()
    assert (pairs["mi_bias"] == 7 * 7 / (2 * 60)).all() and (pairs["n_samples"] == 60).all()
    assert "delta_mi_excess" in tables["layer_pairs_delta"].columns
    assert "mi_excess_mean" in tables["summary_layer_pairs"].columns
    for name in ("layer_pairs_trained", "layer_pairs_excess_trained",
                 "layer_pairs_excess_random", "layer_pairs_delta", "layer_pairs_delta_excess"):
        assert (out / "figures" / f"{name}.png").is_file(), name


def test_layer_pairs_value_is_the_mean_pair_mi(pm, tiny_spec_file, tmp_path, monkeypatch):
    from conftest import TINY_SPEC
    from mi_probe.builtin.experiments.layer_pairs import LayerPairs, LayerPairsParams
    from mi_probe._core.runner.context import Engine
    from mi_probe._core.spec import load_spec

    text = TINY_SPEC.replace("weights: train", "weights: random")
    spec = load_spec(tiny_spec_file(text=text), pm=pm)
    engine = Engine(spec, pm, cache_dir=tmp_path, log=lambda m: None, progress=False)
    exp = LayerPairs(LayerPairsParams(states=["random"], max_channels=None))
    frame = exp.run_unit(engine, "seed=0", exp.plan(engine))["layer_pairs"]
    cap = engine.capture(0, "random")
    a, b = cap.sites[1], cap.sites[3]
    codes_a = bin_uniform(cap.acts[a.name], 8)
    codes_b = bin_uniform(cap.acts[b.name], 8)
    expected = sum(mutual_info_score(codes_a[:, i].numpy(), codes_b[:, j].numpy())
                   for i in range(a.channels) for j in range(b.channels)) / (a.channels * b.channels)
    got = frame.filter((pl.col("site") == a.name) & (pl.col("site_b") == b.name))["mi"].item()
    assert got == pytest.approx(expected, abs=1e-9)


def test_estimator_sweep_agreement(run_spec):
    """bins × range × fraction grid (the range swept by default for the histogram);
    agreement rows leave out the reference itself and compare sample sizes on disjoint
    subsamples; the quantile rows are the estimator with
    range: quantile on the same subsets; range figures are drawn."""
    tables, out = run_spec("{kind: estimator_sweep, bins: [4, 8, 16], fractions: [0.5, 1.0], "
                           "reference_bins: 8, states: [trained]}")
    sweep = tables["estimator_sweep"]
    assert set(sweep["bins"].unique()) == {4, 8, 16}
    assert set(sweep["range"].unique()) == {"minmax", "quantile"}
    assert set(sweep["n_samples"].unique()) == {30, 60}
    assert sweep.height == 3 * 2 * 2 * 4  # bins x ranges x fractions x sites
    agree = tables["estimator_sweep_agreement"]
    # binning rows: the 5 other (bins, range) settings on the reference's images; the
    # reference is never compared with itself (rho = 1 by construction)
    binning = agree.filter(pl.col("comparison") == "binning")
    assert binning.height == 3 * 2 - 1 and (binning["fraction"] == 1.0).all()
    assert binning.filter((pl.col("bins") == 8) & (pl.col("range") == "minmax")).height == 0
    # sample-size rows: two disjoint halves of 30 images each, with the reference estimator
    # (the full set cannot be split into two disjoint samples of its own size)
    halves = agree.filter(pl.col("comparison") == "disjoint_subsamples")
    assert halves.select("bins", "range", "fraction", "n_samples").rows() == [
        (8, "minmax", 0.5, 30)]
    assert agree["layer_rank_spearman"].drop_nulls().is_between(-1, 1).all()
    # more bins -> larger plug-in bias -> larger I(T;Y) on the same samples
    full = sweep.filter((pl.col("fraction") == 1.0) & (pl.col("range") == "minmax")
                        ).group_by("bins").agg(pl.col("i_ty").mean())
    values = dict(zip(full["bins"], full["i_ty"]))
    assert values[4] < values[8] < values[16]
    summary = tables["summary_estimator_sweep_agreement"]
    assert set(summary["range"].unique()) == {"minmax", "quantile"}
    for name in ("sweep_i_xt_by_range", "sweep_i_ty_by_range", "sweep_i_ty_by_bins",
                 "sweep_layer_rank_agreement_trained"):
        assert (out / "figures" / f"{name}.png").is_file(), name


def test_estimator_sweep_range_rows_are_the_quantile_estimator(pm, tiny_spec_file, tmp_path):
    """A quantile row holds exactly what HistogramEstimator(range: quantile) gives on the
    captured activations (full evaluation set), and differs from the min/max row."""
    from conftest import TINY_SPEC
    from mi_probe.builtin.experiments.estimator_sweep import EstimatorSweep, EstimatorSweepParams
    from mi_probe._core.runner.context import Engine
    from mi_probe._core.spec import load_spec

    text = TINY_SPEC.replace("weights: train", "weights: random").replace(
        "bins: 8}", "bins: 8, range_quantile: 0.05}")
    spec = load_spec(tiny_spec_file(text=text), pm=pm)
    engine = Engine(spec, pm, cache_dir=tmp_path, log=lambda m: None, progress=False)
    exp = EstimatorSweep(EstimatorSweepParams(states=["random"], bins=[8], fractions=[1.0],
                                              reference_bins=8))
    assert list(exp.plan(engine).units) == ["seed=0"]
    frame = exp.run_unit(engine, "seed=0", exp.plan(engine))["estimator_sweep"]
    cap = engine.capture(0, "random")
    site = cap.sites[-1]
    quantile = HistogramEstimator(HistogramParams(bins=8, range="quantile", range_quantile=0.05))
    row = frame.filter((pl.col("site") == site.name) & (pl.col("range") == "quantile"))
    assert row["i_xt"].item() == quantile.input_mi(cap.acts[site.name]).mean().item()
    other = frame.filter((pl.col("site") == site.name) & (pl.col("range") == "minmax"))
    assert other["i_xt"].item() != row["i_xt"].item()


def test_estimator_sweep_range_settings_are_checked(pm, tiny_spec_file, capsys):
    """reference_range outside ranges is refused (exit 2) before anything runs; ranges
    must be distinct and known."""
    from conftest import TINY_SPEC
    from pydantic import ValidationError

    from mi_probe.builtin.experiments.estimator_sweep import EstimatorSweepParams

    text = TINY_SPEC.replace("experiment: {kind: layer_mi}",
                             "experiment: {kind: estimator_sweep, bins: [8], reference_bins: 8, "
                             "ranges: [quantile], reference_range: minmax}")
    path = tiny_spec_file(text=text)
    out = str(path.parent / "r")
    assert cli.main(["run", str(path), "--out", out, "--no-progress"], pm=pm) == 2
    err = capsys.readouterr().err
    assert "reference_range ('minmax') must be in ranges ['quantile']" in err
    assert "Traceback" not in err
    with pytest.raises(ValidationError, match="ranges must be distinct"):
        EstimatorSweepParams(ranges=["minmax", "minmax"])
    with pytest.raises(ValidationError, match="ranges"):
        EstimatorSweepParams(ranges=["iqr"])


def test_estimator_sweep_without_a_range_parameter():
    """An estimator with bins but no range parameter: the default sweeps its own binning
    only (range column null, reference row agrees with itself); asking for ranges is a
    SpecError naming the estimator."""
    from types import SimpleNamespace

    from mi_probe.builtin.experiments.estimator_sweep import EstimatorSweep, EstimatorSweepParams
    from mi_probe.errors import SpecError

    class NoRange:
        def model_dump(self, mode="python"):
            return {"kind": "binned_plugin", "bins": 8}

    built = []

    def plugin(kind, name, **params):
        built.append(params)
        return HistogramEstimator(HistogramParams(**params))

    ctx = SimpleNamespace(spec=SimpleNamespace(estimator=NoRange(), seeds=[0]), plugin=plugin)
    exp = EstimatorSweep(EstimatorSweepParams(bins=[4, 8], fractions=[1.0], reference_bins=8))
    plan = exp.plan(ctx)
    assert list(plan.units) == ["seed=0"]
    assert built == [{"bins": 4}, {"bins": 8}]  # no range passed to the estimator
    assert set(exp._estimators(ctx, plan)) == {(4, None, None), (8, None, None)}  # no binning
    planted = PlantedContext(planted_layers(n=200))
    ctx.capture, ctx.rng, ctx.num_classes = planted.capture, planted.rng, 3
    tables = EstimatorSweep(exp.params).run_unit(ctx, "seed=0", plan)  # a fresh instance
    assert tables["estimator_sweep"]["range"].is_null().all()
    agree = tables["estimator_sweep_agreement"]
    assert agree.select("bins", "comparison").rows() == [(4, "binning")]
    # planted layers rank the same at 4 bins as at 8
    assert agree["layer_rank_spearman"].item() > 0.5
    tables.update(exp.finalize(None, tables))
    assert tables["summary_estimator_sweep_agreement"].height == 1
    figs = exp.figures(tables)
    assert "sweep_i_xt_by_range" not in figs and "sweep_layer_rank_agreement_trained" in figs
    with pytest.raises(SpecError, match="estimator 'binned_plugin' has no range parameter"):
        EstimatorSweep(EstimatorSweepParams(bins=[8], reference_bins=8,
                                            ranges=["minmax"])).plan(ctx)


def test_estimator_sweep_reference_must_be_in_the_grid(pm, tiny_spec_file):
    from conftest import TINY_SPEC

    text = TINY_SPEC.replace("experiment: {kind: layer_mi}",
                             "experiment: {kind: estimator_sweep, bins: [4, 8], reference_bins: 20}")
    path = tiny_spec_file(text=text)
    assert cli.main(["run", str(path), "--out", str(path.parent / "r"), "--no-progress"], pm=pm) == 2


def test_layer_mi_null_sits_near_the_bias(run_spec):
    tables, _ = run_spec("{kind: layer_mi, states: [random], null_draws: 4}",)
    layer = tables["layer_mi"]
    assert layer["i_ty_null"].is_finite().all() and (layer["i_ty_null_sd"] >= 0).all()
    # a null estimate is a plug-in estimate on independent labels: about the bias
    assert (layer["i_ty_null"] < 3 * layer["i_ty_bias"]).all()
