"""Data-parallel training: global batches split across ranks, per-item augmentation
seeds, global batch norm, and a real 2-process torchrun (gloo, CPU) training compared
with single-process training of the same spec and seed."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mi_probe._core.distributed import (DistContext, GlobalBatchShards, SeededItems, shard_range,
                                  synchronise_batchnorm)
from mi_probe.errors import DistributedError
from mi_probe._core.models import build_model


@pytest.mark.parametrize("n,batch,world", [(50, 16, 2), (48, 16, 3), (17, 8, 4), (10, 10, 1)])
def test_rank_pieces_reassemble_the_single_process_batches(n, batch, world):
    single = list(GlobalBatchShards(n, batch, seed=7))
    ranks = [list(GlobalBatchShards(n, batch, seed=7, rank=r, world_size=world))
             for r in range(world)]
    assert all(len(r) == len(ranks[0]) for r in ranks)  # every rank takes every step
    glued = [sum((ranks[r][step] for r in range(world)), []) for step in range(len(ranks[0]))]
    rest = n % batch
    expected = single if world == 1 or rest == 0 or rest >= world else single[:-1]
    assert glued == expected
    sizes = GlobalBatchShards(n, batch, 7, 0, world)
    assert [len(b) for b in glued] == sizes.global_sizes()
    assert sorted(i for b in single for i in b) == list(range(n))


def test_trailing_batch_smaller_than_the_world_is_skipped_on_every_rank():
    shards = [GlobalBatchShards(17, 8, 0, r, 2) for r in range(2)]
    assert shards[0].global_sizes() == [8, 8]  # the last single item cannot be split
    assert [len(list(s)) for s in shards] == [2, 2]
    assert GlobalBatchShards(17, 8, 0).global_sizes() == [8, 8, 1]
    with pytest.raises(DistributedError, match="batch_size 2 is smaller than the 4 training"):
        GlobalBatchShards(10, 2, 0, 0, 4)


def test_item_augmentation_does_not_depend_on_who_reads_it():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.rand(3) + i

    items = SeededItems(Noisy(), base_seed=11)
    forward = [items[i] for i in range(5)]
    torch.rand(100)  # another consumer of the global RNG in between
    backward = [items[i] for i in reversed(range(5))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    assert not torch.equal(SeededItems(Noisy(), 12)[0], forward[0])


def test_shards_of_the_evaluation_set_cover_it_once():
    pieces = [shard_range(11, DistContext(r, 3, r)) for r in range(3)]
    assert [i for p in pieces for i in p] == list(range(11))
    assert shard_range(11, None) == range(11)


@pytest.fixture
def one_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield DistContext(0, 1, 0)
    dist.destroy_process_group()


def test_global_batch_norm_equals_torch_batch_norm_on_one_rank(one_process_group):
    # float64, and a conv without bias: a bias before batch norm has a true gradient of
    # 0, so both sides would only compare rounding noise. Every compared gradient here is
    # far from 0, and float64 leaves room for a tolerance that still catches a wrong
    # normalisation or a missing term of the backward pass.
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU()).double()
    synced = synchronise_batchnorm(copy.deepcopy(plain), torch.device("cpu"))
    assert type(synced[1]).__name__ == "GlobalBatchNorm2d"
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    for model in (plain, synced):
        model.train()
    ya, yb = plain(x), synced(x)
    assert torch.allclose(ya, yb, rtol=1e-10, atol=1e-12)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for pa, pb in zip(plain.parameters(), synced.parameters()):
        assert pa.grad.abs().max() > 1e-3  # a real gradient, not rounding noise
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-9, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(plain[1], name).double(), getattr(synced[1], name).double(),
                              rtol=1e-10, atol=1e-12), name
    plain.eval(), synced.eval()
    assert torch.allclose(plain(x), synced(x), rtol=1e-10, atol=1e-12)


def test_cpu_sync_refuses_batch_norm_subclasses_it_cannot_synchronise():
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4))
    with pytest.raises(DistributedError, match=r"batch-norm layer 1 is a .*BatchNormAct2d; "
                       "multi-process CPU training"):
        synchronise_batchnorm(model, torch.device("cpu"))


def test_torchrun_environment_must_be_complete(monkeypatch):
    from mi_probe._core.distributed import init_from_env

    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(DistributedError, match="WORLD_SIZE is 2 but RANK, LOCAL_RANK, "
                       "MASTER_ADDR, MASTER_PORT is not set; launch with torchrun"):
        init_from_env("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(DistributedError, match="WORLD_SIZE must be an integer; found 'two'"):
        init_from_env("cpu")


# ----------------------------------------------------------------------------- torchrun

# float32 end to end through the CLI. Uneven pieces and exactness are checked in float64
# below: in float32, reduction-order noise is amplified by batches whose batch-norm
# variance is small, so only a well-conditioned problem stays within 1e-5 here.
DDP_SPEC = """\
name: ddp
seeds: [0]
data: {kind: synthetic, n_classes: 3, n_train: 96, n_val: 60, image_size: 16, noise: 0.4}
model:
  arch: test_resnet
  weights: train
  train:
    epochs: 3
    batch_size: 16
    lr: 0.02
    regularizers: [{kind: hsic, sites: ["layer4.*.post_add"], lam: 0.5}]
