"""Bias-aware channel masses (issue: "numbers a researcher can trust", item 6).

Synthetic layers at the paper's scale (N = 3925 evaluation samples, 512 channels, 10
classes, 20 bins), where the plug-in floor (B−1)(K−1)/2N ≈ 0.022 nats per channel is
as large as real label information:

* a layer with no label signal: raw masses already give a q = 0.5 "top" set of ~235
  channels and a finite Gini; corrected masses must say "no structure";
* a layer where 10% of the channels are class specialists: raw masses dilute them
  (Gini ≈ 0.2, top set mostly noise), corrected masses must find them.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from mi_probe._core.analysis import ChannelMassParams, channel_masses, split_halves
from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams
from mi_probe.errors import SpecError
from mi_probe.functional import concentration as C
from mi_probe.functional.masses import null_subtracted, set_overlap, signal_test
from mi_probe.functional.selection import mass_set

N, CHANNELS, K, SPECIALISTS = 3925, 512, 10, 51


class _Ctx:
    """The part of the run context that channel_masses uses."""

    def __init__(self, estimator=None):
        self.estimator = estimator or HistogramEstimator(HistogramParams(bins=20))

    def rng(self, seed, purpose):
        digest = hashlib.sha256(f"{seed}/{purpose}".encode()).hexdigest()
        return torch.Generator().manual_seed(int(digest[:12], 16))

    def plugin(self, kind, name, **params):
        assert (kind, name) == ("estimators", "histogram")
        return HistogramEstimator(HistogramParams(**params))


def _layer(shift: float, seed: int = 0):
    """(N, 512) activations and labels; channels 0..50 are specialists of class c % 10
    (shifted by ``shift`` on that class), the rest pure noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (N,), generator=gen)
    acts = torch.randn(N, CHANNELS, generator=gen)
    specialists = torch.arange(SPECIALISTS)
    acts[:, specialists] += shift * (labels[:, None] == (specialists % K)[None, :]).float()
    return acts, labels


def _precision(channels: torch.Tensor) -> float:
    return float((channels < SPECIALISTS).double().mean())


@pytest.fixture(scope="module")
def no_signal():
    acts, labels = _layer(0.0)
    return channel_masses(_Ctx(), acts, labels, K, "null_subtracted", seed=0, purpose="none")


@pytest.fixture(scope="module")
def specialists():
    acts, labels = _layer(1.0)
    return channel_masses(_Ctx(), acts, labels, K, "null_subtracted", seed=0, purpose="spec")


def test_no_signal_layer_has_no_structure(no_signal):
    # the problem: raw plug-in masses select a large "top" set and report a Gini
    assert mass_set(no_signal.raw, 0.5).numel() > 200
    assert C.gini(no_signal.raw) > 0
    # corrected: the signal test finds no more channels above the null than chance
    assert not no_signal.signal.has_signal and not no_signal.usable
    assert no_signal.signal.p_value > 0.01
    assert mass_set(no_signal.values, 0.5).numel() == 0  # nothing to knock out


def test_specialists_are_found_by_corrected_masses(specialists):
    assert specialists.usable and specialists.signal.signal_channels >= SPECIALISTS - 5
    raw_gini, corrected_gini = C.gini(specialists.raw), C.gini(specialists.values)
    # measured: raw 0.18, corrected 0.84 (an ideal 10% / 90% split has Gini 0.90)
    assert raw_gini < 0.3 and corrected_gini > 0.75
    raw_top, corrected_top = mass_set(specialists.raw, 0.5), mass_set(specialists.values, 0.5)
    # measured: raw q = 0.5 set 191 channels, precision 0.27; corrected 29 channels, 1.0
    assert raw_top.numel() > 150 and _precision(raw_top) < 0.5
    assert _precision(corrected_top) >= 0.9


def test_raw_masses_are_the_estimator_and_unchanged():
    acts, labels = _layer(1.0, seed=3)
    est = HistogramEstimator(HistogramParams(bins=20))
    raw = channel_masses(_Ctx(est), acts, labels, K, "raw", seed=0, purpose="r")
    assert raw.signal is None and raw.usable
    assert torch.equal(raw.raw, est.label_mi(acts, labels, K).double())
    assert torch.equal(raw.values, raw.raw.clamp(min=0))


def test_corrected_masses_are_reproducible_and_seeded_by_purpose():
    acts, labels = _layer(1.0, seed=4)
    ctx = _Ctx()
    a = channel_masses(ctx, acts, labels, K, "null_subtracted", seed=0, purpose="site")
    b = channel_masses(ctx, acts, labels, K, "null_subtracted", seed=0, purpose="site")
    c = channel_masses(ctx, acts, labels, K, "null_subtracted", seed=0, purpose="other")
    assert torch.equal(a.values, b.values)
    assert not torch.equal(a.values, c.values)


