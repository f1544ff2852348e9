"""The ``skip_gain`` experiment (paper App. A): the skip-gain hooks against manual block
computations, hook removal, the experiment through the engine (g = 1 reproduces the
unmodified network exactly), its error paths and an end-to-end CLI run."""

from __future__ import annotations

from types import SimpleNamespace

import polars as pl
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from mi_probe.builtin.adapters.generic import GenericAdapter
from mi_probe.builtin.adapters.resnet import ResNetAdapter
from mi_probe.builtin.adapters.vgg import VGGAdapter
from mi_probe.builtin.experiments.skip_gain import SkipGain, SkipGainParams
from mi_probe.errors import SiteError, SpecError
from mi_probe.functional.concentration import gini
from mi_probe._core.models import build_model

ADAPTERS = {"vgg": VGGAdapter, "resnet": ResNetAdapter, "generic": GenericAdapter}

TINY = """\
name: tiny_skip
seeds: [0]
data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 60, image_size: 16, noise: 0.5}
model:
  arch: test_resnet
  weights: train
  train: {epochs: 2, batch_size: 16, lr: 0.05}
sites: {include: ["*.post_add"]}
estimator: {kind: histogram, bins: 8}
report: {formats: [png]}
"""

BLOCKS = ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]  # test_resnet


pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def model():
    return build_model("test_resnet", 3, 0, None, "timm", False).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _with_gain(model, block, gain, x):
    """Logits, the block's input and its output with the skip scaled by ``gain``."""
    seen = {}
    module = model.get_submodule(block)
    handles = ResNetAdapter().skip_gain_hooks(model, block, gain)
    handles.append(module.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("in", a[0].clone())))
    handles.append(module.register_forward_hook(lambda m, a, o: seen.__setitem__("out", o.clone())))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, seen["in"], seen["out"]


def _residual(block, x):
    """The residual branch of a timm BasicBlock / Bottleneck, computed by hand."""
    if hasattr(block, "conv3"):
        y = block.act1(block.bn1(block.conv1(x)))
        y = block.aa(block.act2(block.drop_block(block.bn2(block.conv2(y)))))
        return block.bn3(block.conv3(y)), block.act3
    y = block.aa(block.act1(block.drop_block(block.bn1(block.conv1(x)))))
    return block.bn2(block.conv2(y)), block.act2


@pytest.mark.parametrize("block", BLOCKS)
def test_gain_one_reproduces_the_network_exactly(model, x, block):
    with torch.no_grad():
        plain = model(x)
    logits, _, _ = _with_gain(model, block, 1.0, x)
    assert torch.equal(logits, plain)
    assert _no_hooks(model)


def test_gain_zero_on_an_identity_shortcut_is_the_residual_alone(model, x):
    block = model.get_submodule("layer1.0")
    assert block.downsample is None  # identity shortcut
    _, inp, out = _with_gain(model, "layer1.0", 0.0, x)
    with torch.no_grad():
        residual, act = _residual(block, inp)
        manual = act(residual.clone())
    assert torch.allclose(out, manual, atol=1e-6, rtol=0)
    _, _, normal = _with_gain(model, "layer1.0", 1.0, x)
    assert not torch.allclose(out, normal)


@pytest.mark.parametrize("block_path", BLOCKS)
@pytest.mark.parametrize("gain", [0.0, 0.5, 2.0])
def test_block_computes_act_of_residual_plus_gain_times_shortcut(model, x, block_path, gain):
    block = model.get_submodule(block_path)
    _, inp, out = _with_gain(model, block_path, gain, x)
    with torch.no_grad():
        residual, act = _residual(block, inp)
        shortcut = block.downsample(inp) if block.downsample is not None else inp
        manual = act(residual + gain * shortcut)
    assert torch.allclose(out, manual, atol=1e-5, rtol=1e-5)
    assert _no_hooks(model)


def test_adapter_refuses_what_is_not_a_residual_block(model):
    adapter = ResNetAdapter()
    with pytest.raises(SiteError, match="does not exist"):
        adapter.skip_gain_hooks(model, "layer9.0", 0.5)
    with pytest.raises(SiteError, match="not a ResNet BasicBlock/Bottleneck"):
        adapter.skip_gain_hooks(model, "layer1", 0.5)
    assert _no_hooks(model)


class VGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())


def _fake_ctx(model, arch="vgg11", adapter="auto"):
    def choose(m):  # the engine's rule: the forced adapter, else the first that claims
        names = [adapter] if adapter != "auto" else ["resnet", "vgg", "generic"]
        return next(a for a in (ADAPTERS[n]() for n in names) if a.claims(m, arch))

    return SimpleNamespace(
        spec=SimpleNamespace(seeds=[0], sites=SimpleNamespace(adapter=adapter),
                             model=SimpleNamespace(arch=arch)),
        model=lambda seed, state: model, adapter=choose,
        plugin=lambda kind, name: ADAPTERS[name]())


def test_a_vgg_is_refused_clearly():
    exp = SkipGain(SkipGainParams())
    with pytest.raises(SpecError, match=r"skip_gain needs a site adapter with "
                       r"skip_gain_hooks.*'vgg11' is a VGG handled by adapter 'vgg'"):
        exp.plan(_fake_ctx(VGG()))


def test_a_forced_other_adapter_is_refused(model):
    with pytest.raises(SpecError, match="handled by adapter 'generic'"):
        SkipGain(SkipGainParams()).plan(_fake_ctx(model, "test_resnet", "generic"))
    assert list(SkipGain(SkipGainParams()).plan(_fake_ctx(model, "test_resnet")).units) == ["seed=0"]


