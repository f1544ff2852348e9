"""run(spec): validate -> build data and models -> training stage -> analysis stage ->
merge tables -> claims -> report.

Each stage is a list of independent units handed to the spec's executor, which runs
them here or in worker processes (:mod:`.worker`). Finished units are kept, so an
interrupted run resumes; trained models live in the shared cache and resume from their
last epoch checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, cast

import polars as pl

from mi_probe._core.claims import evaluate_checks
from mi_probe.errors import MiProbeError, RunError, SpecError, UnitsFailedError
from mi_probe.interfaces import DeclaresTables, StageJobs, TableSchema
from mi_probe._core.models import resolve_device
from mi_probe._core.runner.context import Engine
from mi_probe._core.runner.rendering import render, run_notes
from mi_probe._core.runner.rundir import (DEFAULT_REPORTS, RunLock, check_writable, git_commit,
                                    is_unit_done, prepare_run_dir, read_unit, remember_run,
                                    resolve_cache_dir, spec_hash, unit_dir, versions)
from mi_probe._core.runner.units import check_failures, job_payload, run_analysis_unit
from mi_probe._core.runner.worker import run_job
from mi_probe._core.spec import dump_spec
from mi_probe._core.validation import Validated, validate
from mi_probe._core.files import atomic_write_text
from mi_probe._core.tables import (CORE_SCHEMAS, RUN_COLUMNS, check_schema, concat_tables,
                             read_tables, run_columns, with_run_columns, write_json,
                             write_parquet)


@dataclass
class RunOutcome:
    #: None on a torchrun follower rank (rank 0 writes the run)
    run_dir: Path | None
    index: Path | None
    status: str
    warnings: list[str] = field(default_factory=list)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    #: verdicts of the spec's claims (see checks.py)
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["passed"]]


def table_schemas(experiment: Any) -> dict[str, TableSchema | Sequence[str]]:
    """Required columns of every table a run of ``experiment`` may write: the core's
    (training, evaluation) and the experiment's own declaration."""
    declared: Mapping[str, TableSchema | Sequence[str]] = (
        experiment.table_schemas if isinstance(experiment, DeclaresTables) else {})
    return {**CORE_SCHEMAS, **declared}


def undeclared_columns(name: str, frame: pl.DataFrame,
                       schemas: Mapping[str, Any]) -> list[str]:
    """A warning when a table has columns its closed schema does not declare (claims
    about them would be refused before a run). The run metadata columns
    (``tables.RUN_COLUMNS``) are declared for every table at once and never count."""
    schema = schemas.get(name)
    if schema is None or isinstance(schema, (list, tuple)) or getattr(schema, "open", True):
        return []
    extra = [c for c in frame.columns if c not in schema.columns and c not in RUN_COLUMNS]
    if not extra:
        return []
    return [f"table {name!r} has columns its experiment's schema does not declare: {extra} "
            "(claims about them are refused before a run; declare them as optional)"]


def stale_units(run_dir: Path, units: Sequence[str],
                schemas: Mapping[str, Any]) -> list[str]:
    """Finished units whose tables predate ``rel_depth``: a table with ``depth`` but no
    ``rel_depth`` although its schema declares it. Such units numbered ``depth`` among
    the selected sites, not among all the model's sites, so merging them with new units
    would mix two meanings of depth; the run computes them again. Reads parquet
    schemas only."""
    stale = []
    for unit in units:
        folder = unit_dir(run_dir, unit)
        if not is_unit_done(run_dir, unit):
            continue
        for path in sorted(folder.glob("*.parquet")):
            schema = schemas.get(path.stem)
            declared = getattr(schema, "columns", schema) or ()
            if "rel_depth" not in declared:
                continue
            try:
                columns = pl.read_parquet_schema(path)
            except (pl.exceptions.PolarsError, OSError):
                continue  # an unreadable unit table is reported where it is read
            if "depth" in columns and "rel_depth" not in columns:
                stale.append(unit)
                break
    return stale


def training_stage(engine: Engine, executor: Any, run_dir: Path | None, dist_ctx: Any,
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
        # a follower rank (run_dir None) runs its units here, never through a payload
        payload=lambda label: job_payload(engine, "train", label, cast(Path, run_dir)),
        entry=run_job, log=log)
    check_failures("train", executor.run(jobs), run_dir)


