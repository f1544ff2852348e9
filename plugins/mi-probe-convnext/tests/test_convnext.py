"""Tests of the mi-probe-convnext site adapter plugin (offline, random init, CPU).

Every test builds its plugin manager with the plugin passed by module name and
``autoload=False``, so the suite runs with ``MI_PROBE_DISABLE_PLUGIN_AUTOLOAD=1``; the
package must be importable (``pip install -e plugins/mi-probe-convnext``, or
``PYTHONPATH=plugins/mi-probe-convnext``); ``test_entry_point_discovery`` needs the
installed entry point (skipped otherwise).

Models: timm's ``test_convnext2`` (1 block per stage, channels-last MLP:
``conv_mlp=False``), ``test_convnext`` (depths 1-2-4-2), ``convnext_atto`` (NCHW MLP:
``conv_mlp=True``) and ``convnextv2_atto`` (no layer scale, GRN), at 32 x 32 pixels.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mi_probe._core.capture import capture
from mi_probe._core.models import build_model
from mi_probe._core.plugins import get_plugin_manager
from mi_probe._core.sites import resolve_sites, select_adapter

from mi_probe_convnext import ConvNeXtAdapter, set_layer_scale
from mi_probe_convnext.variants import SUFFIX, base_architectures

PLUGIN = "mi_probe_convnext.plugin"
README = Path(__file__).resolve().parents[1] / "README.md"
K = 10
SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager([PLUGIN], autoload=False)


def images(n=8, seed=0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def sites_of(pm, model, arch="test_convnext2", include=("*",)):
    adapter = select_adapter(pm, model, arch)
    return adapter, resolve_sites(model, adapter, images(2), include, (), arch)


def randomise_layer_scale(model: nn.Module, seed: int = 1) -> None:
    """Give every gamma O(1) values of both signs, so a branch is not ~1e-6 x shortcut and
    a wrong hook point cannot pass by being close to zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if type(module).__name__ == "ConvNeXtBlock" and module.gamma is not None:
                module.gamma.copy_(torch.randn(module.gamma.shape, generator=g))


def manual_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ConvNeXtBlock's residual branch recomputed from its modules: conv_dw -> norm
    -> mlp (channels-last unless conv_mlp) -> layer scale gamma (NCHW)."""
    y = block.conv_dw(x)
    if block.use_conv_mlp:
        y = block.mlp(block.norm(y))
    else:
        y = block.mlp(block.norm(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    if block.gamma is not None:
        y = y * block.gamma.reshape(1, -1, 1, 1)
    return y


def outputs_of(model: nn.Module, modules: dict[str, str], x: torch.Tensor,
               inputs: bool = False) -> dict[str, torch.Tensor]:
    """Unpooled outputs (or first inputs) of ``modules`` {key: path} in one forward pass."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for key, path in modules.items():
        def hook(_m, inp, out, _key=key):
            seen[_key] = (inp[0] if inputs else out).detach().clone()
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def loader(x: torch.Tensor, batch: int = 4):
    y = torch.arange(len(x)) % K
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]


# ------------------------------------------------------------------ sites: names and kinds

def expected_names(depths: list[int]) -> list[tuple[str, str, str]]:
    out = [("stem", "stem", "stem")]
    for i, depth in enumerate(depths):
        for j in range(depth):
            p = f"stages.{i}.blocks.{j}"
            out += [(f"{p}.pre_add", f"{p}.drop_path", "pre_add"), (f"{p}.post_add", p, "post_add")]
    return out


