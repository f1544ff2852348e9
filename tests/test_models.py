"""Tests of mi_probe._core.models: creation, seeding, activation swap, paper VGG head,
zero_init_last handling, safetensors weights with JSON metadata, device resolution.

Small timm models only (``test_resnet`` mixes BasicBlock and Bottleneck blocks and has
downsampling shortcuts), tiny inputs, pretrained weights never requested.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import struct

import pytest
import torch
from torch import nn

from mi_probe._core import models
from mi_probe.errors import CheckpointError, ModelError, UnknownModelError
from mi_probe._core.models import (
    PaperVGGHead,
    build_model,
    load_weights,
    model_meta,
    read_meta,
    resolve_device,
    save_weights,
    swap_activations,
)

ARCH = "test_resnet"
K = 10


def _x(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _pre_add_pooled(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pooled outputs of the last norm of every residual branch (the pre_add sites)."""
    from mi_probe._core.capture import capture
    from mi_probe._core.sites import resolve_sites
    from mi_probe.builtin.adapters.resnet import ResNetAdapter

    sites = resolve_sites(model, ResNetAdapter(), x[:2], include=["*.pre_add"])
    got = capture(model, sites, [(x, torch.zeros(len(x), dtype=torch.long))], torch.device("cpu"))
    return got.acts


# ----------------------------------------------------------------------------- names


def test_unknown_arch_suggests_close_names():
    with pytest.raises(UnknownModelError, match=r"'resnet81'.*did you mean.*'resnet18'"):
        build_model("resnet81", K, 0)
    assert issubclass(UnknownModelError, ModelError)


def test_unknown_arch_without_close_match_has_no_suggestion():
    with pytest.raises(UnknownModelError, match="not a timm model name") as info:
        models.check_arch("zzzzqqqq_not_a_model")
    assert "did you mean" not in str(info.value)


def test_pretrained_tag_names_are_accepted():
    models.check_arch("resnet18.a1_in1k")  # timm names with a pretrained tag are models


# ----------------------------------------------------------------------------- seeding


def test_same_seed_same_weights_different_seed_different():
    a, b, c = build_model(ARCH, K, 0), build_model(ARCH, K, 0), build_model(ARCH, K, 1)
    assert _same_state(a, b)
    conv_a, conv_c = a.state_dict()["layer1.0.conv1.weight"], c.state_dict()["layer1.0.conv1.weight"]
    assert not torch.equal(conv_a, conv_c)
    assert not a.training  # built in eval mode
    x = _x()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.allclose(a(x), c(x))


def test_build_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(ARCH, K, 7)
    assert torch.equal(torch.rand(3), expected)


def test_num_classes_sets_classifier_width():
    model = build_model(ARCH, 3, 0)
    with torch.no_grad():
        assert model(_x(2)).shape == (2, 3)


# ----------------------------------------------------------------------------- activation swap


def test_tanh_swap_replaces_every_relu():
    relu_model = build_model(ARCH, K, 0)
    n_relu = sum(isinstance(m, nn.ReLU) for m in relu_model.modules())
    assert n_relu > 0
    tanh_model = build_model(ARCH, K, 0, act="tanh")
    assert not any(isinstance(m, nn.ReLU) for m in tanh_model.modules())
    assert sum(isinstance(m, nn.Tanh) for m in tanh_model.modules()) == n_relu
    # the swap consumes no randomness and adds no parameters: same weights, other outputs
    assert _same_state(relu_model, tanh_model)
    x = _x()
    with torch.no_grad():
        assert not torch.allclose(relu_model(x), tanh_model(x))


def test_swap_activations_returns_count_and_swaps_back():
    model = build_model(ARCH, K, 0)
    n_relu = sum(isinstance(m, nn.ReLU) for m in model.modules())
    assert swap_activations(model, "tanh") == n_relu
    assert swap_activations(model, "relu") == n_relu  # tanh is swappable too
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == n_relu
    assert not any(isinstance(m, nn.Tanh) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), build_model(ARCH, K, 0)(_x()), rtol=0, atol=0)


