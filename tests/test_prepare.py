"""Estimators prepare once (``interfaces.Prepares``).

The histogram estimator bins one site's activations once (``prepare``) and answers
label MI for any labels, input MI and diagnostics from that state; every answer must
equal its per-quantity method on the same activations bit for bit (``torch.equal``, and
the float bits of every diagnostic), on the compiled kernels and on the torch path (the
one CUDA runs), for ties, constant channels and every range and correction.
``analysis.prepare_site`` uses the state when an estimator has the ability and the
per-quantity methods when it does not, so third-party estimators work unchanged; and
``layer_mi`` writes the same tables either way.
"""

from __future__ import annotations

import hashlib
import math
import struct

import polars as pl
import pytest
import torch
from conftest import edge_case_layer

from mi_probe._core.analysis import PreparedSite, channel_masses, prepare_site
from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams
from mi_probe.builtin.experiments import layer_mi as layer_mi_module
from mi_probe.builtin.experiments.layer_mi import LayerMIExperiment, LayerMIParams
from mi_probe.errors import EstimatorError
from mi_probe.functional import counting
from mi_probe.functional import histogram as F
from mi_probe.interfaces import Captured, Diagnoses, Estimator, LayerMI, Prepares, Site

K = 5


def est(bins: int = 20, **kw) -> HistogramEstimator:
    return HistogramEstimator(HistogramParams(bins=bins, **kw))


def layer(n: int, c: int, seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) activations with every awkward column: ReLU-sparse, ties (few distinct
    values), constant, all-zero, one outlier, label-dependent; and labels in [0, K)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (n,), generator=g)
    acts = torch.randn(n, c, generator=g).relu()
    acts[:, 0] = 1.5                                                   # constant
    acts[:, 1 % c] = 0.0                                               # dead
    acts[:, 2 % c] = torch.randint(0, 3, (n,), generator=g).float()    # ties
    acts[:, 3 % c] = torch.randn(n, generator=g)
    acts[0, 3 % c] = 1e6                                               # one outlier
    acts[:, 4 % c] = labels.float() + 0.1 * torch.randn(n, generator=g)  # informative
    return acts.to(dtype), labels


def permutations(n: int, draws: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randperm(n, generator=g) for _ in range(draws)]


def same_float(a: float, b: float) -> bool:
    """Equal bits (NaN counts as equal to NaN: a site with no channels)."""
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and (struct.pack("<d", a) == struct.pack("<d", b)
                                   if isinstance(a, float) else a == b)


def assert_same_diagnostics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert same_float(a[key], b[key]), (key, a[key], b[key])


def assert_prepared_equals_per_quantity(e: HistogramEstimator, acts: torch.Tensor,
                                        labels: torch.Tensor, order: str = "label_first"):
    """Every prepared answer equals its per-quantity method, whatever is asked first."""
    state = e.prepare(acts)
    asks = {"label": lambda: [e.label_mi_prepared(state, labels[p], K)
                              for p in [torch.arange(len(labels))] + permutations(len(labels))],
            "input": lambda: e.input_mi_prepared(state),
            "diag": lambda: e.diagnostics_prepared(state)}
    sequence = {"label_first": ("label", "input", "diag"),
                "input_first": ("input", "label", "diag"),
                "diag_first": ("diag", "input", "label")}[order]
    got = {name: asks[name]() for name in sequence}
    want = [e.label_mi(acts, labels[p], K)
            for p in [torch.arange(len(labels))] + permutations(len(labels))]
    for a, b in zip(got["label"], want):
        assert a.dtype == torch.float64 and torch.equal(a, b)
    assert torch.equal(got["input"], e.input_mi(acts))
    assert_same_diagnostics(got["diag"], e.diagnostics(acts))
    # asking again answers the same (cached counts are not double counted)
    assert torch.equal(e.label_mi_prepared(state, labels, K), want[0])
    assert torch.equal(e.input_mi_prepared(state), got["input"])


ESTIMATORS = [dict(bins=20), dict(bins=2), dict(bins=7, range="quantile"),
              dict(bins=20, range="quantile", range_quantile=0.05),
              dict(bins=300),  # uint16 codes
              dict(bins=20, correction="miller_madow"),
              dict(bins=9, range="quantile", correction="miller_madow")]


