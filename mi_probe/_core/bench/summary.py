"""Tables and figures of a bench folder, from its rows alone (no torch).

* ``results.parquet`` / ``.csv``: one row per (task, n, seed, estimator, source);
* ``summary.parquet`` / ``.csv``: per (task, n, estimator, source): mean and sd of the
  estimate over seeds, the truth, mean error and |error|, RMSE, interval coverage;
* ``tasks.parquet`` / ``.csv``: per task, dims and truth (and, with bmi, bmi's truth and
  the KS check of mi-probe's sampler against bmi's);
* ``figures/estimate_vs_truth.{png,html}``: mean estimate / truth per task × estimator,
  the cells labelled with the mean estimate (bmi's paper figure), and
  ``figures/error.{png,html}``: every seed's estimate − truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import polars as pl

from mi_probe._core.bench import tasks as T
from mi_probe._core.bench.rows import COLUMNS, ROWS, RowLog
from mi_probe._core.files import atomic_path
from mi_probe._core.tables import write_parquet

_DTYPES = {"str": pl.String, "int": pl.Int64, "float": pl.Float64}
SCHEMA = {name: _DTYPES[kind] for name, kind in COLUMNS.items()}
_ORDER = {name: i for i, name in enumerate(T.TASKS)}


def results_table(rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """The rows as a typed table, in bmi's task order, mi-probe's estimators first."""
    frame = pl.DataFrame([{k: r.get(k) for k in COLUMNS} for r in rows], schema=SCHEMA)
    return (frame.with_columns(pl.col("task").replace_strict(_ORDER, default=len(_ORDER))
                               .alias("_order"))
            .sort(["_order", "n", pl.col("source") != "mi-probe", "estimator", "seed"])
            .drop("_order"))


def summary_table(results: pl.DataFrame) -> pl.DataFrame:
    """Per task, n, estimator and source: the seeds' mean and sd of the estimate, the
    truth, mean error, mean |error|, RMSE, coverage of the intervals (share of rows
    whose [ci_low, ci_high] holds the truth; null without intervals), mean time, how
    many rows were ok, skipped or failed, and the first reason when none was ok."""
    ok = pl.col("status") == "ok"
    covered = ((pl.col("ci_low") <= pl.col("truth")) & (pl.col("truth") <= pl.col("ci_high")))
    keys = ["task", "title", "dx", "dy", "n", "estimator", "estimator_kind", "source"]
    summary = results.group_by(keys, maintain_order=True).agg(
        n_seeds=ok.sum().cast(pl.Int64),
        n_skipped=(pl.col("status") == "skipped").sum().cast(pl.Int64),
        n_failed=(pl.col("status") == "failed").sum().cast(pl.Int64),
        estimate_mean=pl.col("estimate").filter(ok).mean(),
        estimate_sd=pl.col("estimate").filter(ok).std(),
        truth=pl.col("truth").first(),
        error_mean=pl.col("error").filter(ok).mean(),
        abs_error_mean=pl.col("abs_error").filter(ok).mean(),
        rmse=(pl.col("error").filter(ok) ** 2).mean().sqrt(),
        coverage=covered.filter(ok & pl.col("ci_low").is_not_null()).cast(pl.Float64).mean(),
        ci_level=pl.col("ci_level").drop_nulls().first(),
        time_s_mean=pl.col("time_s").filter(ok).mean(),
        reason=pl.col("reason").drop_nulls().first(),
    )
    return summary.with_columns(
        ratio=pl.col("estimate_mean") / pl.col("truth"),
        status=pl.when(pl.col("n_seeds") > 0).then(pl.lit("ok"))
        .when(pl.col("n_skipped") > 0).then(pl.lit("skipped")).otherwise(pl.lit("failed")),
    )


def tasks_table(results: pl.DataFrame, checks: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    base = (results.select("task", "title", "dx", "dy", "truth").unique("task",
                                                                       maintain_order=True))
    if not checks:
        return base
    extra = pl.DataFrame(list(checks)).drop("title", "dx", "dy", "truth")
    return base.join(extra, on="task", how="left")


def _write_both(folder: Path, name: str, frame: pl.DataFrame) -> None:
    write_parquet(folder / f"{name}.parquet", frame)
    with atomic_path(folder / f"{name}.csv") as tmp:
        frame.write_csv(tmp)


def write_outputs(out: Path, rows: Sequence[Mapping[str, Any]],
                  checks: Sequence[Mapping[str, Any]] = (), figures: bool = True
                  ) -> pl.DataFrame:
    """Write every table (and figure) of the folder ``out`` from ``rows``; returns the
    results table."""
    results = results_table(rows)
    summary = summary_table(results)
    _write_both(out, "results", results)
    _write_both(out, "summary", summary)
    _write_both(out, "tasks", tasks_table(results, checks))
    if figures and len(results):
        from mi_probe._core.bench.figures import error_chart, ratio_heatmap
        from mi_probe._core.report import save_chart

        save_chart(ratio_heatmap(summary), out / "figures", "estimate_vs_truth")
        if results["estimate"].is_not_null().any():
            save_chart(error_chart(results), out / "figures", "error")
    return results


def read_results(out: str | Path) -> pl.DataFrame:
    """The results table of a bench folder (from its rows log, so also of an
    interrupted bench)."""
    path = Path(out) / ROWS
    if not path.exists():
        from mi_probe.errors import RunError

        raise RunError(f"{out} is not a bench-estimators folder (no {ROWS})")
    return results_table(RowLog(path, readonly=True).rows)
