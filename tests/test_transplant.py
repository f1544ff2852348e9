"""The ``transplant`` experiment (paper App. C): adapter producers, the row copy itself,
the experiment through the engine, its error paths and an end-to-end CLI run."""

from __future__ import annotations

from types import SimpleNamespace

import polars as pl
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from mi_probe import cli
from mi_probe.builtin.adapters.resnet import ResNetAdapter
from mi_probe.builtin.adapters.vgg import VGGAdapter
from mi_probe.builtin.experiments.transplant import (Transplant, TransplantParams,
                                                     default_pairs, transplant_channels)
from mi_probe.errors import SpecError
from mi_probe.interfaces import Site
from mi_probe._core.models import build_model

TINY = """\
name: tiny_transplant
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


pytestmark = pytest.mark.usefixtures("one_thread")




def _model(seed: int) -> nn.Module:
    """A random test_resnet whose norm entries differ from seed to seed (fresh BatchNorms
    all hold weight 1, bias 0, mean 0, var 1, which would hide a wrong copy)."""
    model = build_model("test_resnet", 3, seed, None, "timm", False).eval()
    gen = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for t in (module.weight, module.bias, module.running_mean):
                    t.copy_(torch.randn(t.shape, generator=gen))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return model


def _site(model: nn.Module, name: str) -> Site:
    ref = {r.name: r for r in ResNetAdapter().site_refs(model)}[name]
    return Site(ref.name, ref.module, ref.kind, 0, 0)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -------------------------------------------------------------------- params


def test_params_validate():
    assert TransplantParams().selections == ["top", "random", "bottom"]
    with pytest.raises(ValidationError, match="must differ from its recipient"):
        TransplantParams(pairs=[[0, 1], [2, 2]])
    with pytest.raises(ValidationError, match=r"must lie in \(0, 1\]"):
        TransplantParams(q=[0.0])
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        TransplantParams(draws=3)
    assert default_pairs([3, 5, 9]) == [(3, 5), (5, 9)]


def _fake_ctx(seeds):
    return SimpleNamespace(spec=SimpleNamespace(seeds=seeds))


def test_fewer_than_two_seeds_is_a_spec_error():
    with pytest.raises(SpecError, match=r"needs two trained models.*seeds is \[0\]"):
        Transplant(TransplantParams()).plan(_fake_ctx([0]))


def test_pairs_must_name_spec_seeds():
    exp = Transplant(TransplantParams(pairs=[[0, 7]]))
    with pytest.raises(SpecError, match=r"names seeds \[7\] that are not in seeds \[0, 1\]"):
        exp.plan(_fake_ctx([0, 1]))
    # one unit per recipient, in pair order
    exp = Transplant(TransplantParams(pairs=[[2, 0], [1, 0], [0, 1]]))
    assert list(exp.plan(_fake_ctx([0, 1, 2])).units) == ["seed=0", "seed=1"]
    assert list(Transplant(TransplantParams()).plan(_fake_ctx([4, 2, 9])).units) == ["seed=2", "seed=9"]


# -------------------------------------------------------------------- producers


def test_resnet_producers_per_site_kind():
    model = _model(0)
    adapter = ResNetAdapter()

    def prod(name):
        return adapter.producers(model, _site(model, name))

    assert prod("stem") == [("conv1.6", "conv"), ("bn1", "norm")]
    # identity shortcut: only the residual branch writes new values
    assert prod("layer1.0.post_add") == [("layer1.0.conv2", "conv"), ("layer1.0.bn2", "norm")]
    # projection shortcut: post_add includes the downsample conv / norm, pre_add does not
    assert prod("layer2.0.post_add") == [("layer2.0.conv2", "conv"), ("layer2.0.bn2", "norm"),
                                         ("layer2.0.downsample.1", "conv"),
                                         ("layer2.0.downsample.2", "norm")]
    assert prod("layer2.0.pre_add") == [("layer2.0.conv2", "conv"), ("layer2.0.bn2", "norm")]
    # bottleneck: conv3 / bn3
    assert prod("layer3.0.pre_add") == [("layer3.0.conv3", "conv"), ("layer3.0.bn3", "norm")]
    for path, _ in prod("layer3.0.post_add"):
        model.get_submodule(path)  # every path exists


class VGG(nn.Module):
    """A hand-made VGG-shaped model (the vgg adapter claims by class name)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(4, 5, 3), nn.ReLU())


def test_vgg_producers():
    model = VGG()
    adapter = VGGAdapter()
    assert adapter.claims(model, "vgg")
    sites = {r.name: Site(r.name, r.module, r.kind, 0, 0) for r in adapter.site_refs(model)}
    assert list(sites) == ["features.2", "features.5"]
    assert adapter.producers(model, sites["features.2"]) == [("features.0", "conv"),
                                                             ("features.1", "norm")]
    assert adapter.producers(model, sites["features.5"]) == [("features.4", "conv")]
    assert adapter.producers(model, Site("x", "features.0", "other", 0, 0)) == []


# -------------------------------------------------------------------- the copy