# ---------------------------------------------------------------------------------------
# 1. bit-identical to the per-quantity methods
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("params", ESTIMATORS, ids=lambda p: "-".join(map(str, p.values())))
@pytest.mark.parametrize("n, c", [(400, 24), (1000, 64), (37, 5)])
def test_prepared_answers_equal_the_per_quantity_methods(params, n, c):
    e = est(**params)
    assert isinstance(e, Prepares) and isinstance(e, Diagnoses)
    acts, labels = layer(n, c, seed=n + c)
    assert_prepared_equals_per_quantity(e, acts, labels)


@pytest.mark.parametrize("order", ["label_first", "input_first", "diag_first"])
@pytest.mark.parametrize("params", [dict(bins=20), dict(bins=7, range="quantile")])
def test_the_order_of_questions_does_not_matter(order, params):
    acts, labels = layer(500, 33, seed=3)
    assert_prepared_equals_per_quantity(est(**params), acts, labels, order)


@pytest.mark.parametrize("case", ["all_ties", "all_constant", "one_sample", "one_channel",
                                  "no_channels", "float64", "float16", "huge_range",
                                  "negative_zero"])
def test_edge_cases_are_bit_identical(case):
    acts, labels = edge_case_layer(case, K)
    for params in ESTIMATORS:
        assert_prepared_equals_per_quantity(est(**params), acts, labels)


def test_chunked_counts_and_threads_give_identical_answers(monkeypatch):
    acts, labels = layer(700, 70, seed=5)
    for cells in (1, 150, 1000):  # one channel per chunk, uneven chunks with a tail
        assert_prepared_equals_per_quantity(est(20, chunk_cells=cells), acts, labels)
    monkeypatch.setattr(counting, "PARALLEL_MIN_STEPS", 0)  # split even this input
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert_prepared_equals_per_quantity(est(20), acts, labels)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("params", [dict(bins=20), dict(bins=7, range="quantile"),
                                    dict(bins=20, correction="miller_madow")])
def test_the_torch_path_is_bit_identical_too(params, monkeypatch):
    """Without numba (and on CUDA) codes are int64 tensors and counts are bincounts: the
    prepared answers still equal the per-quantity methods on that path."""
    monkeypatch.setattr(counting, "available", lambda: False)
    e = est(**params)
    acts, labels = layer(400, 24, seed=9)
    assert isinstance(e.prepare(acts).codes, torch.Tensor)
    assert_prepared_equals_per_quantity(e, acts, labels)
    assert_prepared_equals_per_quantity(est(**params, chunk_cells=100), acts, labels,
                                        "diag_first")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_prepared_answers_equal_the_per_quantity_methods():
    acts, labels = layer(1000, 64, seed=11)
    for params in ESTIMATORS:
        assert_prepared_equals_per_quantity(est(**params), acts.cuda(), labels.cuda())


def test_codes_are_binned_once_as_bin_uniform_bins():
    acts, labels = layer(300, 12, seed=2)
    e = est(20)
    state = e.prepare(acts)
    assert state.codes.dtype.itemsize == 1
    assert torch.equal(torch.from_numpy(state.codes).long(), F.bin_uniform(acts, 20))
    lo, hi = F.bin_range(acts, None)
    assert torch.equal(state.lo, lo) and torch.equal(state.hi, hi)
    q = est(20, range="quantile", range_quantile=0.05).prepare(acts)
    assert q.hi[3] < hi[3]  # the outlier of column 3 is clipped
    assert all(torch.equal(a, b) for a, b in zip((q.lo, q.hi), F.bin_range(acts, 0.05)))


# ---------------------------------------------------------------------------------------
# 2. errors are the per-quantity methods' errors
# ---------------------------------------------------------------------------------------

def test_prepare_refuses_what_label_mi_refuses():
    e = est(8)
    acts, labels = layer(100, 4)
    bad = acts.clone()
    bad[3, 1] = float("nan")
    for wrong in (bad, acts[:, 0], acts[:0]):
        with pytest.raises(EstimatorError):
            e.label_mi(wrong, labels[:len(wrong)], K)
        with pytest.raises(EstimatorError):
            e.prepare(wrong)
    state = e.prepare(acts)
    for wrong_labels, k in ((labels[:-1], K), (labels + K, K), (labels[:, None], K)):
        with pytest.raises(EstimatorError, match="labels"):
            e.label_mi_prepared(state, wrong_labels, k)
    with pytest.raises(EstimatorError, match="prepared with bins=8"):
        est(20).label_mi_prepared(state, labels, K)
    with pytest.raises(EstimatorError, match="quantile"):
        est(8, range="quantile").input_mi_prepared(state)
    # the Miller–Madow variant of the same binning answers from the same state
    mm = est(8, correction="miller_madow")
    assert torch.equal(mm.label_mi_prepared(state, labels, K), mm.label_mi(acts, labels, K))


