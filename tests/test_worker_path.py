"""Every registered experiment kind runs the same through the worker path.

A worker (``runner.worker.run_job``: the body of a Ray task or a torchrun rank) builds a fresh
engine and a fresh experiment and calls ``run_unit`` with the plan from its payload,
never ``plan`` itself. State an experiment kept between ``plan`` and ``run_unit`` is
lost there (``estimator_sweep`` once failed with ``AttributeError: _estimators``). Each
kind's spec from ``specs/`` runs on the tiny profile locally; then every unit is
recomputed from a payload, and its tables must equal the local run's.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml

from mi_probe import cli
from mi_probe._core.runner import worker
from mi_probe._core.runner.context import Engine
from mi_probe._core.runner.rundir import unit_dir
from mi_probe._core.runner.units import job_payload
from mi_probe._core.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
#: wall-clock columns differ between any two runs
TIMING = ("seconds", "time", "wall")


def spec_by_kind() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        kind = yaml.safe_load(path.read_text())["experiment"]["kind"]
        out.setdefault(kind, path)
    return out


SPECS = spec_by_kind()


#: experiment kinds whose example spec needs a plugin estimator, so it lives with that
#: plugin (validated by the plugin's tests) and not in specs/: unpooled_mi measures whole
#: layers, which no built-in estimator can (it needs VectorLabelMI: the lmi plugin)
PLUGIN_SPECS = {"unpooled_mi": ROOT / "plugins" / "mi-probe-lmi" / "specs" / "unpooled_mi.yaml"}


def test_every_registered_experiment_kind_has_a_spec_here(pm):
    missing = set(pm.registry.entries("experiments")) - set(SPECS) - set(PLUGIN_SPECS)
    assert not missing, f"add a spec to specs/ for every built-in experiment kind: {missing}"
    for kind, path in PLUGIN_SPECS.items():
        assert yaml.safe_load(path.read_text())["experiment"]["kind"] == kind


def _comparable(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.drop([c for c in frame.columns if any(t in c for t in TIMING)])


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_units_recomputed_by_a_worker_equal_the_local_run(kind, pm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    local = tmp_path / "local"
    code = cli.main(["run", str(SPECS[kind]), "--profile", "tiny", "--out", str(local),
                     "--cache-dir", str(cache), "--no-progress"], pm=pm)
    assert code in (0, 3), f"local run of {kind} failed"  # 3: a claim failed (tiny models)
    spec = load_spec(local / "spec.yaml", pm=pm)
    engine = Engine(spec, pm, cache, log=lambda _m: None, progress=False)
    plan = engine.experiment.plan(engine)
    assert plan.units, kind
    remote = tmp_path / "remote"
    (remote / "units").mkdir(parents=True)
    (remote / "spec.yaml").write_text((local / "spec.yaml").read_text())
    for unit in plan.units:
        receipt = worker.run_job(job_payload(engine, "analysis", unit, remote, plan))
        assert receipt["unit"] == unit
        here = sorted(unit_dir(local, unit).glob("*.parquet"))
        there = sorted(unit_dir(remote, unit).glob("*.parquet"))
        assert [p.name for p in here] == [p.name for p in there] and here, (kind, unit)
        for a, b in zip(here, there):
            frame_a, frame_b = _comparable(pl.read_parquet(a)), _comparable(pl.read_parquet(b))
            assert frame_a.equals(frame_b), f"{kind} {unit} {a.name} differs in a worker"


def test_a_payload_unit_outside_the_plan_is_refused(pm, tmp_path, monkeypatch, tiny_spec_file):
    from mi_probe.errors import RunError
    from mi_probe.interfaces import Plan

    monkeypatch.chdir(tmp_path)
    spec = load_spec(tiny_spec_file(), pm=pm)
    engine = Engine(spec, pm, tmp_path / "cache", log=lambda _m: None, progress=False)
    payload = job_payload(engine, "analysis", "seed=7", tmp_path / "run", Plan(("seed=0",)))
    with pytest.raises(RunError, match=r"analysis unit seed=7 is not in the plan \(seed=0\)"):
        worker.run_job(payload)
