"""Sites kept whole (``sites.reduce``): capture keeps every C·H·W value or a seeded random
projection of them within a stated memory budget, the spec field defaults to the old
behaviour, and only experiments that read unpooled sites accept it."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mi_probe._core import capture as capture_mod
from mi_probe._core.capture import SiteReduction, capture
from mi_probe._core.sites import flatten, pool
from mi_probe.errors import SiteError, SpecError
from mi_probe.interfaces import Site

N = 20


def small_net() -> nn.Module:
    torch.manual_seed(0)
    # the in-place ReLU after the first conv overwrites that conv's output: what capture
    # keeps must be a copy taken in the hook
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Flatten(),
                         nn.LazyLinear(3))


SITES = [Site("conv1", "0", "block", 4, 0), Site("conv2", "2", "block", 6, 1)]


def loader(batch: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (N,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def outputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each site's full output, computed layer by layer (no hooks)."""
    x = torch.cat([b for b, _ in loader()])
    with torch.no_grad():
        first = model[0](x)
        return {"conv1": first.clone(), "conv2": model[2](torch.relu(first))}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    net = small_net()
    net(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
    return net.eval()


def test_mean_is_the_default_and_unchanged(model):
    plain = capture(model, SITES, loader(), torch.device("cpu"))
    for reduce in ("mean", SiteReduction()):
        again = capture(model, SITES, loader(), torch.device("cpu"), reduce=reduce)
        for site in SITES:
            assert torch.equal(plain.acts[site.name], again.acts[site.name])
            assert plain.acts[site.name].shape == (N, site.channels)


def test_none_keeps_every_value_channel_major(model):
    cap = capture(model, SITES, loader(), torch.device("cpu"), reduce="none")
    pooled = capture(model, SITES, loader(), torch.device("cpu"))
    full = outputs(model)
    for site in SITES:
        acts = cap.acts[site.name]
        c, h, w = full[site.name].shape[1:]
        assert acts.shape == (N, c * h * w) and acts.dtype == torch.float32
        # the conv output before the in-place ReLU overwrote it (a copy was kept)
        assert torch.allclose(acts, full[site.name].reshape(N, -1), atol=1e-6)
        assert torch.allclose(acts.view(N, c, h * w).mean(-1), pooled.acts[site.name],
                              atol=1e-6)
    assert bool((full["conv1"] < 0).any())  # the ReLU would have changed it


def test_flatten_matches_pool_for_every_layout():
    g = torch.Generator().manual_seed(2)
    nchw = torch.randn(3, 5, 4, 2, generator=g)
    nhwc = nchw.permute(0, 2, 3, 1)
    assert torch.equal(flatten(nhwc, "nhwc"), flatten(nchw, "nchw"))
    seq = torch.randn(3, 7, 5, generator=g)  # (N, L, C) with one class token first
    flat = flatten(seq, "nlc", prefix_tokens=1)
    assert flat.shape == (3, 5 * 6)
    assert torch.allclose(flat.view(3, 5, 6).mean(-1), pool(seq, "nlc", prefix_tokens=1))
    assert torch.equal(flatten(seq, "nlc", "cls", 1), seq[:, 0])
    assert torch.equal(flatten(seq.transpose(1, 2), "ncl", prefix_tokens=1), flat)
    with pytest.raises(SiteError, match="unknown layout 'xyz'"):
        flatten(seq, "xyz")


def test_projection_is_a_seeded_gaussian_matrix_per_site(model):
    red = SiteReduction(mode="project", dims=5, seed=3)
    cap = capture(model, SITES, loader(), torch.device("cpu"), reduce=red)
    again = capture(model, SITES, loader(), torch.device("cpu"), reduce=red)
    full = outputs(model)
    matrices = []
    for site in SITES:
        flat = full[site.name].reshape(N, -1)
        matrix = red.projection(site, flat.shape[1], torch.device("cpu"))
        assert matrix.shape == (flat.shape[1], 5)
        assert torch.allclose(cap.acts[site.name], flat @ matrix, atol=1e-5)
        assert torch.equal(cap.acts[site.name], again.acts[site.name])
        matrices.append(matrix)
    # one matrix per site (its name), another seed gives another matrix
    assert not torch.equal(matrices[0][:10], matrices[1][:10])
    other = SiteReduction(mode="project", dims=5, seed=4).projection(SITES[0], 8, torch.device("cpu"))
    assert not torch.equal(other, red.projection(SITES[0], 8, torch.device("cpu")))
    # entries N(0, 1/dims): squared norms are kept in expectation
    big = SiteReduction(mode="project", dims=400).projection(SITES[0], 300, torch.device("cpu"))
    assert big.var().item() == pytest.approx(1 / 400, rel=0.02)


def test_a_capture_over_the_budget_is_refused_naming_memory_and_limit(model):
    # conv1 keeps 20 x 256 float32 values = 20,480 bytes, conv2 20 x 96 = 7,680 bytes
    ok = SiteReduction(mode="none", max_bytes=20_480 + 7_680)
    capture(model, SITES, loader(), torch.device("cpu"), reduce=ok)
    tight = SiteReduction(mode="none", max_bytes=20_480 + 7_679)
    with pytest.raises(SiteError, match=r"site 'conv2' keeps 20 samples x 96 dims \(C·H·W = "
                       r"96\) in float32, .*7,680 bytes.*28,160 bytes\), over the budget of "
                       r".*28,159 bytes\) \(sites.reduce.max_mb\)"):
        capture(model, SITES, loader(), torch.device("cpu"), reduce=tight)
    # a projection is charged for its matrix too (256 x 4 float32 = 4,096 bytes)
    proj = SiteReduction(mode="project", dims=4, max_bytes=20 * 4 * 4 + 4_095)
    with pytest.raises(SiteError, match=r"the matrix adds .*4,096 bytes"):
        capture(model, SITES[:1], loader(), torch.device("cpu"), reduce=proj)


def test_a_loader_without_a_length_is_charged_as_rows_arrive(model):
    batches = list(loader())
    red = SiteReduction(mode="none", max_bytes=8 * 256 * 4 + 8 * 256 * 4)  # two batches
    with pytest.raises(SiteError, match=r"site 'conv1' keeps 20 samples x 256 dims"):
        capture(model, SITES[:1], iter(batches), torch.device("cpu"), reduce=red)


def test_float16_only_when_declared(model):
    half = capture(model, SITES, loader(), torch.device("cpu"),
                   reduce=SiteReduction(mode="none", dtype=torch.float16))
    full = capture(model, SITES, loader(), torch.device("cpu"), reduce="none")
    for site in SITES:
        assert half.acts[site.name].dtype == torch.float16
        assert torch.allclose(half.acts[site.name].float(), full.acts[site.name], rtol=1e-3,
                              atol=1e-3)
    loud = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten(), nn.LazyLinear(3))
    with torch.no_grad():
        loud[0].weight.fill_(1e5)
    with pytest.raises(SiteError, match=r"values up to .* beyond float16's ±65504"):
        capture(loud, [Site("c", "0", "block", 2, 0)], loader(), torch.device("cpu"),
                reduce=SiteReduction(mode="none", dtype=torch.float16))