def test_miller_madow_masses():
    acts, labels = _layer(1.0, seed=5)
    ctx = _Ctx()
    mm = channel_masses(ctx, acts, labels, K, "miller_madow", seed=0, purpose="mm")
    expected = HistogramEstimator(HistogramParams(bins=20, correction="miller_madow")
                                  ).label_mi(acts, labels, K).double().clamp(min=0)
    assert torch.equal(mm.values, expected)
    assert _precision(mass_set(mm.values, 0.5)) >= 0.9


def test_miller_madow_needs_the_histogram_estimator():
    class Other:
        name = "ksg"

    ctx = _Ctx()
    ctx.estimator = Other()
    with pytest.raises(SpecError, match="miller_madow is a histogram-estimator correction; "
                       "the spec's estimator is 'ksg'"):
        ChannelMassParams(mass="miller_madow").check_mass(ctx.estimator)
    ChannelMassParams(mass="null_subtracted").check_mass(ctx.estimator)  # any estimator


def test_null_subtracted_kernel():
    raw = torch.tensor([0.5, 0.1, 0.0])
    null = torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.0, 0.1]])
    assert null_subtracted(raw, null).tolist() == pytest.approx([0.3, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"raw \(C,\) and null \(D, C\); got \(3,\) and \(2, 2\)"):
        null_subtracted(raw, null[:, :2])


def test_signal_test_counts_channels_above_the_pooled_null():
    null = torch.linspace(0, 1, 1000).reshape(10, 100)  # 99% quantile ~ 0.99
    raw = torch.zeros(100)
    raw[:20] = 2.0  # 20 channels far above the null, where 1 is expected
    test = signal_test(raw, null)
    assert test.signal_channels == 20 and test.expected == pytest.approx(1.0)
    assert test.has_signal and test.p_value < 1e-10
    assert not signal_test(torch.zeros(100), null).has_signal


def test_set_overlap():
    assert set_overlap(torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 9])) == 0.5
    assert set_overlap(torch.tensor([], dtype=torch.int64), torch.tensor([1])) == 0.0


def test_split_halves_are_disjoint_stratified_and_cover_everything():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 1)
    a, b = split_halves(labels, torch.Generator().manual_seed(0))
    assert sorted(torch.cat([a, b]).tolist()) == list(range(18))
    assert not set(a.tolist()) & set(b.tolist())
    for k, size in ((0, 5), (1, 3)):
        assert int((labels[a] == k).sum()) == size


def test_paper_specs_use_the_papers_raw_masses():
    import pathlib

    import yaml

    channel_level = {"concentration", "knockout", "shuffle", "perturb", "semantic_knockout",
                     "cover", "transplant", "skip_gain"}
    root = pathlib.Path(__file__).resolve().parents[1] / "specs" / "paper"
    checked = 0
    for path in sorted(root.glob("*.yaml")):
        experiment = yaml.safe_load(path.read_text())["experiment"]
        if experiment["kind"] in channel_level:
            assert experiment.get("mass") == "raw", path.name
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("kind", ["raw", "null_subtracted", "miller_madow"])
@pytest.mark.parametrize("quantile", [None, 0.02])
def test_streamed_masses_equal_the_whole_matrix(kind, quantile):
    """channel_masses_streamed on row chunks (37 rows, not dividing N) gives exactly the
    masses, nulls and signal test of channel_masses on the whole matrix."""
    from mi_probe._core.analysis import channel_masses_streamed

    acts, labels = _layer(1.0)
    acts, labels = acts[:1000, :64], labels[:1000]
    ranges = {"range": "quantile", "range_quantile": quantile} if quantile else {}
    ctx = _Ctx(HistogramEstimator(HistogramParams(bins=12, **ranges)))
    whole = channel_masses(ctx, acts, labels, K, kind, seed=3, purpose="site", null_draws=4)
    chunks = lambda: iter(acts.split(37))  # noqa: E731
    streamed = channel_masses_streamed(ctx, chunks, acts.shape[1], labels, K, kind, seed=3,
                                       purpose="site", null_draws=4)
    assert streamed.kind == whole.kind == kind
    assert torch.equal(streamed.raw, whole.raw) and torch.equal(streamed.values, whole.values)
    assert (streamed.signal is None) == (whole.signal is None) == (kind == "raw")
    if kind != "raw":
        assert streamed.signal == whole.signal and whole.signal.has_signal
    assert whole.values.sum() > 0


def test_streamed_masses_need_an_estimator_that_streams():
    from mi_probe._core.analysis import channel_masses_streamed
    from mi_probe.errors import EstimatorError

    class Plain:  # label MI only: no Streams ability
        name = "plain"

    acts, labels = _layer(1.0)
    with pytest.raises(EstimatorError, match="estimator 'plain' does not stream"):
        channel_masses_streamed(_Ctx(Plain()), lambda: iter([acts]), acts.shape[1], labels,
                                K, "raw", seed=0, purpose="x")
