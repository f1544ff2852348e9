"""The training recipe: determinism, resume after interruption, early stopping,
regulariser hook, trained-model cache."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import torch

from mi_probe.builtin.adapters.resnet import ResNetAdapter
from mi_probe.builtin.datasets.synthetic import SyntheticParams, SyntheticSource
from mi_probe._core.models import build_model
from mi_probe._core.sites import resolve_sites
from mi_probe._core.spec import TrainSpecBase
from mi_probe._core.train import cached_training, train_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return SyntheticSource(SyntheticParams(n_classes=3, n_train=48, n_val=30, image_size=16,
                                           noise=0.5)).load()


def fresh():
    return build_model("test_resnet", 3, seed=0)


def cfg(**kw):
    base = dict(epochs=2, batch_size=16, lr=0.05)
    base.update(kw)
    return TrainSpecBase(**base)


def same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def quiet(_msg):
    pass


def test_same_seed_same_weights_and_history(data):
    a, b = fresh(), fresh()
    ra = train_model(a, data, cfg(), 0, CPU, progress=False, log=quiet)
    rb = train_model(b, data, cfg(), 0, CPU, progress=False, log=quiet)
    assert same(a, b)
    assert [r["val_acc"] for r in ra.history] == [r["val_acc"] for r in rb.history]
    assert [r["epoch"] for r in ra.history] == [0, 1, 2]
    assert set(ra.history[1]) == {"seed", "epoch", "train_loss", "val_loss", "val_acc", "lr",
                                  "seconds", "regularizer"}
    c = fresh()
    train_model(c, data, cfg(), 1, CPU, progress=False, log=quiet)
    assert not same(a, c)  # another seed shuffles and augments differently


def test_interrupted_training_resumes_to_identical_weights(data, tmp_path):
    straight = fresh()
    train_model(straight, data, cfg(epochs=3, plateau_patience=0), 0, CPU, tmp_path / "a",
                progress=False, log=quiet)

    class Stop(Exception):
        pass

    def stop_after_two(model, epoch, row):
        if epoch == 2:
            raise Stop  # simulates Ctrl-C after the epoch-2 checkpoint... not yet written

    first = fresh()
    with pytest.raises(Stop):
        train_model(first, data, cfg(epochs=3, plateau_patience=0), 0, CPU, tmp_path / "b",
                    progress=False, log=quiet, on_epoch_end=stop_after_two)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["epoch"] == 1  # epoch 2 was lost, epoch 1 is the last checkpoint
    messages = []
    resumed = fresh()
    result = train_model(resumed, data, cfg(epochs=3, plateau_patience=0), 0, CPU, tmp_path / "b",
                         progress=False, log=messages.append)
    assert result.resumed_from == 1
    assert any("resuming training from epoch 1" in m for m in messages)
    assert same(straight, resumed)  # momentum, scheduler and RNG were restored exactly
    assert [r["epoch"] for r in result.history] == [0, 1, 2, 3]


def test_best_weights_are_kept_and_early_stop(data):
    model = fresh()
    result = train_model(model, data, cfg(epochs=6, lr=5.0, early_stop_patience=2), 0, CPU,
                         progress=False, log=quiet)
    epochs = [r["epoch"] for r in result.history]
    best = max(result.history, key=lambda r: (r["val_acc"], -r["epoch"]))
    assert result.best_epoch == best["epoch"]
    if result.stopped_early:
        assert epochs[-1] - result.best_epoch == 2
    from mi_probe._core.train import evaluate_loss_acc
    from mi_probe._core.data import make_loader

    _, acc = evaluate_loss_acc(model, make_loader(data.val, 64, shuffle=False), CPU)
    assert acc == pytest.approx(result.best_val_acc)


def test_early_stopping_stops(data):
    # lr so small nothing changes: accuracy never improves on epoch 0, stop after 2 epochs
    result = train_model(fresh(), data, cfg(epochs=10, lr=1e-12, early_stop_patience=2), 0, CPU,
                         progress=False, log=quiet)
    assert result.stopped_early
    assert [r["epoch"] for r in result.history] == [0, 1, 2]


class ActivationL2:
    """A throwaway regulariser: penalise the mean square of pooled post-add activations."""

    name = "act_l2"
    site_patterns = ["*.post_add"]

    def __init__(self, weight):
        self.weight = weight
        self.calls = 0

    def penalty(self, pooled, labels):
        self.calls += 1
        assert all(t.requires_grad for t in pooled.values())
        return self.weight * sum((t ** 2).mean() for t in pooled.values())


def test_regulariser_changes_training(data):
    plain, reg_model = fresh(), fresh()
    train_model(plain, data, cfg(epochs=1), 0, CPU, progress=False, log=quiet)
    probe = torch.stack([data.val[0][0], data.val[1][0]])
    sites = resolve_sites(reg_model, ResNetAdapter(), probe, ["*.post_add"])
    reg = ActivationL2(10.0)
    result = train_model(reg_model, data, cfg(epochs=1), 0, CPU, regularizers=[(reg, sites)],
                         progress=False, log=quiet)
    assert reg.calls == 3  # one per batch: 48 samples / 16
    assert not same(plain, reg_model)
    assert result.history[-1]["regularizer"] == "act_l2"
    assert all(not m._forward_hooks for m in reg_model.modules())


def test_cache_trains_once(data, tmp_path):
    payload = {"model": "test_resnet", "seed": 0}
    logs = []
    m1, hist1, folder = cached_training(fresh, payload, {"arch": "test_resnet"}, data, cfg(), 0,
                                        CPU, tmp_path, progress=False, log=logs.append)
    assert (folder / "model.safetensors").is_file()
    m2, hist2, folder2 = cached_training(fresh, payload, {"arch": "test_resnet"}, data, cfg(), 0,
                                         CPU, tmp_path, progress=False, log=logs.append)
    assert folder2 == folder and hist1 == hist2
    assert any("using cached trained model" in m for m in logs)
    assert same(m1, m2)
    _, _, other = cached_training(fresh, dict(payload, seed=1), {"arch": "test_resnet"}, data,
                                  cfg(epochs=1), 1, CPU, tmp_path, progress=False, log=quiet)
    assert other != folder


def test_progress_bars_do_not_change_training(data):
    """Wrapping the loader in a progress bar once changed the numerics (allocation
    order); the bar is now updated by hand, so shown or not, the weights are the same."""
    quiet_model, shown_model = fresh(), fresh()
    train_model(quiet_model, data, cfg(), 0, CPU, progress=False, log=quiet)
    train_model(shown_model, data, cfg(), 0, CPU, progress=True, log=quiet)
    assert same(quiet_model, shown_model)


def test_checkpoint_is_chosen_on_the_selection_images_not_the_evaluation_images(data):
    """With a selection set, no evaluation (analysis) image takes part in training:
    every accuracy that picks the checkpoint is measured on the selection images."""
    import dataclasses

    import mi_probe._core.train as train_module

    seen = []
    real = train_module._evaluate

    def spy(model, loader, device, dist_ctx):
        seen.append(loader.dataset)
        return real(model, loader, device, dist_ctx)

    selection = torch.utils.data.Subset(data.val, range(10))
    analysis = torch.utils.data.Subset(data.val, range(10, 30))
    split = dataclasses.replace(data, val=analysis, selection=selection)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "_evaluate", spy)
        train_model(fresh(), split, cfg(epochs=2), 0, CPU, progress=False, log=quiet)
    assert len(seen) == 3 and all(d is selection for d in seen)
