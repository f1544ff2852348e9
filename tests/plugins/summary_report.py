"""A test plugin: a report writer that lists every table of a run with its rows and
columns in ``<run>/<filename>`` (Markdown), after ``index.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from mi_probe.hookspecs import hookimpl


class SummaryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["table_summary"] = "table_summary"
    filename: str = "tables.md"


class TableSummary:
    def __init__(self, params: SummaryParams):
        self.params = params

    def render(self, run_dir: Path, tables, meta) -> Path:
        assert (run_dir / "index.html").is_file()  # runs after the built-in report
        lines = [f"# {meta['name']}", ""]
        lines += [f"- {name}: {frame.height} rows, {frame.width} columns"
                  for name, frame in sorted(tables.items())]
        path = run_dir / self.params.filename
        path.write_text("\n".join(lines) + "\n")
        return path


@hookimpl
def mi_probe_register_reports(register):
    register("table_summary", TableSummary, SummaryParams)
