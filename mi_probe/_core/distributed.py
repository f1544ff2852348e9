"""Data-parallel training: the torchrun environment, global batches split across ranks,
batch norm over the global batch, and reduction of metrics.

The design goal is that a run under ``torchrun --nproc_per_node=W`` trains the *same*
model as a single process, up to floating-point reduction order:

* every rank draws the same permutation and cuts it into the same global batches of
  ``batch_size``; rank r takes the r-th contiguous piece of each (see
  :class:`GlobalBatchShards`), so a step sees exactly the samples a single process sees;
* augmentation is seeded per item (:class:`SeededItems`), so an image is augmented the
  same way whichever rank or loader worker reads it;
* each rank's mean loss is rescaled by ``n_local * W / n_global``, so DDP's gradient
  average equals the gradient of the global-batch mean;
* batch norm normalises with global-batch statistics (torch's SyncBatchNorm on CUDA,
  :class:`_GlobalBatchNorm` on CPU, where torch's does not run);
* regularisers see the global batch (:meth:`DistContext.gather`, differentiable);
* validation is sharded and its sums are all-reduced, so every rank takes the same
  scheduler and early-stopping decisions; only rank 0 writes checkpoints.
"""

from __future__ import annotations

import copy
import inspect
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Sampler

from mi_probe.errors import DistributedError

if TYPE_CHECKING:
    import datetime


