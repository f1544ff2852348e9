"""Any timm backbone: the ``blocks`` adapter's residual trace, site selectors by kind
and position, token pooling, tuple outputs, input sizes, tied weights, preflight, and
the conformance sweep on a fixed sample that covers every built-in adapter and the
families that used to fail (tresnet, hrnet, crossvit, coat, tnt, deit at 32 px)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from mi_probe.builtin.adapters.blocks import BlocksAdapter
from mi_probe.builtin.adapters.generic import GenericAdapter
from mi_probe.builtin.adapters.resnet import ResNetAdapter
from mi_probe._core.capture import capture
from mi_probe.cli import main
from mi_probe.errors import SiteError, SpecError
from mi_probe._core.models import build_model, load_weights, model_meta, save_weights, shared_names
from mi_probe._core.preflight import preflight
from mi_probe._core.sites import resolve_sites, select_adapter
from mi_probe._core.spec import load_spec_text
from mi_probe.testing.architectures import check_architecture

K = 4
CPU = torch.device("cpu")


def _x(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _outputs(model, modules: dict[str, str], x: torch.Tensor, index: dict[str, int] = {}):
    """Full outputs of named modules for input ``x`` (the tensor at ``index``)."""
    got = {}
    handles = []
    for name, path in modules.items():
        def hook(_m, _i, out, _n=name):
            got[_n] = out[index.get(_n, 0)] if isinstance(out, (tuple, list)) else out
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return got, logits


# ------------------------------------------------------------------ residual structure
def test_blocks_adapter_finds_resnet_blocks_as_the_resnet_adapter_does():
    model = build_model("resnet18", K, 0, img_size=32)
    blocks = {r.name: (r.module, r.kind) for r in BlocksAdapter().site_refs(model)}
    resnet = {r.name: (r.module, r.kind) for r in ResNetAdapter().site_refs(model)
              if r.kind != "stem"}
    assert {k: v for k, v in blocks.items() if k != "stem"} == resnet


def test_post_add_is_skip_plus_pre_add_in_a_vit_block():
    """The pre_add site is exactly what the block adds: post_add = (the running sum
    that norm2 reads) + pre_add, to the last bit (a planted identity of the block)."""
    model = build_model("test_vit", K, 0)
    size = model.mi_probe_input_size[-1]
    refs = {r.name: r for r in BlocksAdapter().site_refs(model)}
    assert refs["blocks.2.pre_add"].module == "blocks.2.drop_path2"
    assert refs["blocks.2.post_add"].module == "blocks.2"
    skip = {}
    handle = model.blocks[2].norm2.register_forward_pre_hook(
        lambda _m, args: skip.setdefault("x", args[0].clone()))
    try:
        got, _ = _outputs(model, {"pre": "blocks.2.drop_path2", "post": "blocks.2"}, _x(2, size))
    finally:
        handle.remove()
    assert torch.equal(got["post"], skip["x"] + got["pre"])


@pytest.mark.parametrize("arch,block", [("resnet18", "layer2.0"), ("resnet18", "layer3.1"),
                                        ("test_vit", "blocks.1")])
@pytest.mark.parametrize("gain", [0.0, 0.5, 1.0])
def test_skip_gain_hooks_scale_the_skip(arch, block, gain):
    """The blocks adapter's skip gains: gain 1 changes nothing (bitwise); on ResNet
    blocks (identity and projection shortcuts) they equal the resnet adapter's."""
    model = build_model(arch, K, 0, img_size=32 if arch == "resnet18" else None)
    x = _x(2, model.mi_probe_input_size[-1])
    plain = _logits_with(model, x, [])
    scaled = _logits_with(model, x, BlocksAdapter().skip_gain_hooks(model, block, gain))
    if gain == 1.0:
        assert torch.equal(scaled, plain)
    else:
        assert not torch.allclose(scaled, plain)
    if arch == "resnet18":  # the same hooks on the same modules: the same numbers
        reference = _logits_with(model, x, ResNetAdapter().skip_gain_hooks(model, block, gain))
        assert torch.equal(scaled, reference)


