"""Early halt (issue 25, item 3): ``capture(..., halt_after_sites=True)`` stops each
forward pass once every requested site has its output. The site outputs are the full
pass's bit for bit, the modules after the deepest site never run, the deepest site is
the last to fire (not the last listed), hooks are removed and errors propagate."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mi_probe._core import capture as capture_mod
from mi_probe._core.capture import capture
from mi_probe._core.models import build_model
from mi_probe._core.plugins import get_plugin_manager
from mi_probe._core.sites import resolve_sites, select_adapter

CPU = torch.device("cpu")
K = 10


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny models on one torch thread (the machine is shared)."""


@pytest.fixture(scope="module")
def pm():
    os.environ.setdefault("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
    return get_plugin_manager(autoload=False)


def _setup(pm, arch: str, include: list[str]):
    model = build_model(arch, K, 0)
    x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(10) % K
    sites = resolve_sites(model, select_adapter(pm, model, arch), x[:2], arch=arch,
                          include=include)
    assert sites
    return model, sites, DataLoader(TensorDataset(x, y), batch_size=4)


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _calls(model: nn.Module, names: list[str]) -> tuple[dict[str, int], list]:
    counts = dict.fromkeys(names, 0)
    handles = []
    for name in names:
        def hook(*_a, _n=name):
            counts[_n] += 1
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    return counts, handles


@pytest.mark.parametrize("arch,include,later", [
    ("test_resnet", ["layer1.*"], ["layer2", "layer4", "fc"]),
    ("resnet18", ["layer1.0.post_add"], ["layer1.1", "layer2", "layer4", "fc"]),
    ("resnet18", ["layer1.*", "layer2.0.post_add"], ["layer2.1", "layer3", "fc"]),
])
def test_early_halt_gives_the_full_pass_site_outputs_and_stops_the_pass(pm, arch, include,
                                                                      later):
    model, sites, loader = _setup(pm, arch, include)
    full = capture(model, sites, loader, CPU)
    hooks = _hook_count(model)
    counts, handles = _calls(model, later)
    try:
        halted = capture(model, sites, loader, CPU, halt_after_sites=True)
    finally:
        for h in handles:
            h.remove()
    assert counts == dict.fromkeys(later, 0)  # nothing after the deepest site ran
    assert _hook_count(model) == hooks  # capture's hooks are gone
    assert set(halted.acts) == set(full.acts)
    for name in full.acts:
        assert _bits(halted.acts[name]) == _bits(full.acts[name]), name
    assert torch.equal(halted.labels, full.labels)
    assert halted.logits is None and full.logits is not None
    with pytest.raises(ValueError, match="no logits"):
        _ = halted.accuracy
    assert capture_mod.last_fire_order == [s.name for s in sites]


def test_the_deepest_site_is_the_last_to_fire_not_the_last_listed(pm):
    model, sites, loader = _setup(pm, "resnet18", ["layer1.0.post_add", "layer2.0.post_add"])
    reversed_sites = list(reversed(sites))  # deepest listed first
    full = capture(model, sites, loader, CPU)
    counts, handles = _calls(model, ["layer2.0", "layer2.1", "fc"])
    try:
        halted = capture(model, reversed_sites, loader, CPU, halt_after_sites=True)
    finally:
        for h in handles:
            h.remove()
    assert capture_mod.last_fire_order == ["layer1.0.post_add", "layer2.0.post_add"]
    assert counts == {"layer2.0": 3, "layer2.1": 0, "fc": 0}  # 3 batches, up to layer2.0
    for name in full.acts:
        assert _bits(halted.acts[name]) == _bits(full.acts[name])


def test_the_sink_gets_each_batch_with_labels_and_no_logits_when_halting(pm):
    model, sites, loader = _setup(pm, "test_resnet", ["layer1.*"])

    class Sink:
        def __init__(self):
            self.rows: dict[str, list] = {}
            self.outputs: list = []

        def append(self, site, rows):
            self.rows.setdefault(site, []).append(rows.clone())

        def append_outputs(self, labels, logits):
            self.outputs.append((labels, logits))

    for halt in (False, True):
        sink = Sink()
        cap = capture(model, sites, loader, CPU, sink=sink, halt_after_sites=halt)
        assert all(len(parts) == 3 for parts in sink.rows.values())  # one part per batch
        for name, parts in sink.rows.items():
            assert _bits(torch.cat(parts)) == _bits(cap.acts[name])
        assert torch.equal(torch.cat([lab for lab, _ in sink.outputs]), cap.labels)
        if halt:
            assert all(logits is None for _, logits in sink.outputs)
        else:
            assert _bits(torch.cat([lg for _, lg in sink.outputs])) == _bits(cap.logits)


def test_errors_propagate_and_hooks_are_removed(pm):
    model, sites, loader = _setup(pm, "test_resnet", ["layer2.*"])
    hooks = _hook_count(model)

    def boom(*_a):
        raise RuntimeError("broken module")

    handle = model.get_submodule("layer1").register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="broken module"):
            capture(model, sites, loader, CPU, halt_after_sites=True)
    finally:
        handle.remove()
    assert _hook_count(model) == hooks

    def bad_batches():
        yield next(iter(loader))
        raise OSError("the loader failed")

    with pytest.raises(OSError, match="loader failed"):
        capture(model, sites, bad_batches(), CPU, halt_after_sites=True)
    assert _hook_count(model) == hooks
