"""run(spec): resolve plugins -> build data and models -> capture -> dispatch the
experiment unit by unit -> merge tables -> figures -> report.

The :class:`Engine` is the run context experiments receive. Finished units are
written to ``<run>/units/<unit>/`` as they complete, so an interrupted run re-run with
the same ``--out`` (or ``--resume``) computes only what is missing; trained models
live in the shared cache and resume from their last epoch checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import polars as pl
import torch
from torch import nn

from mi_probe import capture as capture_mod
from mi_probe.checks import evaluate_checks
from mi_probe.data import make_loader
from mi_probe.analysis import validate_spec
from mi_probe.errors import DataError, MiProbeError, RunError, SpecError, UnitsFailedError
from mi_probe.interfaces import (RANDOM, TRAINED, Captured, DeclaresTrainings, HasNotes,
                                 HasSuffix, Intervention, Plan, Site, StageJobs,
                                 TrainingRequest)
from mi_probe.models import build_model, load_weights, model_meta, resolve_device
from mi_probe.sites import get_module, resolve_sites, select_adapter
from mi_probe.spec import dump_spec
from mi_probe.tables import (atomic_write_text, check_schema, concat_tables, read_tables,
                             write_json, write_parquet)
from mi_probe.train import cache_key, cached_training, derive_seed

DEFAULT_REPORTS = Path("reports")


def _model_fingerprint(model: nn.Module) -> tuple:
    """Changes when any parameter or buffer is modified in place or a hook is added, so
    cached site outputs are never reused for a changed model."""
    versions = tuple(t._version for t in model.parameters()) + tuple(
        t._version for t in model.buffers())
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return versions + (hooks,)


class _TooBig(Exception):
    """A site's full evaluation-set output exceeds eval.site_cache_mb."""


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("MI_PROBE_CACHE", DEFAULT_REPORTS / ".cache"))


