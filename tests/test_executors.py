"""Executors: the executor block of a spec, and a seeds sweep on a local Ray instance
with 2 CPUs that must give the local executor's tables, survive a unit that fails
once, report a unit whose worker is killed twice by name, and complete only the
missing units on a re-run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import polars as pl
import pytest

from mi_probe._core.runner.driver import run
from mi_probe._core.runner.rundir import spec_hash
from mi_probe.errors import RunError, SpecError, UnitsFailedError
from mi_probe._core.plugins import get_plugin_manager
from mi_probe._core.spec import load_spec, load_spec_text

PLUGINS = Path(__file__).parent / "plugins"

SWEEP = """\
name: sweep
seeds: [0, 1, 2]
data: {kind: synthetic, n_classes: 3, n_train: 64, n_val: 45, image_size: 16, noise: 0.4}
model:
  arch: test_resnet
  weights: train
  train: {epochs: 2, batch_size: 16, lr: 0.02}
sites: {include: ["*.post_add"]}
estimator: {kind: histogram, bins: 8}
eval: {batch_size: 45}
report: {formats: [html]}
experiment: {kind: faulty_layer_mi, marker: MARKER, fail_unit: "seed=1", null_draws: 1}
"""

RAY = {"kind": "ray", "address": "local", "num_cpus": 2}


def _ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("MI_PROBE_REQUIRE_RAY") == "1":
            raise
        return False
    return True


needs_ray = pytest.mark.skipif(not _ray_available(), reason="the [ray] extra is not installed")


@pytest.fixture(scope="module")
def plugin_pm():
    """A manager with the faulty test experiment, loadable by name in Ray workers."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(PLUGINS))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS),
                                                              os.environ.get("PYTHONPATH")])))
        yield get_plugin_manager(["faulty_experiment"], autoload=False)


