"""Print a bench-estimators summary as the Markdown table of docs/estimators.md.

    .venv/bin/python scripts/bench_markdown.py reports/bench_estimators [more folders]

One row per task; per estimator the mean estimate over seeds and, for estimators with
intervals, the share of seeds whose interval covers the truth (in brackets). Skipped
estimators show the reason in short.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl


def table(folders: list[str]) -> str:
    summary = pl.concat([pl.read_parquet(Path(f) / "summary.parquet") for f in folders],
                        how="diagonal_relaxed")
    order = summary.select("task").unique(maintain_order=True)["task"].to_list()
    estimators = summary.select("estimator").unique(maintain_order=True)["estimator"].to_list()
    head = ["task", "dims", "truth"] + estimators
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in order:
        part = summary.filter(pl.col("task") == task)
        first = part.row(0, named=True)
        cells = [task, f"{first['dx']}+{first['dy']}", f"{first['truth']:.3f}"]
        for est in estimators:
            row = part.filter(pl.col("estimator") == est)
            if row.is_empty():
                cells.append("")
                continue
            r = row.row(0, named=True)
            if r["status"] != "ok" or r["estimate_mean"] is None:
                cells.append("skipped")
                continue
            cell = f"{r['estimate_mean']:.3f}"
            if r.get("coverage") is not None:
                cell += f" [{r['coverage']:.2f}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1:]))