@pytest.mark.parametrize("site_name", ["layer2.0.post_add", "layer3.0.pre_add", "stem"])
def test_transplant_copies_exactly_the_intended_rows(site_name):
    donor, recipient = _model(0), _model(1)
    before = _state(recipient)
    producers = ResNetAdapter().producers(recipient, _site(recipient, site_name))
    channels = torch.tensor([1, 5, 7])
    out = transplant_channels(recipient, donor, producers, channels)
    assert out is not recipient
    # the recipient object is untouched
    for k, v in recipient.state_dict().items():
        assert torch.equal(v, before[k]), k
    touched = set()
    d_state, o_state = donor.state_dict(), out.state_dict()
    for path, role in producers:
        attrs = ("weight", "bias") if role == "conv" else ("weight", "bias", "running_mean",
                                                          "running_var")
        for attr in attrs:
            key = f"{path}.{attr}"
            if key not in o_state:
                continue  # bias-free conv
            touched.add(key)
            rows = torch.zeros(o_state[key].shape[0], dtype=torch.bool)
            rows[channels] = True
            assert torch.equal(o_state[key][rows], d_state[key][rows]), key
            assert torch.equal(o_state[key][~rows], before[key][~rows]), key
            assert not torch.equal(d_state[key][rows], before[key][rows]), key  # a real change
    assert touched
    for key, value in o_state.items():
        if key not in touched:
            assert torch.equal(value, before[key]), key


def test_transplanting_every_channel_swaps_the_producer_modules():
    donor, recipient = _model(0), _model(1)
    site = _site(recipient, "layer2.0.post_add")
    producers = ResNetAdapter().producers(recipient, site)
    out = transplant_channels(recipient, donor, producers, torch.arange(48))
    o_state, d_state, r_state = out.state_dict(), donor.state_dict(), recipient.state_dict()
    for key, value in o_state.items():
        module = key.rsplit(".", 1)[0]
        if any(module == path for path, _ in producers) and not key.endswith("num_batches_tracked"):
            assert torch.equal(value, d_state[key]), key
        else:
            assert torch.equal(value, r_state[key]), key
    # a self-transplant changes nothing: same logits
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    same = transplant_channels(recipient, recipient, producers, torch.arange(48))
    with torch.no_grad():
        assert torch.equal(same(x), recipient(x))
        assert not torch.equal(out(x), recipient(x))


# -------------------------------------------------------------------- engine and CLI


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_engine):
    return tiny_engine(tmp_path_factory.mktemp("transplant"), TINY.replace(
        '["*.post_add"]', '["layer2.*.post_add", "layer4.*.pre_add"]')
        + "experiment: {kind: transplant, q: [0.2, 1.0], random_draws: 2}\n")


def test_run_unit_table_and_untouched_recipient(engine):
    exp = engine.experiment
    assert list(exp.plan(engine).units) == ["seed=1"]
    recipient = engine.model(1, "trained")
    before = _state(recipient)
    baseline = engine.evaluate(recipient).accuracy
    frame = exp.run_unit(engine, "seed=1", exp.plan(engine))["transplant"]
    for k, v in recipient.state_dict().items():
        assert torch.equal(v, before[k]), k
    engine.end_unit()
    assert {"seed", "donor_seed", "state", "site", "depth", "site_kind", "q", "selection", "draw",
            "n_channels", "accuracy", "baseline_accuracy", "change"} <= set(frame.columns)
    assert frame["seed"].unique().to_list() == [1] and frame["donor_seed"].unique().to_list() == [0]
    assert set(frame["site"]) == {"layer2.0.post_add", "layer4.0.pre_add"}
    assert (frame["baseline_accuracy"] == baseline).all()
    assert ((frame["accuracy"] - frame["baseline_accuracy"] - frame["change"]).abs() < 1e-12).all()
    sizes = frame.group_by(["site", "q"]).agg(pl.col("n_channels").n_unique().alias("k"))
    assert (sizes["k"] == 1).all()  # controls are size-matched
    assert frame.filter(pl.col("selection") == "random")["draw"].n_unique() == 2
    # q = 1 takes every channel that holds label MI: the whole mass
    full = frame.filter((pl.col("q") == 1.0) & (pl.col("selection") == "top"))
    assert (full["mass"] > 1 - 1e-9).all()
    summary = exp.finalize(engine, {"transplant": frame})
    assert {"summary_transplant", "summary_transplant_by_q"} <= set(summary)
    assert summary["summary_transplant"]["n_pairs"].max() == 1


def test_cli_run_writes_tables_and_figures(cli_run_writes):
    run = cli_run_writes(
        TINY.replace('["*.post_add"]', '["layer4.*.post_add", "stem"]')
        + "experiment: {kind: transplant, q: [0.5], random_draws: 1}\n",
        ("tables/transplant.parquet", "tables/summary_transplant.parquet",
         "figures/transplant_change_vs_q.png", "figures/transplant_change_by_depth.png",
         "index.html"))
    frame = pl.read_parquet(run / "tables" / "transplant.parquet")
    assert set(frame["site"]) == {"stem", "layer4.0.post_add"}
    assert frame.height == 2 * 3  # sites x (top, one random draw, bottom)


def test_single_seed_spec_fails_clearly(tmp_path, monkeypatch, pm, capsys, shared_cache):
    monkeypatch.setenv("MI_PROBE_CACHE", str(shared_cache))
    spec = tmp_path / "t.yaml"
    spec.write_text(TINY.replace("seeds: [0, 1]", "seeds: [0]")
                    + "experiment: {kind: transplant}\n")
    code = cli.main(["run", str(spec), "--out", str(tmp_path / "r"), "--no-progress"], pm=pm)
    err = capsys.readouterr().err
    assert code == 2 and "needs two trained models" in err and "Traceback" not in err