def _logits_with(model, x: torch.Tensor, handles: list) -> torch.Tensor:
    """Logits with ``handles`` in place, removed afterwards."""
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


def test_skip_gain_refuses_a_block_without_a_residual():
    model = build_model("test_efficientnet", K, 0)
    adapter = BlocksAdapter()
    plain = [r.name for r in adapter.site_refs(model) if r.kind == "block"]
    assert plain
    with pytest.raises(SiteError, match="no residual add"):
        adapter.skip_gain_hooks(model, plain[0], 0.5)


# ------------------------------------------------------------------ selectors
@pytest.mark.parametrize("position,expected", [
    ("all", [f"layer{i}.{j}.post_add" for i in (1, 2, 3, 4) for j in (0, 1)]),
    ("last_stage", ["layer4.0.post_add", "layer4.1.post_add"]),
    ("first_stage", ["layer1.0.post_add", "layer1.1.post_add"]),
    ("last_half", [f"layer{i}.{j}.post_add" for i in (3, 4) for j in (0, 1)]),
    ("last", ["layer4.1.post_add"]),
])
def test_kind_and_position_selectors_on_resnet(pm, position, expected):
    model = build_model("resnet18", K, 0, img_size=32)
    sites = resolve_sites(model, select_adapter(pm, model, "resnet18"), _x(), arch="resnet18",
                          kinds=["output"], position=position)
    assert [s.name for s in sites] == expected
    # the model's own site indices (stem 0, layer1.0.pre_add 1, layer1.0.post_add 2, ...)
    every = {s.name: s.depth for s in resolve_sites(
        model, select_adapter(pm, model, "resnet18"), _x(), arch="resnet18")}
    assert [s.depth for s in sites] == [every[name] for name in expected]
    if position == "last":  # resnet18's 17th and last site
        assert [(s.depth, s.rel_depth) for s in sites] == [(16, 1.0)]


def test_last_stage_on_a_vit_and_an_efficientnet(pm):
    vit = build_model("vit_tiny_patch16_224", K, 0, img_size=32)
    sites = resolve_sites(vit, select_adapter(pm, vit, "vit"), _x(), arch="vit",
                          kinds=["output"], position="last_third")
    assert [s.name for s in sites] == [f"blocks.{i}.post_add" for i in (8, 9, 10, 11)]
    eff = build_model("efficientnet_b0", K, 0)
    sites = resolve_sites(eff, select_adapter(pm, eff, "eff"), _x(size=64), arch="eff",
                          kinds=["output"], position="last_stage")
    assert {s.stage for s in sites} == {max(s.stage for s in sites)}
    assert sites[-1].module == "blocks.6.0" and sites[-1].kind == "block"


def test_unknown_kind_names_the_kinds_there_are(pm):
    model = build_model("resnet18", K, 0, img_size=32)
    with pytest.raises(SiteError, match=r"no site of kind \['post_act'\].*'post_add', 'pre_add'"):
        resolve_sites(model, select_adapter(pm, model, "resnet18"), _x(), arch="resnet18",
                      kinds=["post_act"])


# ------------------------------------------------------------------ tokens and tuples
def test_distilled_deit_keeps_both_prefix_tokens_out_of_the_patch_mean(pm):
    model = build_model("deit_tiny_distilled_patch16_224", K, 0, img_size=32)
    x = _x(2, 32)
    sites = resolve_sites(model, select_adapter(pm, model, "deit"), x, arch="deit",
                          kinds=["post_add"], position="last")
    assert sites[0].prefix_tokens == 2
    got = capture(model, sites, [(x, torch.tensor([0, 1]))], CPU)
    full, _ = _outputs(model, {"b": sites[0].module}, x)
    torch.testing.assert_close(got.acts[sites[0].name], full["b"][:, 2:].mean(1), rtol=0,
                               atol=1e-6)


