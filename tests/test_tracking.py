"""Live tracking: sinks receive every training epoch as it ends (before the next one
starts), cached trainings are replayed, the finished run's tables and figures follow;
TensorBoard event files and an MLflow store are read back offline."""

from __future__ import annotations

import polars as pl
import pytest

import mi_probe
from mi_probe._core.tracking import Trackers, epoch_values, training_label
from mi_probe.errors import PluginError
from mi_probe.plugin import hookimpl

from conftest import TINY_SPEC  # noqa: E402

#: the shared tiny spec with the experiment left to each test
SPEC = TINY_SPEC.replace("name: tiny", "name: tracked").replace(
    "experiment: {kind: layer_mi}", "experiment: EXPERIMENT")
assert "EXPERIMENT" in SPEC
DYNAMICS = "{kind: dynamics, acts: [relu]}"


class Recorder:
    """A sink plugin that writes what it receives into a shared event list."""

    def __init__(self, events, fail_at=None):
        self.events = events
        self.fail_at = fail_at

    @hookimpl
    def mi_probe_register_trackers(self, register):
        from pydantic import BaseModel, ConfigDict
        from typing import Literal

        class RecorderParams(BaseModel):
            model_config = ConfigDict(extra="forbid")
            kind: Literal["recorder"] = "recorder"

        events, fail_at = self.events, self.fail_at

        class Sink:
            def start(self, run):
                events.append(("start", run.name, dict(run.metadata)))

            def log_epoch(self, label, epoch, values):
                if fail_at == "epoch":
                    raise ConnectionError("tracking server went away")
                events.append(("epoch", label, epoch, dict(values)))

            def log_results(self, run_dir, tables, figures):
                events.append(("results", sorted(tables), [p.name for p in figures]))

            def close(self, status):
                events.append(("close", status))

        register("recorder", lambda params: Sink(), RecorderParams)


def run(tmp_path, experiment, track, events, name="run", fail_at=None, cache="cache"):
    text = SPEC.replace("EXPERIMENT", experiment) + f"track: {track}\n"
    return mi_probe.run(text, out=tmp_path / name, cache_dir=tmp_path / cache,
                        plugins=[Recorder(events, fail_at)], progress=False,
                        log=lambda line: events.append(("log", line)))


def test_epochs_reach_a_sink_as_they_end_and_a_cached_model_is_replayed(tmp_path):
    events: list = []
    result = run(tmp_path, DYNAMICS, "[{kind: recorder}]", events)
    assert result.status == "complete"
    kinds = [e[0] for e in events if e[0] != "log"]
    assert kinds[0] == "start" and kinds[-2:] == ["results", "close"]
    assert events[[e[0] for e in events].index("start")][2]["arch"] == "test_resnet"
    # live: epoch 1's values arrive before the trainer logs epoch 1, and epoch 2's after
    order = [(e[0], e[2]) if e[0] == "epoch" else ("log", e[1]) for e in events
             if e[0] == "epoch" or (e[0] == "log" and "epoch" in e[1] and "seed 0" in e[1])]
    logged_1 = next(i for i, e in enumerate(order) if e[0] == "log" and "epoch 1/2" in e[1])
    assert order.index(("epoch", 1)) < logged_1 < order.index(("epoch", 2))
    epochs = [e for e in events if e[0] == "epoch"]
    assert [e[2] for e in epochs] == [0, 1, 2] and {e[1] for e in epochs} == {"seed0-relu"}
    # the values are the run's own: validation accuracy and per-site MI of each epoch
    table = result.table("dynamics")
    training = result.table("training")
    for _, label, epoch, values in epochs:
        assert values["val/acc"] == training.filter(pl.col("epoch") == epoch)["val_acc"][0]
        site_rows = table.filter(pl.col("epoch") == epoch)
        for row in site_rows.iter_rows(named=True):
            assert values[f"i_ty/{row['site']}"] == row["i_ty"]
            assert values[f"i_xt/{row['site']}"] == row["i_xt"]
    results = next(e for e in events if e[0] == "results")
    assert "dynamics" in results[1] and any(n.endswith(".png") for n in results[2])
    assert events[-1] == ("close", "complete") or ("close", "complete") in events

    again: list = []  # the same model from the cache: its epochs are replayed
    run(tmp_path, DYNAMICS, "[{kind: recorder}]", again, name="again")
    replayed = [e for e in again if e[0] == "epoch"]
    assert [(e[1], e[2], e[3]) for e in replayed] == [(e[1], e[2], e[3]) for e in epochs]


def test_a_failing_sink_is_dropped_with_a_warning_and_the_run_finishes(tmp_path):
    events: list = []
    result = run(tmp_path, "{kind: layer_mi}", "[{kind: recorder}]", events, fail_at="epoch")
    assert result.status == "complete"
    warnings = [e[1] for e in events if e[0] == "log" and "tracking sink" in e[1]]
    assert len(warnings) == 1 and "tracking server went away" in warnings[0]
    assert not any(e[0] in ("results", "close") for e in events)  # dropped: nothing more