@pytest.mark.parametrize("arch,depths,dims", [
    ("test_convnext2", [1, 1, 1, 1], [32, 64, 96, 128]),
    ("test_convnext", [1, 2, 4, 2], [24, 32, 48, 64]),
    ("convnext_atto", [2, 2, 6, 2], [40, 80, 160, 320]),
    ("convnextv2_atto", [2, 2, 6, 2], [40, 80, 160, 320]),
])
def test_sites_per_block_in_forward_order(pm, arch, depths, dims):
    model = build_model(arch, K, 0)
    adapter, sites = sites_of(pm, model, arch)
    assert adapter.name == "convnext"
    assert [(s.name, s.module, s.kind) for s in sites] == expected_names(depths)
    assert [s.depth for s in sites] == list(range(len(sites)))
    assert {s.layout for s in sites} == {"nchw"}
    stage_of = [0] + [i for i, d in enumerate(depths) for _ in range(2 * d)]
    assert [s.channels for s in sites] == [dims[i] for i in stage_of]
    kinds = [s.kind for s in sites]
    assert kinds.count("pre_add") == kinds.count("post_add") == sum(depths)
    # pattern selection by kind works as with the ResNet adapter's sites
    _, chosen = sites_of(pm, model, arch, include=("*.pre_add",))
    assert [s.kind for s in chosen] == ["pre_add"] * sum(depths)


def test_sites_command_lists_stem_and_both_sites_per_block(pm, capsys):
    from mi_probe import cli

    assert cli.main(["sites", "test_convnext", "--image-size", "32"], pm=pm) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "test_convnext: adapter convnext, 19 sites at 32x32 px"
    # depth, rel_depth (depth / 18), site, kind, channels, stage, relative position,
    # layout, module
    assert re.search(r"^\s+0\s+0\.00\s+stem\s+stem\s+24\s+-\s+-\s+nchw\s+stem$", out, re.M)
    assert re.search(r"^\s+1\s+0\.06\s+stages\.0\.blocks\.0\.pre_add\s+pre_add\s+24\s+0\s+"
                     r"0\.00\s+nchw\s+stages\.0\.blocks\.0\.drop_path$", out, re.M)
    assert re.search(r"^\s+18\s+1\.00\s+stages\.3\.blocks\.1\.post_add\s+post_add\s+64\s+3\s+"
                     r"1\.00\s+nchw\s+stages\.3\.blocks\.1$", out, re.M)
    assert out.splitlines()[-1] == "per kind: stem 1, pre_add 9, post_add 9"


# ------------------------------------------------------------------ claiming

def test_claims_convnext_and_beats_the_generic_adapter(pm):
    model = build_model("test_convnext2", K, 0)
    assert ConvNeXtAdapter().claims(model, "test_convnext2")
    resolved = pm.hook.mi_probe_resolve_adapter(model=model, arch="test_convnext2")
    assert isinstance(resolved, ConvNeXtAdapter)
    # every implementation that answers: ours first, the trylast blocks and generic
    # fallbacks never win
    answers = [impl.function(model=model, arch="test_convnext2")
               for impl in reversed(pm.hook.mi_probe_resolve_adapter.get_hookimpls())]
    named = [a.name for a in answers if a is not None]
    assert named[0] == "convnext" and named[-2:] == ["blocks", "generic"]
    # without the plugin the same model gets the built-in blocks sites, whose modules
    # are the plugin's (the plugin stays the worked third-party example)
    bare = get_plugin_manager(autoload=False)
    fallback = select_adapter(bare, model, "test_convnext2")
    assert fallback.name == "blocks"
    ours = {r.name: r.module for r in ConvNeXtAdapter().site_refs(model)}
    theirs = {r.name: r.module for r in fallback.site_refs(model)}
    assert theirs == ours
    # forced by name; the spec accepts it
    assert select_adapter(pm, model, "test_convnext2", "convnext").name == "convnext"
    assert "convnext" in pm.registry.entries("adapters")
    assert pm.registry.entries("adapters")["convnext"].plugin == PLUGIN


@pytest.mark.parametrize("arch", ["test_resnet", "mi_probe_tiny_vgg", "test_vit"])
def test_does_not_claim_other_families(pm, arch):
    model = build_model(arch, K, 0)
    assert not ConvNeXtAdapter().claims(model, arch)
    assert select_adapter(pm, model, arch).name != "convnext"


def test_refuses_a_forced_convnext_adapter_on_a_resnet(pm):
    from mi_probe.errors import SiteError

    with pytest.raises(SiteError, match="does not understand"):
        select_adapter(pm, build_model("test_resnet", K, 0), "test_resnet", "convnext")


