"""Tests of site adapters / resolution (mi_probe._core.sites) and activation capture
(mi_probe._core.capture): site lists per family, include/exclude patterns, pooled values
against a manual computation, the in-place hazard that makes cloning necessary, the
pre_add/post_add relation, hook removal, non-finite checks, interventions and token
layouts. Small timm models and tiny inputs only."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from mi_probe.builtin.adapters.generic import GenericAdapter
from mi_probe.builtin.adapters.resnet import ResNetAdapter
from mi_probe.builtin.adapters.vgg import VGGAdapter
from mi_probe._core.capture import add_pooling_hooks, capture, check_finite, pooled_copy
from mi_probe.errors import DataError, NonFiniteActivationError, SiteError, UnknownPluginError
from mi_probe.interfaces import Captured, Site, SiteRef
from mi_probe._core.models import build_model
from mi_probe._core.plugins import get_plugin_manager
from mi_probe._core.sites import filter_refs, get_module, pool, probe_sites, resolve_sites, select_adapter

CPU = torch.device("cpu")
K = 10


class FnIntervention:
    """Wrap a plain function ``fn(output, site, channels)`` as an Intervention."""

    name = variant = "fn"
    needs_calibration = False

    def __init__(self, fn):
        self.fn = fn

    def reset(self, generator):
        pass

    def calibrate(self, output, site, channels, start):
        pass

    def __call__(self, output, site, channels, start):
        return self.fn(output, site, channels)


def _x(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _loader(x: torch.Tensor, batch: int = 2):
    y = torch.arange(len(x)) % K
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]


def _all_hooks_empty(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _full_outputs(model: nn.Module, modules: dict[str, str], x: torch.Tensor,
                  clone: bool = True) -> dict[str, torch.Tensor]:
    """One separate forward storing each named module's whole output (a clone, or the raw
    reference when ``clone`` is False)."""
    outs: dict[str, torch.Tensor] = {}
    handles = []
    for key, path in modules.items():
        def hook(_m, _i, out, _key=key):
            outs[_key] = out.detach().clone() if clone else out
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return outs


@pytest.fixture(scope="module")
def pm():
    os.environ.setdefault("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
    return get_plugin_manager(autoload=False)


@pytest.fixture(scope="module")
def tiny_resnet():
    """timm test_resnet: BasicBlocks (layer1, 2, 4) and a Bottleneck (layer3), downsampling
    shortcuts, nn.ReLU(inplace=True) everywhere."""
    return build_model("test_resnet", K, 0)


@pytest.fixture(scope="module")
def vgg11():
    return build_model("vgg11", K, 0, head="paper_vgg")


@pytest.fixture(scope="module")
def resnet18():
    return build_model("resnet18", K, 0)


def _sites(pm, model, arch, size=32, adapter="auto", **kw):
    adapter = select_adapter(pm, model, arch, adapter)
    return adapter, resolve_sites(model, adapter, _x(2, size), arch=arch, **kw)


def _forward_order(model: nn.Module, sites: list[Site], x: torch.Tensor) -> list[str]:
    """Site names in the order their modules finish during a forward pass."""
    order: list[str] = []
    handles = [model.get_submodule(s.module).register_forward_hook(
        lambda *_a, _n=s.name: order.append(_n)) for s in sites]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


# ----------------------------------------------------------------------------- site lists


def test_vgg11_sites(pm, vgg11):
    adapter, sites = _sites(pm, vgg11, "vgg11")
    assert adapter.name == "vgg"
    assert [s.channels for s in sites] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert {s.kind for s in sites} == {"post_act"}
    assert [s.depth for s in sites] == list(range(8))
    convs = [i for i, m in enumerate(vgg11.features) if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(sites)
    for site, conv_idx in zip(sites, convs):
        module = get_module(vgg11, site.module)
        assert isinstance(module, nn.ReLU)  # post-ReLU
        assert site.module == f"features.{conv_idx + 1}"  # the ReLU right after its conv
    assert _forward_order(vgg11, sites, _x(1)) == [s.name for s in sites]


def test_vgg_sites_follow_an_activation_swap(pm):
    model = build_model("vgg11", K, 0, act="tanh", head="paper_vgg")
    _, sites = _sites(pm, model, "vgg11")
    assert len(sites) == 8
    assert all(isinstance(get_module(model, s.module), nn.Tanh) for s in sites)


def test_resnet18_sites(pm, resnet18):
    adapter, sites = _sites(pm, resnet18, "resnet18")
    assert adapter.name == "resnet"
    kinds = [s.kind for s in sites]
    assert kinds.count("stem") == 1 and kinds.count("pre_add") == 8 and kinds.count("post_add") == 8
    assert sites[0].name == "stem" and sites[0].channels == 64
    block_ch = [64, 64, 128, 128, 256, 256, 512, 512]
    assert [s.channels for s in sites if s.kind == "pre_add"] == block_ch
    assert [s.channels for s in sites if s.kind == "post_add"] == block_ch
    assert [s.name for s in sites[1:3]] == ["layer1.0.pre_add", "layer1.0.post_add"]
    assert all(s.module.endswith(".bn2") for s in sites if s.kind == "pre_add")
    assert [s.depth for s in sites] == list(range(17))
    assert _forward_order(resnet18, sites, _x(1)) == [s.name for s in sites]


def test_resnet50_bottleneck_sites(pm):
    model = build_model("resnet50", K, 0)
    _, sites = _sites(pm, model, "resnet50")
    pre = [s for s in sites if s.kind == "pre_add"]
    assert [s.channels for s in pre] == [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    assert all(s.module.endswith(".bn3") for s in pre)
    assert len(sites) == 1 + 2 * 16
    assert [s.depth for s in sites] == list(range(len(sites)))


def test_resnet_pre_add_tail_with_se_and_drop_path():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("seresnet18", pretrained=False, num_classes=K).eval()
    refs = ResNetAdapter().site_refs(model)
    assert dict((r.name, r.module) for r in refs)["layer1.0.pre_add"] == "layer1.0.se"
    torch.manual_seed(0)
    model = timm.create_model("seresnet18", pretrained=False, num_classes=K,
                              drop_path_rate=0.1).eval()
    names = dict((r.name, r.module) for r in ResNetAdapter().site_refs(model))
    assert names["layer4.1.pre_add"] == "layer4.1.drop_path"  # after SE, before the add


def test_convnext_gets_generic_stage_sites_when_asked(pm):
    model = build_model("test_convnext", K, 0)
    assert not VGGAdapter().claims(model, "test_convnext")
    assert not ResNetAdapter().claims(model, "test_convnext")
    assert select_adapter(pm, model, "test_convnext").name == "blocks"  # without the plugin
    adapter, sites = _sites(pm, model, "test_convnext", adapter="generic")
    assert isinstance(adapter, GenericAdapter)
    assert [s.kind for s in sites] == ["stage"] * len(model.feature_info)
    assert [s.channels for s in sites] == [i["num_chs"] for i in model.feature_info]
    assert [s.module for s in sites] == [i["module"] for i in model.feature_info]
    assert [s.depth for s in sites] == list(range(len(sites)))
    assert _forward_order(model, sites, _x(1)) == [s.name for s in sites]


def test_forced_adapter(pm, tiny_resnet):
    assert select_adapter(pm, tiny_resnet, "test_resnet", "generic").name == "generic"
    with pytest.raises(SiteError, match=r"adapter 'vgg' does not understand test_resnet"):
        select_adapter(pm, tiny_resnet, "test_resnet", "vgg")
    with pytest.raises(UnknownPluginError, match=r"resnt.*did you mean 'resnet'"):
        select_adapter(pm, tiny_resnet, "test_resnet", "resnt")


# ----------------------------------------------------------------------------- patterns


def test_include_exclude_patterns(pm, resnet18):
    _, post = _sites(pm, resnet18, "resnet18", include=["*.post_add"])
    assert len(post) == 8 and {s.kind for s in post} == {"post_add"}
    # depth is the model's own site index (stem 0, then pre_add / post_add per block),
    # whatever the selection: the same site has the same depth in every run
    assert [s.depth for s in post] == list(range(2, 17, 2))
    assert [s.rel_depth for s in post] == [d / 16 for d in range(2, 17, 2)]
    _, every = _sites(pm, resnet18, "resnet18")
    by_name = {s.name: (s.depth, s.rel_depth) for s in every}
    assert all(by_name[s.name] == (s.depth, s.rel_depth) for s in post)
    assert every[0].rel_depth == 0.0 and every[-1].rel_depth == 1.0
    _, l4 = _sites(pm, resnet18, "resnet18", include=["layer4.*"])
    assert [s.name for s in l4] == ["layer4.0.pre_add", "layer4.0.post_add",
                                    "layer4.1.pre_add", "layer4.1.post_add"]
    _, l4post = _sites(pm, resnet18, "resnet18", include=["layer4.*"], exclude=["*.pre_add"])
    assert [s.name for s in l4post] == ["layer4.0.post_add", "layer4.1.post_add"]
    _, by_kind = _sites(pm, resnet18, "resnet18", include=["stem", "pre_add"])
    assert [s.kind for s in by_kind] == ["stem"] + ["pre_add"] * 8


def test_pattern_matching_nothing_is_named(pm, resnet18):
    with pytest.raises(SiteError, match=r"'layer9\.\*'.*match no site of resnet18.*post_add"):
        _sites(pm, resnet18, "resnet18", include=["*.post_add", "layer9.*"])
    with pytest.raises(SiteError, match=r"leaves no site"):
        _sites(pm, resnet18, "resnet18", include=["layer4.*"], exclude=["layer4.*"])


def test_unreachable_or_missing_site_module(tiny_resnet):
    refs = [SiteRef("stem", "act1", "stem"), SiteRef("ghost", "layer9.0", "post_add")]
    with pytest.raises(SiteError, match=r"'layer9\.0' does not exist"):
        probe_sites(tiny_resnet, refs, _x(1))
    assert _all_hooks_empty(tiny_resnet)
    # a module that exists but is not run by forward()
    tiny_resnet.add_module("unused", nn.ReLU())
    try:
        with pytest.raises(SiteError, match=r"'u'.*not reached"):
            probe_sites(tiny_resnet, [SiteRef("u", "unused", "x")], _x(1))
    finally:
        del tiny_resnet.unused
    assert _all_hooks_empty(tiny_resnet)


# ----------------------------------------------------------------------------- capture


def test_capture_equals_manual_global_average_pool(pm, tiny_resnet):
    _, sites = _sites(pm, tiny_resnet, "test_resnet")
    x = _x(6, seed=1)
    got = capture(tiny_resnet, sites, _loader(x, batch=4), CPU)  # batches of 4 and 2
    full = _full_outputs(tiny_resnet, {s.name: s.module for s in sites}, x)
    assert list(got.acts) == [s.name for s in sites]
    for s in sites:
        assert got.acts[s.name].shape == (6, s.channels)
        assert got.acts[s.name].dtype == torch.float32
        torch.testing.assert_close(got.acts[s.name], full[s.name].mean(dim=(2, 3)),
                                   rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(got.logits, tiny_resnet(x), rtol=0, atol=1e-6)
    assert torch.equal(got.labels, torch.arange(6) % K)
    assert got.sites == sites


def test_clone_protects_pre_relu_values_from_in_place_relu(tiny_resnet):
    # The stem's BatchNorm output is followed by nn.ReLU(inplace=True): a reference to
    # it is overwritten during the forward pass; capture must keep the pre-ReLU values.
    assert isinstance(tiny_resnet.act1, nn.ReLU) and tiny_resnet.act1.inplace
    site = Site("stem_bn", "bn1", "bn", 32, 0)
    x = _x(4, seed=2)
    cloned = _full_outputs(tiny_resnet, {"bn": "bn1"}, x)["bn"]
    raw = _full_outputs(tiny_resnet, {"bn": "bn1"}, x, clone=False)["bn"]
    # the hazard is real: the raw reference now holds the post-ReLU values
    assert cloned.min() < 0
    assert raw.min() >= 0
    torch.testing.assert_close(raw, torch.relu(cloned))
    got = capture(tiny_resnet, [site], _loader(x), CPU).acts["stem_bn"]
    assert (got < 0).any()
    torch.testing.assert_close(got, cloned.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    assert not torch.allclose(got, raw.mean(dim=(2, 3)))


def test_clone_protects_pre_add_from_in_place_add(pm, tiny_resnet):
    # `x += shortcut; x = act(x)` overwrite the residual branch output in place
    _, sites = _sites(pm, tiny_resnet, "test_resnet", include=["*.pre_add"])
    x = _x(4, seed=3)
    mods = {s.name: s.module for s in sites}
    cloned = _full_outputs(tiny_resnet, mods, x)
    raw = _full_outputs(tiny_resnet, mods, x, clone=False)
    got = capture(tiny_resnet, sites, _loader(x), CPU).acts
    for s in sites:
        assert not torch.allclose(raw[s.name], cloned[s.name])  # the hazard is real
        assert (got[s.name] < 0).any()  # pre-activation values survive
        torch.testing.assert_close(got[s.name], cloned[s.name].mean(dim=(2, 3)),
                                   rtol=0, atol=1e-6)


def _blocks(model):
    return [(f"{ln}.{i}", b) for ln in ("layer1", "layer2", "layer3", "layer4")
            for i, b in enumerate(getattr(model, ln))]


@pytest.mark.parametrize("arch", ["test_resnet", "seresnet18"])
def test_pre_add_plus_shortcut_gives_post_add(pm, arch):
    model = build_model(arch, K, 0)
    _, sites = _sites(pm, model, arch)
    by_name = {s.name: s for s in sites}
    x = _x(3, seed=4)
    modules = {s.name: s.module for s in sites}
    inputs: dict[str, torch.Tensor] = {}
    handles = [b.register_forward_pre_hook(lambda _m, a, _n=n: inputs.__setitem__(_n, a[0].clone()))
               for n, b in _blocks(model)]
    try:
        full = _full_outputs(model, modules, x)
    finally:
        for h in handles:
            h.remove()
    got = capture(model, sites, _loader(x, batch=3), CPU).acts
    saw_downsample = False
    for path, block in _blocks(model):
        pre, post = full[f"{path}.pre_add"], full[f"{path}.post_add"]
        with torch.no_grad():
            shortcut = inputs[path]
            if block.downsample is not None:
                saw_downsample = True
                shortcut = block.downsample(shortcut)
            torch.testing.assert_close(torch.relu(pre + shortcut), post, rtol=1e-5, atol=1e-5)
        assert by_name[f"{path}.pre_add"].channels == by_name[f"{path}.post_add"].channels
        torch.testing.assert_close(got[f"{path}.pre_add"], pre.mean(dim=(2, 3)), rtol=0, atol=1e-6)
        torch.testing.assert_close(got[f"{path}.post_add"], post.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    assert saw_downsample


def test_hooks_removed_and_mode_restored(pm, tiny_resnet):
    _, sites = _sites(pm, tiny_resnet, "test_resnet")
    tiny_resnet.train()
    try:
        got = capture(tiny_resnet, sites, _loader(_x(4)), CPU)
        assert _all_hooks_empty(tiny_resnet)
        assert tiny_resnet.training
        assert len(got.acts) == len(sites)

        def bad_loader():
            yield _x(2)[:, :3], torch.zeros(2, dtype=torch.long)
            yield torch.randn(2, 5, 32, 32), torch.zeros(2, dtype=torch.long)  # wrong channels

        def zero(out, site, channels):
            out = out.clone()
            out[:, channels] = 0
            return out

        with pytest.raises(RuntimeError):
            capture(tiny_resnet, sites, bad_loader(), CPU,
                    interventions=[(sites[1], FnIntervention(zero), torch.tensor([0]))])
        assert _all_hooks_empty(tiny_resnet)
        assert tiny_resnet.training
    finally:
        tiny_resnet.eval()
    assert not tiny_resnet.training


def test_hooks_removed_when_a_later_site_is_bad(tiny_resnet):
    good = Site("stem", "act1", "stem", 32, 0)
    bad = Site("ghost", "layer9.0", "post_add", 32, 1)
    with pytest.raises(SiteError, match=r"'layer9\.0' does not exist"):
        capture(tiny_resnet, [good, bad], _loader(_x(2)), CPU)
    assert _all_hooks_empty(tiny_resnet)
    store: dict = {}
    with pytest.raises(SiteError, match=r"'layer9\.0' does not exist"):
        add_pooling_hooks(tiny_resnet, [good, bad], store)
    assert _all_hooks_empty(tiny_resnet)


def test_empty_evaluation_data_is_a_data_error(tiny_resnet):
    with pytest.raises(DataError, match="no batches"):
        capture(tiny_resnet, [Site("stem", "act1", "stem", 32, 0)], [], CPU)
    assert _all_hooks_empty(tiny_resnet)


def test_site_module_run_twice_per_forward_is_refused():
    torch.manual_seed(0)
    shared = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), shared, nn.Conv2d(4, 4, 3), shared).eval()
    once = Site("first", "0", "conv", 4, 0)
    twice = Site("shared", "1", "post_act", 4, 1)
    got = capture(model, [once], _loader(_x(4, size=8)), CPU)
    assert got.acts["first"].shape == (4, 4)
    with pytest.raises(SiteError, match=r"'shared'.*8 pooled rows for 4 samples.*4 times for 2 batches"):
        capture(model, [once, twice], _loader(_x(4, size=8)), CPU)
    assert _all_hooks_empty(model)


def test_site_never_reached_is_refused(tiny_resnet):
    tiny_resnet.add_module("unused", nn.ReLU())
    try:
        with pytest.raises(SiteError, match=r"'u'.*0 pooled rows for 2 samples.*never"):
            capture(tiny_resnet, [Site("u", "unused", "x", 1, 0)], _loader(_x(2)), CPU)
    finally:
        del tiny_resnet.unused
    assert _all_hooks_empty(tiny_resnet)


def test_capture_is_deterministic_and_eval_mode(pm, tiny_resnet):
    """The same batches give bitwise the same activations; other batch sizes give the
    same values up to float reassociation (eval-mode BatchNorm uses running statistics,
    so a sample's activations do not depend on its batch), while batch statistics would
    move them by orders of magnitude more than that tolerance."""
    _, sites = _sites(pm, tiny_resnet, "test_resnet")
    x = _x(4, seed=5)
    tiny_resnet.train()
    a = capture(tiny_resnet, sites, _loader(x), CPU)
    assert tiny_resnet.training  # capture restores the mode it found
    again = capture(tiny_resnet, sites, _loader(x), CPU)
    b = capture(tiny_resnet, sites, _loader(x, batch=1), CPU)
    tiny_resnet.eval()
    train_mode = {}
    handles = add_pooling_hooks(tiny_resnet.train(), sites, train_mode)
    with torch.no_grad():
        tiny_resnet(x)
    for h in handles:
        h.remove()
    tiny_resnet.eval()
    for s in sites:
        assert torch.equal(a.acts[s.name], again.acts[s.name])
        scale = float(a.acts[s.name].abs().max()) + 1e-12
        gap = float((a.acts[s.name] - b.acts[s.name]).abs().max()) / scale
        assert gap < 1e-4, (s.name, gap)
        if s.kind != "stem":  # batch statistics change what a sample's activations are
            batch_stats = float((a.acts[s.name] - train_mode[s.name][0]).abs().max()) / scale
            assert batch_stats > 100 * max(gap, 1e-6), (s.name, batch_stats, gap)


# ----------------------------------------------------------------------------- non-finite


def _captured(values: dict[str, torch.Tensor]) -> Captured:
    sites = [Site(n, n, "k", v.shape[1], i) for i, (n, v) in enumerate(values.items())]
    return Captured(acts=dict(values), labels=torch.zeros(3, dtype=torch.long), sites=sites)


def test_check_finite_error_names_the_site():
    bad = torch.ones(3, 2)
    bad[1, 0] = float("nan")
    cap = _captured({"ok": torch.ones(3, 2), "layer2.0.post_add": bad})
    with pytest.raises(NonFiniteActivationError, match=r"'layer2\.0\.post_add'.*1 non-finite"):
        check_finite(cap, "error", "trained")


def test_check_finite_skip_drops_site_and_warns():
    inf = torch.ones(3, 2)
    inf[0, 1] = float("inf")
    nan = torch.full((3, 4), float("nan"))
    cap = _captured({"a": torch.ones(3, 2), "b": inf, "c": torch.zeros(3, 1), "d": nan})
    warnings = check_finite(cap, "skip", "random init")
    assert [s.name for s in cap.sites] == ["a", "c"]
    assert list(cap.acts) == ["a", "c"]
    assert len(warnings) == 2
    assert "'b'" in warnings[0] and "random init" in warnings[0] and "1 non-finite" in warnings[0]
    assert "'d'" in warnings[1] and "12 non-finite" in warnings[1]
    assert check_finite(cap, "error", "x") == []


def test_check_finite_on_a_real_capture(pm, tiny_resnet):
    _, sites = _sites(pm, tiny_resnet, "test_resnet")
    target = next(s for s in sites if s.name == "layer2.0.post_add")

    def poison(out, site, channels):
        out = out.clone()
        out[:, channels] = float("nan")
        return out

    cap = capture(tiny_resnet, sites, _loader(_x(4)), CPU,
                  interventions=[(target, FnIntervention(poison), torch.tensor([1]))])
    with pytest.raises(NonFiniteActivationError, match="layer2.0.post_add"):
        check_finite(cap, "error", "trained")
    warnings = check_finite(cap, "skip", "trained")
    kept = [s.name for s in cap.sites]
    assert kept == [s.name for s in sites if s.depth < target.depth]  # NaN propagates on
    assert any("layer2.0.post_add" in w for w in warnings)


# ----------------------------------------------------------------------------- interventions


def test_zeroing_intervention(pm, tiny_resnet):
    _, sites = _sites(pm, tiny_resnet, "test_resnet")
    x = _x(4, seed=6)
    base = capture(tiny_resnet, sites, _loader(x), CPU)
    target = next(s for s in sites if s.name == "layer2.0.pre_add")
    channels = torch.tensor([0, 3, 5])
    calls = []

    def zero(out, site, ch):
        calls.append(site.name)
        out = out.clone()
        out[:, ch] = 0
        return out

    got = capture(tiny_resnet, sites, _loader(x), CPU, interventions=[(target, FnIntervention(zero), channels)])
    assert calls == [target.name, target.name]  # once per batch
    acts = got.acts[target.name]
    assert torch.count_nonzero(acts[:, channels]) == 0
    others = torch.ones(target.channels, dtype=torch.bool)
    others[channels] = False
    assert torch.equal(acts[:, others], base.acts[target.name][:, others])
    assert torch.count_nonzero(base.acts[target.name][:, channels]) > 0
    for s in sites:
        if s.depth < target.depth:
            assert torch.equal(got.acts[s.name], base.acts[s.name])
    later = [s for s in sites if s.depth > target.depth]
    assert any(not torch.allclose(got.acts[s.name], base.acts[s.name]) for s in later)
    assert not torch.allclose(got.logits, base.logits)
    assert _all_hooks_empty(tiny_resnet)


def test_in_place_intervention_on_in_place_relu_site(pm, vgg11):
    _, sites = _sites(pm, vgg11, "vgg11")
    x = _x(2, seed=7)
    base = capture(vgg11, sites, _loader(x), CPU)
    target = sites[2]

    def zero_(out, site, ch):  # modifies the output in place and returns None-like copy
        out[:, ch] = 0
        return out

    got = capture(vgg11, sites, _loader(x), CPU,
                  interventions=[(target, FnIntervention(zero_), torch.tensor([1, 2]))])
    assert torch.count_nonzero(got.acts[target.name][:, [1, 2]]) == 0
    keep = [c for c in range(target.channels) if c not in (1, 2)]
    assert torch.equal(got.acts[target.name][:, keep], base.acts[target.name][:, keep])


# ----------------------------------------------------------------------------- pooling layouts


def test_pool_layouts():
    g = torch.Generator().manual_seed(0)
    nchw = torch.randn(2, 3, 4, 5, generator=g)
    torch.testing.assert_close(pool(nchw, "nchw"), nchw.mean(dim=(2, 3)))
    nhwc = nchw.permute(0, 2, 3, 1)
    torch.testing.assert_close(pool(nhwc, "nhwc"), nchw.mean(dim=(2, 3)))
    nlc = torch.randn(2, 7, 3, generator=g)  # (N, L tokens, C)
    torch.testing.assert_close(pool(nlc, "nlc"), nlc.sum(1) / 7)
    torch.testing.assert_close(pool(nlc.transpose(1, 2), "ncl"), nlc.mean(1))
    nc = torch.randn(2, 3, generator=g)
    assert pool(nc, "nc") is nc
    with pytest.raises(SiteError, match="unknown layout 'hwc'"):
        pool(nc, "hwc")


def test_pooled_copy_never_shares_storage():
    nc = torch.randn(4, 3)
    site = Site("logits", "fc", "nc", 3, 0, "nc")
    copy = pooled_copy(nc, site)
    assert copy.data_ptr() != nc.data_ptr()
    nc.zero_()
    assert copy.abs().sum() > 0
    half = torch.randn(2, 3, 2, 2).half()
    assert pooled_copy(half, Site("h", "h", "k", 3, 0)).dtype == torch.float32


def test_layout_detection():
    from mi_probe._core.sites import _layout

    assert _layout(torch.Size([2, 8, 5, 5]), None) == ("nchw", 8)
    assert _layout(torch.Size([2, 5, 5, 8]), 8) == ("nhwc", 8)
    assert _layout(torch.Size([2, 10, 8]), None) == ("nlc", 8)
    assert _layout(torch.Size([2, 8, 10]), 8) == ("ncl", 8)
    assert _layout(torch.Size([2, 8]), None) == ("nc", 8)
    with pytest.raises(SiteError, match=r"\(2, 3, 5, 5\).*7 channels"):
        _layout(torch.Size([2, 3, 5, 5]), 7)


@pytest.mark.parametrize("tokens", ["patch_mean", "cls"])
def test_vit_token_sites_pool_patch_tokens_or_the_class_token(pm, tokens):
    model = build_model("test_vit", K, 0)
    size = model.default_cfg["input_size"][-1]
    adapter = select_adapter(pm, model, "test_vit")
    sites = resolve_sites(model, adapter, _x(2, size), arch="test_vit", kinds=["post_add"],
                          tokens=tokens)
    assert adapter.name == "blocks"
    assert [s.module for s in sites] == [f"blocks.{i}" for i in range(len(model.blocks))]
    assert {s.layout for s in sites} == {"nlc"}
    assert {s.prefix_tokens for s in sites} == {model.num_prefix_tokens} == {1}
    assert [s.channels for s in sites] == [i["num_chs"] for i in model.feature_info]
    x = _x(2, size=size, seed=8)
    got = capture(model, sites, _loader(x), CPU)
    full = _full_outputs(model, {s.name: s.module for s in sites}, x)
    n_tokens = (size // model.patch_embed.patch_size[0]) ** 2 + model.num_prefix_tokens
    for s in sites:
        assert full[s.name].shape == (2, n_tokens, s.channels)
        want = full[s.name][:, 0] if tokens == "cls" else full[s.name][:, 1:].mean(dim=1)
        torch.testing.assert_close(got.acts[s.name], want, rtol=0, atol=1e-6)
    assert math.isfinite(float(got.logits.sum()))