def test_a_sink_without_its_package_stops_the_run_before_any_work(tmp_path, monkeypatch):
    import importlib

    original = importlib.import_module

    def no_tensorboard(name, *args):
        if name == "tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return original(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_tensorboard)
    with pytest.raises(PluginError, match=r"needs the 'tensorboard' package.*"
                       r"mi-probe\[tensorboard\]"):
        run(tmp_path, "{kind: layer_mi}", "[{kind: tensorboard}]", [])
    assert not (tmp_path / "cache" / "models").exists() or not any(
        (tmp_path / "cache" / "models").iterdir())


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run(tmp_path, DYNAMICS, "[{kind: tensorboard}]", [])
    root = result.path / "tensorboard"
    series = EventAccumulator(str(root / "seed0-relu"))
    series.Reload()
    scalars = series.Tags()["scalars"]
    training = result.table("training").sort("epoch")
    val_acc = [(s.step, s.value) for s in series.Scalars("val/acc")]
    assert [step for step, _ in val_acc] == training["epoch"].to_list()
    # event files hold float32: equal to the run's values at float32 precision
    assert [v for _, v in val_acc] == pytest.approx(training["val_acc"].to_list(), rel=1e-6)
    sites = result.table("dynamics")["site"].unique().to_list()
    for site in sites:
        assert f"i_ty/{site}" in scalars and f"i_xt/{site}" in scalars
        steps = [s.step for s in series.Scalars(f"i_ty/{site}")]
        assert steps == training["epoch"].to_list()
    results = EventAccumulator(str(root / "results"), size_guidance={"images": 0, "tensors": 0})
    results.Reload()
    tags = results.Tags()
    assert any(t.startswith("figure/") for t in tags["images"])
    assert "table/dynamics/text_summary" in tags["tensors"]


def test_mlflow_run_reads_back_from_a_local_store(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts_at = (tmp_path / "artifacts").as_uri()
    result = run(tmp_path, DYNAMICS, f"[{{kind: mlflow, tracking_uri: '{uri}', "
                 f"artifact_location: '{artifacts_at}'}}]", [])
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tracked")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.params["model.arch"] == "test_resnet"
    assert found.data.tags["mi_probe.status"] == "complete"
    assert found.data.tags["mi_probe.arch"] == "test_resnet"
    history = client.get_metric_history(found.info.run_id, "seed0-relu/val/acc")
    training = result.table("training").sort("epoch")
    assert sorted((m.step, m.value) for m in history) == list(
        zip(training["epoch"].to_list(), training["val_acc"].to_list()))
    site = result.table("dynamics")["site"][0]
    assert len(client.get_metric_history(found.info.run_id, f"seed0-relu/i_ty/{site}")) == 3
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"tables", "figures", "index.html"} <= artifacts
    tables = {a.path for a in client.list_artifacts(found.info.run_id, "tables")}
    assert "tables/dynamics.parquet" in tables
    assert (tmp_path / "artifacts").is_dir()  # nothing written into the working folder


def test_epoch_values_and_labels():
    row = {"seed": 1, "epoch": 3, "train_loss": 0.5, "val_loss": None, "val_acc": 0.75,
           "lr": 0.1, "tracked": {"eval_acc": 0.7, "sites": {
               "layer1.0.post_add": {"i_ty": 0.25, "i_xt": 2.0, "frac_edge_bins": None}}}}
    assert epoch_values(row) == {"train/loss": 0.5, "val/acc": 0.75, "train/lr": 0.1,
                                 "track/eval_acc": 0.7, "i_ty/layer1.0.post_add": 0.25,
                                 "i_xt/layer1.0.post_add": 2.0}
    assert training_label(1) == "seed1"
    assert training_label(0, "tanh", "hsic") == "seed0-tanh-hsic"
    assert training_label(0, "as built", "none") == "seed0"
    assert not Trackers([], print)


def test_a_resumed_training_gets_its_earlier_epochs_replayed_once():
    got = []

    class Sink:
        def log_epoch(self, label, epoch, values):
            got.append((label, epoch, values["val/acc"]))

    trackers = Trackers([Sink()], print)
    history = [{"epoch": e, "val_acc": e / 10} for e in range(4)]
    for row in history[2:]:  # resumed at epoch 2: epochs 2-3 arrive live
        trackers.epoch("seed0", row["epoch"], row)
    trackers.replay("seed0", history)  # then the whole history is offered
    trackers.replay("seed0", history)  # and again at the end of the run
    assert sorted(got) == [("seed0", e, e / 10) for e in range(4)]


def test_trainings_run_elsewhere_reach_the_sinks_from_the_training_table(tmp_path):
    """A training computed in another process (the ray executor) sent nothing live: its
    rows of the final ``training`` table are sent when the run ends, once."""
    got, results = [], []

    class Sink:
        def log_epoch(self, label, epoch, values):
            got.append((label, epoch, values["val/acc"]))

        def log_results(self, run_dir, tables, figures):
            results.append(sorted(tables))

    training = pl.DataFrame({"seed": [0, 0, 1, 1], "epoch": [1, 0, 0, 1],
                             "val_acc": [0.5, 0.1, 0.2, 0.6], "act": ["tanh"] * 4,
                             "regularizer": ["none", "none", "hsic", "hsic"]})
    trackers = Trackers([Sink()], print)
    trackers.epoch("seed0-tanh", 0, {"val_acc": 0.1})  # seen live: not sent again
    trackers.results(tmp_path, {"training": training})
    assert sorted(got) == [("seed0-tanh", 0, 0.1), ("seed0-tanh", 1, 0.5),
                           ("seed1-tanh-hsic", 0, 0.2), ("seed1-tanh-hsic", 1, 0.6)]
    assert results == [["training"]]
