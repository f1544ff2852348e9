"""Engine: the :class:`~mi_probe.interfaces.RunContext` experiments receive.

It builds the spec's data, estimator, experiment and regularisers, resolves the
adapter and sites once, and delegates models to :class:`~.training.ModelStore` and
forward passes to :class:`~.evaluation.Evaluator`. Plain captures of a model state go
through the activation store (:mod:`mi_probe._core.store`): read when every requested
site is stored for the same model, data and runtime, else captured and written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from mi_probe._core import capture as capture_mod
from mi_probe._core.data import make_loader
from mi_probe.errors import DataError
from mi_probe.interfaces import (Adapter, Captured, DeclaresTrainings, Intervention, Site,
                                 TrainingRequest)
from mi_probe._core.models import resolve_device
from mi_probe._core.runner.evaluation import Evaluator, PointResult, SiteOutputs, SweepPoint
from mi_probe._core.runner.rundir import resolve_cache_dir
from mi_probe._core.runner.training import ModelStore
from mi_probe._core.sites import resolve_sites
from mi_probe._core.sites import get_module, site_output
from mi_probe._core.sites.listed import spec_adapter
from mi_probe._core.store import (LABELS, OUTPUTS, SITE_OUTPUT, ActivationStore, StoreCorrupt,
                                  StoredRows, StoreKey, data_fingerprint, model_fingerprint, reduction_text, resolve_store,
                                  runtime_fingerprint, site_definition, site_reduction)
from mi_probe._core.train import derive_seed

if TYPE_CHECKING:
    from mi_probe._core.plugins import MiProbePluginManager
    from mi_probe._core.spec import SpecBase
    from mi_probe._core.store.zarrstore import CaptureWriter
    from mi_probe._core.validation import Validated


@dataclasses.dataclass
class StreamedCapture:
    """A capture whose site activations stay in the store: ``chunks(site)`` returns a
    fresh iterator of (rows, C) blocks on the device, in order (each pass verifies the
    stored checksum at its end); labels and logits are in memory."""

    labels: torch.Tensor
    logits: torch.Tensor | None
    sites: list[Site]
    rows: dict[str, StoredRows]
    device: torch.device

    @property
    def n(self) -> int:
        return int(self.labels.numel())

    @property
    def accuracy(self) -> float:
        if self.logits is None:
            raise ValueError("no logits were captured")
        return (self.logits.argmax(1) == self.labels).float().mean().item()

    def channels(self, site: str) -> int:
        return int(self.rows[site].shape[1])

    def chunks(self, site: str) -> Callable[[], Iterator[torch.Tensor]]:
        stored, device = self.rows[site], self.device
        return lambda: (block.to(device) for _, block in stored.chunks())


class Engine:
    """Implements ``interfaces.RunContext`` for one spec."""

    def __init__(self, spec: SpecBase, pm: MiProbePluginManager, cache_dir: Path | None = None,
                 log: Callable[[str], None] = print, progress: bool = True,
                 dist_ctx: Any = None, validated: Validated | None = None,
                 store: ActivationStore | None | bool = True):
        """``store``: True resolves the activation store (``MI_PROBE_STORE``, else the
        spec's ``store`` section, else ``<cache>/activations``); False turns it off; an
        :class:`ActivationStore` is used as given."""
        self.spec = spec
        self.pm = pm
        self.registry = pm.registry
        self.log = log
        self.show_progress = progress
        self.cache_dir = resolve_cache_dir(cache_dir)
        from mi_probe._core.distributed import rank_device

        self.device = rank_device(dist_ctx, resolve_device(spec.device))
        self.warnings: list[str] = []
        self._captures: dict[tuple[int, str], Captured] = {}
        self._sites: list[Site] | None = None
        self._adapter: Adapter | None = None

        self.data = self.registry.build("datasets", spec.data).load()
        if len(self.data.val) < 2:
            raise DataError(f"the evaluation set has {len(self.data.val)} samples; need at least 2")
        self.class_names = list(self.data.classes)
        if len(self.class_names) < 2:  # the image folder names its folder; any source
            raise DataError(f"data source {spec.data.kind!r} has {len(self.class_names)} "
                            f"class(es) {self.class_names}; expected at least 2 (label "
                            "information with a single label is zero by construction)")
        #: (H, W) of the evaluation images: the input size models are built for
        self.image_size: tuple[int, int] | None = _image_size(self.data.val)
        self.num_classes = spec.model.num_classes or self.data.num_classes
        if self.num_classes != self.data.num_classes:
            raise DataError(f"model.num_classes is {spec.model.num_classes} but the data has "
                            f"{self.data.num_classes} classes ({', '.join(self.class_names[:12])})")
        if validated is None:  # a worker or a re-render: build from the spec here
            from mi_probe._core.validation import validate

            validated = validate(spec, pm, structural=False)
        self.estimator = validated.estimator
        self.experiment = validated.experiment
        self.regularizers = list(validated.regularizers)
        val = self.data.val
        if spec.eval.max_samples is not None and spec.eval.max_samples < len(val):
            # evenly spaced, not the first n: image folders list samples class by class,
            # so the first n would hold only the first classes
            n, total = spec.eval.max_samples, len(val)
            val = torch.utils.data.Subset(val, [i * total // n for i in range(n)])
        self.eval_set = val
        experiment = self.experiment
        self.models = ModelStore(
            spec, self.registry, self.data, self.num_classes, self.device, self.image_size,
            self.cache_dir, log, progress, self.adapter, self.probe_input,
            lambda: (experiment.trainings(self) if isinstance(experiment, DeclaresTrainings)
                     else None))
        self.evaluator = Evaluator(spec, self.device, self.eval_set, self.loader, self.adapter,
                                   stored_outputs=self._stored_site_outputs)
        #: the site output read from the store last (digest, source): a sweep asks for
        #: one site many times in a row
        self._site_source: tuple[str, SiteOutputs] | None = None
        #: site-output entries this engine will not write (over eval.site_store_mb, or
        #: the store could not be written): asked again, they are a miss at once
        self._not_stored: set[str] = set()
        self.store: ActivationStore | None
        if store is True:
            section = getattr(spec, "store", None)
            self.store, self.store_note = resolve_store(
                self.cache_dir, enabled=getattr(section, "enabled", True),
                location=getattr(section, "path", None),
                storage_options=getattr(section, "storage_options", None), log=log)
        else:
            self.store = store or None
            self.store_note = (f"activation store: {self.store.location}" if self.store
                               else "activation store: off")
        #: the data's part of the store keys (computed once); False: the data has none
        self._store_base: StoreKey | None | bool = None

    # ---------------------------------------------------------------- RunContext
    @property
    def trained_info(self) -> dict[int, dict[str, Any]]:
        return self.models.trained_info

    @property
    def resolved_sites(self) -> list[Site] | None:
        """The sites once a unit has resolved them (None before)."""
        return None if self._sites is None else list(self._sites)

    def build_model(self, seed: int) -> nn.Module:
        """A freshly initialised model of the spec, on the CPU."""
        return self.models.build(seed)

    def model(self, seed: int, state: str) -> nn.Module:
        return self.models.model(seed, state)

    def train(self, seed: int, *, model_overrides: dict[str, Any] | None = None,
              regularizers: Sequence[Any] | None = None,
              track: Callable[[nn.Module, int], dict[str, Any]] | None = None,
              track_key: str | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
        return self.models.train(seed, model_overrides=model_overrides,
                                 regularizers=regularizers, track=track, track_key=track_key)

    def adapter(self, model: nn.Module) -> Adapter:
        if self._adapter is None:
            self._adapter = spec_adapter(self.pm, model, self.spec.sites,
                                         self.spec.model.arch)
        return self._adapter

    def probe_input(self) -> torch.Tensor:
        """Two evaluation images on the device: enough to probe site shapes."""
        first = self.data.val[0][0]
        return torch.stack([first, self.data.val[1][0]]).to(self.device)

    def sites(self, model: nn.Module) -> list[Site]:
        if self._sites is None:
            s = self.spec.sites
            self._sites = resolve_sites(model, self.adapter(model), self.probe_input(),
                                        s.include, s.exclude, self.spec.model.arch,
                                        s.kinds, s.position, s.tokens)
        return list(self._sites)

    def loader(self):
        return make_loader(self.eval_set, self.spec.eval.batch_size, shuffle=False,
                           num_workers=self.spec.model.train.num_workers,
                           pin_memory=self.device.type == "cuda")

    def capture(self, seed: int, state: str, need_logits: bool = True) -> Captured:
        """The capture of ``state`` for ``seed`` (cached per seed and state; read from
        the activation store when stored, else captured and written batch by batch).

        ``need_logits=False`` is the opt-in to early halt: the forward pass stops once
        the deepest requested site has its output, and the capture has no logits (its
        ``accuracy`` raises) unless they were already at hand (cached or stored). Only
        callers that never score the model may pass it."""
        key = (seed, state)
        cached = self._captures.get(key)
        if cached is not None and (cached.logits is not None or not need_logits):
            return cached
        model = self.model(seed, state)
        sites = self.sites(model)
        reduce = self.spec.sites.reduce
        halt = not need_logits
        # the keys name the reduction (sites.reduce: mean, none, a projection), so
        # unpooled captures are stored too and never read as pooled ones
        keys = self._store_keys(model, sites)
        cap = self._read_store(keys, sites) if keys is not None else None
        if cap is None and keys is not None and halt:  # labels without logits will do
            cap = self._read_store(self._labels_keys(keys), sites)
        if cap is not None:
            self.progress(f"seed {seed}: {state} activations read from the activation "
                          "store")
            capture_mod.check_logits(cap, self.num_classes)
        else:
            self.progress(f"seed {seed}: capturing {state} activations"
                          + (" (halting after the deepest site)" if halt else ""))
            writer = (self._store_writer(self._labels_keys(keys) if halt else keys,
                                         {"seed": seed, "state": state})
                      if keys is not None else None)
            try:
                cap = capture_mod.capture(model, sites, self.loader(), self.device,
                                          progress=self.show_progress,
                                          desc=f"{state} seed {seed}", reduce=reduce,
                                          sink=writer, halt_after_sites=halt)
                capture_mod.check_logits(cap, self.num_classes)
            except BaseException:
                if writer is not None:
                    writer.abort()  # an interrupted or refused capture is never read
                raise
            if writer is not None:
                writer.commit()
        self.warnings += capture_mod.check_finite(cap, self.spec.eval.on_nonfinite,
                                                  f"{state} model, seed {seed}")
        self._captures[key] = cap
        return cap

    def stream_capture(self, seed: int, state: str) -> StreamedCapture | None:
        """The capture of ``state`` for ``seed`` kept in the activation store and read
        back chunk by chunk (memory bounded by a chunk, not by N): read when stored,
        else captured with every batch written and dropped. None when there is no store
        or the model or data cannot be keyed (the caller then uses :meth:`capture`)."""
        model = self.model(seed, state)
        sites = self.sites(model)
        keys = self._store_keys(model, sites)
        if keys is None:
            return None
        found = self._open_streamed(keys, sites)
        if found is not None:
            self.progress(f"seed {seed}: {state} activations streamed from the activation "
                          "store")
            return self._check_streamed_finite(found, seed, state)
        self.progress(f"seed {seed}: capturing {state} activations into the store (not "
                      "kept in memory)")
        writer = self._store_writer(keys, {"seed": seed, "state": state})
        if writer is None:
            return None
        try:
            cap = capture_mod.capture(model, sites, self.loader(), self.device,
                                      progress=self.show_progress, desc=f"{state} seed {seed}",
                                      reduce=self.spec.sites.reduce, sink=writer,
                                      keep_rows=False)
            capture_mod.check_logits(cap, self.num_classes)
        except BaseException:
            writer.abort()
            raise
        if not writer.commit():
            return None
        found = self._open_streamed(keys, sites)
        return None if found is None else self._check_streamed_finite(found, seed, state)

    def _check_streamed_finite(self, cap: StreamedCapture, seed: int, state: str
                               ) -> StreamedCapture:
        """``eval.on_nonfinite`` on a streamed capture, as ``capture.check_finite`` on a
        held one: one pass over each site's chunks (which also verifies its checksum);
        a site with NaN/Inf raises, or is left out with the same warning."""
        import torch

        kept = []
        for site in cap.sites:
            bad = total = 0
            for block in cap.chunks(site.name)():
                bad += int((~torch.isfinite(block)).sum().item())
                total += block.numel()
            if bad == 0:
                kept.append(site)
                continue
            self.warnings.append(capture_mod.nonfinite_warning(
                site.name, bad, total, self.spec.eval.on_nonfinite,
                f"{state} model, seed {seed}"))
        cap.sites = kept
        return cap

    def _open_streamed(self, keys: dict[str, StoreKey], sites: Sequence[Site]
                       ) -> StreamedCapture | None:
        assert self.store is not None
        try:
            outputs = self.store.read(keys[OUTPUTS])
            rows = {s.name: self.store.open_rows(keys[s.name], "acts") for s in sites}
        except Exception as exc:  # an unreachable store is a miss
            self.log(f"activation store: cannot read {self.store.location} "
                     f"({type(exc).__name__}: {exc})")
            return None
        if outputs is None or any(r is None for r in rows.values()):
            return None
        logits = outputs.get("logits")
        return StreamedCapture(labels=outputs["labels"].to(self.device),
                               logits=None if logits is None else logits.to(self.device),
                               sites=list(sites), rows=rows, device=self.device)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- activation store
    def _store_keys(self, model: nn.Module, sites: Sequence[Site],
                    reduction: str | None = None) -> dict[str, StoreKey] | None:
        """The store key of each site and of the outputs (``OUTPUTS``), or None when the
        store is off or the model or data cannot be identified (logged once).
        ``reduction``: the sites' reduction text (default: the spec's ``sites.reduce``;
        :data:`SITE_OUTPUT` for full site outputs)."""
        if self.store is None:
            return None
        if self._store_base is None:
            data, preprocessing = data_fingerprint(self.eval_set)
            if data is None:
                self.log(f"activation store: not used for this run: the evaluation set "
                         f"cannot be identified ({preprocessing})")
                self._store_base = False
            else:
                self._store_base = StoreKey(
                    model="", data=data, preprocessing=preprocessing, site=OUTPUTS,
                    site_def="", reduction="",
                    runtime=runtime_fingerprint(self.device, self.spec.eval.batch_size))
        if not isinstance(self._store_base, StoreKey):
            return None
        weights = model_fingerprint(model)
        if weights is None:  # forward hooks on the model: its outputs are not its weights'
            return None
        base = dataclasses.replace(self._store_base, model=weights)
        keys = {OUTPUTS: base}
        reduce = reduction_text(getattr(self.spec.sites, "reduce", "mean"))
        for site in sites:
            keys[site.name] = base.for_site(
                site.name, site_definition(site),
                reduction if reduction is not None else site_reduction(site, reduce))
        return keys

    def _stored_site_outputs(self, model: nn.Module, site: Site, sites: Sequence[Site]
                             ) -> SiteOutputs | None:
        """``site``'s full output from the store; on a miss one forward pass writes the
        full outputs of ``site`` and every site of ``sites`` (a sweep names them all, so
        its later sites cost no pass). Read whole when it fits ``eval.site_cache_mb``,
        else by chunks. None when the store is off or cannot be written."""
        wanted = [site, *[s for s in sites if s.name != site.name]]
        keys = self._store_keys(model, wanted, SITE_OUTPUT)
        if keys is None:
            return None
        digest = keys[site.name].digest
        if self._site_source is not None and self._site_source[0] == digest:
            return self._site_source[1]
        if digest in self._not_stored:  # over eval.site_store_mb, or the write failed
            return None
        source = self._open_site_output(keys, site)
        if source is None:
            missing = [s for s in wanted if not self.store.contains(keys[s.name])  # type: ignore[union-attr]
                       and keys[s.name].digest not in self._not_stored]
            self.progress(f"writing the full outputs of {len(missing)} site(s) to the "
                          "activation store (one forward pass)")
            written = self._write_site_outputs(model, missing, keys)
            source = self._open_site_output(keys, site) if written else None
            if not written:
                self._not_stored.update(keys[s.name].digest for s in missing)
            else:  # the sites the write pass left out (too big): never asked again
                self._not_stored.update(keys[s.name].digest for s in missing
                                        if not self.store.contains(keys[s.name]))  # type: ignore[union-attr]
        if source is not None:
            self._site_source = (digest, source)
        return source

    def _open_site_output(self, keys: dict[str, StoreKey], site: Site) -> SiteOutputs | None:
        assert self.store is not None
        try:
            stored = self.store.open_rows(keys[site.name], "acts")
            outputs = self.store.read(keys[OUTPUTS]) if stored is not None else None
        except Exception as exc:  # an unreachable store is a miss
            self.log(f"activation store: cannot read {self.store.location} "
                     f"({type(exc).__name__}: {exc})")
            return None
        if stored is None or outputs is None or len(stored) != outputs["labels"].numel():
            return None
        labels = outputs["labels"].to(self.device)
        if stored.nbytes <= self.spec.eval.site_cache_mb * 2**20:
            try:
                return SiteOutputs(labels, self.device, tensor=stored.read().to(self.device))
            except StoreCorrupt as exc:
                self.log(str(exc))
                return None
        return SiteOutputs(labels, self.device, stored=stored)

    def _write_site_outputs(self, model: nn.Module, sites: Sequence[Site],
                            keys: dict[str, StoreKey]) -> bool:
        """One forward pass over the evaluation set writing each site's full output
        (and the labels and logits) to the store, batch by batch; nothing is kept in
        memory. False when the store could not be written (logged)."""
        writer = self._store_writer({**{s.name: keys[s.name] for s in sites},
                                     OUTPUTS: keys[OUTPUTS]}, {"full_outputs": True})
        if writer is None:
            return False

        budget = self.spec.eval.site_store_mb * 2**20
        rows = len(self.eval_set)  # type: ignore[arg-type]  # map-style datasets are Sized
        too_big: list[str] = []

        def hook(_m: Any, _inp: Any, out: Any, _site: Site) -> None:
            tensor = site_output(out, _site.index)
            if _site.name not in writer.writers:
                return
            if tensor[0].numel() * tensor.element_size() * rows > budget:
                # a site output over eval.site_store_mb is not written (a resnet50 layer1
                # output over ImageNet's 50,000 images is 160 GB); the sweep then holds
                # it in memory under eval.site_cache_mb or runs whole forward passes
                writer.writers.pop(_site.name).abort()
                too_big.append(_site.name)
                return
            # a copy: an in-place layer after the site may change the tensor later
            writer.append(_site.name, tensor.detach().clone())

        handles = [get_module(model, s.module).register_forward_hook(
            lambda m, i, o, _s=s: hook(m, i, o, _s)) for s in sites]
        was_training = model.training
        model.eval()
        try:
            with capture_mod.removing(handles), torch.no_grad():
                for x, y in self.loader():
                    logits = model(x.to(self.device, non_blocking=True))
                    writer.append_outputs(y.long(), logits.float())
        except BaseException:
            writer.abort()
            raise
        finally:
            model.train(was_training)
        if too_big:
            self.log(f"activation store: full outputs of {', '.join(too_big)} exceed "
                     f"eval.site_store_mb ({self.spec.eval.site_store_mb} MB for {rows} "
                     "images); not stored")
        return writer.commit()

    def _read_store(self, keys: dict[str, StoreKey], sites: Sequence[Site]
                    ) -> Captured | None:
        """The capture from the store when every site and the outputs are there."""
        assert self.store is not None
        try:
            found = self.store.read_many(list(keys.values()))
        except Exception as exc:  # an unreachable store is a miss
            self.log(f"activation store: cannot read {self.store.location} "
                     f"({type(exc).__name__}: {exc}); capturing instead")
            return None
        if found is None:
            return None
        arrays = dict(zip(keys, found))
        outputs = arrays[OUTPUTS]
        acts = {site.name: arrays[site.name]["acts"].to(self.device) for site in sites}
        logits = outputs.get("logits")
        return Captured(acts=acts, labels=outputs["labels"].to(self.device),
                        logits=None if logits is None else logits.to(self.device),
                        sites=list(sites))

    @staticmethod
    def _labels_keys(keys: dict[str, StoreKey]) -> dict[str, StoreKey]:
        """``keys`` with the outputs entry replaced by the labels-only one (``LABELS``):
        what a capture without logits (early halt) writes and may read."""
        out = dict(keys)
        out[OUTPUTS] = dataclasses.replace(keys[OUTPUTS], site=LABELS)
        return out

    def _store_writer(self, keys: dict[str, StoreKey], info: dict[str, Any]
                      ) -> CaptureWriter | None:
        """The writer a fresh capture feeds batch by batch (one entry per site not yet
        stored and one for labels and logits), or None when the store cannot be
        reached (logged; the run goes on: the store is a cache)."""
        assert self.store is not None
        info = {**info, "arch": self.spec.model.arch, "spec": self.spec.name}
        try:
            return self.store.capture_writer(keys, OUTPUTS, info,
                                             rows_hint=len(self.eval_set))
        except Exception as exc:  # the store cannot be reached
            self.log(f"activation store: could not write to {self.store.location} "
                     f"({type(exc).__name__}: {exc}); the run goes on without it")
            return None

    def evaluate(self, model: nn.Module,
                 interventions: Iterable[tuple[Site, Intervention, torch.Tensor]] = (),
                 subset: torch.Tensor | None = None, sites: Sequence[Site] = (),
                 generator: torch.Generator | None = None) -> Captured:
        return self.evaluator.evaluate(model, interventions, subset, sites, generator)

    def evaluate_points(self, model: nn.Module, site: Site, points: Sequence[SweepPoint], *,
                        sites: Sequence[Site] = (), correct_before: torch.Tensor | None = None,
                        rule: Any = None, order: Any = None) -> list[PointResult]:
        return self.evaluator.evaluate_points(model, site, points, sites=sites,
                                              correct_before=correct_before, rule=rule,
                                              order=order)

    def validate_plugin_params(self, kind: str, params: Any) -> Any:
        """Params of a plugin entry, validated by its model (``Registry.validate_params``)."""
        return self.registry.validate_params(kind, params)

    def plugin(self, kind: str, name: str, **params: Any) -> Any:
        validated = self.validate_plugin_params(kind, {"kind": name, **params})
        return self.registry.get(kind, name).factory(validated)

    def rng(self, seed: int, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(seed, purpose))

    def progress(self, message: str) -> None:
        self.log(message)

    # ---------------------------------------------------------------- training stage
    def training_requests(self) -> list[TrainingRequest]:
        return self.models.requests()

    def training_units(self) -> dict[str, TrainingRequest]:
        return self.models.units()

    def is_trained(self, request: TrainingRequest) -> bool:
        return self.models.is_trained(request)

    def run_training(self, request: TrainingRequest, dist_ctx: Any = None) -> None:
        try:
            self.models.run_training(request, dist_ctx)
        finally:
            self.end_unit()

    # ---------------------------------------------------------------- units
    def end_unit(self) -> list[dict[str, Any]]:
        """Free per-unit caches; return the training rows recorded during the unit."""
        rows = self.models.take_history()
        self._captures.clear()
        self.evaluator.clear()
        return rows


def _image_size(dataset: Any) -> tuple[int, int] | None:
    """(H, W) of the first item of an image dataset (None for other data)."""
    try:
        first = dataset[0][0]
    except Exception:  # an empty set is refused elsewhere
        return None
    if isinstance(first, torch.Tensor) and first.dim() == 3:
        return int(first.shape[-2]), int(first.shape[-1])
    return None