def run(spec: Any, pm: Any = None, out: Path | None = None, cache_dir: Path | None = None,
        resume: bool = False, log: Callable[[str], None] = print, progress: bool = True,
        reports: Path = DEFAULT_REPORTS) -> RunOutcome:
    """Run a spec (or a :class:`~mi_probe._core.validation.Validated` one) end to end;
    returns where the results are.

    Two stages, each a list of independent units handed to the spec's executor: the
    training stage (one unit per model the experiment needs, cached by content) and
    the analysis stage (the experiment's units, written to ``<run>/units/``). Under
    torchrun every rank trains (DDP); rank 0 alone analyses and writes the run."""
    from mi_probe._core.distributed import init_from_env, launched_world_size
    from mi_probe._core.plugins import get_plugin_manager

    pm = pm or get_plugin_manager()
    # every refusal that needs no data or weights, before any work (about a second);
    # the estimator, experiment and regularisers built here are the run's
    validated = spec if isinstance(spec, Validated) else validate(spec, pm)
    spec = validated.spec
    dist_ctx = None
    if launched_world_size() > 1:
        if spec.executor.kind != "local":
            raise SpecError(f"under torchrun the executor must be 'local' (found "
                            f"{spec.executor.kind!r}); a Ray executor starts torchrun itself "
                            "when executor.train.processes or gpus asks for several")
        dist_ctx = init_from_env(resolve_device(spec.device).type)
    if dist_ctx is not None and not dist_ctx.is_main:
        return _follower_rank(spec, pm, cache_dir, dist_ctx)
    if cache_dir is None and Path("reports/.cache/models").is_dir() \
            and "MI_PROBE_CACHE" not in os.environ:
        log(f"note: models cached under {Path('reports/.cache').resolve()} (the default "
            "before version 0.2) are not used; the cache is now the user cache folder. "
            "Set MI_PROBE_CACHE=reports/.cache (or --cache-dir) to keep using them")
    cache_dir = resolve_cache_dir(cache_dir)
    run_dir, resuming = prepare_run_dir(spec, out, resume, reports, cache_dir)
    check_writable(run_dir)
    run_dir = run_dir.absolute()
    with RunLock(run_dir), terminate_as_interrupt(), _in_run_folder(run_dir, resuming, log):
        remember_run(cache_dir, spec, run_dir)
        return _run_locked(validated, pm, run_dir, resuming, cache_dir, log, progress,
                           dist_ctx)


