"""The run's report: notes, figures, ``index.html``, then the spec's report writers.

Notes come from the estimator and the experiment that produced the tables (their
``notes`` abilities), so a plugin's caveats appear beside the built-ins'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import polars as pl

from mi_probe.errors import MiProbeError, RunError
from mi_probe.interfaces import ExplainsEstimates, HasNotes


def run_notes(estimator: Any, experiment: Any, n_samples: int, num_classes: int,
              tables: Mapping[str, pl.DataFrame]) -> list[str]:
    """What a reader must know to interpret the tables: the estimator's settings and
    caveats, then the experiment's."""
    from mi_probe._core.report import describe_estimator

    # in words ("histogram, 20 bins, min–max range, ..."), not the JSON of describe()
    notes = [f"Estimator: {describe_estimator(estimator.describe())}. "
             "All MI values are in nats."]
    if isinstance(estimator, ExplainsEstimates):
        notes += list(estimator.notes(n_samples, num_classes, tables))
    if isinstance(experiment, HasNotes):
        notes += list(experiment.notes(tables))
    return notes


def render(run_dir: Path, experiment: Any, tables: dict, meta: dict, notes: list[str],
           spec: Any, pm: Any) -> Path:
    """Figures and index.html, then the spec's plugin report writers, in order."""
    index = render_index(run_dir, experiment, tables, meta, notes, list(spec.report.formats))
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


def figures_of(experiment: Any, tables: Mapping[str, pl.DataFrame]) -> dict[str, Any]:
    """The experiment's charts, plus the validation-accuracy curve when it trained."""
    from mi_probe._core import report

    figures = dict(experiment.figures(dict(tables)))
    if "training" in tables and tables["training"].height:
        train = tables["training"].drop_nulls("val_acc")
        # "none" is plain cross-entropy: say so in the legend
        loss = pl.when(pl.col("regularizer") == "none").then(pl.lit("cross-entropy")) \
            .otherwise(pl.lit("CE + ") + pl.col("regularizer"))
        series = loss
        if "act" in train.columns and train["act"].n_unique() > 1:
            series = pl.concat_str([pl.col("act"), loss], separator=" / ")
        train = train.with_columns(training=series)
        figures["training_val_acc"] = report.line(train, x="epoch", y="val_acc",
                                                  color="training",
                                                  title="Validation accuracy while training",
                                                  y_title="validation accuracy")
    return figures


def render_index(run_dir: Path, experiment: Any, tables: dict,
                 meta: dict, notes: list[str], formats: list[str]) -> Path:
    from mi_probe._core import report

    figures = figures_of(experiment, tables)
    return report.render_run(run_dir, figures, tables, meta, notes=notes,
                             warnings=meta.get("warnings", []), formats=formats,
                             checks=meta.get("checks", []))