# ------------------------------------------------------------------ hooked tensors

@pytest.mark.parametrize("arch", ["test_convnext2", "convnext_atto", "convnextv2_atto"])
def test_pre_add_is_the_branch_and_post_add_the_block_output(pm, arch):
    model = build_model(arch, K, 0)
    randomise_layer_scale(model)
    _, sites = sites_of(pm, model, arch)
    x = images()
    blocks = {s.name[: -len(".post_add")]: s for s in sites if s.kind == "post_add"}
    site_out = outputs_of(model, {s.name: s.module for s in sites}, x)
    block_in = outputs_of(model, {p: p for p in blocks}, x, inputs=True)
    stem_out = outputs_of(model, {"stem": "stem"}, x)["stem"]
    torch.testing.assert_close(site_out["stem"], stem_out, rtol=0, atol=0)
    for path in blocks:
        block = model.get_submodule(path)
        with torch.no_grad():
            branch = manual_branch(block, block_in[path])
            total = branch + block.shortcut(block_in[path])
        pre, post = site_out[f"{path}.pre_add"], site_out[f"{path}.post_add"]
        assert pre.shape == branch.shape and branch.abs().mean() > 1e-3  # not ~0
        torch.testing.assert_close(pre, branch, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(post, total, rtol=1e-5, atol=1e-6)
    # the pooled capture holds the spatial means of exactly these tensors
    cap = capture(model, sites, loader(x), torch.device("cpu"))
    for s in sites:
        torch.testing.assert_close(cap.acts[s.name], site_out[s.name].mean(dim=(2, 3)),
                                   rtol=1e-5, atol=1e-6)


def test_pre_add_is_what_the_add_consumes_with_drop_path_in_training():
    """With stochastic depth the hooked module is timm's DropPath: in training its output
    (the dropped, rescaled branch) is exactly block output minus shortcut; in eval it
    equals the undropped branch."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_convnext", num_classes=K, drop_path_rate=0.5)
    randomise_layer_scale(model)
    pm = get_plugin_manager([PLUGIN], autoload=False)
    adapter = select_adapter(pm, model, "test_convnext")
    refs = [r for r in adapter.site_refs(model) if r.kind == "pre_add"]
    assert type(model.get_submodule(refs[-1].module)).__name__ == "DropPath"
    path = refs[-1].name[: -len(".pre_add")]
    block = model.get_submodule(path)
    seen = {}
    h1 = block.drop_path.register_forward_hook(lambda m, i, o: seen.update(pre=o, branch=i[0]))
    h2 = block.register_forward_hook(lambda m, i, o: seen.update(x=i[0], out=o))
    try:
        model.train()
        torch.manual_seed(3)
        with torch.no_grad():
            model(images(16))
        dropped = (seen["pre"].flatten(1) == 0).all(1)
        assert dropped.any() and not dropped.all()  # some samples dropped, some kept
        torch.testing.assert_close(seen["pre"], seen["out"] - block.shortcut(seen["x"]),
                                   rtol=1e-5, atol=1e-6)
        model.eval()
        with torch.no_grad():
            model(images(16))
        torch.testing.assert_close(seen["pre"], seen["branch"], rtol=0, atol=0)
        torch.testing.assert_close(seen["pre"], manual_branch(block, seen["x"]),
                                   rtol=1e-5, atol=1e-6)
    finally:
        h1.remove()
        h2.remove()


# ------------------------------------------------------------------ knockout

def knockout(pm):
    entry = pm.registry.get("interventions", "knockout")
    return entry.factory(entry.params_model())


def test_knockout_on_a_planted_pre_add_channel(pm):
    """Plant a branch channel that is exactly 5.0 everywhere (fc2 row zero, bias 5,
    gamma 1): zeroing it at the pre_add site sets the captured pre_add channel to 0,
    lowers that post_add channel by exactly 5, leaves the other channels bitwise equal,
    and changes the logits."""
    model = build_model("test_convnext2", K, 0)
    randomise_layer_scale(model)
    path, c = "stages.1.blocks.0", 5
    block = model.get_submodule(path)
    with torch.no_grad():
        block.gamma[c] = 1.0
        block.mlp.fc2.weight[c].zero_()
        block.mlp.fc2.bias[c] = 5.0
    _, sites = sites_of(pm, model, include=(f"{path}.*",))
    pre, post = sites
    assert (pre.kind, post.kind) == ("pre_add", "post_add")
    x = images(12)
    base = capture(model, sites, loader(x), torch.device("cpu"))
    assert torch.equal(base.acts[pre.name][:, c], torch.full((12,), 5.0))
    ko = capture(model, sites, loader(x), torch.device("cpu"),
                 interventions=[(pre, knockout(pm), torch.tensor([c]))])
    assert torch.equal(ko.acts[pre.name][:, c], torch.zeros(12))
    others = [i for i in range(pre.channels) if i != c]
    assert torch.equal(ko.acts[pre.name][:, others], base.acts[pre.name][:, others])
    torch.testing.assert_close(ko.acts[post.name][:, c], base.acts[post.name][:, c] - 5.0,
                               rtol=0, atol=1e-5)
    assert torch.equal(ko.acts[post.name][:, others], base.acts[post.name][:, others])
    assert not torch.allclose(ko.logits, base.logits)
    # the hook is gone afterwards
    again = capture(model, sites, loader(x), torch.device("cpu"))
    assert torch.equal(again.acts[pre.name], base.acts[pre.name])


def test_knockout_on_post_add_and_stem_sites_and_the_suffix(pm):
    """Zeroing channels at a stem / post_add site zeroes them in the capture; the
    adapter's ``suffix`` (what the engine's fast path runs on a cached site output) gives
    the same logits as a full forward pass with the knockout hook; pre_add has none."""
    model = build_model("test_convnext", K, 0)
    randomise_layer_scale(model)
    adapter, sites = sites_of(pm, model, "test_convnext")
    x = images(8)
    channels = torch.tensor([0, 3])
    iv = knockout(pm)
    for site in sites:
        if site.kind == "pre_add":
            assert adapter.suffix(model, site) is None
            continue
        full = capture(model, [site], loader(x), torch.device("cpu"),
                       interventions=[(site, iv, channels)])
        assert torch.equal(full.acts[site.name][:, channels], torch.zeros(8, 2))
        out = outputs_of(model, {"s": site.module}, x)["s"]
        with torch.no_grad():
            plain = adapter.suffix(model, site)(out)
            fast = adapter.suffix(model, site)(iv(out, site, channels, 0))
            torch.testing.assert_close(plain, model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast, full.logits, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the engine

SPEC = """\
name: tiny_convnext
seeds: [0]
data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 60, image_size: 32, noise: 0.5}
model:
  arch: ARCH
  weights: train
  train: {epochs: 1, batch_size: 16, lr: 0.05}