# ---------------------------------------------------------------------------------------
# 3. analysis.prepare_site: the state when the estimator Prepares, else the fallback
# ---------------------------------------------------------------------------------------

class PlainEstimator:
    """A third-party estimator without Prepares (nor Diagnoses): per-quantity methods
    only, counting its calls."""

    name, reductions = "plain", frozenset()

    def __init__(self):
        self.calls: list[str] = []

    def label_mi(self, acts, labels, num_classes):
        self.calls.append("label_mi")
        onehot = torch.nn.functional.one_hot(labels, num_classes).double()
        return (acts.double().T @ onehot).abs().amax(1) / len(labels)

    def input_mi(self, acts):
        self.calls.append("input_mi")
        return None

    def layer_mi(self, acts, labels, num_classes, reduce):
        return LayerMI(None, self.label_mi(acts, labels, num_classes).mean().item())

    def bias(self, n_samples, num_classes):
        return 0.0

    def describe(self):
        return {"name": self.name}


class DiagnosingEstimator(PlainEstimator):
    def diagnostics(self, acts):
        self.calls.append("diagnostics")
        return {"plain_fact": float(acts.shape[0])}


def test_an_estimator_without_the_ability_is_used_through_its_methods():
    plain = PlainEstimator()
    assert isinstance(plain, Estimator) and not isinstance(plain, Prepares)
    acts, labels = layer(120, 6)
    site = prepare_site(plain, acts)
    assert isinstance(site, PreparedSite) and site.state is None
    assert torch.equal(site.label_mi(labels, K), plain.label_mi(acts, labels, K))
    assert site.input_mi() is None
    assert site.diagnostics() == {}  # no Diagnoses: no estimator facts
    assert plain.calls == ["label_mi", "label_mi", "input_mi"]
    diagnosing = DiagnosingEstimator()
    assert prepare_site(diagnosing, acts).diagnostics() == {"plain_fact": 120.0}


def test_an_estimator_with_the_ability_prepares_once_per_site():
    class Counting(HistogramEstimator):
        prepared = 0

        def prepare(self, acts):
            Counting.prepared += 1
            return super().prepare(acts)

        def label_mi(self, *args):  # never asked: every answer comes from the state
            raise AssertionError("per-quantity method used")

        input_mi = diagnostics = label_mi

    e = Counting(HistogramParams(bins=20))
    acts, labels = layer(200, 8)
    site = prepare_site(e, acts)
    for perm in [torch.arange(200)] + permutations(200):
        site.label_mi(labels[perm], K)
    site.input_mi()
    site.diagnostics()
    assert Counting.prepared == 1
    off = prepare_site(est(20), acts, use_state=False)
    assert off.state is None
    assert torch.equal(off.label_mi(labels, K), site.label_mi(labels, K))


def test_the_builtin_plugins_of_this_repo_keep_working_unprepared():
    """KSG and MINE (plugins/) do not opt in; prepare_site falls back for them."""
    for module, kind, kw in (("mi_probe_ksg.plugin", "ksg", {}),
                             ("mi_probe_mine.plugin", "infonce", {"steps": 2})):
        plugin = pytest.importorskip(module)
        registered = {}
        plugin.mi_probe_register_estimators(
            lambda name, factory, params: registered.update({name: (factory, params)}))
        factory, params_model = registered[kind]
        e = factory(params_model(**kw))
        assert not isinstance(e, Prepares)
        acts, labels = layer(80, 3)
        site = prepare_site(e, acts)
        assert site.state is None
        assert site.label_mi(labels, K).shape == (3,)


# ---------------------------------------------------------------------------------------
# 4. layer_mi and channel masses: the same tables with and without preparation
# ---------------------------------------------------------------------------------------

