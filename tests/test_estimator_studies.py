"""Pairwise MI, Miller–Madow, the shuffled-label null, diagnostics, and the layer_pairs
and estimator_sweep experiments."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch
from sklearn.metrics import mutual_info_score

from mi_probe import cli
from mi_probe.builtin.estimators import HistogramEstimator, HistogramParams
from mi_probe.functional.histogram import bin_uniform
from mi_probe.functional.pairwise import block_sizes, pair_mi_from_codes
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
    assert (out / "figures" / "layer_pairs_trained.png").is_file()


def test_layer_pairs_value_is_the_mean_pair_mi(pm, tiny_spec_file, tmp_path, monkeypatch):
    from conftest import TINY_SPEC
    from mi_probe.builtin.estimator_studies import LayerPairs, LayerPairsParams
    from mi_probe.engine import Engine
    from mi_probe.spec import load_spec

    text = TINY_SPEC.replace("weights: train", "weights: random")
    spec = load_spec(tiny_spec_file(text=text), pm=pm)
    engine = Engine(spec, pm, cache_dir=tmp_path, log=lambda m: None, progress=False)
    exp = LayerPairs(LayerPairsParams(states=["random"], max_channels=None))
    frame = exp.run_unit(engine, "seed=0")["layer_pairs"]
    cap = engine.capture(0, "random")
    a, b = cap.sites[1], cap.sites[3]
    codes_a = bin_uniform(cap.acts[a.name], 8)
    codes_b = bin_uniform(cap.acts[b.name], 8)
    expected = sum(mutual_info_score(codes_a[:, i].numpy(), codes_b[:, j].numpy())
                   for i in range(a.channels) for j in range(b.channels)) / (a.channels * b.channels)
    got = frame.filter((pl.col("site") == a.name) & (pl.col("site_b") == b.name))["mi"].item()
    assert got == pytest.approx(expected, abs=1e-9)


def test_estimator_sweep_agreement(run_spec):
    tables, out = run_spec("{kind: estimator_sweep, bins: [4, 8, 16], fractions: [0.5, 1.0], "
                           "reference_bins: 8, states: [trained]}")
    sweep = tables["estimator_sweep"]
    assert set(sweep["bins"].unique()) == {4, 8, 16}
    assert set(sweep["n_samples"].unique()) == {30, 60}
    agree = tables["estimator_sweep_agreement"]
    ref = agree.filter((pl.col("bins") == 8) & (pl.col("fraction") == 1.0))
    assert ref["layer_rank_spearman"].item() == pytest.approx(1.0)
    assert ref["channel_rank_spearman"].item() == pytest.approx(1.0)
    assert agree["layer_rank_spearman"].drop_nulls().is_between(-1, 1).all()
    # more bins -> larger plug-in bias -> larger I(T;Y) on the same samples
    full = sweep.filter(pl.col("fraction") == 1.0).group_by("bins").agg(pl.col("i_ty").mean())
    values = dict(zip(full["bins"], full["i_ty"]))
    assert values[4] < values[8] < values[16]


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
