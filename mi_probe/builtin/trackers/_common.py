"""Helpers the built-in tracking sinks share; not a plugin."""

from __future__ import annotations

from typing import Any

from mi_probe.plugin import PluginError


def require(module: str, extra: str, sink: str) -> Any:
    """Import ``module`` or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise PluginError(f"track: {sink} needs the {module!r} package, which is not "
                          f"installed; pip install 'mi-probe[{extra}]'") from None


def markdown_table(frame: Any, max_rows: int = 50) -> str:
    """The first ``max_rows`` rows of a polars frame as a Markdown table (numbers to four
    significant digits), with a line saying how many rows were left out."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|")

    head = frame.head(max_rows)
    lines = ["| " + " | ".join(head.columns) + " |",
             "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.iter_rows()]
    if frame.height > max_rows:
        lines.append(f"\n{frame.height - max_rows} more rows in the run's tables/ folder")
    return "\n".join(lines)
