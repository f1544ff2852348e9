"""Table schemas, seed aggregation, parquet I/O and the run directory.

Tables are long-format polars frames, one row per observation. The schemas below are
the contract other tools read (ARCHITECTURE.md §6); a table may carry more columns.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import polars as pl

from mi_probe._core.files import atomic_path, atomic_write_text

from mi_probe.errors import RunError

#: Columns every per-site table carries. ``depth`` is the site's index among all the
#: model's sites (``interfaces.Site``); the built-in experiments add ``rel_depth``
#: (depth scaled to [0, 1]) beside it.
SITE_COLUMNS = ("seed", "state", "site", "depth", "site_kind")

#: Run metadata columns the run adds to every table it writes (one value per run), so
#: tables of several runs can be concatenated and still be told apart:
#: ``run_id`` = "<spec name>/<run folder name>@<start time>" (the folder alone repeats
#: across ``--out`` parents; the start time makes it unique), ``arch`` = model.arch,
#: ``act`` = model.act or "as built", ``estimator`` = the estimator in a few words
#: (e.g. "histogram, 20 bins, min–max range, no bias correction"), ``data`` = the data
#: source kind, with ":<root>" (or ":<name>") when it has one. A column a table already
#: has (``dynamics`` has its own per-row ``act`` and ``arch``) is kept as it is. Declared
#: once here, for every table: schema checks accept them without a declaration.
RUN_COLUMNS = ("run_id", "arch", "act", "estimator", "data")

#: ``act`` of a spec that keeps the model's own activations (model.act unset).
AS_BUILT = "as built"

#: Required columns of the table the run itself writes whatever the experiment, when
#: models are trained (experiments declare theirs: ``interfaces.DeclaresTables``).
CORE_SCHEMAS: dict[str, tuple[str, ...]] = {
    "training": ("seed", "epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds",
                 "regularizer"),
}

def make_run_id(name: str, run_dir: Path, started: str | None) -> str:
    """The ``run_id`` column: "<spec name>/<run folder name>@<start time>"."""
    return f"{name}/{Path(run_dir).name}" + (f"@{started}" if started else "")


def data_label(data: Mapping[str, Any]) -> str:
    """The ``data`` column of a spec's data block: its kind, with ":<root>" or
    ":<name>" when the source has one (``imagefolder:../data/imagenette``)."""
    kind = str(data.get("kind", "?"))
    where = data.get("root") or data.get("name")
    return f"{kind}:{where}" if where else kind


def run_columns(spec: Mapping[str, Any], run_dir: Path, meta: Mapping[str, Any],
                estimator: str) -> dict[str, str]:
    """The ``RUN_COLUMNS`` values of a run, from its spec as a plain mapping (the
    ``spec.yaml`` the run wrote), its ``run.json`` mapping and ``estimator`` in words
    (``report.describe_estimator(..., short=True)``): pure, so old runs get the same
    values back from their files."""
    model = spec.get("model") or {}
    return {"run_id": make_run_id(str(spec.get("name", meta.get("name", "run"))), run_dir,
                                  meta.get("started")),
            "arch": str(model.get("arch", "?")),
            "act": str(model.get("act") or AS_BUILT),
            "estimator": estimator,
            "data": data_label(spec.get("data") or {})}


def with_run_columns(frame: pl.DataFrame, values: Mapping[str, str]) -> pl.DataFrame:
    """``frame`` with each run metadata column it lacks appended (constant strings);
    columns it already has are left unchanged, so existing meanings stay."""
    new = [pl.lit(v, dtype=pl.String).alias(k) for k, v in values.items()
           if k not in frame.columns]
    return frame.with_columns(new) if new else frame


def check_schema(name: str, frame: pl.DataFrame,
                 schemas: Mapping[str, Any]) -> None:
    """Raise RunError when a declared table lacks one of its required columns
    (``schemas`` maps names to ``interfaces.TableSchema`` or required-column lists)."""
    declared = schemas.get(name)
    if declared is None:
        return
    required = getattr(declared, "required", declared)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise RunError(f"table {name!r} is missing contract columns {missing}; "
                       f"found {frame.columns}")


def t_quantile_975(dof: int) -> float:
    """Two-sided 95% Student-t quantile for ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def mean_t_interval(values: Sequence[float]) -> tuple[float, float | None, float | None, int]:
    """Mean of ``values`` (independent per-seed values) and its 95% t-interval, and n;
    no interval (None, None) for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None, n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


#: Suffix of the per-column count ``aggregate_seeds`` writes: ``<v>_n``.
N_SUFFIX = "_n"


def aggregate_seeds(frame: pl.DataFrame, by: Iterable[str], values: Iterable[str],
                    count_name: str = "n_seeds") -> pl.DataFrame:
    """Mean and 95% t-interval over seeds of each value column, grouped by ``by``.

    Each row of ``frame`` is one independent observation (a seed, or whatever the
    caller has reduced to one row per seed first). Null and NaN both mean "no value":
    for each value column ``v`` the mean, the sd and the t-quantile use only that
    column's own values, so a seed that never reached a plateau does not shrink the
    interval of the plateau epoch. Adds, per ``v``: ``<v>_mean``, ``<v>_ci_low``,
    ``<v>_ci_high`` and ``<v>_n`` (how many non-null, non-NaN values the interval is
    over), and once per group ``count_name`` (default ``n_seeds``: the number of rows
    in the group, missing values included; kept so existing callers keep working).

    With ``<v>_n`` < 2 there is no spread to estimate, so the interval is null (missing)
    rather than collapsed to the mean: a zero-width interval would claim certainty, and
    null, unlike NaN, is skipped by later means and serialises to JSON. The mean is null
    when ``<v>_n`` is 0. Per-seed rows are never overwritten: this returns a new frame.
    """
    by = list(by)
    values = list(values)
    missing = [c for c in dict.fromkeys(by + values) if c not in frame.columns]
    if missing:
        raise RunError(f"aggregate_seeds: frame lacks columns {missing}; found {frame.columns}")
    both = [v for v in values if v in by]
    if both:
        raise RunError(f"aggregate_seeds: {both} are both grouping and value columns")
    not_numeric = {v: str(frame.schema[v]) for v in values
                   if not (frame.schema[v].is_numeric() or frame.schema[v] in (pl.Boolean, pl.Null))}
    if not_numeric:
        raise RunError(f"aggregate_seeds: value columns must be numeric, found {not_numeric}")
    clean = frame.with_columns([pl.col(v).cast(pl.Float64).fill_nan(None) for v in values])
    aggs: list[pl.Expr] = [pl.len().alias(count_name)]
    for v in values:
        aggs += [pl.col(v).mean().alias(f"{v}_mean"), pl.col(v).std(ddof=1).alias(f"{v}_sd"),
                 pl.col(v).count().alias(f"{v}{N_SUFFIX}")]
    out = (clean.group_by(by, maintain_order=True).agg(aggs) if by
           else clean.select(aggs))
    columns: list[pl.Expr] = []
    for v in values:
        n = pl.col(f"{v}{N_SUFFIX}")
        sizes = sorted({int(k) for k in out[f"{v}{N_SUFFIX}"].unique() if k >= 2})
        quantile = n.replace_strict({k: t_quantile_975(k - 1) for k in sizes}, default=None,
                                    return_dtype=pl.Float64)
        half = quantile * pl.col(f"{v}_sd") / n.cast(pl.Float64).sqrt()
        columns += [pl.when(n >= 2).then(pl.col(f"{v}_mean") - half).alias(f"{v}_ci_low"),
                    pl.when(n >= 2).then(pl.col(f"{v}_mean") + half).alias(f"{v}_ci_high")]
    out = out.with_columns(columns)
    order = by + [count_name] + [f"{v}{suffix}" for v in values
                                 for suffix in ("_mean", "_ci_low", "_ci_high", N_SUFFIX)]
    out = out.select(order)
    return out.sort(by, maintain_order=True) if by else out


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
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)


def read_tables(tables_dir: Path) -> dict[str, pl.DataFrame]:
    """Every ``*.parquet`` table of a run, by name; a file polars cannot read is a
    ``RunError`` naming it (not a parquet traceback)."""
    tables_dir = Path(tables_dir)
    if not tables_dir.is_dir():
        raise RunError(f"no tables folder at {tables_dir}")
    tables = {}
    for path in sorted(tables_dir.glob("*.parquet")):
        try:
            tables[path.stem] = pl.read_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RunError(f"cannot read table {path}: expected a parquet table; found a "
                           f"damaged or foreign file ({reason}). Running the spec again "
                           f"with --out {tables_dir.parent} rewrites the tables from its "
                           "finished units") from None
    return tables


def concat_tables(parts: list[dict[str, pl.DataFrame]]) -> dict[str, pl.DataFrame]:
    """Merge per-unit tables by name (diagonal concat tolerates extra columns)."""
    merged: dict[str, list[pl.DataFrame]] = {}
    for part in parts:
        for name, frame in part.items():
            merged.setdefault(name, []).append(frame)
    return {name: pl.concat(frames, how="diagonal_relaxed") for name, frames in merged.items()}