def launched_world_size() -> int:
    """How many processes torchrun started (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DistributedError(f"WORLD_SIZE must be an integer; found "
                               f"{os.environ['WORLD_SIZE']!r}") from None


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel group."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        dist.barrier()

    def collective_device(self) -> torch.device:
        """Where small tensors for collectives live: this rank's GPU under NCCL."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def all_reduce_sum(self, values: Sequence[float],
                       device: torch.device | None = None) -> list[float]:
        """Sum of ``values`` over ranks, in float64."""
        device = device if device is not None else self.collective_device()
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool, device: torch.device | None = None) -> bool:
        """True when ``flag`` is true on any rank (a collective: every rank must call)."""
        return self.all_reduce_sum([1.0 if flag else 0.0], device)[0] > 0

    def main_decides(self, flags: Sequence[bool]) -> list[bool]:
        """Rank 0's ``flags`` on every rank (a collective), so that decisions based on
        files other processes may be writing are taken once."""
        if not flags:
            return []
        mine = [1.0 if (f and self.is_main) else 0.0 for f in flags]
        return [v > 0 for v in self.all_reduce_sum(mine)]

    def gather(self, local: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """Concatenate every rank's ``local`` rows in rank order; differentiable.
        ``sizes[r]`` is rank r's row count (pieces may differ by one row)."""
        width = max(sizes)
        if local.shape[0] < width:
            pad = local.new_zeros((width - local.shape[0], *local.shape[1:]))
            local = torch.cat([local, pad])
        if local.requires_grad:
            parts = _AllGather.apply(local, self.world_size)
        else:
            parts = [torch.empty_like(local) for _ in range(self.world_size)]
            dist.all_gather(parts, local.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks. The gradient of a sum over ranks is the sum over ranks of the
    incoming gradients, since every rank's loss depends on every rank's input."""

    @staticmethod
    def forward(ctx, tensor):  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class _AllGather(torch.autograd.Function):
    """Every rank's tensor, in rank order; the gradient of rank r's input is the sum
    over ranks of the gradient arriving at slot r."""

    @staticmethod
    def forward(ctx, tensor, world_size):  # type: ignore[override]
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor)
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        stacked = torch.stack([g.contiguous() for g in grads])
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()], None


def init_from_env(device_kind: str) -> DistContext | None:
    """Join the process group torchrun describes (None when not launched by torchrun).
    ``device_kind`` is ``cuda`` (NCCL, one GPU per local rank) or ``cpu`` (gloo)."""
    world = launched_world_size()
    if world <= 1:
        return None
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise DistributedError(f"WORLD_SIZE is {world} but {', '.join(missing)} is not set; "
                               "launch with torchrun (e.g. torchrun --standalone "
                               "--nproc_per_node=2 --no-python mi-probe run SPEC)")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device_kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"local rank {local_rank} has no GPU: this node has "
                                   f"{torch.cuda.device_count()}; start at most that many "
                                   "processes per node")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo",
                                timeout=collective_timeout())
    return DistContext(rank, world, local_rank)


def collective_timeout() -> datetime.timedelta:
    """How long a rank waits in a collective: rank 0 alone runs tracking callbacks
    (e.g. the dynamics experiment's per-epoch MI) while the others wait at a barrier.
    ``MI_PROBE_DIST_TIMEOUT_MINUTES`` (default 120)."""
    import datetime

    raw = os.environ.get("MI_PROBE_DIST_TIMEOUT_MINUTES", "120")
    try:
        minutes = float(raw)
    except ValueError:
        raise DistributedError(f"MI_PROBE_DIST_TIMEOUT_MINUTES must be a number of minutes; "
                               f"found {raw!r}") from None
    return datetime.timedelta(minutes=minutes)


def rank_device(ctx: DistContext | None, device: torch.device) -> torch.device:
    """The device this rank trains on: its own GPU under torchrun on CUDA."""
    if ctx is not None and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


# ----------------------------------------------------------------------------- data


def item_seed(base: int, index: int) -> int:
    return (base * 1_000_003 + index) % (2 ** 63)


class SeededItems(Dataset):
    """Wraps a training set so item ``i`` is produced with torch's RNG seeded from
    (epoch seed, i): augmentation no longer depends on which process, worker or batch
    position reads the item."""

    def __init__(self, dataset: Dataset, base_seed: int):
        self.dataset = dataset
        self.base_seed = base_seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also reseed every GPU
            torch.default_generator.manual_seed(item_seed(self.base_seed, int(index)))
            return self.dataset[index]


class GlobalBatchShards(Sampler[list[int]]):
    """Batches of one rank: a seeded permutation of ``n`` items is cut into global
    batches of ``batch_size`` and rank ``rank`` yields the rank-th contiguous piece of
    each (``torch.tensor_split`` sizes). A trailing global batch with fewer items than
    ranks is skipped on every rank (with one rank it is always kept)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if world_size > 1 and batch_size < world_size:
            raise DistributedError(f"model.train.batch_size {batch_size} is smaller than the "
                                   f"{world_size} training processes; each needs a sample")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size

    def global_sizes(self) -> list[int]:
        """Size of each global batch, in order."""
        full, rest = divmod(self.n, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest >= self.world_size else [])

    def piece_sizes(self, global_size: int) -> list[int]:
        """How many items of a global batch each rank holds."""
        return [len(p) for p in torch.tensor_split(torch.arange(global_size), self.world_size)]

    def __len__(self) -> int:
        return len(self.global_sizes())

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed))
        for step, size in enumerate(self.global_sizes()):
            batch = order[step * self.batch_size: step * self.batch_size + size]
            yield torch.tensor_split(batch, self.world_size)[self.rank].tolist()


def shard_range(n: int, ctx: DistContext | None) -> range:
    """The contiguous slice of ``range(n)`` this rank evaluates."""
    if ctx is None:
        return range(n)
    piece = torch.tensor_split(torch.arange(n), ctx.world_size)[ctx.rank]
    return range(int(piece[0]), int(piece[-1]) + 1) if len(piece) else range(0)


# ----------------------------------------------------------------------------- batch norm


class _GlobalBatchNorm:
    """Mixin swapped into a batch-norm module's class: in training mode it normalises
    with mean and variance over the global batch (all ranks), differentiably, and
    updates the running statistics exactly as torch's batch norm does."""

    if TYPE_CHECKING:  # provided by the batch-norm class this is mixed into
        training: bool
        track_running_stats: bool
        num_batches_tracked: torch.Tensor
        momentum: float | None
        running_mean: torch.Tensor
        running_var: torch.Tensor
        eps: float
        affine: bool
        weight: torch.Tensor
        bias: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not self.training:
            return super().forward(x)  # type: ignore[misc]
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count)
        n = float(count.item())
        mean = _AllReduceSum.apply(x.sum(dims)) / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else self.momentum)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def synchronise_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every batch-norm layer of ``model`` (a training copy) use global-batch
    statistics. On CUDA this is timm's converter (torch SyncBatchNorm, also for timm's
    norm+act layers); on CPU, plain torch batch-norm classes get :class:`_GlobalBatchNorm`."""
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)
    from torch.nn.modules.batchnorm import _BatchNorm

    for name, module in model.named_modules():
        if not isinstance(module, _BatchNorm) or isinstance(module, _GlobalBatchNorm):
            continue
        cls = type(module)
        if cls not in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            raise DistributedError(
                f"batch-norm layer {name or '<model>'} is a {cls.__module__}.{cls.__name__}; "
                "multi-process CPU training synchronises only torch's BatchNorm1d/2d/3d "
                "(train this architecture on one process, or on CUDA)")
        if cls not in _GLOBAL_CLASSES:
            _GLOBAL_CLASSES[cls] = type(f"Global{cls.__name__}", (_GlobalBatchNorm, cls), {})
        module.__class__ = _GLOBAL_CLASSES[cls]
    return model


_GLOBAL_CLASSES: dict[type, type] = {}


def training_copy(model: nn.Module, ctx: DistContext, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(trainee, wrapped): a copy of ``model`` with synchronised batch norm, and the
    DistributedDataParallel wrapper whose forward trains it."""
    from torch.nn.parallel import DistributedDataParallel

    trainee = synchronise_batchnorm(copy.deepcopy(model), device).to(device)
    ids = [device.index] if device.type == "cuda" else None
    # buffers stay equal on every rank (global-batch statistics), so none are re-sent
    # each step; newer torch renamed the switch
    params = inspect.signature(DistributedDataParallel).parameters
    no_sync: dict[str, Any] = ({"forward_sync_buffers": False}
                               if "forward_sync_buffers" in params
                               else {"broadcast_buffers": False})
    wrapped = DistributedDataParallel(trainee, device_ids=ids, **no_sync)
    return trainee, wrapped