def test_params_validate():
    with pytest.raises(ValidationError, match="gains must be finite"):
        SkipGainParams(gains=[1.0, float("nan")])
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        SkipGainParams(gain=[1.0])
    assert SkipGainParams().gains == [0.0, 0.5, 1.0, 1.5]


# -------------------------------------------------------------------- engine and CLI


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_engine):
    # post_add sites only: the pre_add sites are captured by the experiment itself
    return tiny_engine(tmp_path_factory.mktemp("skip"),
                       TINY + "experiment: {kind: skip_gain, gains: [0.0, 1.0, 1.5]}\n")


def test_run_unit_through_the_engine(engine):
    exp = engine.experiment
    assert list(exp.plan(engine).units) == ["seed=0"]
    tables = exp.run_unit(engine, "seed=0", exp.plan(engine))
    model = engine.model(0, "trained")
    cap = engine.capture(0, "trained")
    assert _no_hooks(model)
    gains, conc = tables["skip_gain"], tables["skip_concentration"]
    assert {"seed", "state", "site", "depth", "site_kind", "gain", "accuracy",
            "baseline_accuracy", "post_gini", "post_top_k_share"} <= set(gains.columns)
    assert {"seed", "state", "block", "depth", "pre_gini", "post_gini", "pre_top_k_share",
            "post_top_k_share"} <= set(conc.columns)
    assert conc["block"].to_list() == BLOCKS and gains.height == 4 * 3
    one = gains.filter(pl.col("gain") == 1.0)
    assert (one["accuracy"] == one["baseline_accuracy"]).all()
    assert (one["accuracy"] == cap.accuracy).all()
    # at g = 1 the post-add activations are the captured ones: same Gini
    joined = one.join(conc, on="block", suffix="_conc")
    assert ((joined["post_gini"] - joined["post_gini_conc"]).abs() < 1e-12).all()
    # the pre_add values come from sites the spec did not list, at the spec's post depth
    sites = {s.name: s for s in cap.sites}
    assert conc["depth"].to_list() == [sites[f"{b}.post_add"].depth for b in BLOCKS]
    from mi_probe.interfaces import Site

    pre = Site("layer3.0.pre_add", "layer3.0.bn3", "pre_add", 192, 0)
    acts = engine.evaluate(model, sites=[pre]).acts[pre.name]
    expected = gini(engine.estimator.label_mi(acts, cap.labels, engine.num_classes))
    assert conc.filter(pl.col("block") == "layer3.0")["pre_gini_raw"].item() == pytest.approx(expected)
    # g = 0 on a projection block really changes the network
    zero = gains.filter((pl.col("gain") == 0.0) & (pl.col("block") == "layer2.0"))
    assert zero["post_gini"].item() != one.filter(pl.col("block") == "layer2.0")["post_gini"].item()
    out = exp.finalize(engine, tables)
    assert {"summary_skip_gain", "summary_skip_concentration"} <= set(out)
    figs = exp.figures({**tables, **out})
    assert {"skip_gain_accuracy", "skip_pre_post_gini"} <= set(figs)
    engine.end_unit()


def test_hooks_are_removed_when_evaluation_fails(engine, monkeypatch):
    model = engine.model(0, "trained")
    real = engine.evaluate
    calls = []

    def failing(m, interventions=(), subset=None, sites=(), generator=None):
        calls.append(sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks)
                         for mod in m.modules()))
        if len(calls) == 1:
            return real(m, interventions, subset, sites, generator)  # the pre_add capture
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "evaluate", failing)
    with pytest.raises(RuntimeError, match="boom"):
        engine.experiment.run_unit(engine, "seed=0", engine.experiment.plan(engine))
    assert calls[-1] >= 1  # the skip hooks were in place while evaluating
    assert _no_hooks(model)
    engine.end_unit()


def test_unknown_block_pattern_is_a_spec_error(engine, monkeypatch):
    monkeypatch.setattr(engine.experiment.params, "blocks", ["layer9.*"])
    with pytest.raises(SpecError, match=r"experiment.blocks \['layer9.\*'\] match none"):
        engine.experiment.run_unit(engine, "seed=0", engine.experiment.plan(engine))
    engine.end_unit()


def test_cli_run_writes_tables_and_figures(cli_run_writes):
    run = cli_run_writes(
        TINY.replace('["*.post_add"]', '["*.pre_add", "*.post_add"]')
        + "experiment: {kind: skip_gain, gains: [0.0, 1.0], blocks: ['layer4.*']}\n",
        ("tables/skip_gain.parquet", "tables/skip_concentration.parquet",
         "tables/summary_skip_gain.parquet", "figures/skip_gain_accuracy.png",
         "figures/skip_pre_post_gini.png", "index.html"))
    frame = pl.read_parquet(run / "tables" / "skip_gain.parquet")
    assert frame["site"].unique().to_list() == ["layer4.0.post_add"] and frame.height == 2


def test_channel_identity_between_pre_add_and_post_add():
    """App. A's question: does the skip change which channels carry label information?
    The same ranking gives overlap 1 and Spearman 1; a reversed one overlap 0."""
    from mi_probe.builtin.experiments.skip_gain import SkipGain, SkipGainParams

    exp = SkipGain(SkipGainParams(top_k=0.25))
    values = torch.arange(8, dtype=torch.float64)
    same = exp._identity(values, values * 3 + 1)
    assert same == {"top_overlap": 1.0, "channel_rank_spearman": pytest.approx(1.0)}
    flipped = exp._identity(values, values.flip(0))
    assert flipped["top_overlap"] == 0.0
    assert flipped["channel_rank_spearman"] == pytest.approx(-1.0)
    assert exp._identity(values, torch.arange(4.0)) == {"top_overlap": None,
                                                         "channel_rank_spearman": None}