def test_swap_keeps_in_place_flag_of_replaced_module():
    # an in-place ReLU where the model had an out-of-place activation could overwrite a
    # tensor the model still reads (e.g. x + act(x)); the swap must not add in-place ops
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.act = nn.GELU()

        def forward(self, x):
            h = self.lin(x)
            return h + self.act(h)

    torch.manual_seed(0)
    model = Residual()
    x = torch.randn(3, 4)
    swap_activations(model, "relu")
    assert isinstance(model.act, nn.ReLU) and not model.act.inplace
    with torch.no_grad():
        h = model.lin(x)
        torch.testing.assert_close(model(x), h + torch.relu(h))


def test_swap_on_model_without_activation_modules_is_an_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ModelError, match="no activation modules"):
        swap_activations(model, "tanh")


def test_unknown_activation_is_a_model_error():
    with pytest.raises(ModelError, match=r"'swish'.*relu.*tanh"):
        build_model(ARCH, K, 0, act="swish")


# ----------------------------------------------------------------------------- paper VGG head


@pytest.fixture(scope="module")
def paper_vgg():
    return build_model("vgg11", K, 0, head="paper_vgg")


def test_paper_vgg_head_structure_and_forward(paper_vgg):
    head = paper_vgg.head
    assert isinstance(head, PaperVGGHead)
    assert isinstance(paper_vgg.pre_logits, nn.Identity)
    assert isinstance(head.fc1, nn.Linear)
    assert (head.fc1.in_features, head.fc1.out_features) == (512, 4096)
    assert isinstance(head.act, nn.ReLU)
    assert isinstance(head.drop, nn.Dropout) and head.drop.p == 0.5
    assert (head.fc2.in_features, head.fc2.out_features) == (4096, K)
    # order inside the head: Linear, ReLU, Dropout, Linear
    assert [type(m) for m in head.children()] == [nn.AdaptiveAvgPool2d, nn.Linear, nn.ReLU,
                                                  nn.Dropout, nn.Linear]
    x = _x(2)
    with torch.no_grad():
        out = paper_vgg(x)
        assert out.shape == (2, K)
        assert torch.isfinite(out).all()
        assert paper_vgg.forward_head(paper_vgg.forward_features(x), pre_logits=True).shape == (2, 4096)
        # eval mode: dropout off, deterministic
        assert torch.equal(paper_vgg(x), out)


def test_paper_vgg_head_on_resnet_is_an_error():
    with pytest.raises(ModelError, match=r"paper_vgg.*ResNet"):
        build_model(ARCH, K, 0, head="paper_vgg")


def test_unknown_head_is_a_model_error():
    with pytest.raises(ModelError, match=r"'mlp'.*paper_vgg"):
        build_model(ARCH, K, 0, head="mlp")


# ----------------------------------------------------------------------------- zero_init_last


def _last_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    out = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            out.append(block.bn3 if hasattr(block, "bn3") else block.bn2)
    return out


def test_timm_zero_init_last_zeroes_residual_branches():
    model = build_model(ARCH, K, 0, zero_init_last=True)
    norms = _last_norms(model)
    assert {type(b).__name__ for layer in (model.layer1, model.layer3) for b in layer} == {
        "BasicBlock", "Bottleneck"}
    assert norms and all(torch.count_nonzero(bn.weight) == 0 for bn in norms)
    acts = _pre_add_pooled(model, _x(6))
    assert len(acts) == len(norms)
    for name, a in acts.items():
        assert torch.count_nonzero(a) == 0, name  # constant (zero) over samples


def test_default_undoes_zero_init_last_and_changes_nothing_else():
    model = build_model(ARCH, K, 0)  # mi-probe default: zero_init_last=False
    for name, m in model.named_modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
            assert torch.count_nonzero(m.weight) > 0, name
    assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) for bn in _last_norms(model))
    acts = _pre_add_pooled(model, _x(6))
    for name, a in acts.items():
        assert a.std(0).max() > 1e-4, name  # varies across samples
    # same seed with timm's zero init: every other tensor is identical
    zero = build_model(ARCH, K, 0, zero_init_last=True).state_dict()
    reset = {f"{n}.weight" for n, m in model.named_modules() if m in _last_norms(model)}
    for key, value in model.state_dict().items():
        if key not in reset:
            assert torch.equal(value, zero[key]), key


# ----------------------------------------------------------------------------- weights


def _meta(arch=ARCH, num_classes=K, **kw):
    args = dict(act=None, head="timm", zero_init_last=False) | kw
    return model_meta(arch, num_classes, args["act"], args["head"], args["zero_init_last"])