def test_reduction_of_the_spec_field():
    from mi_probe._core.spec import SiteReduceSpec

    assert SiteReduction.of("mean").pooled and SiteReduction.of(None).pooled
    assert SiteReduction.of("none") == SiteReduction(mode="none")
    red = SiteReduction.of(SiteReduceSpec(project=64, seed=2, max_mb=10, dtype="float16"))
    assert (red.mode, red.dims, red.seed, red.max_bytes, red.dtype) == (
        "project", 64, 2, 10 * 2**20, torch.float16)
    assert SiteReduction.of(SiteReduceSpec(max_mb=1)).mode == "none"
    assert "capture" in capture_mod.__doc__


# ----------------------------------------------------------------------------- the spec

LAYER_MI = """\
name: t
data: {kind: digits, image_size: 16}
model: {arch: resnet18}
experiment: {kind: layer_mi}
"""


def test_spec_field_defaults_to_mean_and_parses_the_forms(pm):
    from mi_probe._core.spec import SiteReduceSpec, load_spec_text

    spec = load_spec_text(LAYER_MI, "t.yaml", pm=pm)
    assert spec.sites.reduce == "mean"
    assert spec.model_dump(mode="json")["sites"]["reduce"] == "mean"
    text = LAYER_MI.replace("layer_mi}", "unpooled_mi}")
    for value, want in (("none", "none"), ("{project: 64}", SiteReduceSpec(project=64)),
                        ("{max_mb: 10, dtype: float16}",
                         SiteReduceSpec(max_mb=10, dtype="float16"))):
        spec = load_spec_text(text, "t.yaml", [f"sites.reduce={value}"], pm=pm)
        assert spec.sites.reduce == want


@pytest.mark.parametrize("value, message", [
    ("pool", r"sites.reduce: expected mean, none or a mapping such as \{project: 1024\}"),
    ("{projet: 4}", r"sites.reduce: projet: unknown field; valid fields: project, seed, "
                    r"max_mb, dtype"),
    ("{project: 0}", r"sites.reduce: project: Input should be greater than or equal to 1"),
    ("{dtype: bfloat16}", r"sites.reduce: dtype: Input should be 'float32' or 'float16'"),
])
def test_spec_field_refuses_bad_values(pm, value, message):
    from mi_probe._core.spec import load_spec_text

    text = LAYER_MI.replace("layer_mi}", "unpooled_mi}")
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "t.yaml", [f"sites.reduce={value}"], pm=pm)
    assert any(__import__("re").search(message, p) for p in info.value.problems), \
        info.value.problems


def test_experiments_that_pool_refuse_unpooled_sites(pm):
    from mi_probe._core.spec import load_spec_text

    with pytest.raises(SpecError) as info:
        load_spec_text(LAYER_MI, "t.yaml", ["sites.reduce={project: 8}"], pm=pm)
    assert "experiment 'layer_mi' pools every site to channels" in str(info.value)
    assert "kind: unpooled_mi" in str(info.value)


def test_the_default_leaves_the_spec_hash_alone(pm):
    """A spec at ``sites.reduce: mean`` hashes as before the field existed (it is listed in
    ``rundir.LATER_FIELDS``)."""
    import hashlib
    import json

    from mi_probe._core.runner import rundir
    from mi_probe._core.spec import load_spec_text

    assert ("sites", "reduce", "mean") in rundir.LATER_FIELDS
    spec = load_spec_text(LAYER_MI, "t.yaml", pm=pm)
    data = spec.model_dump(mode="json", exclude={"executor", "track", "store"})
    data["sites"].pop("reduce")
    for section, field, default in rundir.LATER_FIELDS:
        part = data.get(section) if section else data
        if isinstance(part, dict) and part.get(field, object()) == default:
            part.pop(field)
    before = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    assert rundir.spec_hash(spec) == before