sites: {include: ["*.post_add"]}
estimator: {kind: histogram, bins: 8}
eval: {batch_size: 30}
report: {formats: [html]}
experiment: {kind: layer_mi, states: [trained]}
"""


def _cli(tmp_path: Path, *argv: str, launcher: list[str] = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ, MI_PROBE_DISABLE_PLUGIN_AUTOLOAD="1", OMP_NUM_THREADS="1")
    mi_probe = shutil.which("mi-probe", path=str(Path(sys.executable).parent))
    return subprocess.run([*launcher, mi_probe, *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def _trained(cache: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    (folder,) = [p for p in (cache / "models").iterdir() if p.is_dir()]
    return (load_file(str(folder / "model.safetensors")),
            json.loads((folder / "training.json").read_text()))


@pytest.mark.torchrun
def test_two_process_torchrun_trains_the_single_process_model(tmp_path):
    (tmp_path / "ddp.yaml").write_text(DDP_SPEC)
    single = _cli(tmp_path, "run", "ddp.yaml", "--out", "single", "--cache-dir", "c1",
                  "--no-progress")
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "--no-python"]
    ddp = _cli(tmp_path, "run", "ddp.yaml", "--out", "ddp", "--cache-dir", "c2",
               "--no-progress", launcher=torchrun)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("report: ") == 1  # rank 0 alone writes the run
    a, info_a = _trained(tmp_path / "c1")
    b, info_b = _trained(tmp_path / "c2")
    assert info_a["processes"] == 1 and info_b["processes"] == 2
    # same decisions: validation accuracy per epoch (counts), best epoch, early stop
    assert [h["val_acc"] for h in info_a["history"]] == [h["val_acc"] for h in info_b["history"]]
    assert info_a["best_epoch"] == info_b["best_epoch"] > 0
    for ha, hb in zip(info_a["history"][1:], info_b["history"][1:]):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-4)
    # same weights up to floating-point reduction order
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    scale = max(a[k].double().abs().max().item() for k in a if a[k].is_floating_point())
    print(f"DDP vs single process: max abs weight difference {worst:.3g} (largest weight "
          f"{scale:.3g})")
    assert worst < 2e-5 * scale, (worst, scale)
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["training_processes"] == 2


@pytest.mark.torchrun
def test_ddp_equals_single_process_training_exactly_in_float64(tmp_path):
    """Uneven rank pieces (a last global batch of 9 = 5 + 4), global batch norm and the
    HSIC regulariser's padded all-gather: equal to ~1e-12 once float32 noise is gone."""
    from safetensors.torch import load_file

    script = Path(__file__).parent / "scripts" / "ddp_float64.py"
    env = dict(os.environ, MI_PROBE_DISABLE_PLUGIN_AUTOLOAD="1", OMP_NUM_THREADS="1")
    runs = {"single": [sys.executable, str(script), str(tmp_path / "single.safetensors")],
            "ddp": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", str(script), str(tmp_path / "ddp.safetensors")]}
    for name, command in runs.items():
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (name, done.stderr[-3000:])
    a = load_file(str(tmp_path / "single.safetensors"))
    b = load_file(str(tmp_path / "ddp.safetensors"))
    assert a.keys() == b.keys() and all(t.dtype == torch.float64 for t in a.values()
                                        if t.is_floating_point())
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"float64 DDP vs single process: max abs weight difference {worst:.3g}")
    assert worst < 1e-10
    # and training did move the weights
    init = build_model("test_resnet", 3, 0)
    moved = max((a[k].float() - v.float()).abs().max().item()
                for k, v in init.state_dict().items() if v.is_floating_point())
    assert moved > 1e-2