def spec_hash(spec: Any) -> str:
    """The identity of a run's results: the resolved spec without ``executor`` (where
    units run does not change what they compute)."""
    data = spec.model_dump(mode="json", exclude={"executor"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _safe(unit: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", unit)


class Engine:
    """Implements ``interfaces.RunContext`` for one spec."""

    def __init__(self, spec: Any, pm: Any, cache_dir: Path | None = None,
                 log: Callable[[str], None] = print, progress: bool = True,
                 dist_ctx: Any = None):
        self.spec = spec
        self.pm = pm
        self.registry = pm.registry
        self.log = log
        self.show_progress = progress
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        from mi_probe.distributed import rank_device

        self.device = rank_device(dist_ctx, resolve_device(spec.device))
        self.warnings: list[str] = []
        self.trained_info: dict[int, dict[str, Any]] = {}
        self._training_rows: list[dict[str, Any]] = []
        self._models: dict[tuple[int, str], nn.Module] = {}
        self._captures: dict[tuple[int, str], Captured] = {}
        self._sites: list[Site] | None = None
        self._site_cache: dict[tuple[int, str], Any] = {}
        self._adapter = None
        self._training_dist = None

        self.data = self.registry.build("datasets", spec.data).load()
        if len(self.data.val) < 2:
            raise DataError(f"the evaluation set has {len(self.data.val)} samples; need at least 2")
        self.class_names = list(self.data.classes)
        self.num_classes = spec.model.num_classes or self.data.num_classes
        if self.num_classes != self.data.num_classes:
            raise DataError(f"model.num_classes is {spec.model.num_classes} but the data has "
                            f"{self.data.num_classes} classes ({', '.join(self.class_names[:12])})")
        self.estimator = self.registry.build("estimators", spec.estimator)
        self.experiment = self.registry.build("experiments", spec.experiment)
        self.regularizers = [self.registry.build("regularizers", p)
                             for p in spec.model.train.regularizers]
        val = self.data.val
        if spec.eval.max_samples is not None and spec.eval.max_samples < len(val):
            val = torch.utils.data.Subset(val, range(spec.eval.max_samples))
        self.eval_set = val

    # ---------------------------------------------------------------- RunContext
    def _build(self, seed: int, m: Any = None) -> nn.Module:
        m = m or self.spec.model
        return build_model(m.arch, self.num_classes, seed, m.act, m.head, m.zero_init_last)

    def _meta(self, m: Any = None) -> dict[str, Any]:
        m = m or self.spec.model
        return model_meta(m.arch, self.num_classes, m.act, m.head, m.zero_init_last)

    def model(self, seed: int, state: str) -> nn.Module:
        key = (seed, state)
        if key in self._models:
            return self._models[key]
        if state == RANDOM:
            model = self._build(seed)
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
        if weights != "train":
            model = self._build(seed)
            load_weights(model, weights, self._meta())
            self.trained_info[seed] = {"weights": str(Path(weights).expanduser())}
            return model
        return self.train(seed)[0]

    def train(self, seed: int, *, model_overrides: dict[str, Any] | None = None,
              regularizers: Sequence[Any] | None = None,
              track: Callable[[nn.Module, int], dict[str, Any]] | None = None,
              track_key: str | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
        """Train (or load from the cache) the spec's model for ``seed``.

        ``model_overrides`` changes model fields (e.g. ``{"act": "tanh"}``);
        ``regularizers`` (params models or dicts with ``kind``) replaces the spec's list;
        ``track(model, epoch)`` runs at initialisation and after every epoch and its dict
        is stored in the history row under ``tracked`` (persisted in checkpoints, so a
        resumed run keeps it); ``track_key`` names what is tracked and is part of the
        cache key. Returns the best-accuracy model (eval mode, on the device) and the
        training history (one row per epoch, epoch 0 = initialisation).
        """
        m, reg_params, payload = self._training_plan(seed, model_overrides, regularizers,
                                                     track, track_key)
        reg_objects = [self.registry.build("regularizers", p) for p in reg_params]
        regs = []
        if reg_objects:
            probe_model = self._build(seed, m)
            adapter = self._adapter_for(probe_model)
            for reg in reg_objects:
                regs.append((reg, resolve_sites(probe_model, adapter, self._probe_input(),
                                                reg.site_patterns, (), m.arch)))
        on_epoch_end = None
        if track is not None:
            def on_epoch_end(model, epoch, row):
                row["tracked"] = track(model, epoch)
        train_cfg = m.train.model_copy(update={"regularizers": list(reg_params)})
        model, history, folder = cached_training(
            lambda: self._build(seed, m), payload, self._meta(m), self.data, train_cfg, seed,
            self.device, self.cache_dir, regs, self.spec.eval.batch_size,
            self.show_progress, self.log, on_epoch_end=on_epoch_end,
            dist_ctx=self._training_dist)
        self._training_rows.extend({k: v for k, v in row.items() if k != "tracked"}
                                   | {"act": m.act or "as built"} for row in history)
        best = max(history, key=lambda r: (r["val_acc"], -r["epoch"]))
        variant = "+".join([payload["model"]["act"] or "default",
                            *[p.kind for p in reg_params]])
        self.trained_info.setdefault(seed, {})[variant] = {
            "cache": str(folder), "best_epoch": best["epoch"], "best_val_acc": best["val_acc"],
            "regularizers": [p.kind for p in reg_params]}
        return model.to(self.device).eval(), history

    def _training_plan(self, seed: int, model_overrides: dict[str, Any] | None,
                       regularizers: Sequence[Any] | None, track: Any, track_key: str | None
                       ) -> tuple[Any, list[Any], dict[str, Any]]:
        """(model spec, validated regulariser params, cache payload) of a training."""
        m = self.spec.model
        if model_overrides:
            m = m.model_copy(update=dict(model_overrides))
        reg_params = list(m.train.regularizers) if regularizers is None else [
            self._validate_plugin_params("regularizers", r) for r in regularizers]
        train_cfg = m.train.model_copy(update={"regularizers": list(reg_params)})
        payload = {"model": self._meta(m), "data": self.spec.data.model_dump(mode="json"),
                   "train": train_cfg.model_dump(mode="json", exclude={"num_workers"}),
                   "seed": seed}
        if track is not None:
            payload["tracking"] = track_key or getattr(track, "__qualname__", "tracked")
        return m, reg_params, payload

    # ---------------------------------------------------------------- training stage
    def training_requests(self) -> list[TrainingRequest]:
        """The models the experiment's units will ask for (see ``Experiment``)."""
        if isinstance(self.experiment, DeclaresTrainings):
            return list(self.experiment.trainings(self))
        if self.spec.model.weights != "train":
            return []
        params = self.spec.experiment
        states = getattr(params, "states", None) or [getattr(params, "state", TRAINED)]
        return [TrainingRequest(seed) for seed in self.spec.seeds] if TRAINED in states else []

    def training_units(self) -> dict[str, TrainingRequest]:
        """The training stage's units by name: one per distinct model (two requests for
        one cached model are one unit); names are the requests' labels, suffixed with
        the cache key where two different models would share a label."""
        by_folder: dict[Path, TrainingRequest] = {}
        for request in self.training_requests():
            by_folder.setdefault(self.training_folder(request), request)
        labels = [r.label for r in by_folder.values()]
        units = {}
        for (folder, request), label in zip(by_folder.items(), labels):
            units[label if labels.count(label) == 1 else f"{label}#{folder.name[:8]}"] = request
        return units

    def training_folder(self, request: TrainingRequest) -> Path:
        """Where the model cache keeps this request's model."""
        _, _, payload = self._training_plan(request.seed, dict(request.model_overrides),
                                            request.regularizers, request.track,
                                            request.track_key)
        return self.cache_dir / "models" / cache_key(payload)

    def is_trained(self, request: TrainingRequest) -> bool:
        """Whether the model cache already holds this request's trained model."""
        folder = self.training_folder(request)
        return (folder / "model.safetensors").is_file() and (folder / "training.json").is_file()

    def run_training(self, request: TrainingRequest, dist_ctx: Any = None) -> None:
        """Train one request into the model cache (under torchrun: every rank calls this
        with its ``dist_ctx``, and DDP trains one model)."""
        self._training_dist = dist_ctx
        try:
            self.train(request.seed, model_overrides=dict(request.model_overrides) or None,
                       regularizers=request.regularizers, track=request.track,
                       track_key=request.track_key)
        finally:
            self._training_dist = None
            self.end_unit()

    def _validate_plugin_params(self, kind: str, params: Any) -> Any:
        from pydantic import BaseModel, ValidationError

        if isinstance(params, BaseModel):
            return params
        if not isinstance(params, dict) or "kind" not in params:
            raise SpecError(f"{kind[:-1]} parameters must be a mapping with 'kind'; got {params!r}")
        entry = self.registry.get(kind, params["kind"])
        try:
            return entry.params_model(**params)
        except ValidationError as exc:
            problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
                        for e in exc.errors()]
            raise SpecError(f"invalid parameters for {kind[:-1]} {params['kind']!r}",
                            problems) from None

    def _probe_input(self) -> torch.Tensor:
        first = self.data.val[0][0]
        return torch.stack([first, self.data.val[1][0]]).to(self.device)

    def adapter(self, model: nn.Module):
        return self._adapter_for(model)

    def _adapter_for(self, model: nn.Module):
        if self._adapter is None:
            self._adapter = select_adapter(self.pm, model, self.spec.model.arch,
                                           self.spec.sites.adapter)
        return self._adapter

    def sites(self, model: nn.Module) -> list[Site]:
        if self._sites is None:
            s = self.spec.sites
            self._sites = resolve_sites(model, self._adapter_for(model), self._probe_input(),
                                        s.include, s.exclude, self.spec.model.arch)
        return list(self._sites)

    def loader(self):
        return make_loader(self.eval_set, self.spec.eval.batch_size, shuffle=False,
                           num_workers=self.spec.model.train.num_workers,
                           pin_memory=self.device.type == "cuda")

    def capture(self, seed: int, state: str) -> Captured:
        key = (seed, state)
        if key not in self._captures:
            model = self.model(seed, state)
            self.progress(f"seed {seed}: capturing {state} activations")
            cap = capture_mod.capture(model, self.sites(model), self.loader(), self.device,
                                      progress=self.show_progress, desc=f"{state} seed {seed}")
            self.warnings += capture_mod.check_finite(cap, self.spec.eval.on_nonfinite,
                                                      f"{state} model, seed {seed}")
            self._captures[key] = cap
        return self._captures[key]

    def evaluate(self, model: nn.Module,
                 interventions: Iterable[tuple[Site, Intervention, torch.Tensor]] = (),
                 subset: torch.Tensor | None = None, sites: Sequence[Site] = (),
                 generator: torch.Generator | None = None) -> Captured:
        interventions = list(interventions)
        targets = {site.name for site, _, _ in interventions}
        if len(targets) == 1 and not sites:
            site = interventions[0][0]
            fast = self._suffix_evaluate(model, site, interventions, subset, generator)
            if fast is not None:
                return fast
        data = self.eval_set if subset is None else torch.utils.data.Subset(
            self.eval_set, [int(i) for i in subset])
        loader = make_loader(data, self.spec.eval.batch_size, shuffle=False,
                             num_workers=self.spec.model.train.num_workers,
                             pin_memory=self.device.type == "cuda")
        cap = capture_mod.capture(model, list(sites), loader, self.device, interventions,
                                  generator=generator)
        if sites and self.spec.eval.on_nonfinite == "error":
            # activations an experiment will estimate on: refuse NaN/Inf naming the site
            # (with `skip` the estimator's own error still refuses them)
            where = "evaluation" + (" with interventions" if interventions else "")
            capture_mod.check_finite(cap, "error", where)
        return cap

    def _site_outputs(self, model: nn.Module, site: Site) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The full (unpooled) evaluation-set output of ``site`` and the labels, cached per
        model; None when it would exceed ``eval.site_cache_mb``."""
        key = (id(model), site.name)
        fingerprint = _model_fingerprint(model)
        entry = self._site_cache.get(key)
        if entry is not None and entry[0]() is model and entry[1] == fingerprint:
            return entry[2]
        budget = self.spec.eval.site_cache_mb * 2**20
        parts: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        too_big = [False]
        n_total = len(self.eval_set)

        def hook(_m, _inp, out):
            out = out[0] if isinstance(out, (tuple, list)) else out
            if out[0].numel() * out.element_size() * n_total > budget:
                too_big[0] = True
                raise _TooBig
            parts.append(out.detach().clone())

        handles = [get_module(model, site.module).register_forward_hook(hook)]
        result = None
        try:
            with capture_mod.removing(handles), torch.no_grad():
                for x, y in self.loader():
                    model(x.to(self.device, non_blocking=True))
                    labels.append(y.to(self.device))
            result = (torch.cat(parts), torch.cat(labels).long())
        except _TooBig:
            result = None
        self._site_cache[key] = (weakref.ref(model), fingerprint, result)
        return result

    def _suffix_evaluate(self, model, site, interventions, subset, generator) -> Captured | None:
        adapter = self._adapter_for(model)
        suffix = adapter.suffix(model, site) if isinstance(adapter, HasSuffix) else None
        if suffix is None or self.spec.eval.site_cache_mb == 0:
            return None
        cached = self._site_outputs(model, site)
        if cached is None:
            return None
        outputs, labels = cached
        if subset is not None:
            index = torch.as_tensor(subset, device=outputs.device, dtype=torch.long)
            outputs, labels = outputs.index_select(0, index), labels.index_select(0, index)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        batch = self.spec.eval.batch_size
        for _, iv, _ in interventions:
            iv.reset(generator)
        was_training = model.training
        model.eval()
        logits = []
        try:
            with torch.no_grad():
                for _, iv, channels in interventions:
                    if iv.needs_calibration:
                        ch = channels.to(outputs.device)
                        for start in range(0, outputs.shape[0], batch):
                            iv.calibrate(outputs[start:start + batch], site, ch, start)
                for start in range(0, outputs.shape[0], batch):
                    x = outputs[start:start + batch]
                    for _, iv, channels in interventions:
                        x = iv(x, site, channels.to(x.device), start)
                    logits.append(suffix(x).float())
        finally:
            model.train(was_training)
        return Captured(acts={}, labels=labels, logits=torch.cat(logits), sites=[])

    def plugin(self, kind: str, name: str, **params: Any) -> Any:
        validated = self._validate_plugin_params(kind, {"kind": name, **params})
        return self.registry.get(kind, name).factory(validated)

    def rng(self, seed: int, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(seed, purpose))

    def progress(self, message: str) -> None:
        self.log(message)

    # ---------------------------------------------------------------- units
    def end_unit(self) -> list[dict[str, Any]]:
        """Free per-unit caches; return the training rows recorded during the unit."""
        rows, self._training_rows = self._training_rows, []
        self._models.clear()
        self._captures.clear()
        self._site_cache.clear()
        return rows


# -------------------------------------------------------------------- run directory


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("mi-probe", "torch", "timm", "numpy", "polars", "pydantic", "altair"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
        return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def prepare_run_dir(spec: Any, out: Path | None, resume: bool, reports: Path = DEFAULT_REPORTS
                    ) -> tuple[Path, bool]:
    """The run directory and whether it resumes an earlier run of the same spec."""
    digest = spec_hash(spec)
    if out is None and resume:
        parent = reports / spec.name
        candidates = sorted(p for p in parent.glob("*") if (p / "run.json").is_file()) \
            if parent.is_dir() else []
        for cand in reversed(candidates):
            info = json.loads((cand / "run.json").read_text())
            if info.get("spec_hash") == digest and info.get("status") != "complete":
                return cand, True
        raise RunError(f"--resume: no unfinished run of this spec under {parent}")
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = reports / spec.name / stamp
        suffix = 1
        while out.exists():
            out = reports / spec.name / f"{stamp}-{suffix}"
            suffix += 1
    out = Path(out)
    run_json = out / "run.json"
    if run_json.is_file():
        info = json.loads(run_json.read_text())
        if info.get("spec_hash") != digest:
            raise RunError(f"{out} holds a run of another spec (spec hash {info.get('spec_hash')}"
                           f", this one {digest}); choose another --out or delete the folder")
        return out, True
    if out.exists() and any(out.iterdir()):
        raise RunError(f"--out {out} exists and is not an mi-probe run directory; choose an "
                       "empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    return out, False


@dataclass
class RunOutcome:
    run_dir: Path
    index: Path | None
    status: str
    warnings: list[str] = field(default_factory=list)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    #: verdicts of the spec's claims (see checks.py)
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["passed"]]


def _notes(engine: Engine, tables: dict[str, pl.DataFrame]) -> list[str]:
    est = engine.estimator.describe()
    notes = [f"Estimator: {json.dumps(est)}. All MI values are in nats."]
    n = len(engine.eval_set)
    bias = engine.estimator.bias(n, engine.num_classes)
    if bias:
        notes.append(f"Plug-in bias: a per-channel I(T;Y) of an independent channel is about "
                     f"{bias:.4f} nats here (N = {n} evaluation samples, K = "
                     f"{engine.num_classes} classes); values near it are indistinguishable "
                     "from zero (column i_ty_bias).")
    diag = tables.get("diagnostics")
    if diag is not None and diag.height:
        near = diag.filter(pl.col("frac_near_cap") > 0.5) if "frac_near_cap" in diag.columns \
            else diag.head(0)
        if near.height:
            notes.append(f"{near.height} of {diag.height} (site, state, seed) rows have most "
                         "channels within 5% of the log B cap on I(X;T): there H(binned T) "
                         "saturates and I(X;T) differences are not informative "
                         "(tables/diagnostics.parquet).")
        if "n_constant" in diag.columns and diag["n_constant"].sum():
            worst = diag.sort("n_constant", descending=True).row(0, named=True)
            notes.append(f"Constant channels (MI exactly 0) occur: {int(diag['n_constant'].sum())}"
                         f" in total, most at {worst['site']} ({worst['state']}, seed "
                         f"{worst['seed']}: {worst['n_constant']} of {worst['channels']}).")
        if "frac_edge_bins" in diag.columns:
            notes.append(f"On average {diag['frac_edge_bins'].mean():.1%} of samples fall in a "
                         "channel's first or last bin (high values: saturated or sparse "
                         "channels, where uniform bins waste resolution).")
    cap = est.get("i_xt_cap_per_channel_nats")
    if cap:
        notes.append(f"I(X;T) is H(binned T): at most log B = {cap:.3f} nats per channel, and "
                     f"at most log N = {math.log(n):.3f} nats for a joint layer symbol.")
    if isinstance(engine.experiment, HasNotes):
        notes += list(engine.experiment.notes(tables))
    return notes


def _render(run_dir: Path, experiment: Any, tables: dict, meta: dict, notes: list[str],
            spec: Any, pm: Any) -> Path:
    """Figures and index.html, then the spec's plugin report writers, in order."""
    index = _render_index(run_dir, experiment, tables, meta, notes, list(spec.report.formats))
    for params in getattr(spec.report, "writers", []):
        writer = pm.registry.build("reports", params)
        try:
            writer.render(run_dir, tables, meta)
        except MiProbeError:
            raise
        except Exception as exc:  # a plugin's bug: name the writer, keep the run
            raise RunError(f"report writer {params.kind!r} failed: {type(exc).__name__}: "
                           f"{exc} (the run's tables and index.html are written)") from exc
    return index


def _render_index(run_dir: Path, experiment: Any, tables: dict,
                  meta: dict, notes: list[str], formats: list[str]) -> Path:
    from mi_probe import report

    figures = dict(experiment.figures(tables))
    if "training" in tables and tables["training"].height:
        train = tables["training"].drop_nulls("val_acc")
        series = pl.col("regularizer")
        if "act" in train.columns and train["act"].n_unique() > 1:
            series = pl.concat_str([pl.col("act"), pl.col("regularizer")], separator=" / ")
        train = train.with_columns(series=series)
        figures["training_val_acc"] = report.line(train, x="epoch", y="val_acc",
                                                  color="series",
                                                  title="Validation accuracy while training")
    return report.render_run(run_dir, figures, tables, meta, notes=notes,
                             warnings=meta.get("warnings", []), formats=formats,
                             checks=meta.get("checks", []))


def unit_dir(run_dir: Path, unit: str) -> Path:
    return run_dir / "units" / _safe(unit)


def run_analysis_unit(engine: Engine, run_dir: Path, unit: str, plan: Plan) -> float:
    """Compute one experiment unit of ``plan`` and write its tables to
    ``<run>/units/<unit>/``; ``done.json`` is written last and marks the unit finished.
    Returns seconds."""
    folder = unit_dir(run_dir, unit)
    t0 = time.perf_counter()
    n_warn = len(engine.warnings)
    result = dict(engine.experiment.run_unit(engine, unit, plan))
    rows = engine.end_unit()
    if rows:
        result["training"] = pl.DataFrame(rows)
    for name, frame in result.items():
        write_parquet(folder / f"{name}.parquet", frame)
    seconds = time.perf_counter() - t0
    write_json(folder / "done.json", {
        "unit": unit, "seconds": seconds, "warnings": engine.warnings[n_warn:],
        "trained_models": {str(k): v for k, v in engine.trained_info.items()},
        "sites": [vars(site) for site in (engine._sites or [])]})
    return seconds


def _read_unit(run_dir: Path, unit: str) -> tuple[dict[str, pl.DataFrame], dict[str, Any]] | None:
    folder = unit_dir(run_dir, unit)
    done = folder / "done.json"
    if not done.is_file():
        return None
    info = json.loads(done.read_text())
    return {p.stem: pl.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}, info


def job_payload(engine: Engine, stage: str, unit: str, run_dir: Path,
                plan: Plan | None = None) -> dict[str, Any]:
    """What a worker process needs to run one unit on its own (see ``jobs.run_job``):
    for an analysis unit, the experiment's plan too."""
    return {"stage": stage, "unit": unit, "spec": dump_spec(engine.spec), "cwd": os.getcwd(),
            "plan": plan.to_json() if plan is not None else None,
            "source": str(run_dir.resolve() / "spec.yaml"), "plugins": engine.pm.recipe(),
            "run_dir": str(run_dir.resolve()), "cache_dir": str(engine.cache_dir.resolve()),
            "log": str((run_dir / "logs" / f"{stage}-{_safe(unit)}.log").resolve())}


def _check_failures(stage: str, failures: dict[str, str], run_dir: Path) -> None:
    if failures:
        raise UnitsFailedError(
            f"{len(failures)} {stage} unit(s) failed; finished units are kept and a re-run "
            f"with --out {run_dir} computes only the missing ones (worker logs: "
            f"{run_dir / 'logs'})", failures)


def _training_stage(engine: Engine, executor: Any, run_dir: Path | None, dist_ctx: Any,
                    log: Callable[[str], None]) -> None:
    """Train every model the experiment needs that the cache does not hold yet."""
    units = engine.training_units()
    cached = [engine.is_trained(r) for r in units.values()]
    if dist_ctx is not None:
        cached = dist_ctx.main_decides(cached)  # rank 0 decides for everyone
    todo = [label for label, done in zip(units, cached) if not done]
    if len(todo) < len(units):
        log(f"{len(units) - len(todo)} of {len(units)} trained model(s) are in the "
            f"cache {engine.cache_dir / 'models'}")
    if not todo:
        return
    jobs = StageJobs(
        "train", todo,
        run_here=lambda label: engine.run_training(units[label], dist_ctx),
        payload=lambda label: job_payload(engine, "train", label, run_dir),
        entry=_job_entry(), log=log)
    _check_failures("train", executor.run(jobs), run_dir)


def _job_entry() -> Callable[[dict[str, Any]], dict[str, Any]]:
    from mi_probe.jobs import run_job

    return run_job


def run(spec: Any, pm: Any = None, out: Path | None = None, cache_dir: Path | None = None,
        resume: bool = False, log: Callable[[str], None] = print, progress: bool = True,
        reports: Path = DEFAULT_REPORTS) -> RunOutcome:
    """Run a validated spec end to end; returns where the results are.

    Two stages, each a list of independent units handed to the spec's executor: the
    training stage (one unit per model the experiment needs, cached by content) and
    the analysis stage (the experiment's units, written to ``<run>/units/``). Under
    torchrun every rank trains (DDP); rank 0 alone analyses and writes the run."""
    from mi_probe.distributed import init_from_env, launched_world_size
    from mi_probe.plugins import get_plugin_manager

    pm = pm or get_plugin_manager()
    validate_spec(spec, pm.registry)  # refusals that need no data or model, before any work
    dist_ctx = None
    if launched_world_size() > 1:
        if spec.executor.kind != "local":
            raise SpecError(f"under torchrun the executor must be 'local' (found "
                            f"{spec.executor.kind!r}); a Ray executor starts torchrun itself "
                            "when executor.train.processes or gpus asks for several")
        dist_ctx = init_from_env(resolve_device(spec.device).type)
    if dist_ctx is not None and not dist_ctx.is_main:
        return _follower_rank(spec, pm, cache_dir, dist_ctx)
    run_dir, resuming = prepare_run_dir(spec, out, resume, reports)
    started = time.time()
    meta: dict[str, Any] = {
        "name": spec.name, "status": "running", "spec_hash": spec_hash(spec),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "versions": _versions(), "git_commit": _git_commit(), "seeds": list(spec.seeds),
        "argv": sys.argv, "warnings": [], "executor": spec.executor.model_dump(mode="json"),
        "training_processes": dist_ctx.world_size if dist_ctx else 1}
    atomic_write_text(run_dir / "spec.yaml", dump_spec(spec))
    write_json(run_dir / "run.json", meta)
    log(f"run directory: {run_dir}" + ("  (resuming)" if resuming else ""))
    engine = executor = None
    try:
        engine = Engine(spec, pm, cache_dir, log, progress, dist_ctx=dist_ctx)
        executor = pm.registry.build("executors", spec.executor)
        meta.update(device=str(engine.device), data={
            "classes": engine.class_names, "n_train": len(engine.data.train),
            "n_eval": len(engine.eval_set), **engine.data.info},
            estimator=engine.estimator.describe())
        plan = engine.experiment.plan(engine)
        units = list(plan.units)
        todo = [u for u in units if not (unit_dir(run_dir, u) / "done.json").is_file()]
        needs_models = bool(todo)
        if dist_ctx is not None:
            (needs_models,) = dist_ctx.main_decides([needs_models])
        if needs_models:  # a finished run re-run after its cache was cleared trains nothing
            _training_stage(engine, executor, run_dir, dist_ctx, log)
        if dist_ctx is not None:
            import torch.distributed

            torch.distributed.destroy_process_group()
            dist_ctx = None

        if len(todo) < len(units):
            log(f"reused {len(units) - len(todo)} finished unit(s) from {run_dir / 'units'}")

        def here(unit: str) -> None:
            log(f"finished {unit} in {run_analysis_unit(engine, run_dir, unit, plan):.1f}s")

        jobs = StageJobs("analysis", todo, run_here=here,
                         payload=lambda unit: job_payload(engine, "analysis", unit, run_dir,
                                                          plan),
                         entry=_job_entry(), log=log)
        _check_failures("analysis", executor.run(jobs) if todo else {}, run_dir)

        parts, timings, trained, sites = [], {}, {}, None
        for unit in units:
            loaded = _read_unit(run_dir, unit)
            if loaded is None:
                raise RunError(f"unit {unit} reported success but {unit_dir(run_dir, unit)} "
                               "has no done.json; is the run directory on a path every "
                               "worker shares?")
            tables_of_unit, info = loaded
            parts.append(tables_of_unit)
            timings[unit] = info.get("seconds")
            meta["warnings"] += info.get("warnings", [])
            for seed, variants in info.get("trained_models", {}).items():
                trained.setdefault(seed, {}).update(variants)
            sites = sites or info.get("sites")
        for seed, variants in engine.trained_info.items():
            trained.setdefault(str(seed), {}).update(variants)
        tables = concat_tables(parts)
        tables.update(engine.experiment.finalize(engine, tables))
        for name, frame in tables.items():
            check_schema(name, frame)
            write_parquet(run_dir / "tables" / f"{name}.parquet", frame)
        meta.update(trained_models=trained,
                    sites=[vars(s) for s in engine._sites] if engine._sites else (sites or []),
                    timings={"units_seconds": timings, "total_seconds": time.time() - started},
                    status="complete",
                    finished=_dt.datetime.now().isoformat(timespec="seconds"))
        notes = _notes(engine, tables)
        meta["notes"] = notes
        meta["checks"] = evaluate_checks(list(spec.checks), tables)
        write_json(run_dir / "run.json", meta)
        index = _render(run_dir, engine.experiment, tables, meta, notes, spec, pm)
        return RunOutcome(run_dir, index, "complete", meta["warnings"], tables, meta["checks"])
    except KeyboardInterrupt:
        meta.update(status="interrupted", finished=_dt.datetime.now().isoformat(timespec="seconds"))
        write_json(run_dir / "run.json", meta)
        raise
    except MiProbeError as exc:
        meta.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, UnitsFailedError):
            meta["failed_units"] = exc.failures
        write_json(run_dir / "run.json", meta)
        raise
    except Exception as exc:
        meta.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc())
        write_json(run_dir / "run.json", meta)
        raise
    finally:
        if executor is not None:
            executor.close()


def _follower_rank(spec: Any, pm: Any, cache_dir: Path | None, dist_ctx: Any) -> RunOutcome:
    """A torchrun rank other than 0: help train, write nothing, leave."""
    import torch.distributed

    from mi_probe.builtin.executors import LocalExecutor, LocalParams

    try:
        engine = Engine(spec, pm, cache_dir, log=lambda _m: None, progress=False,
                        dist_ctx=dist_ctx)
        engine.experiment.plan(engine)
        (needs_models,) = dist_ctx.main_decides([False])  # rank 0's answer
        if needs_models:
            _training_stage(engine, LocalExecutor(LocalParams()), None, dist_ctx,
                            lambda _m: None)
    finally:
        torch.distributed.destroy_process_group()
    return RunOutcome(None, None, f"trained as rank {dist_ctx.rank}")


def rerender(run_dir: Path, pm: Any = None) -> Path:
    """Redraw figures and index.html of a finished run from its tables and spec."""
    from mi_probe.plugins import get_plugin_manager
    from mi_probe.spec import load_spec

    pm = pm or get_plugin_manager()
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise RunError(f"{run_dir} is not an mi-probe run directory (no run.json)")
    spec = load_spec(run_dir / "spec.yaml", pm=pm)
    meta = json.loads((run_dir / "run.json").read_text())
    tables = read_tables(run_dir / "tables")
    experiment = pm.registry.build("experiments", spec.experiment)
    meta["checks"] = evaluate_checks(list(spec.checks), tables)
    return _render(run_dir, experiment, tables, meta, meta.get("notes", []), spec, pm)
