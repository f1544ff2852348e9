"""The paper's training recipe, resumable per epoch, and the trained-model cache.

SGD (momentum, weight decay), ReduceLROnPlateau on validation accuracy, early stopping
after ``early_stop_patience`` epochs without a new best; the best-accuracy weights are
the trained model. Every epoch writes an atomic checkpoint (weights, momentum buffers,
scheduler state, history), so an interrupted run resumes where it stopped and gives the
same weights as an uninterrupted one: each epoch reseeds the RNG from (seed, epoch).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Sized, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from mi_probe._core.capture import add_pooling_hooks, removing
from mi_probe._core.data import make_loader
from mi_probe._core.distributed import (DistContext, GlobalBatchShards, SeededItems, shard_range,
                                  training_copy)
from mi_probe.errors import CheckpointError, MiProbeError, RunError
from mi_probe.interfaces import DataBundle, Regularizer, Site
from mi_probe._core.models import RECIPE_VERSION, load_weights, save_weights
from mi_probe._core.files import atomic_write_text


class TrainingDivergedError(MiProbeError):
    """The training loss became NaN/Inf."""


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_acc: float
    stopped_early: bool = False
    resumed_from: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def evaluate_sums(model: nn.Module, loader, device: torch.device) -> tuple[float, int, int]:
    """Summed cross-entropy, number correct and number of samples on ``loader`` (eval
    mode, no grad): sums, so shards evaluated on several ranks can be added."""
    was_training = model.training
    model.eval()
    total, loss_sum, correct = 0, 0.0, 0
    try:
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                logits = model(x)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
                total += y.numel()
    finally:
        model.train(was_training)
    return loss_sum, correct, total


def evaluate_loss_acc(model: nn.Module, loader, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``loader`` (eval mode, no grad)."""
    loss_sum, correct, total = evaluate_sums(model, loader, device)
    return loss_sum / max(1, total), correct / max(1, total)


def _evaluate(model: nn.Module, loader, device: torch.device,
              dist_ctx: DistContext | None) -> tuple[float, float]:
    loss_sum: float
    correct: float  # counts, summed over ranks as floats
    total: float
    loss_sum, correct, total = evaluate_sums(model, loader, device)
    if dist_ctx is not None:
        loss_sum, correct, total = dist_ctx.all_reduce_sum([loss_sum, correct, total], device)
    return loss_sum / max(1, total), correct / max(1, total)


def training_loader(dataset, cfg: Any, seed: int, epoch: int, dist_ctx: DistContext | None,
                    pin_memory: bool) -> tuple[DataLoader, GlobalBatchShards]:
    """This rank's loader for one epoch: the (seed, epoch) permutation cut into global
    batches of ``cfg.batch_size``; items augmented with per-item seeds."""
    rank, world = (dist_ctx.rank, dist_ctx.world_size) if dist_ctx else (0, 1)
    sampler = GlobalBatchShards(len(dataset), cfg.batch_size,
                                derive_seed(seed, epoch, "order"), rank, world)
    items = SeededItems(dataset, derive_seed(seed, epoch, "augment"))
    loader = DataLoader(items, batch_sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=pin_memory)
    return loader, sampler


def _optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[f"momentum.{names[id(p)]}"] = buf.detach().to("cpu").contiguous()
    return out


def _save_checkpoint(ckpt_dir: Path, model: nn.Module, optimizer, scheduler, state: dict) -> None:
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_weights(model, ckpt_dir / "last.safetensors", {"epoch": state["epoch"]})
    tensors = _optimizer_tensors(model, optimizer)
    tmp = ckpt_dir / f".optimizer.safetensors.{os.getpid()}.tmp"
    save_file(tensors or {"_empty": torch.zeros(1)}, str(tmp))
    tmp.replace(ckpt_dir / "optimizer.safetensors")
    sched = {k: v for k, v in scheduler.state_dict().items()}
    state = dict(state, scheduler=sched, lrs=[g["lr"] for g in optimizer.param_groups])
    # state.json is written last: it is the commit point of the checkpoint.
    atomic_write_text(ckpt_dir / "state.json", json.dumps(state, indent=1))