def test_tnt_blocks_return_a_tuple_and_the_site_is_the_patch_stream(pm):
    model = build_model("tnt_s_legacy_patch16_224", K, 0, img_size=32)
    x = _x(2, 32)
    sites = resolve_sites(model, select_adapter(pm, model, "tnt"), x, arch="tnt",
                          kinds=["post_add"], position="last")
    site = sites[0]
    assert site.index == 1 and site.prefix_tokens == 1 and site.channels == 384
    got = capture(model, sites, [(x, torch.tensor([0, 1]))], CPU)
    full, _ = _outputs(model, {"b": site.module}, x, {"b": 1})
    torch.testing.assert_close(got.acts[site.name], full["b"][:, 1:].mean(1), rtol=0, atol=1e-6)


def test_cls_tokens_refused_where_there_is_no_class_token(pm):
    model = build_model("swin_tiny_patch4_window7_224", K, 0, img_size=32)
    with pytest.raises(SiteError, match="no class token"):
        resolve_sites(model, select_adapter(pm, model, "swin"), _x(), arch="swin",
                      kinds=["pre_add"], tokens="cls")


# ------------------------------------------------------------------ weights and sizes
def test_tied_weights_save_and_load_through_safetensors():
    """CoaT shares conv position-encoding weights between blocks: saved once, loaded
    back into every alias."""
    model = build_model("coat_tiny", K, 0)
    assert shared_names(model)
    meta = model_meta("coat_tiny", K, None, "timm", False)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.safetensors"
        save_weights(model, path, meta)
        other = build_model("coat_tiny", K, 1)
        load_weights(other, path, meta)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def _spec(arch: str, size: int, sites: str = "{kinds: [output]}", extra: str = "") -> str:
    return (f"name: t\ndata: {{kind: synthetic, image_size: {size}}}\n"
            f"model: {{arch: {arch}, weights: random}}\nsites: {sites}\n"
            "experiment: {kind: layer_mi, states: [random]}\n" + extra)


def test_deit_at_32_px_is_built_for_32_px(pm):
    spec = load_spec_text(_spec("deit_tiny_patch16_224", 32), "<t>", [], pm)
    preflight(spec, pm)  # builds for 32 px on the meta device and probes every site
    model = build_model("deit_tiny_patch16_224", K, 0, img_size=32)
    assert model.patch_embed.img_size == (32, 32)
    assert model(_x(2, 32)).shape == (2, K)


def test_a_size_the_model_cannot_run_on_is_refused_with_one_that_works(pm):
    spec = load_spec_text(_spec("inception_v3", 32), "<t>", [], pm)
    with pytest.raises(SpecError, match=r"cannot run on the data's 32x32 px images.*"
                                        r"smallest size it runs on is \d+ px"):
        preflight(spec, pm)


def test_hrnet_preflight_passes_and_its_stale_stage_names_are_left_out(pm):
    """hrnet's feature_info names a module that does not exist (``stem``): it used to
    train, cache a model and then fail. Now its blocks resolve before any training,
    and the generic fallback leaves the stale name out."""
    spec = load_spec_text(_spec("hrnet_w18_small", 64), "<t>", [], pm)
    preflight(spec, pm)
    model = build_model("hrnet_w18_small", K, 0)
    modules = dict(model.named_modules())
    refs = GenericAdapter().site_refs(model)
    assert refs and all(r.module in modules for r in refs)
    stale = [i["module"] for i in model.feature_info if i["module"] not in modules]
    assert stale  # still stale in timm: the test would prove nothing otherwise


def test_a_site_that_is_never_captured_fails_in_preflight(pm):
    """CoaT's feature_info names ModuleLists that are never called themselves: forcing
    the stage fallback fails before training, naming the site; auto finds blocks."""
    text = _spec("coat_tiny", 64, "{adapter: generic}")
    with pytest.raises(SiteError, match=r"not reached by a forward pass.*mi-probe sites"):
        preflight(load_spec_text(text, "<t>", [], pm), pm)
    preflight(load_spec_text(_spec("coat_tiny", 64, "{}"), "<t>", [], pm), pm)


