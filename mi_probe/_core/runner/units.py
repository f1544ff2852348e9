"""The pieces of a stage that run wherever a unit runs: one analysis unit, the payload a
worker process needs to run a unit on its own, and the report of failed units.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import polars as pl

from mi_probe.errors import UnitsFailedError
from mi_probe.interfaces import Plan
from mi_probe._core.runner.rundir import safe_name, unit_dir
from mi_probe._core.spec import dump_spec
from mi_probe._core.tables import write_json, write_parquet


def run_analysis_unit(engine: Any, run_dir: Path, unit: str, plan: Plan) -> float:
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
        "sites": [vars(site) for site in (engine.resolved_sites or [])]})
    return seconds


def job_payload(engine: Any, stage: str, unit: str, run_dir: Path,
                plan: Plan | None = None) -> dict[str, Any]:
    """What a worker process needs to run one unit on its own (see ``worker.run_job``):
    for an analysis unit, the experiment's plan too."""
    return {"stage": stage, "unit": unit, "spec": dump_spec(engine.spec), "cwd": os.getcwd(),
            "plan": plan.to_json() if plan is not None else None,
            "source": str(run_dir.resolve() / "spec.yaml"), "plugins": engine.pm.recipe(),
            "run_dir": str(run_dir.resolve()), "cache_dir": str(engine.cache_dir.resolve()),
            "log": str((run_dir / "logs" / f"{stage}-{safe_name(unit)}.log").resolve())}


def check_failures(stage: str, failures: dict[str, str], run_dir: Path | None) -> None:
    """Raise UnitsFailedError naming the failed units and how to finish the run (a
    torchrun follower rank has no run directory: the re-run is the same command)."""
    if failures:
        again = (f"a re-run with --out {run_dir} computes only the missing ones (worker "
                 f"logs: {run_dir / 'logs'})" if run_dir is not None else
                 "the same command again computes only the missing ones")
        raise UnitsFailedError(f"{len(failures)} {stage} unit(s) failed; finished units are "
                               f"kept and {again}", failures)