def test_weights_round_trip(tmp_path):
    src = build_model(ARCH, K, 0)
    with torch.no_grad():  # make running stats non-trivial so buffers are checked too
        src.train()(_x(8, seed=3))
    src.eval()
    path = tmp_path / "sub" / "model.safetensors"
    save_weights(src, path, _meta())
    assert path.is_file()
    assert os.listdir(path.parent) == ["model.safetensors"]  # no temporary file left
    dst = build_model(ARCH, K, 5)
    assert not _same_state(src, dst)
    load_weights(dst, path, _meta())
    assert _same_state(src, dst)
    x = _x()
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    # loading without an expectation also works (names and shapes checked only)
    other = build_model(ARCH, K, 9)
    load_weights(other, path)
    assert _same_state(src, other)


def test_header_carries_json_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    meta = _meta(act="tanh")
    save_weights(build_model(ARCH, K, 0, act="tanh"), path, meta)
    assert read_meta(path) == meta
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert json.loads(header["__metadata__"][models.META_KEY]) == meta
    assert "layer1.0.conv1.weight" in header


def test_read_meta_of_foreign_file_is_none(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    assert read_meta(path) is None


def test_checkpoint_for_another_arch_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_weights(build_model(ARCH, K, 0), path, _meta())
    target = build_model("resnet10t", K, 0)
    with pytest.raises(CheckpointError, match=r"arch='test_resnet'.*arch='resnet10t'"):
        load_weights(target, path, _meta(arch="resnet10t"))


def test_checkpoint_for_other_num_classes_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_weights(build_model(ARCH, K, 0), path, _meta())
    with pytest.raises(CheckpointError, match=r"num_classes=10.*num_classes=5"):
        load_weights(build_model(ARCH, 5, 0), path, _meta(num_classes=5))


def test_checkpoint_with_other_act_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_weights(build_model(ARCH, K, 0), path, _meta())
    with pytest.raises(CheckpointError, match=r"act=None.*act='tanh'"):
        load_weights(build_model(ARCH, K, 0, act="tanh"), path, _meta(act="tanh"))


def test_foreign_file_with_wrong_shapes_names_tensor_and_shapes(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    state = {k: v.contiguous() for k, v in build_model(ARCH, K, 0).state_dict().items()}
    save_file(state, str(path))  # no metadata at all
    target = build_model(ARCH, 5, 0)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=re.escape("fc.weight: file (10, 96), model (5, 96)")):
        load_weights(target, path, _meta(num_classes=5))
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched


def test_foreign_file_with_missing_tensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "partial.safetensors"
    state = {k: v.contiguous() for k, v in build_model(ARCH, K, 0).state_dict().items()
             if not k.startswith("fc.")}
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"2 missing.*fc\.(bias|weight)"):
        load_weights(build_model(ARCH, K, 0), path)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_weights(build_model(ARCH, K, 0), path, _meta())
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        read_meta(path)


def test_corrupt_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(os.urandom(16) + b"this is not a safetensors file" * 10)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_weights(build_model(ARCH, K, 0), path, _meta())


def test_truncated_file_is_a_checkpoint_error(tmp_path):
    good = tmp_path / "good.safetensors"
    save_weights(build_model(ARCH, K, 0), good, _meta())
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=re.escape(str(bad))):
        load_weights(build_model(ARCH, K, 0), bad, _meta())


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    import safetensors.torch

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    path = tmp_path / "m.safetensors"
    with pytest.raises(OSError, match="disk full"):
        save_weights(build_model(ARCH, K, 0), path, _meta())
    assert os.listdir(tmp_path) == []


def test_models_module_never_unpickles():
    source = inspect.getsource(models)
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
            imported |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Attribute) and node.attr == "load":
            assert not (isinstance(node.value, ast.Name) and node.value.id == "torch"), \
                "models.py calls torch.load"
    assert not imported & {"pickle", "dill", "cloudpickle", "joblib"}
    assert "torch.load" not in imported
    assert not re.search(r"torch\.load\b|\bpickle\b|weights_only", source)


# ----------------------------------------------------------------------------- devices


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_resolve_device_cuda_without_gpu_is_an_error(name):
    with pytest.raises(ModelError, match=r"cuda.*no CUDA device"):
        resolve_device(name)


def test_resolve_device_rejects_nonsense():
    with pytest.raises(ModelError, match=r"'gpu0'.*auto.*cpu.*cuda"):
        resolve_device("gpu0")
