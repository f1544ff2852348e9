"""Contract of capture's preallocated per-site storage (mi_probe._core.capture._Rows): whatever
the loader (a DataLoader that tells its size, one whose size overestimates the rows, a
list, a bare generator), the pooled activations equal torch.cat of the per-batch pooled
copies bit for bit, are float32 (N, C), contiguous, and hold exactly N * C * 4 bytes in
a storage of their own. No timing is asserted here (benchmarks/bench_capture.py
measures it)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mi_probe._core.capture import _Rows, _size_hints, add_pooling_hooks, capture, removing
from mi_probe.errors import SiteError
from mi_probe.interfaces import Site
from mi_probe._core.models import build_model
from mi_probe._core.plugins import get_plugin_manager
from mi_probe._core.sites import resolve_sites, select_adapter

CPU = torch.device("cpu")
K = 10


@pytest.fixture(scope="module")
def tiny():
    os.environ.setdefault("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = get_plugin_manager(autoload=False)
    model = build_model("test_resnet", K, 0)
    x = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = torch.arange(7) % K
    sites = resolve_sites(model, select_adapter(pm, model, "test_resnet"), x[:2],
                          arch="test_resnet")
    return model, sites, x, y


def _reference(model, sites, batches) -> dict[str, torch.Tensor]:
    """The previous storage: one pooled tensor per site and batch, joined by torch.cat."""
    store: dict[str, list] = {}
    with removing(add_pooling_hooks(model, sites, store)), torch.no_grad():
        for x, _y in batches:
            model(x)
    return {name: torch.cat(parts) for name, parts in store.items()}


def _loaders(x, y):
    ds = TensorDataset(x, y)
    pairs = [(x[i:i + 3], y[i:i + 3]) for i in range(0, len(x), 3)]
    return {
        "dataloader": DataLoader(ds, batch_size=3),           # exact size hint
        "dataloader_drop_last": DataLoader(ds, batch_size=3, drop_last=True),  # hint too big
        "list": pairs,                                         # batches x first batch rows
        "generator": (b for b in pairs),                       # no hint: grows
    }


@pytest.mark.parametrize("kind", ["dataloader", "dataloader_drop_last", "list", "generator"])
def test_capture_equals_concatenated_per_batch_pooling(tiny, kind):
    model, sites, x, y = tiny
    loader = _loaders(x, y)[kind]
    batches = list(_loaders(x, y)[kind])
    got = capture(model, sites, loader, CPU)
    want = _reference(model, sites, batches)
    n = sum(len(b[1]) for b in batches)
    assert got.labels.shape == (n,)
    pointers = set()
    for site in sites:
        acts = got.acts[site.name]
        assert torch.equal(acts, want[site.name]), site.name
        assert acts.dtype == torch.float32 and acts.shape == (n, site.channels)
        assert acts.is_contiguous() and acts.storage_offset() == 0
        assert acts.untyped_storage().nbytes() == n * site.channels * 4  # no spare rows
        pointers.add(acts.untyped_storage().data_ptr())
    assert len(pointers) == len(sites)  # one storage per site


def test_size_hints():
    ds = TensorDataset(torch.zeros(10, 1), torch.zeros(10))
    assert _size_hints(DataLoader(ds, batch_size=4)) == (10, 3)
    assert _size_hints([(1, 2), (3, 4)]) == (None, 2)
    assert _size_hints(iter([])) == (None, None)


def test_rows_allocates_once_with_an_exact_hint_and_grows_without_one():
    parts = [torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    exact = _Rows(rows_hint=20)
    for p in parts:
        exact.append(p)
        assert exact.buffer.shape == (20, 3)  # allocated once, at the first part
    grown = _Rows()
    for p in parts:
        grown.append(p)
    assert grown.buffer.shape[0] >= 20 and grown.rows == 20 and grown.calls == 5
    for rows in (exact, grown):
        out = rows.result()
        assert torch.equal(out, torch.cat(parts))
        assert out.untyped_storage().nbytes() == 20 * 3 * 4


def test_rows_refuses_a_part_of_another_width_like_torch_cat():
    rows = _Rows(rows_hint=8)
    rows.append(torch.zeros(4, 3))
    with pytest.raises(RuntimeError):
        torch.cat([torch.zeros(4, 3), torch.zeros(4, 5)])
    with pytest.raises(RuntimeError):
        rows.append(torch.zeros(4, 5))


def test_module_run_twice_is_refused_even_with_an_exact_size_hint():
    torch.manual_seed(0)
    shared = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), shared, nn.Conv2d(4, 4, 3), shared).eval()
    x = torch.randn(4, 3, 8, 8)
    loader = DataLoader(TensorDataset(x, torch.arange(4)), batch_size=2)
    twice = Site("shared", "1", "post_act", 4, 0)
    with pytest.raises(SiteError, match=r"'shared'.*8 pooled rows for 4 samples.*4 times for 2 batches"):
        capture(model, [twice], loader, CPU)
    assert all(not m._forward_hooks for m in model.modules())