def test_tresnet_sites_are_blocks_not_the_model():
    model = build_model("tresnet_m", K, 0)
    assert [i["module"] for i in model.feature_info][0] == ""  # timm names the root
    for adapter in (BlocksAdapter(), GenericAdapter()):
        refs = adapter.site_refs(model)
        assert refs and all(r.module and not r.module.startswith("head") for r in refs)


# ------------------------------------------------------------------ stock specs, CLI
@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "efficientnet_b0", "tresnet_m",
                                  "vgg11", "convnext_atto", "mobilenetv3_small_050"])
def test_stock_knockout_spec_validates_for_any_family(arch, capsys):
    assert main(["validate", "specs/knockout.yaml", "--set", f"model.arch={arch}"]) == 0, \
        capsys.readouterr().err


def test_sites_command_probes_at_the_models_own_size(capsys):
    assert main(["sites", "inception_v3", "--kinds", "output", "--position", "last"]) == 0
    out = capsys.readouterr().out
    assert "at 299x299 px" in out and "Mixed_7c" in out


def test_sites_command_on_a_vit_shows_token_pooling(capsys):
    assert main(["sites", "deit_tiny_distilled_patch16_224", "--image-size", "32",
                 "--kinds", "post_add", "--position", "last"]) == 0
    out = capsys.readouterr().out
    assert "nlc (patch_mean, 2 prefix)" in out and "blocks.11.post_add" in out


# ------------------------------------------------------------------ conformance sample
#: one model per built-in adapter, and the families named in the issue
SAMPLE = ["test_resnet", "mi_probe_tiny_vgg", "test_vit", "test_efficientnet", "tresnet_m",
          "hrnet_w18_small", "crossvit_tiny_240", "coat_lite_tiny", "tnt_s_legacy_patch16_224"]


@pytest.mark.parametrize("arch", SAMPLE)
def test_conformance_sample(arch, tmp_path):
    row = check_architecture(arch, tmp_path)
    assert row["layer_mi"] and row["knockout"], row.get("traceback") or row["notes"]
    assert row["sites"] > 0 and row["adapter"] != "generic"


def test_knockout_without_signal_says_so():
    """A run in which no site beats the null gets a note, not a silent empty table."""
    import polars as pl

    from mi_probe.builtin.experiments.knockout import InterventionSweep, KnockoutParams

    sweep = InterventionSweep(KnockoutParams())
    masses = pl.DataFrame({"site": ["blocks.0.post_add"], "has_signal": [False]})
    notes = sweep.notes({"knockout_site_masses": masses})
    assert len(notes) == 1 and "no site was intervened on" in notes[0]
    assert "mass: null_subtracted" in notes[0]
    drops = pl.DataFrame({"drop": [0.1]})
    assert sweep.notes({"knockout_site_masses": masses, "knockout": drops}) == []


def test_skip_gain_runs_on_a_vit(tmp_path):
    """The stock skip_gain selection (kinds pre_add, post_add) on a ViT: every block is
    measured, and gain 1 (the unmodified network) changes no accuracy."""
    import mi_probe

    text = _spec("test_vit", 32, "{kinds: [pre_add, post_add]}").replace(
        "experiment: {kind: layer_mi, states: [random]}",
        "experiment: {kind: skip_gain, state: random, gains: [0.0, 1.0], mass: raw}")
    result = mi_probe.run(text, out=tmp_path / "run", cache_dir=tmp_path / "cache")
    table = result.tables["skip_gain"]
    assert sorted(set(table["block"].to_list())) == sorted(f"blocks.{i}" for i in range(6))
    assert set(table.filter(table["gain"] == 1.0)["change"].to_list()) == {0.0}


def test_an_encoder_without_a_classifier_is_refused_before_training(pm):
    """gemma4_vit_*_enc returns token embeddings, not logits: refused in preflight."""
    spec = load_spec_text(_spec("gemma4_vit_167m_enc", 96), "<t>", [], pm)
    with pytest.raises(SpecError, match=r"not \(2, 10\) class logits: it has no "
                                        "classification head"):
        preflight(spec, pm)
