"""The rows of a bench folder: the columns of ``results.parquet`` and ``rows.jsonl``,
the log every finished row is appended to (what makes a bench resumable)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mi_probe.errors import RunError

ROWS = "rows.jsonl"

#: columns of results.parquet, in order, with their polars dtypes' names
COLUMNS: dict[str, str] = {
    "task": "str", "title": "str", "dx": "int", "dy": "int", "n": "int", "seed": "int",
    "estimator": "str", "estimator_kind": "str", "estimator_params": "str",
    "source": "str", "status": "str", "reason": "str",
    "estimate": "float", "truth": "float", "error": "float", "abs_error": "float",
    "time_s": "float", "ci_low": "float", "ci_high": "float", "ci_level": "float",
    "interval_method": "str",
}
KEY = ("task", "n", "seed", "estimator", "source")


class RowLog:
    """``rows.jsonl``: one JSON object per finished row, appended and flushed at once,
    read back on a rerun (a last line cut off by a crash is dropped)."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):  # a partial last line: drop it
                data = data[:data.rfind(b"\n") + 1]
                if not readonly:
                    with open(path, "r+b") as fh:
                        fh.truncate(len(data))
            for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise RunError(f"{path}:{number}: not a JSON row; the rows log of a "
                                   "bench folder is written by mi-probe only") from None
        self.done = {tuple(r[k] for k in KEY) for r in self.rows}
        self._fh = None if readonly else open(path, "a", encoding="utf-8")

    def add(self, row: dict[str, Any]) -> None:
        if self._fh is None:
            raise RunError(f"{self.path} was opened read-only")
        self._fh.write(json.dumps(row, allow_nan=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.rows.append(row)
        self.done.add(tuple(row[k] for k in KEY))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