eval: {site_cache_mb: CACHE}
estimator: {kind: histogram, bins: 8}
experiment: EXPERIMENT
report: {formats: [html]}
"""


def spec_text(arch="test_convnext2", cache=2048, experiment="{kind: layer_mi}", **_):
    return (SPEC.replace("ARCH", arch).replace("CACHE", str(cache))
            .replace("EXPERIMENT", experiment))


def run_spec(pm, tmp_path, name, text):
    from mi_probe._core.runner.driver import run
    from mi_probe._core.spec import load_spec_text

    spec = load_spec_text(text, "x.yaml", pm=pm)
    outcome = run(spec, pm, out=tmp_path / name, cache_dir=tmp_path / "cache",
                  progress=False, log=lambda m: None)
    assert outcome.status == "complete"
    return tmp_path / name / "tables"


def test_layer_mi_end_to_end(pm, tmp_path):
    import polars as pl

    tables = run_spec(pm, tmp_path, "r", spec_text())
    layer = pl.read_parquet(tables / "layer_mi.parquet")
    names = [n for n, _, _ in expected_names([1, 1, 1, 1])]
    for state in ("trained", "random"):
        rows = layer.filter(pl.col("state") == state).sort("depth")
        assert rows["site"].to_list() == names
        assert rows["i_ty"].is_finite().all() and (rows["i_ty"] >= 0).all()
        assert rows["i_xt"].is_finite().all() and (rows["i_xt"] > 0).all()
    channel = pl.read_parquet(tables / "channel_mi.parquet")
    assert set(channel["site"].unique()) == set(names)


def test_spec_can_force_the_adapter(pm, tmp_path):
    from mi_probe.errors import SpecError
    from mi_probe._core.spec import load_spec_text

    text = spec_text() + "sites: {adapter: convnext, include: ['*.pre_add']}\n"
    assert load_spec_text(text, "x.yaml", pm=pm).sites.adapter == "convnext"
    with pytest.raises(SpecError, match="adapter"):
        load_spec_text(text, "x.yaml", pm=get_plugin_manager(autoload=False))


def test_knockout_experiment_fast_path_equals_full_forward(pm, tmp_path, monkeypatch):
    """The engine's knockout through ``suffix`` on cached site outputs (site_cache_mb > 0)
    gives the same table as full forward passes (site_cache_mb: 0)."""
    import polars as pl

    kinds = []
    original = ConvNeXtAdapter.suffix

    def spy(self, model, site):
        fn = original(self, model, site)
        kinds.append((site.kind, fn is not None))
        return fn

    monkeypatch.setattr(ConvNeXtAdapter, "suffix", spy)
    ko = "{kind: knockout, state: random, q: [0.5], random_draws: 1, variants: [plain]}"
    fast = run_spec(pm, tmp_path, "fast", spec_text(arch="test_convnext2_ls1", experiment=ko))
    assert ("stem", True) in kinds and ("post_add", True) in kinds  # the fast path ran
    assert ("pre_add", False) in kinds
    slow = run_spec(pm, tmp_path, "slow", spec_text(arch="test_convnext2_ls1", cache=0,
                                                    experiment=ko))
    a = pl.read_parquet(fast / "knockout.parquet")
    assert set(a["site_kind"].unique()) == {"stem", "pre_add", "post_add"}
    # the same numbers; only run_id (the run's folder and start time) tells the runs apart
    assert a.drop("run_id").equals(pl.read_parquet(slow / "knockout.parquet").drop("run_id"))


# ------------------------------------------------------------------ layer scale / random baseline

def test_ls1_variants_differ_only_in_gamma():
    assert "convnext_nano" in base_architectures()
    assert not any(a.startswith("convnextv2") for a in base_architectures())
    plain = build_model("test_convnext", K, 0).state_dict()
    ls1 = build_model(f"test_convnext{SUFFIX}", K, 0).state_dict()
    assert plain.keys() == ls1.keys()
    gammas = [k for k in plain if k.endswith(".gamma")]
    assert len(gammas) == 9
    for key in plain:
        if key in gammas:
            assert torch.all(plain[key] == 1e-6) and torch.all(ls1[key] == 1.0)
        else:
            assert torch.equal(plain[key], ls1[key]), key
    model = build_model("test_convnext", K, 0)
    assert set_layer_scale(model) == 9
    assert all(torch.equal(v, ls1[k]) for k, v in model.state_dict().items())


def test_ls1_refuses_pretrained_weights():
    import timm

    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("test_convnext2_ls1", pretrained=True)


def test_random_init_blocks_are_near_identity_unless_ls1(pm, tmp_path):
    """The documented pitfall: with timm's ls_init_value=1e-6 the post_add sites of a
    stage (and the stem and the first block) give identical MI at random init; with the
    ``_ls1`` architecture they differ."""
    import polars as pl

    exp = "{kind: layer_mi, states: [random], null_draws: 0}"
    values = {}
    for arch in ("test_convnext", "test_convnext_ls1"):
        text = spec_text(arch=arch, experiment=exp).replace("weights: train", "weights: random")
        layer = pl.read_parquet(run_spec(pm, tmp_path, arch, text) / "layer_mi.parquet")
        values[arch] = dict(zip(layer["site"], layer["i_ty"]))
    same = [("stem", "stages.0.blocks.0.post_add"),
            ("stages.2.blocks.0.post_add", "stages.2.blocks.3.post_add"),
            ("stages.3.blocks.0.post_add", "stages.3.blocks.1.post_add")]
    plain, ls1 = values["test_convnext"], values["test_convnext_ls1"]
    assert all(plain[a] == plain[b] for a, b in same)
    assert sum(ls1[a] != ls1[b] for a, b in same) >= 2


# ------------------------------------------------------------------ packaging and docs

def test_plugin_imports_no_engine():
    code = (f"import json, sys, {PLUGIN}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mi_probe.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(json.loads(out.stdout)) <= {"mi_probe.errors", "mi_probe.hookspecs",
                                           "mi_probe.interfaces", "mi_probe.plugin"}


def test_plugin_imports_no_torch_and_registers_variants_once_timm_loads():
    """``mi-probe plugins`` and ``schema`` import every installed plugin: this one loads
    neither torch nor timm; the ``_ls1`` architectures appear as soon as timm is
    imported (and at once when timm already was)."""
    code = (f"import json, sys, {PLUGIN} as p; p.mi_probe_register_adapters(lambda *a: None)\n"
            "before = sorted(m for m in ('torch', 'timm') if m in sys.modules)\n"
            "import timm\n"
            "print(json.dumps([before, timm.is_model('test_convnext_ls1')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [[], True]
    code = (f"import json, timm, {PLUGIN}; print(json.dumps(timm.is_model('test_convnext_ls1')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is True


def _installed() -> bool:
    try:
        return any(ep.name == "convnext" for ep in md.entry_points(group="mi_probe"))
    except Exception:  # pragma: no cover
        return False


@pytest.mark.skipif(not _installed(), reason="pip install -e plugins/mi-probe-convnext")
def test_entry_point_discovery(monkeypatch):
    monkeypatch.delenv("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("MI_PROBE_PLUGINS", raising=False)
    auto = get_plugin_manager()
    assert auto.registry.entries("adapters")["convnext"].plugin == "convnext"
    assert auto.plugin_versions()["convnext"] == "0.1.0"
    model = build_model("test_convnext2", K, 0)
    assert select_adapter(auto, model, "test_convnext2").name == "convnext"


def readme_snippet() -> str:
    text = README.read_text()
    match = re.search(r"<!-- adapter-snippet -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its adapter snippet"
    return match.group(1)


#: the README's adapter snippet, kept as a real module so the test imports it (no exec)
SNIPPET = Path(__file__).with_name("readme_adapter.py")


@pytest.mark.parametrize("arch", ["test_convnext", "convnext_atto"])
def test_readme_snippet_runs_and_matches_the_plugin(arch, monkeypatch):
    """The < 40-line adapter in README.md (the docs' worked example) is, verbatim,
    tests/readme_adapter.py; imported as a plugin module it gives exactly the plugin's
    sites."""
    code = readme_snippet()
    assert code == SNIPPET.read_text(), "README snippet and tests/readme_adapter.py differ"
    assert len(code.splitlines()) < 40
    spec = importlib.util.spec_from_file_location("convnext_snippet", SNIPPET)
    module = importlib.util.module_from_spec(spec)
    # as for any imported plugin module (pydantic resolves annotations through it)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    spec.loader.exec_module(module)
    snippet_pm = get_plugin_manager([module], autoload=False)
    model = build_model(arch, K, 0)
    adapter = select_adapter(snippet_pm, model, arch)
    assert type(adapter).__module__ == "convnext_snippet"
    assert select_adapter(snippet_pm, model, arch, "convnext").name == "convnext"
    ours = [(r.name, r.module, r.kind) for r in ConvNeXtAdapter().site_refs(model)]
    assert [(r.name, r.module, r.kind) for r in adapter.site_refs(model)] == ours
    assert not adapter.claims(build_model("test_resnet", K, 0), "test_resnet")
    sites = resolve_sites(model, adapter, images(2), arch=arch)
    assert len(sites) == len(ours)
