"""Table schemas, seed aggregation, parquet I/O and the run directory.

Tables are long-format polars frames, one row per observation. The schemas below are
the contract other tools read (ARCHITECTURE.md §6); a table may carry more columns.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from mi_probe.errors import RunError

#: Columns every per-site table carries.
SITE_COLUMNS = ("seed", "state", "site", "depth", "site_kind")

#: Required columns of the core tables (more columns are allowed).
SCHEMAS: dict[str, tuple[str, ...]] = {
    "layer_mi": SITE_COLUMNS + ("i_xt", "i_ty"),
    "channel_mi": SITE_COLUMNS + ("channel", "i_xt", "i_ty"),
    "concentration": SITE_COLUMNS + ("gini", "top_k", "top_k_share", "norm_entropy"),
    "layer_pairs": SITE_COLUMNS + ("site_b", "depth_b", "mi"),
    "knockout": SITE_COLUMNS + ("q", "selection", "variant", "n_channels", "accuracy",
                                "baseline_accuracy", "drop"),
    "semantic_knockout": SITE_COLUMNS + ("class", "q", "selection", "n_channels",
                                         "class_accuracy", "baseline_class_accuracy", "drop",
                                         "other_classes_change"),
    "training": ("seed", "epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds",
                 "regularizer"),
    "dynamics": ("seed", "epoch", "act", "site", "depth", "i_xt", "i_ty", "val_acc"),
    "evaluation": ("seed", "state", "accuracy", "n_samples"),
}


def check_schema(name: str, frame: pl.DataFrame) -> None:
    """Raise RunError when a core table lacks a contract column."""
    required = SCHEMAS.get(name)
    if required is None:
        return
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise RunError(f"table {name!r} is missing contract columns {missing}; "
                       f"found {frame.columns}")


def t_quantile_975(dof: int) -> float:
    """Two-sided 95% Student-t quantile for ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def aggregate_seeds(frame: pl.DataFrame, by: Iterable[str], values: Iterable[str],
                    count_name: str = "n_seeds") -> pl.DataFrame:
    """Mean and 95% t-interval over seeds of each value column, grouped by ``by``.

    Adds ``<v>_mean``, ``<v>_ci_low``, ``<v>_ci_high`` and ``n_seeds`` (``count_name``:
    the number of rows per group, i.e. of independent observations). With one seed the
    interval collapses to the mean (there is no spread to estimate), which charts show
    as a line without a band. Per-seed rows are never overwritten: this returns a new frame.
    """
    by = list(by)
    values = list(values)
    aggs: list[pl.Expr] = [pl.len().alias("n_seeds")]
    for v in values:
        aggs += [pl.col(v).mean().alias(f"{v}_mean"), pl.col(v).std(ddof=1).alias(f"{v}_sd")]
    out = frame.group_by(by, maintain_order=True).agg(aggs)
    quantiles = {n: (t_quantile_975(n - 1) if n > 1 else 0.0) for n in out["n_seeds"].unique()}
    half_factor = pl.col("n_seeds").replace_strict(quantiles, return_dtype=pl.Float64) / \
        pl.col("n_seeds").cast(pl.Float64).sqrt()
    exprs = []
    for v in values:
        half = (pl.col(f"{v}_sd").fill_null(0.0).fill_nan(0.0) * half_factor)
        exprs += [(pl.col(f"{v}_mean") - half).alias(f"{v}_ci_low"),
                  (pl.col(f"{v}_mean") + half).alias(f"{v}_ci_high")]
    out = out.with_columns(exprs).drop([f"{v}_sd" for v in values]).sort(by)
    return out.rename({"n_seeds": count_name}) if count_name != "n_seeds" else out


#: Mode of files written atomically (mkstemp would leave them owner-only).
FILE_MODE = 0o644


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)


def write_parquet(path: Path, frame: pl.DataFrame) -> None:
    """Atomic parquet write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.write_parquet(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_tables(tables_dir: Path) -> dict[str, pl.DataFrame]:
    """Every ``*.parquet`` table of a run, by name."""
    tables_dir = Path(tables_dir)
    if not tables_dir.is_dir():
        raise RunError(f"no tables folder at {tables_dir}")
    return {p.stem: pl.read_parquet(p) for p in sorted(tables_dir.glob("*.parquet"))}


def concat_tables(parts: list[dict[str, pl.DataFrame]]) -> dict[str, pl.DataFrame]:
    """Merge per-unit tables by name (diagonal concat tolerates extra columns)."""
    merged: dict[str, list[pl.DataFrame]] = {}
    for part in parts:
        for name, frame in part.items():
            merged.setdefault(name, []).append(frame)
    return {name: pl.concat(frames, how="diagonal_relaxed") for name, frames in merged.items()}
