from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from mi_probe.plugin import hookimpl


class MarkdownParams(BaseModel, extra="forbid"):
    kind: Literal["markdown"] = "markdown"
    filename: str = "summary.md"


class MarkdownSummary:
    """Writes the claims' verdicts and each table's size as Markdown beside index.html."""

    def __init__(self, params): self.params = params

    def render(self, run_dir: Path, tables, meta):  # after index.html; tables are polars
        lines = [f"# {meta['name']}", ""]
        lines += [f"- {'PASS' if c['passed'] else 'FAIL'}: {c['name']}"
                  for c in meta.get("checks", [])]
        lines += [f"- `{name}`: {frame.height} rows" for name, frame in sorted(tables.items())]
        (run_dir / self.params.filename).write_text("\n".join(lines) + "\n")


@hookimpl
def mi_probe_register_reports(register):
    register("markdown", MarkdownSummary, MarkdownParams)