@contextmanager
def _in_run_folder(run_dir: Path, resuming: bool, log: Callable[[str], None]):
    """A resumed run works in the folder it was started from, so the spec's relative
    paths (data.root, weights) mean what they meant then."""
    here = Path.cwd()
    started_in = None
    if resuming and (run_dir / "run.json").is_file():
        started_in = json.loads((run_dir / "run.json").read_text()).get("cwd")
    if started_in is None or Path(started_in) == here or not Path(started_in).is_dir():
        yield
        return
    log(f"resuming in the folder the run was started from, {started_in} (relative paths "
        "of the spec mean what they meant there)")
    os.chdir(started_in)
    try:
        yield
    finally:
        os.chdir(here)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, ``kill``): handled like Ctrl-C, so the run is marked
    interrupted and keeps its finished units."""


@contextmanager
def terminate_as_interrupt():
    """Raise :class:`Terminated` in the main thread on SIGTERM while the run lasts."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_locked(validated: Validated, pm: Any, run_dir: Path, resuming: bool,
                cache_dir: Path, log: Callable[[str], None], progress: bool,
                dist_ctx: Any) -> RunOutcome:
    spec = validated.spec
    started = time.time()
    meta: dict[str, Any] = {
        "name": spec.name, "status": "running", "spec_hash": spec_hash(spec),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "versions": versions(), "git_commit": git_commit(), "seeds": list(spec.seeds),
        "argv": sys.argv, "cwd": os.getcwd(), "warnings": [],
        "executor": spec.executor.model_dump(mode="json"),
        "training_processes": dist_ctx.world_size if dist_ctx else 1}
    atomic_write_text(run_dir / "spec.yaml", dump_spec(spec))
    write_json(run_dir / "run.json", meta)
    log(f"run directory: {run_dir}" + ("  (resuming)" if resuming else ""))
    engine = executor = trackers = None
    try:
        engine = Engine(spec, pm, cache_dir, log, progress, dist_ctx=dist_ctx,
                        validated=validated)
        executor = pm.registry.build("executors", spec.executor)
        meta.update(device=str(engine.device), data={
            "classes": engine.class_names, "n_train": len(engine.data.train),
            "n_eval": len(engine.eval_set),
            **({"checkpoint_selection": "held-back training images"
                if engine.data.selection is not None else "the evaluation images"}
               if spec.model.weights == "train" else {}),
            **engine.data.info},
            estimator=engine.estimator.describe())
        meta["warnings"] += list(engine.data.warnings)  # e.g. a class with one image
        from mi_probe._core.report import describe_estimator
        from mi_probe._core.tracking import start_trackers

        # every table says which run it is from (docs/compare.md), so tables of several
        # runs concatenate and still tell apart; the sinks are told the same values
        stamp = run_columns(spec.model_dump(mode="json"), run_dir, meta,
                            describe_estimator(meta["estimator"], short=True))
        trackers = start_trackers(spec, pm.registry, run_dir, stamp, log)
        engine.models.trackers = trackers  # training epochs reach the sinks as they end
        plan = engine.experiment.plan(engine)
        units = list(plan.units)
        if resuming:
            stale = stale_units(run_dir, units, table_schemas(engine.experiment))
            if stale:
                log(f"recomputing {len(stale)} finished unit(s) written before depth became "
                    f"the model's own site index (no rel_depth column): {', '.join(stale)}")
                for unit in stale:
                    (unit_dir(run_dir, unit) / "done.json").unlink(missing_ok=True)
        todo = [u for u in units if not is_unit_done(run_dir, u)]
        needs_models = bool(todo)
        if dist_ctx is not None:
            (needs_models,) = dist_ctx.main_decides([needs_models])
        if needs_models:  # a finished run re-run after its cache was cleared trains nothing
            training_stage(engine, executor, run_dir, dist_ctx, log)
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
                         entry=run_job, log=log)
        check_failures("analysis", executor.run(jobs) if todo else {}, run_dir)

        parts: list[dict[str, pl.DataFrame]] = []
        timings: dict[str, float | None] = {}
        trained: dict[Any, Any] = {}
        sites: Any = None
        for unit in units:
            loaded = read_unit(run_dir, unit)
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
        # existing columns are kept as they are (with_run_columns adds only missing ones)
        tables = {name: with_run_columns(frame, stamp) for name, frame in tables.items()}
        meta["run_columns"] = stamp
        schemas = table_schemas(engine.experiment)
        for name, frame in tables.items():
            check_schema(name, frame, schemas)
            meta["warnings"] += undeclared_columns(name, frame, schemas)
            write_parquet(run_dir / "tables" / f"{name}.parquet", frame)
        here_sites = engine.resolved_sites
        meta.update(trained_models=trained,
                    sites=[vars(s) for s in here_sites] if here_sites else (sites or []),
                    timings={"units_seconds": timings, "total_seconds": time.time() - started},
                    status="complete",
                    finished=_dt.datetime.now().isoformat(timespec="seconds"))
        notes = run_notes(engine.estimator, engine.experiment, len(engine.eval_set),
                          engine.num_classes, tables)
        meta["notes"] = notes
        meta["checks"] = evaluate_checks(list(spec.checks), tables)
        write_json(run_dir / "run.json", meta)
        index = render(run_dir, engine.experiment, tables, meta, notes, spec, pm)
        if trackers:
            trackers.results(run_dir, tables)
        return RunOutcome(run_dir, index, "complete", meta["warnings"], tables, meta["checks"])
    except (KeyboardInterrupt, SystemExit) as exc:
        # SystemExit: Ray's own SIGTERM handler (installed by ray.init, after ours) exits
        meta.update(status="interrupted", finished=_dt.datetime.now().isoformat(timespec="seconds"))
        write_json(run_dir / "run.json", meta)
        interrupt = exc if isinstance(exc, KeyboardInterrupt) else Terminated(f"exit {exc.code}")
        setattr(interrupt, "run_dir", run_dir)  # the CLI's hint names it
        if interrupt is exc:
            raise
        raise interrupt from None
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
        if trackers:
            trackers.close(meta["status"])


def _follower_rank(spec: Any, pm: Any, cache_dir: Path | None, dist_ctx: Any) -> RunOutcome:
    """A torchrun rank other than 0: help train, write nothing, leave."""
    import torch.distributed

    try:
        engine = Engine(spec, pm, cache_dir, log=lambda _m: None, progress=False,
                        dist_ctx=dist_ctx)
        engine.experiment.plan(engine)
        (needs_models,) = dist_ctx.main_decides([False])  # rank 0's answer
        if needs_models:
            local = pm.registry.get("executors", "local")
            training_stage(engine, local.factory(local.params_model()), None, dist_ctx,
                           lambda _m: None)
    finally:
        torch.distributed.destroy_process_group()
    return RunOutcome(None, None, f"trained as rank {dist_ctx.rank}")


def rerender(run_dir: Path, pm: Any = None) -> Path:
    """Redraw figures and index.html of a finished run from its tables and spec."""
    from mi_probe._core.plugins import get_plugin_manager
    from mi_probe._core.spec import load_spec

    pm = pm or get_plugin_manager()
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise RunError(f"{run_dir} is not an mi-probe run directory (no run.json)")
    spec = load_spec(run_dir / "spec.yaml", pm=pm)
    meta = json.loads((run_dir / "run.json").read_text())
    tables = read_tables(run_dir / "tables")
    experiment = pm.registry.build("experiments", spec.experiment)
    meta["checks"] = evaluate_checks(list(spec.checks), tables)
    return render(run_dir, experiment, tables, meta, meta.get("notes", []), spec, pm)
