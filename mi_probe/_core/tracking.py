"""Live tracking: the spec's ``track`` sinks (TensorBoard, MLflow, plugins) receive every
training epoch's values as they come, and the run's tables and figures at its end.

Values are flat ``{name: float}`` mappings with ``/``-grouped names (``val/acc``,
``i_ty/layer4.1.post_add``); each training is one series, labelled by its seed and
variant (``seed0``, ``seed1-tanh``, ``seed0-hsic``). A sink that fails is reported once
in the log and dropped: a tracking server going away never costs the run its results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

#: history-row fields sent as values, under these names
ROW_VALUES = {"train_loss": "train/loss", "val_loss": "val/loss", "val_acc": "val/acc",
              "lr": "train/lr", "seconds": "train/seconds"}
#: per-site tracked values (the dynamics experiment's), sent as ``<name>/<site>``
SITE_VALUES = ("i_xt", "i_ty", "frac_edge_bins")


@dataclass(frozen=True)
class TrackedRun:
    """What a sink is told when a run starts: where it is, its name, its spec (as JSON),
    the same spec as dotted keys and printable values (``model.arch: resnet18``, for
    sinks that take flat parameters) and the metadata columns of its tables (run_id,
    arch, act, estimator, data)."""

    run_dir: Path
    name: str
    spec: Mapping[str, Any]
    metadata: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)


def training_label(seed: Any, act: str | None = None, regularizer: str | None = None) -> str:
    """``seed0``, ``seed0-tanh``, ``seed0-hsic``: one series per trained model."""
    parts = [f"seed{seed}"]
    if act and act not in ("as built", "default"):
        parts.append(str(act))
    if regularizer and regularizer != "none":
        parts.append(str(regularizer))
    return "-".join(parts)


def epoch_values(row: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one epoch's history row (and its tracked values), flat."""
    values = {name: float(row[key]) for key, name in ROW_VALUES.items()
              if row.get(key) is not None}
    tracked = row.get("tracked") or {}
    if tracked.get("eval_acc") is not None:
        values["track/eval_acc"] = float(tracked["eval_acc"])
    for site, entry in (tracked.get("sites") or {}).items():
        for key in SITE_VALUES:
            if entry.get(key) is not None:
                values[f"{key}/{site}"] = float(entry[key])
    return values


class Trackers:
    """The run's sinks, called by the driver (start, results, close) and by the model
    store (each epoch). Trainings whose epochs were not seen live (a cached model, a
    unit computed in another process) are replayed from their history, so every sink
    ends with every curve (a training resumed from a checkpoint: its earlier epochs)."""

    def __init__(self, sinks: Iterable[Any], log: Callable[[str], None]) -> None:
        self.sinks = list(sinks)
        self.log = log
        self.seen: set[tuple[str, int]] = set()  # (label, epoch) already sent

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def _each(self, what: str, call: Callable[[Any], None]) -> None:
        for sink in list(self.sinks):
            try:
                call(sink)
            except Exception as exc:  # a sink's failure must not cost the run its results
                self.sinks.remove(sink)
                self.log(f"warning: tracking sink {type(sink).__name__} failed at {what} "
                         f"({type(exc).__name__}: {exc}); it is switched off for this run, "
                         "the run goes on")

    def start(self, run: TrackedRun) -> None:
        self._each("start", lambda sink: sink.start(run))

    def epoch(self, label: str, epoch: int, row: Mapping[str, Any]) -> None:
        """One epoch of training ``label`` (epoch 0: the initial weights)."""
        self.seen.add((label, int(epoch)))
        values = epoch_values(row)
        if values:
            self._each(f"{label} epoch {epoch}",
                       lambda sink: sink.log_epoch(label, int(epoch), values))

    def replay(self, label: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Send the epochs of a training's history that were not sent live."""
        for row in rows:
            if (label, int(row["epoch"])) not in self.seen:
                self.epoch(label, int(row["epoch"]), row)

    def results(self, run_dir: Path, tables: Mapping[str, Any]) -> None:
        """The finished run: trainings not seen live (from the ``training`` table), then
        its tables and the figures written as PNG files."""
        training = tables.get("training")
        if training is not None and training.height:
            by_label: dict[str, list[dict[str, Any]]] = {}
            for row in training.sort("epoch").iter_rows(named=True):
                label = training_label(row.get("seed"), row.get("act"), row.get("regularizer"))
                by_label.setdefault(label, []).append(row)
            for label, rows in by_label.items():
                self.replay(label, rows)
        figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() \
            else sorted(run_dir.glob("*.png"))
        self._each("results", lambda sink: sink.log_results(run_dir, tables, figures))

    def close(self, status: str) -> None:
        self._each("close", lambda sink: sink.close(status))


def start_trackers(spec: Any, registry: Any, run_dir: Path, metadata: Mapping[str, str],
                   log: Callable[[str], None]) -> Trackers:
    """Build the spec's ``track`` sinks and start them (a sink that cannot start stops
    the run here, before any work)."""
    sinks = [registry.build("trackers", params) for params in getattr(spec, "track", [])]
    trackers = Trackers(sinks, log)
    if trackers:
        from mi_probe._core.compare import flatten

        dumped = spec.model_dump(mode="json", exclude={"track"})
        run = TrackedRun(Path(run_dir), spec.name, dumped, dict(metadata), flatten(dumped))
        for sink in trackers.sinks:
            sink.start(run)
        log(f"tracking to {', '.join(p.kind for p in spec.track)}")
    return trackers
