"""The models a run uses, and the training stage's requests.

A model is built at random initialisation, loaded from a safetensors file, or trained
through the content-addressed model cache (``train.cached_training``). The experiment
says which trainings its units will ask for (``DeclaresTrainings``), so the driver can
train them first, as units of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch

from torch import nn

from mi_probe.errors import RunError, SpecError
from mi_probe.interfaces import RANDOM, TRAINED, Adapter, DataBundle, TrainingRequest
from mi_probe._core.archs import is_custom_arch
from mi_probe._core.models import build_model, custom_fingerprint, load_weights, model_meta
from mi_probe._core.sites import resolve_sites
from mi_probe._core.spec import pretrained_tag
from mi_probe._core.tracking import training_label
from mi_probe._core.train import cache_key, cached_training

if TYPE_CHECKING:
    from mi_probe._core.plugins import Registry
    from mi_probe._core.spec import SpecBase


class ModelStore:
    """Models by (seed, state) for one run, and the trainings behind them. It gets what
    it needs as arguments: the spec, the registry (regularisers), the data, the class
    count, the device and input size models are built for, the model cache, the log,
    the site adapter and probe input (a regulariser's sites), and the trainings the
    experiment declares (``DeclaresTrainings``; a callable that returns None: derived
    from the spec)."""

    def __init__(self, spec: SpecBase, registry: Registry, data: DataBundle, num_classes: int,
                 device: torch.device, image_size: tuple[int, int] | None, cache_dir: Path,
                 log: Callable[[str], None], show_progress: bool,
                 adapter: Callable[[nn.Module], Adapter], probe_input: Callable[[], torch.Tensor],
                 declared_trainings: Callable[[], Iterable[TrainingRequest] | None] | None = None
                 ) -> None:
        self.spec = spec
        self.registry = registry
        self.data = data
        self.num_classes = num_classes
        self.device = device
        self.image_size = image_size
        self.cache_dir = cache_dir
        self.log = log
        self.show_progress = show_progress
        self.adapter = adapter
        self.probe_input = probe_input
        self.declared_trainings = declared_trainings
        #: per seed, per training variant: cache folder, best epoch and accuracy
        self.trained_info: dict[int, dict[str, Any]] = {}
        self._history_rows: list[dict[str, Any]] = []
        self._models: dict[tuple[int, str], nn.Module] = {}
        self._classes_checked: set[str] = set()
        #: the run's tracking sinks (``tracking.Trackers``), when the driver has any
        self.trackers: Any = None
        self._dist_ctx: Any = None

    # ------------------------------------------------------------------ models
    def build(self, seed: int, m: Any = None) -> nn.Module:
        """A freshly initialised model of the spec (or of model spec ``m``)."""
        m = m or self.spec.model
        model = build_model(m.arch, self.num_classes, seed, m.act, m.head,
                            m.zero_init_last, img_size=self.image_size)
        if is_custom_arch(m.arch) and m.arch not in self._classes_checked:
            self._check_classes(model, m.arch)
        return model

    def _check_classes(self, model: nn.Module, arch: str) -> None:
        """Your own model must return one logit per class of the data (a timm model is
        built for them; yours builds its own head)."""
        with torch.no_grad():
            out = model.eval()(self.probe_input().to("cpu"))
        logits = out[0] if isinstance(out, (tuple, list)) else out
        found = tuple(getattr(logits, "shape", ()))
        if len(found) != 2 or found[1] != self.num_classes:
            raise SpecError(f"model.arch {arch!r} returns {found} logits for 2 images, but "
                            f"the data has {self.num_classes} classes: build its head for "
                            f"{self.num_classes} classes (a factory is called with "
                            "num_classes when it takes that argument)")
        self._classes_checked.add(arch)

    def meta(self, m: Any = None) -> dict[str, Any]:
        m = m or self.spec.model
        return model_meta(m.arch, self.num_classes, m.act, m.head, m.zero_init_last)

    def model(self, seed: int, state: str) -> nn.Module:
        key = (seed, state)
        if key in self._models:
            return self._models[key]
        if state == RANDOM:
            model = self.build(seed)
        elif state == TRAINED:
            model = self._trained(seed)
        else:
            raise RunError(f"unknown model state {state!r}; valid: {TRAINED}, {RANDOM}")
        model = model.to(self.device).eval()
        self._models[key] = model
        return model

    def _trained(self, seed: int) -> nn.Module:
        weights = self.spec.model.weights
        if weights == "random":
            raise SpecError("the experiment asks for the trained state but model.weights is "
                            "'random'; use weights: train, a .safetensors file, or measure "
                            "only the random state")
        tagged = pretrained_tag(weights)
        if tagged is not None:  # timm's pretrained backbone, a new head from the seed
            m = self.spec.model
            model = build_model(m.arch, self.num_classes, seed, m.act, m.head,
                                m.zero_init_last, pretrained=tagged[1],
                                pretrained_file=m.pretrained_file,
                                img_size=self.image_size)
            self.trained_info[seed] = {"weights": weights, "pretrained_file": m.pretrained_file}
            return model
        if weights != "train":
            model = self.build(seed)
            load_weights(model, weights, self.meta())
            self.trained_info[seed] = {"weights": str(Path(weights).expanduser())}
            return model
        return self.train(seed)[0]

    def train(self, seed: int, *, model_overrides: dict[str, Any] | None = None,
              regularizers: Sequence[Any] | None = None,
              track: Callable[[nn.Module, int], dict[str, Any]] | None = None,
              track_key: str | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
        """Train (or load from the cache) the spec's model for ``seed``; see
        ``RunContext.train``."""
        m, reg_params, payload = self.training_plan(seed, model_overrides, regularizers,
                                                    track, track_key)
        reg_objects = [self.registry.build("regularizers", p) for p in reg_params]
        regs = []
        if reg_objects:
            probe_model = self.build(seed, m)
            adapter = self.adapter(probe_model)
            for reg in reg_objects:
                regs.append((reg, resolve_sites(probe_model, adapter, self.probe_input(),
                                                reg.site_patterns, (), m.arch)))
        label = training_label(seed, m.act, "+".join(p.kind for p in reg_params) or None)
        trackers = self.trackers
        on_epoch_end = None
        if track is not None or trackers:
            def on_epoch_end(model, epoch, row):
                if track is not None:
                    row["tracked"] = track(model, epoch)
                if trackers:  # live: each epoch as it ends
                    trackers.epoch(label, epoch, row)
        train_cfg = m.train.model_copy(update={"regularizers": list(reg_params)})
        model, history, folder = cached_training(
            lambda: self.build(seed, m), payload, self.meta(m), self.data, train_cfg, seed,
            self.device, self.cache_dir, regs, self.spec.eval.batch_size,
            self.show_progress, self.log, on_epoch_end=on_epoch_end,
            dist_ctx=self._dist_ctx)
        if trackers:  # a model from the cache: its epochs were not seen live
            trackers.replay(label, history)
        self._history_rows.extend({k: v for k, v in row.items() if k != "tracked"}
                                  | {"act": m.act or "as built"} for row in history)
        best = max(history, key=lambda r: (r["val_acc"], -r["epoch"]))
        variant = "+".join([payload["model"]["act"] or "default",
                            *[p.kind for p in reg_params]])
        self.trained_info.setdefault(seed, {})[variant] = {
            "cache": str(folder), "best_epoch": best["epoch"], "best_val_acc": best["val_acc"],
            "regularizers": [p.kind for p in reg_params]}
        return model.to(self.device).eval(), history

    def training_plan(self, seed: int, model_overrides: dict[str, Any] | None,
                      regularizers: Sequence[Any] | None, track: Any, track_key: str | None
                      ) -> tuple[Any, list[Any], dict[str, Any]]:
        """(model spec, validated regulariser params, cache payload) of a training."""
        spec = self.spec
        m = spec.model
        if model_overrides:
            m = m.model_copy(update=dict(model_overrides))
        reg_params = list(m.train.regularizers) if regularizers is None else [
            self.registry.validate_params("regularizers", r) for r in regularizers]
        train_cfg = m.train.model_copy(update={"regularizers": list(reg_params)})
        payload = {"model": self.meta(m), "data": spec.data.model_dump(mode="json"),
                   "train": train_cfg.model_dump(mode="json", exclude={"num_workers"}),
                   "seed": seed}
        code = custom_fingerprint(m.arch)
        if code is not None:  # your own model: its code or weights are part of the key
            payload["code"] = code
        if track is not None:
            payload["tracking"] = track_key or getattr(track, "__qualname__", "tracked")
        return m, reg_params, payload

    # ------------------------------------------------------------------ training stage
    def requests(self) -> list[TrainingRequest]:
        """The models the experiment's units will ask for (see ``Experiment``)."""
        spec = self.spec
        declared = self.declared_trainings() if self.declared_trainings is not None else None
        if declared is not None:
            return list(declared)
        if spec.model.weights != "train":
            return []
        params = spec.experiment
        states = getattr(params, "states", None) or [getattr(params, "state", TRAINED)]
        return [TrainingRequest(seed) for seed in spec.seeds] if TRAINED in states else []

    def units(self) -> dict[str, TrainingRequest]:
        """The training stage's units by name: one per distinct model (two requests for
        one cached model are one unit); names are the requests' labels, suffixed with
        the cache key where two different models would share a label."""
        by_folder: dict[Path, TrainingRequest] = {}
        for request in self.requests():
            by_folder.setdefault(self.folder(request), request)
        labels = [r.label for r in by_folder.values()]
        units = {}
        for (folder, request), label in zip(by_folder.items(), labels):
            units[label if labels.count(label) == 1 else f"{label}#{folder.name[:8]}"] = request
        return units

    def folder(self, request: TrainingRequest) -> Path:
        """Where the model cache keeps this request's model."""
        _, _, payload = self.training_plan(request.seed, dict(request.model_overrides),
                                           request.regularizers, request.track,
                                           request.track_key)
        return self.cache_dir / "models" / cache_key(payload)

    def is_trained(self, request: TrainingRequest) -> bool:
        """Whether the model cache already holds this request's trained model."""
        folder = self.folder(request)
        return (folder / "model.safetensors").is_file() and (folder / "training.json").is_file()

    def run_training(self, request: TrainingRequest, dist_ctx: Any = None) -> None:
        """Train one request into the model cache (under torchrun: every rank calls this
        with its ``dist_ctx``, and DDP trains one model)."""
        self._dist_ctx = dist_ctx
        try:
            self.train(request.seed, model_overrides=dict(request.model_overrides) or None,
                       regularizers=request.regularizers, track=request.track,
                       track_key=request.track_key)
        finally:
            self._dist_ctx = None

    def take_history(self) -> list[dict[str, Any]]:
        """The training rows recorded since the last call, and free the loaded models."""
        rows, self._history_rows = self._history_rows, []
        self._models.clear()
        return rows