def _load_checkpoint(ckpt_dir: Path, model: nn.Module, optimizer, scheduler,
                     device: torch.device) -> dict | None:
    from safetensors.torch import load_file

    state_path = ckpt_dir / "state.json"
    if not state_path.is_file():
        return None
    try:
        state = json.loads(state_path.read_text())
        load_weights(model, ckpt_dir / "last.safetensors")
        tensors = load_file(str(ckpt_dir / "optimizer.safetensors"))
    except (json.JSONDecodeError, OSError, CheckpointError) as exc:
        raise CheckpointError(f"training checkpoint in {ckpt_dir} is unreadable ({exc}); "
                              "delete that folder to train from scratch") from None
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if key.startswith("momentum."):
            optimizer.state[params[key[len("momentum."):]]]["momentum_buffer"] = value.to(device)
    scheduler.load_state_dict(state["scheduler"])
    for group, lr in zip(optimizer.param_groups, state["lrs"]):
        group["lr"] = lr
    return state


def train_model(model: nn.Module, data: DataBundle, cfg: Any, seed: int, device: torch.device,
                ckpt_dir: Path | None = None,
                regularizers: Sequence[tuple[Regularizer, Sequence[Site]]] = (),
                eval_batch_size: int = 256, progress: bool = True,
                log: Callable[[str], None] = print,
                on_epoch_end: Callable[[nn.Module, int, dict], None] | None = None,
                dist_ctx: DistContext | None = None) -> TrainResult:
    """Train ``model`` in place with the recipe in ``cfg`` (a TrainSpec); on return the
    model holds the best-validation-accuracy weights (validation: ``data.selection_set``). ``regularizers`` pairs each
    regulariser with the sites whose pooled (non-detached) activations it receives.
    ``on_epoch_end(model, epoch, row)`` runs at initialisation (epoch 0) and after every
    epoch, before the checkpoint is written; what it adds to ``row`` is persisted.

    With ``dist_ctx`` (torchrun), every rank calls this with the same arguments: a copy
    with synchronised batch norm is trained under DistributedDataParallel on this rank's
    pieces of the global batches (see ``distributed.py``); only rank 0 runs
    ``on_epoch_end``, logs and writes checkpoints. Every rank returns the same weights."""
    model.to(device)
    main = dist_ctx is None or dist_ctx.is_main
    if dist_ctx is not None:
        trainee, forward = training_copy(model, dist_ctx, device)
    else:
        trainee = forward = model
    optimizer = torch.optim.SGD(trainee.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    pin = device.type == "cuda"
    # the checkpoint is chosen on the selection images (the evaluation images when the
    # source holds none back), never on images the analysis uses when it does
    choosing = data.selection_set
    val_set = choosing if dist_ctx is None else Subset(
        choosing, shard_range(len(cast(Sized, choosing)), dist_ctx))
    val_loader = make_loader(val_set, eval_batch_size, shuffle=False,
                             num_workers=cfg.num_workers, pin_memory=pin)
    reg_name = "+".join(r.name for r, _ in regularizers) or "none"
    best_path = ckpt_dir / "best.safetensors" if ckpt_dir else None
    writes = ckpt_dir is not None and main

    def sync() -> None:
        if dist_ctx is not None:
            dist_ctx.barrier()

    state = _load_checkpoint(ckpt_dir, trainee, optimizer, scheduler, device) if ckpt_dir else None
    if state is None:
        val_loss, val_acc = _evaluate(trainee, val_loader, device, dist_ctx)
        state = {"epoch": 0, "best_epoch": 0, "best_val_acc": val_acc, "since_best": 0,
                 "stopped_early": False, "history": [{
                     "seed": seed, "epoch": 0, "train_loss": None, "val_loss": val_loss,
                     "val_acc": val_acc, "lr": cfg.lr, "seconds": 0.0, "regularizer": reg_name}]}
        if on_epoch_end is not None and main:
            on_epoch_end(trainee, 0, state["history"][-1])
        best_state = {k: v.detach().clone() for k, v in trainee.state_dict().items()}
        if writes:
            assert ckpt_dir is not None and best_path is not None  # writes implies them
            save_weights(trainee, best_path, {"epoch": 0})
            _save_checkpoint(ckpt_dir, trainee, optimizer, scheduler, state)
        sync()
        resumed_from = 0
    else:
        resumed_from = state["epoch"]
        if main:
            log(f"resuming training from epoch {resumed_from} checkpoint in {ckpt_dir}")
        best_state = None

    epoch = state["epoch"]
    while epoch < cfg.epochs and not state["stopped_early"]:
        epoch += 1
        t0 = time.perf_counter()
        # the model's own randomness (dropout): one stream per rank, or every rank
        # would draw the same masks for its piece of the batch
        torch.manual_seed(derive_seed(seed, epoch, "train") if dist_ctx is None
                          else derive_seed(seed, epoch, "train", dist_ctx.rank))
        loader, sampler = training_loader(data.train, cfg, seed, epoch, dist_ctx, pin)
        global_sizes = sampler.global_sizes()
        trainee.train()
        loss_sum: float = 0.0
        n_seen: float = 0  # a count, summed over ranks as a float
        from tqdm.auto import tqdm

        # A bar updated by hand rather than wrapping the loader: the numbers must not
        # depend on whether progress is shown.
        bar = tqdm(total=len(loader), desc=f"seed {seed} epoch {epoch}/{cfg.epochs}",
                   leave=False, unit="batch", disable=not (progress and main))
        store: dict[str, list] = {}
        handles: list = []
        with removing(handles):
            for reg, sites in regularizers:
                handles.extend(add_pooling_hooks(trainee, sites, store, detach=False))
            for step, (x, y) in enumerate(loader):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                for parts in store.values():
                    parts.clear()
                logits = forward(x)
                loss = F.cross_entropy(logits, y)
                ce = loss.detach()
                if dist_ctx is not None:
                    # DDP averages gradients over ranks; weighting each rank's mean by its
                    # share makes that average the gradient of the global-batch mean.
                    loss = loss * (y.numel() * dist_ctx.world_size / global_sizes[step])
                if regularizers:
                    labels = y
                    if dist_ctx is not None:
                        pieces = sampler.piece_sizes(global_sizes[step])
                        labels = dist_ctx.gather(y, pieces)
                    for reg, sites in regularizers:
                        pooled = {s.name: store[s.name][-1] for s in sites}
                        if dist_ctx is not None:
                            pooled = {k: dist_ctx.gather(v, pieces) for k, v in pooled.items()}
                        loss = loss + reg.penalty(pooled, labels)
                bad = not bool(torch.isfinite(loss))
                if dist_ctx is not None:
                    bad = dist_ctx.any(bad, device)
                if bad:
                    raise TrainingDivergedError(
                        f"training diverged at seed {seed} epoch {epoch}: loss is "
                        f"{loss.item()} (lower model.train.lr, now {optimizer.param_groups[0]['lr']})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += ce.item() * y.numel()
                n_seen += y.numel()
                bar.update(1)
        bar.close()
        if dist_ctx is not None:
            loss_sum, n_seen = dist_ctx.all_reduce_sum([loss_sum, n_seen], device)
        val_loss, val_acc = _evaluate(trainee, val_loader, device, dist_ctx)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(val_acc)
        row = {"seed": seed, "epoch": epoch, "train_loss": loss_sum / max(1, n_seen),
               "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
               "seconds": time.perf_counter() - t0, "regularizer": reg_name}
        state["history"].append(row)
        if val_acc > state["best_val_acc"]:
            state.update(best_epoch=epoch, best_val_acc=val_acc, since_best=0)
            best_state = {k: v.detach().clone() for k, v in trainee.state_dict().items()}
            if writes:
                assert best_path is not None  # writes implies it
                save_weights(trainee, best_path, {"epoch": epoch})
        else:
            state["since_best"] += 1
        if state["since_best"] >= cfg.early_stop_patience:
            state["stopped_early"] = True
        state["epoch"] = epoch
        if on_epoch_end is not None and main:
            on_epoch_end(trainee, epoch, row)
        if writes:
            assert ckpt_dir is not None  # writes implies it
            _save_checkpoint(ckpt_dir, trainee, optimizer, scheduler, state)
        sync()
        if main:
            log(f"seed {seed} epoch {epoch}/{cfg.epochs}: train_loss {row['train_loss']:.4f} "
                f"val_loss {val_loss:.4f} val_acc {val_acc:.4f} lr {lr:.3g} "
                f"({row['seconds']:.1f}s)" + ("  [early stop]" if state["stopped_early"] else ""))

    if best_state is None and best_path is not None:
        load_weights(trainee, best_path)
        best_state = trainee.state_dict()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(history=state["history"], best_epoch=state["best_epoch"],
                       best_val_acc=state["best_val_acc"], stopped_early=state["stopped_early"],
                       resumed_from=resumed_from)


def cache_key(payload: Mapping[str, Any]) -> str:
    """Hash of everything that determines a trained model."""
    blob = json.dumps({"recipe": RECIPE_VERSION, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_training(build: Callable[[], nn.Module], payload: Mapping[str, Any], meta: dict,
                    data: DataBundle, cfg: Any, seed: int, device: torch.device,
                    cache_dir: Path, regularizers=(), eval_batch_size: int = 256,
                    progress: bool = True, log: Callable[[str], None] = print,
                    on_epoch_end: Callable[[nn.Module, int, dict], None] | None = None,
                    dist_ctx: DistContext | None = None
                    ) -> tuple[nn.Module, list[dict[str, Any]], Path]:
    """The trained model for ``payload`` from ``cache_dir/models/<key>/``, training (or
    resuming) it when absent. Returns (model on device, training history, folder).
    Under ``dist_ctx`` every rank calls this; rank 0 alone writes the cache. Otherwise
    a file lock beside the folder makes a second process that wants the same model wait
    for the first and then load it, instead of training it into the same folder."""
    folder = Path(cache_dir) / "models" / cache_key(payload)
    args = (build, payload, meta, data, cfg, seed, device, folder, regularizers,
            eval_batch_size, progress, log, on_epoch_end, dist_ctx)
    if dist_ctx is not None:
        return _cached_training(*args)
    with model_lock(folder, log):
        return _cached_training(*args)


@contextmanager
def model_lock(folder: Path, log: Callable[[str], None]):
    """Hold ``<folder>.lock`` (waiting, with a message, while another process holds it)."""
    from filelock import FileLock, Timeout

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log(f"another mi-probe process is training this model into {folder}; waiting "
                "for it to finish (then its result is used)")
            lock.acquire()
    except NotImplementedError as exc:  # a filesystem without locks (older filelock)
        raise RunError(f"cannot lock {folder}.lock in the model cache ({exc}); put the cache "
                       "on a filesystem that supports file locks (--cache-dir)") from None
    except OSError as exc:
        raise RunError(f"cannot write to the model cache {folder.parent}: "
                       f"{exc.strerror or exc}; choose a writable --cache-dir (or set "
                       "MI_PROBE_CACHE)") from None
    try:
        yield
    finally:
        lock.release()


def _cached_training(build, payload, meta, data, cfg, seed, device, folder, regularizers,
                     eval_batch_size, progress, log, on_epoch_end, dist_ctx):
    model = build()
    final = folder / "model.safetensors"
    info = folder / "training.json"
    cached = final.is_file() and info.is_file()
    if dist_ctx is not None:
        (cached,) = dist_ctx.main_decides([cached])  # one answer for every rank
    if cached:
        load_weights(model, final, meta)
        history = json.loads(info.read_text())["history"]
        if dist_ctx is None or dist_ctx.is_main:
            log(f"seed {seed}: using cached trained model {folder}")
        return model.to(device).eval(), history, folder
    main = dist_ctx is None or dist_ctx.is_main
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "payload.json", json.dumps(payload, indent=1, sort_keys=True,
                                                              default=str))
    if dist_ctx is not None:
        dist_ctx.barrier()
    result = train_model(model, data, cfg, seed, device, folder / "checkpoint", regularizers,
                         eval_batch_size, progress, log, on_epoch_end, dist_ctx)
    if main:
        save_weights(model, final, dict(meta, best_epoch=result.best_epoch,
                                        best_val_acc=result.best_val_acc))
        atomic_write_text(info, json.dumps({
            "history": result.history, "best_epoch": result.best_epoch,
            "best_val_acc": result.best_val_acc, "stopped_early": result.stopped_early,
            "processes": dist_ctx.world_size if dist_ctx else 1}, indent=1))
    if dist_ctx is not None:
        dist_ctx.barrier()
    return model.eval(), result.history, folder