@pytest.fixture(scope="module")
def sweep(plugin_pm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")

    def spec(marker: Path, executor: dict | None = None, **experiment):
        text = SWEEP.replace("MARKER", str(marker))
        overrides = [f"experiment.{k}={v}" for k, v in experiment.items()]
        if executor is not None:
            overrides += [f"executor={json.dumps(executor)}"]
        return load_spec_text(text, "sweep.yaml", overrides, pm=plugin_pm)

    return folder, spec


@pytest.fixture(scope="module")
def local_tables(sweep, plugin_pm, one_thread):
    """The sweep on the local executor, one torch thread (a Ray task with 1 CPU has one)."""
    folder, spec = sweep
    outcome = run(spec(folder / "no-marker"), plugin_pm, out=folder / "local",
                  cache_dir=folder / "cache-local", log=lambda m: None, progress=False)
    return outcome.tables


def _comparable(frame: pl.DataFrame) -> pl.DataFrame:
    # wall clock, and the run metadata column naming the run (its folder and start time)
    frame = frame.drop([c for c in frame.columns if c in ("seconds", "run_id")])
    return frame.sort(frame.columns)


def _assert_same_tables(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert _comparable(a[name]).equals(_comparable(b[name])), name


# ----------------------------------------------------------------------------- the spec


def test_executor_defaults_to_local_and_does_not_change_the_run_identity(pm, tiny_spec_file):
    path = tiny_spec_file()
    local = load_spec(path, pm=pm)
    assert local.executor.kind == "local"
    ray = load_spec(path, pm=pm, executor="ray")
    assert ray.executor.kind == "ray" and ray.executor.address == "local"
    assert ray.executor.max_retries == 1 and ray.executor.train.process_count() == 1
    assert spec_hash(local) == spec_hash(ray)
    # --executor keeps a block of the same kind, so --set can refine it
    tuned = load_spec(tiny_spec_file("executor: {kind: ray, address: auto}\n", name="r.yaml"),
                      ["executor.train.gpus=2"], pm=pm, executor="ray")
    assert tuned.executor.address == "auto" and tuned.executor.train.process_count() == 2


@pytest.mark.parametrize("block,message", [
    ("{kind: rya}", r"executor.kind: unknown executor kind 'rya'.*did you mean 'ray'"),
    ("{kind: ray, address: 'http://head'}",
     r"executor.address: .*expected auto, local, ray://host:port or host:port; got 'http://head'"),
    ("{kind: ray, analysis: {processes: 2}}", "analysis.processes must be 1"),
    ("{kind: ray, train: {gpus: -1}}", r"executor.train.gpus: .*greater than or equal to 0"),
    ("{kind: local, address: auto}", r"executor.address: unknown field"),
])
def test_bad_executor_blocks_are_located_errors(pm, tiny_spec_file, block, message):
    with pytest.raises(SpecError, match=message):
        load_spec(tiny_spec_file(f"executor: {block}\n"), pm=pm)


def test_missing_ray_is_a_clear_error(pm, tiny_spec_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    spec = load_spec(tiny_spec_file(), pm=pm, executor="ray")
    with pytest.raises(RunError, match=r"executor 'ray' needs Ray, .*pip install 'mi-probe\[ray\]'"):
        run(spec, pm, out=tmp_path / "r", cache_dir=tmp_path / "c", log=lambda m: None,
            progress=False)


def test_plugins_registered_as_objects_cannot_be_shipped_to_workers():
    from mi_probe.errors import PluginError

    class Inline:
        pass

    pm = get_plugin_manager([Inline()], autoload=False)
    with pytest.raises(PluginError, match="registered as objects, not importable modules"):
        pm.recipe()
    assert get_plugin_manager(["mi_probe.builtin.regularizers.hsic"], autoload=False).recipe() == {
        "extra_plugins": [], "autoload": False}  # already registered as a built-in


# ----------------------------------------------------------------------------- on Ray


@needs_ray
@pytest.mark.ray
def test_ray_sweep_retries_a_failed_unit_and_matches_the_local_executor(
        sweep, plugin_pm, local_tables):
    import ray

    folder, spec = sweep
    marker = folder / "transient"
    marker.write_text("fail once")
    messages: list[str] = []
    outcome = run(spec(marker, RAY, mode="raise", failures=1), plugin_pm, out=folder / "ray",
                  cache_dir=folder / "cache-ray", log=messages.append, progress=False)
    assert outcome.status == "complete"
    assert len((folder / "transient.attempts").read_text().splitlines()) == 1  # one retry
    assert not ray.is_initialized()  # the executor stops the instance it started
    assert "ray: submitted 3 train unit(s) (1 CPU, 0 GPU each)" in messages
    assert "ray: submitted 3 analysis unit(s) (1 CPU, 0 GPU each)" in messages
    assert not any("failed after" in m for m in messages)
    _assert_same_tables(local_tables, outcome.tables)
    logs = sorted(p.name for p in (folder / "ray" / "logs").iterdir())
    assert "analysis-seed=1.log" in logs and "train-train_seed=2.log" in logs
    failed_attempt = (folder / "ray" / "logs" / "analysis-seed=1.log").read_text()
    assert "Traceback" in failed_attempt and "RuntimeError: planted failure of seed=1" in failed_attempt
    info = json.loads((folder / "ray" / "run.json").read_text())
    assert info["executor"]["kind"] == "ray" and set(info["trained_models"]) == {"0", "1", "2"}


@needs_ray
@pytest.mark.ray
@needs_ray
@pytest.mark.ray
def test_ray_task_trains_with_ddp_and_refuses_requests_no_node_can_meet(sweep, plugin_pm):
    folder, _ = sweep
    text = SWEEP.replace("MARKER", str(folder / "none"))

    def spec(train: dict):
        executor = dict(RAY, train=train)
        return load_spec_text(text, "sweep.yaml", ["seeds=[0]", f"executor={json.dumps(executor)}"],
                              pm=plugin_pm)

    out, cache = folder / "ray-ddp", folder / "cache-ray-ddp"
    messages: list[str] = []
    outcome = run(spec({"cpus": 2, "processes": 2}), plugin_pm, out=out, cache_dir=cache,
                  log=messages.append, progress=False)
    assert outcome.status == "complete"
    assert "ray: submitted 1 train unit(s) (2 CPU, 0 GPU, 2 processes each)" in messages
    (model_dir,) = [p for p in (cache / "models").iterdir() if p.is_dir()]  # not the .lock
    assert json.loads((model_dir / "training.json").read_text())["processes"] == 2
    log = (out / "logs" / "train-train_seed=0.log").read_text()
    assert "-m torch.distributed.run --standalone --nproc_per_node=2 -m mi_probe._core.runner.worker" in log
    with pytest.raises(RunError, match=r"executor.train asks for 4 CPU\(s\) per unit but the "
                       r"largest node of the Ray cluster has 2; a unit runs on one node"):
        run(spec({"cpus": 4}), plugin_pm, out=folder / "too-big", cache_dir=folder / "c-big",
            log=lambda m: None, progress=False)


@needs_ray
@pytest.mark.ray
def test_killed_worker_is_reported_by_name_and_a_rerun_completes_only_that_unit(
        sweep, plugin_pm, local_tables):
    folder, spec = sweep
    marker = folder / "kill"
    marker.write_text("kill twice")
    out, cache = folder / "killed", folder / "cache-killed"
    faulty = spec(marker, RAY, mode="kill", failures=2)
    with pytest.raises(UnitsFailedError, match=r"1 analysis unit\(s\) failed; finished units "
                       r"are kept .*\n  seed=1: failed after 2 attempt\(s\): .*(died|crash)"):
        run(faulty, plugin_pm, out=out, cache_dir=cache, log=lambda m: None, progress=False)
    pids = (folder / "kill.attempts").read_text().split()
    assert len(pids) == 2 and len(set(pids)) == 2  # retried once, in a fresh worker
    done = {u: (out / "units" / u / "done.json").is_file() for u in ("seed=0", "seed=1", "seed=2")}
    assert done == {"seed=0": True, "seed=1": False, "seed=2": True}
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and list(info["failed_units"]) == ["seed=1"]
    before = {u: (out / "units" / u / "done.json").read_text() for u in ("seed=0", "seed=2")}

    marker.unlink()
    messages: list[str] = []
    outcome = run(faulty, plugin_pm, out=out, cache_dir=cache, log=messages.append,
                  progress=False)
    assert outcome.status == "complete"
    assert "3 of 3 trained model(s) are in the cache " + str(cache / "models") in messages
    assert f"reused 2 finished unit(s) from {out / 'units'}" in messages
    assert "ray: submitted 1 analysis unit(s) (1 CPU, 0 GPU each)" in messages
    assert not any("submitted" in m and "train unit" in m for m in messages)
    for unit, text in before.items():  # finished units were not recomputed
        assert (out / "units" / unit / "done.json").read_text() == text
    _assert_same_tables(local_tables, outcome.tables)


def test_the_cluster_script_overrides_validate_on_every_paper_spec(pm, capsys, tmp_path):
    """cluster/paper-protocol.sh passes these --set options to every paper spec."""
    import re

    from mi_probe import cli

    root = Path(__file__).resolve().parents[1]
    script = (root / "cluster" / "paper-protocol.sh").read_text()
    sets = re.findall(r'--set "?([a-z_.]+=[^"\s]+)"?', script)
    assert {s.split("=")[0] for s in sets} >= {"executor.address", "executor.train.gpus",
                                               "data.root"}
    imagenette = tmp_path / "imagenette2"  # validate refuses a data.root that is not there
    for split in ("train", "val"):
        for name in ("n01440764", "n02102040"):
            (imagenette / split / name).mkdir(parents=True)
    values = {"$ADDRESS": "auto", "$IMAGENETTE": str(imagenette)}
    overrides = [re.sub(r"\$[A-Z]+", lambda m: values[m.group(0)], s) for s in sets]
    specs = re.search(r'SPECS=\$\{SPECS:-"([^"]+)"\}', script).group(1).split()
    argv = ["validate", *[str(root / s) for s in specs], "--executor", "ray"]
    for item in overrides:
        argv += ["--set", item]
    assert cli.main(argv, pm=pm) == 0, capsys.readouterr().err


def test_two_requests_for_one_model_train_it_once(pm, tiny_spec_file, tmp_path):
    from mi_probe._core.runner.context import Engine
    from mi_probe._core.runner.driver import training_stage as _training_stage
    from mi_probe.interfaces import TrainingRequest

    engine = Engine(load_spec(tiny_spec_file(), pm=pm), pm, tmp_path / "cache",
                    log=lambda m: None, progress=False)
    # the spec has no regularisers, so "reg=none" is the same model as the default
    engine.experiment.trainings = lambda ctx: [TrainingRequest(0),
                                               TrainingRequest(0, regularizers=[])]
    assert [r.label for r in engine.training_requests()] == ["train/seed=0",
                                                             "train/seed=0,reg=none"]

    class Recorder:
        units: list[str] = []

        def run(self, jobs):
            self.units = list(jobs.units)
            return {}

    recorder = Recorder()
    _training_stage(engine, recorder, tmp_path, None, lambda m: None)
    assert recorder.units == ["train/seed=0"]


def test_under_torchrun_the_executor_must_be_local(pm, tiny_spec_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    spec = load_spec(tiny_spec_file(), pm=pm, executor="ray")
    with pytest.raises(SpecError, match="under torchrun the executor must be 'local' "
                       r"\(found 'ray'\)"):
        run(spec, pm, out=tmp_path / "r", cache_dir=tmp_path / "c", log=lambda m: None)