class _Ctx:
    """The part of the run context that layer_mi's run_unit and channel_masses use."""

    def __init__(self, estimator, captures):
        self.estimator, self.captures, self.num_classes = estimator, captures, K

    def capture(self, seed, state, need_logits=True):
        return self.captures[state]

    def rng(self, seed, purpose):
        digest = hashlib.sha256(f"{seed}/{purpose}".encode()).hexdigest()
        return torch.Generator().manual_seed(int(digest[:12], 16))


def _captures() -> dict[str, Captured]:
    out = {}
    for i, state in enumerate(("trained", "random")):
        sites, acts = [], {}
        for depth, c in enumerate((16, 32, 8)):
            x, labels = layer(300, c, seed=10 * i + depth)
            sites.append(Site(f"layer{depth}.post_add", f"layer{depth}", "post_add", c, depth))
            acts[sites[-1].name] = x
        logits = torch.randn(300, K, generator=torch.Generator().manual_seed(i))
        out[state] = Captured(acts, labels, logits, sites)
    return out


@pytest.mark.parametrize("params", [dict(bins=20), dict(bins=9, range="quantile"),
                                    dict(bins=20, correction="miller_madow")])
def test_layer_mi_tables_are_identical_with_and_without_preparation(params, monkeypatch):
    experiment = LayerMIExperiment(LayerMIParams(null_draws=3))
    ctx = _Ctx(est(**params), _captures())
    prepared = experiment.run_unit(ctx, "seed=0", None)
    calls = []

    def per_quantity(estimator, acts):
        calls.append(acts.shape)
        return prepare_site(estimator, acts, use_state=False)

    monkeypatch.setattr(layer_mi_module, "prepare_site", per_quantity)
    unprepared = experiment.run_unit(ctx, "seed=0", None)
    assert len(calls) == 6  # every (state, site) went through the fallback
    assert prepared.keys() == unprepared.keys() == {"layer_mi", "evaluation", "diagnostics",
                                                    "channel_mi"}
    for name, frame in prepared.items():
        assert frame.equals(unprepared[name]), name
    assert prepared["layer_mi"]["i_ty_null"].null_count() == 0


def test_layer_mi_runs_a_plugin_estimator_through_the_fallback():
    experiment = LayerMIExperiment(LayerMIParams(null_draws=2))
    plain = DiagnosingEstimator()
    tables = experiment.run_unit(_Ctx(plain, _captures()), "seed=0", None)
    assert tables["layer_mi"].height == 6
    assert tables["layer_mi"]["i_xt"].null_count() == 6
    assert tables["diagnostics"]["plain_fact"].to_list() == [300.0] * 6
    assert plain.calls.count("label_mi") == 6 * 3 and plain.calls.count("diagnostics") == 6


@pytest.mark.parametrize("kind", ["raw", "null_subtracted", "miller_madow"])
def test_channel_masses_are_identical_with_and_without_preparation(kind):
    captures = _captures()
    acts, labels = captures["trained"].acts["layer1.post_add"], captures["trained"].labels
    ctx = _Ctx(est(20), captures)
    ctx.plugin = lambda kind_, name, **p: HistogramEstimator(HistogramParams(**p))
    common = dict(seed=0, purpose="trained/layer1", null_draws=4)
    masses = [channel_masses(ctx, acts, labels, K, kind, **common),
              channel_masses(ctx, acts, labels, K, kind, **common,
                             prepared=prepare_site(ctx.estimator, acts)),
              channel_masses(ctx, acts, labels, K, kind, **common,
                             prepared=prepare_site(ctx.estimator, acts, use_state=False))]
    for other in masses[1:]:
        assert torch.equal(masses[0].raw, other.raw)
        assert torch.equal(masses[0].values, other.values)
        assert masses[0].signal == other.signal
    with pytest.raises(ValueError, match="prepared must bind these acts"):
        channel_masses(ctx, acts.clone(), labels, K, kind, **common,
                       prepared=prepare_site(ctx.estimator, acts))


def test_prepared_tables_have_the_same_dtypes_as_before():
    """Columns keep their dtypes (a prepared answer is float64 on the acts' device)."""
    tables = LayerMIExperiment(LayerMIParams()).run_unit(_Ctx(est(20), _captures()),
                                                        "seed=0", None)
    assert tables["channel_mi"].schema["i_ty"] == pl.Float64
    assert tables["diagnostics"].schema["frac_edge_bins"] == pl.Float64
