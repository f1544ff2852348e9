"""``mi-probe compare``: several finished runs overlaid in one offline HTML report.

Each run directory is read as written (``run.json``, ``spec.yaml`` as plain YAML, so
runs of plugins not installed here still compare, and ``tables/*.parquet``). For every
table the runs share, the tables are concatenated (``<out>/tables/<name>.parquet``,
every row carrying the run metadata columns ``tables.RUN_COLUMNS`` and ``run_label``;
runs written before those columns existed get them from their ``run.json`` and
``spec.yaml``), and each per-site value is drawn against depth with one colour per run:
mean over seeds with the run report's 95% t-interval (``report.by_depth``). The x axis
is ``depth`` (labelled with site names) when every run has the same sites, else
``rel_depth`` (depth scaled to [0, 1]), which lines up runs that select different
sites or use models with different site counts. Runs are labelled by what differs
between their specs (``act=tanh``), else by their folder names.

This module never imports torch.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, cast

import polars as pl

from mi_probe.errors import RunError
from mi_probe._core.files import atomic_write_text
from mi_probe._core.tables import (AS_BUILT, RUN_COLUMNS, read_tables, run_columns,
                                   with_run_columns, write_parquet)

#: Column of the concatenated tables holding each run's label (the legend's names).
LABEL = "run_label"

#: The same label in the figures (the legend's title).
RUN = "run"

#: Spec keys (dotted, flattened) that never name a run: free text, claims, where the
#: report and the units go. They are still listed in the spec diff.
UNLABELLED = ("description", "checks", "report.", "executor.")

#: Columns that describe a row's place, never a value to draw.
STRUCTURE = frozenset({"seed", "depth", "rel_depth", "depth_b", "rel_depth_b", "channel",
                       "channels", "block_index", "draw", "part", "n_samples", "n_pairs",
                       "top_k_channels", "log_n", "epoch", "donor_seed", "site", "site_kind",
                       "site_b", "site_kind_b", "distance", "pair_rank", LABEL,
                       *RUN_COLUMNS})

#: Most values a setting column (state, selection, q, ...) may take and still split a
#: figure into panels (more are averaged over, and the subtitle says so).
MAX_SETTING_VALUES = 8

#: Most panels one figure is split into.
MAX_PANELS = 12

#: Most value columns of one table drawn (the others are named in a note).
MAX_VALUES = 8


@dataclass
class LoadedRun:
    """One run directory, read back."""

    path: Path
    meta: dict[str, Any]
    spec: dict[str, Any]
    tables: dict[str, pl.DataFrame]
    label: str = ""
    #: the run's ``RUN_COLUMNS`` values
    columns: dict[str, str] = field(default_factory=dict)

    @property
    def has_rel_depth(self) -> bool:
        """Whether its tables carry rel_depth (runs before it numbered depth among the
        selected sites)."""
        return any("rel_depth" in f.columns for f in self.tables.values())


# ------------------------------------------------------------------ reading runs


def load_run(path: Path) -> LoadedRun:
    """A finished run directory; RunError when it is not a run, not complete, or lacks
    its spec or tables."""
    import yaml

    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a run directory (no such folder); give the folders "
                       "mi-probe run wrote, e.g. reports/<name>/<time>")
    run_json = path / "run.json"
    if not run_json.is_file():
        raise RunError(f"{path} is not an mi-probe run directory (no run.json)")
    try:
        meta = json.loads(run_json.read_text())
    except (json.JSONDecodeError, OSError) as exc:
        raise RunError(f"cannot read {run_json}: {exc}") from None
    status = meta.get("status", "unknown")
    if status != "complete":
        raise RunError(f"run {path} is not complete (status {status!r}); finish it with "
                       f"mi-probe run SPEC --out {path} before comparing")
    spec_file = path / "spec.yaml"
    if not spec_file.is_file():
        raise RunError(f"run {path} has no spec.yaml")
    spec = yaml.safe_load(spec_file.read_text()) or {}
    if not isinstance(spec, dict):
        raise RunError(f"{spec_file} does not hold a spec (a YAML mapping)")
    return LoadedRun(path, meta, spec, read_tables(path / "tables"))


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """A spec as dotted keys and printable values (``model.act: tanh``); lists are one
    value each, written as compact JSON."""
    if isinstance(obj, Mapping):
        out: dict[str, str] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: "{}"}
    text = obj if isinstance(obj, str) else json.dumps(obj, separators=(", ", ": "))
    return {prefix[:-1]: text}


#: Shown for a key one spec has and another lacks.
UNSET = "(unset)"


def spec_diff(specs: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The flattened keys whose values differ between ``specs``: key -> one value per
    spec (``UNSET`` where a spec lacks the key), in the specs' key order."""
    flat = [flatten(s) for s in specs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    rows = {k: [f.get(k, UNSET) for f in flat] for k in keys}
    return {k: values for k, values in rows.items() if len(set(values)) > 1}


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key's shortest suffix that no other key ends with (``model.act`` ->
    ``act``)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts) - 1, -1, -1):
            short = ".".join(parts[i:])
            if not any(o != key and (o == short or o.endswith("." + short)) for o in keys):
                out[key] = short
                break
        else:
            out[key] = key
    return out


def _value_text(key: str, value: str) -> str:
    if key == "model.act" and value in ("null", UNSET):
        return AS_BUILT
    return value


def run_labels(runs: Sequence[LoadedRun], diff: Mapping[str, Sequence[str]],
               max_keys: int = 3) -> list[str]:
    """A short label per run: what differs between the specs (``act=tanh``, at most
    ``max_keys`` settings, the spec name only when nothing else differs), else the run
    folder names; made unique."""
    keys = [k for k in diff if not k.startswith(UNLABELLED)]
    if len(keys) > 1 and "name" in keys:
        keys.remove("name")
    short = _short_keys(keys)
    labels = []
    for i, _ in enumerate(runs):
        parts = [f"{short[k]}={_value_text(k, diff[k][i])}" for k in keys[:max_keys]]
        if len(keys) > max_keys:
            parts.append(f"+{len(keys) - max_keys} more")
        labels.append(", ".join(parts))
    if not keys or len(set(labels)) < len(labels):
        labels = [r.path.name for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{r.path.parent.name}/{r.path.name}" for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{label} #{i + 1}" for i, label in enumerate(labels)]
    return labels


def _estimator_words(run: LoadedRun) -> str:
    from mi_probe._core.report import describe_estimator

    facts = run.meta.get("estimator") or run.spec.get("estimator") or {}
    return describe_estimator(facts, short=True) if isinstance(facts, Mapping) else str(facts)


def stamped_tables(run: LoadedRun) -> dict[str, pl.DataFrame]:
    """The run's tables with its label and run metadata columns (added from run.json and
    spec.yaml where the run predates them; existing columns are kept)."""
    label = pl.lit(run.label, dtype=pl.String).alias(LABEL)
    return {name: with_run_columns(frame, run.columns).with_columns(label)
            for name, frame in run.tables.items()}


# ------------------------------------------------------------------ figures


@dataclass
class Roles:
    """What each column of a shared per-site table is, for drawing it."""

    #: numeric columns to draw against depth
    values: list[str]
    #: columns that split the figure into panels (state, selection, q, gain, ...)
    settings: list[str]
    #: columns that vary among one seed's rows at a site and are averaged over
    averaged: list[str]


def summary_keys(summary: pl.DataFrame | None) -> list[str] | None:
    """The grouping columns of an experiment's ``summary_<table>`` (what it averages
    seeds within: state, site, q, selection, ...): every column that is not an
    aggregate (``<v>_mean``, ``_ci_low``, ``_ci_high``, ``_n``, ``n_seeds``) nor run
    metadata. None without a summary."""
    if summary is None:
        return None
    tails = ("_mean", "_ci_low", "_ci_high", "_n")
    return [c for c in summary.columns if not c.endswith(tails)
            and c not in ("n_seeds", "n_pairs", LABEL, *RUN_COLUMNS)]


def column_roles(frame: pl.DataFrame, keys: Sequence[str] | None = None) -> Roles:
    """Sort the columns of a concatenated per-site table (``LABEL``, seed, site, depth
    and more) into values, settings and averaged-over columns.

    * a **setting** varies among one seed's rows at a site and takes 2 to
      ``MAX_SETTING_VALUES`` values. With ``keys`` (the grouping columns of the
      experiment's own summary of this table, ``summary_keys``) the settings are those
      keys (q, selection, top_k, gain); without, they are guessed from the data: a text
      column (state, selection), or a numeric one every (run, seed, site) repeats in
      full;
    * a **value** is any other numeric column that varies within a run, except the
      structure (``STRUCTURE``: channel, epoch, counts) and the keys;
    * **averaged** columns vary among one seed's rows at a site and are neither
      (channel, class, epoch, site_b): the figures average over them within a seed.

    A run metadata column (``act``) is a setting only where it varies within a run
    (``dynamics`` trains both activations)."""
    group = [LABEL, "seed", "site"]
    columns = [c for c in frame.columns if c not in group]
    within = frame.group_by(group).agg([pl.col(c).n_unique() for c in columns])
    per_run = frame.group_by(LABEL).agg([pl.col(c).drop_nulls().n_unique() for c in columns])
    settings, values, averaged = [], [], []
    for column in columns:
        dtype = frame.schema[column]
        distinct = frame[column].n_unique()
        # n_unique counts are integers (polars types a Series' min/max as any scalar)
        low = int(cast(int, within[column].min() or 0))
        high = int(cast(int, within[column].max() or 0))
        in_run = int(cast(int, per_run[column].max() or 0))
        if column in RUN_COLUMNS and in_run <= 1:
            continue
        if keys is not None:
            keyed = column in keys or (column in RUN_COLUMNS and high >= 2)
        else:
            grid = dtype.is_numeric() and low == high == distinct >= 2
            keyed = dtype != pl.Boolean and (grid or (not dtype.is_numeric() and high >= 2))
        keyed = keyed and column not in STRUCTURE - set(RUN_COLUMNS)
        if keyed and high >= 2 and distinct <= MAX_SETTING_VALUES:
            settings.append(column)
        elif (dtype.is_numeric() and column not in STRUCTURE and not keyed and in_run > 1):
            values.append(column)
        elif high >= 2 and column not in ("depth", "rel_depth", "site_kind"):
            averaged.append(column)
    return Roles(values, settings, averaged)


def _depth_axis(frame: pl.DataFrame, runs: Sequence[LoadedRun]) -> tuple[str, list[str]]:
    """("depth" or "rel_depth", notes): depth when every run has the same (site, depth)
    pairs in ``frame``, else rel_depth. A run whose tables predate rel_depth gets its
    site's position among its own sites instead (and a note says so)."""
    pairs = [set(frame.filter(pl.col(LABEL) == r.label).select("site", "depth").iter_rows())
             for r in runs]
    if all(p == pairs[0] for p in pairs):
        return "depth", []
    missing = [r.label for r in runs if not r.has_rel_depth]
    notes = ([f"runs {', '.join(missing)} predate rel_depth: their x is the site's position "
              "among their own sites, depth / (deepest depth), not among the model's sites"]
             if missing else [])
    return "rel_depth", notes


def _with_rel_depth(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with rel_depth filled where a run's tables lack it (depth / the run's
    deepest depth)."""
    fallback = (pl.col("depth") / pl.col("depth").max().over(LABEL).clip(lower_bound=1)
                ).cast(pl.Float64)
    if "rel_depth" not in frame.columns:
        return frame.with_columns(fallback.alias("rel_depth"))
    return frame.with_columns(pl.coalesce(pl.col("rel_depth").cast(pl.Float64), fallback)
                              .alias("rel_depth"))


PANEL = "panel"


def site_figures(name: str, frame: pl.DataFrame, runs: Sequence[LoadedRun],
                 summary: pl.DataFrame | None = None) -> tuple[dict[str, Any], list[str]]:
    """Figures of one shared per-site table (columns seed, site, depth), by value
    column (at most ``MAX_VALUES`` of them): the value against depth, one colour per
    run, one panel per setting (state, selection, q, ...; read off the table's
    ``summary``, the experiment's summary of it, when there is one); and notes on what
    was not drawn."""
    from mi_probe._core import report

    frame = _with_rel_depth(frame)
    x, notes = _depth_axis(frame, runs)
    roles = column_roles(frame, summary_keys(summary))
    left: list[str] = []
    if len(roles.values) > MAX_VALUES:
        roles.values, left = roles.values[:MAX_VALUES], roles.values[MAX_VALUES:]
    facet: str | None = None
    if roles.settings:
        combos = frame.select(roles.settings).unique().height
        if combos > MAX_PANELS:
            return {}, [f"{name}: {combos} combinations of {', '.join(roles.settings)} are "
                        f"too many panels for a figure (at most {MAX_PANELS}); the table is "
                        f"in tables/{name}.parquet"]
        if len(roles.settings) == 1:
            facet = roles.settings[0]
            frame = frame.with_columns(pl.col(facet).cast(pl.String))
        else:
            facet = PANEL
            frame = frame.with_columns(pl.concat_str(
                [pl.format(f"{c}={{}}", pl.col(c).cast(pl.String)) for c in roles.settings],
                separator=", ").alias(PANEL))
    axis = ("depth: the site's index among all the model's sites" if x == "depth" else
            "rel_depth = depth / (the model's sites − 1): 0 = first site, 1 = last")
    subtitle = [axis] + notes + ([f"each seed's rows at a site are averaged over "
                                  f"{', '.join(roles.averaged)}"] if roles.averaged else [])
    figures = {}
    frame = frame.rename({LABEL: RUN})
    for value in roles.values:
        part = frame.drop_nulls(value)
        if part.height == 0:
            continue
        figures[f"{name}.{value}"] = report.by_depth(
            part, value, color=RUN, facet=facet, x=x, title=f"{name}: {value} by {x}",
            y_title=value, subtitle=subtitle)
    drawn_out = ([f"{name}: {len(left)} more value columns not drawn ({', '.join(left)}); "
                  f"they are in tables/{name}.parquet"] if left else [])
    return figures, drawn_out


def other_figures(name: str, frame: pl.DataFrame) -> dict[str, Any]:
    """Figures of shared tables without sites: the training curves and the evaluation
    accuracy, one colour per run."""
    from mi_probe._core import report

    frame = frame.rename({LABEL: RUN})
    if {"epoch", "val_acc", "seed"} <= set(frame.columns):
        part = frame.drop_nulls("val_acc")
        if part.height:
            return {f"{name}.val_acc": report.line(
                part, x="epoch", y="val_acc", color=RUN,
                title="Validation accuracy while training", y_title="validation accuracy")}
    if {"accuracy", "state", "seed"} <= set(frame.columns):
        return {f"{name}.accuracy": report.bars(
            frame.drop_nulls("accuracy"), x="state", y="accuracy", color=RUN,
            title="Evaluation accuracy", y_title="accuracy")}
    return {}


def figure_order(tables: Mapping[str, pl.DataFrame], kinds: set[str]) -> list[str]:
    """The tables to draw, in reading order: the one named after the experiment first,
    then the per-site tables from the shortest (the long per-channel ones last), then
    the others (training, evaluation). Summaries are left out: they are means of the
    per-seed tables, which are drawn instead."""
    def key(name: str) -> tuple[bool, bool, int, str]:
        frame = tables[name]
        per_site = {"seed", "site", "depth"} <= set(frame.columns)
        return name not in kinds, not per_site, frame.height, name

    return sorted((n for n in tables if not n.startswith("summary_")), key=key)


# ------------------------------------------------------------------ the page


def summary_text(runs: Sequence[LoadedRun], diff: Mapping[str, Sequence[str]],
                 shared: Sequence[str]) -> str:
    """The plain-text summary (``summary.txt``): the runs, what differs between their
    specs (flattened keys), and the tables they share."""
    lines = ["runs:"]
    for run in runs:
        seeds = ", ".join(str(s) for s in run.meta.get("seeds", []))
        lines.append(f"  {run.label}: {run.path} ({run.spec.get('name', '?')}, seeds "
                     f"{seeds or '?'}, {run.columns.get('run_id')})")
    lines.append("what differs between the specs (flattened key: value per run, in the "
                 "order above):" if diff else "the specs are the same")
    for key, values in diff.items():
        lines.append(f"  {key}: " + " | ".join(values))
    lines.append("tables in common: " + ", ".join(shared))
    return "\n".join(lines) + "\n"


#: the runs table wraps its long cells (paths, run ids, the estimator in words), so the
#: page fits a 1,280 px window without scrolling sideways
_RUNS_CSS = "table.runs td.s { white-space: normal; overflow-wrap: break-word; }\n"


def _page(title: str, runs: Sequence[LoadedRun], diff: Mapping[str, Sequence[str]],
          figures: Mapping[str, Any], tables: Mapping[str, pl.DataFrame],
          notes: Sequence[str]) -> str:
    from mi_probe._core.report import _CSS, _EMBED_OPTIONS, _js_bundle, _script_json

    esc = lambda v: html.escape(str(v), quote=True)  # noqa: E731
    body = [f"<h1>{esc(title)}</h1>",
            f'<p class="summary">{len(runs)} runs, {len(tables)} tables in common, '
            f"{len(figures)} figures; written {_dt.datetime.now().isoformat(timespec='seconds')}"
            "</p>"]
    head = "".join(f"<th>{esc(c)}</th>" for c in ("run", "folder", "spec", *RUN_COLUMNS,
                                                   "seeds"))
    rows = []
    for run in runs:
        cells = [run.label, run.path, run.spec.get("name", "?"),
                 *(run.columns.get(c, "") for c in RUN_COLUMNS),
                 ", ".join(str(s) for s in run.meta.get("seeds", []))]
        rows.append("<tr>" + "".join(f'<td class="s">{esc(c)}</td>' for c in cells) + "</tr>")
    body.append('<h2 id="runs">Runs</h2><div class="tablewrap"><table class="runs"><thead><tr>'
                f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    body.append('<h2 id="diff">What differs between the specs</h2>')
    if diff:
        head = "<th>key</th>" + "".join(f"<th>{esc(r.label)}</th>" for r in runs)
        rows = ["<tr>" + f'<td class="s">{esc(k)}</td>'
                + "".join(f'<td class="s">{esc(v)}</td>' for v in values) + "</tr>"
                for k, values in diff.items()]
        body.append(f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead>'
                    f"<tbody>{''.join(rows)}</tbody></table></div>")
    else:
        body.append("<p>Nothing: the specs are the same (the runs differ only in where and "
                    "when they ran).</p>")
    if figures:
        links = "".join(f'<a href="#figure-{i}">{esc(n)}</a>' for i, n in enumerate(figures))
        body.insert(2, f"<nav>{links}</nav>")
    if notes:
        items = "".join(f"<li>{esc(n)}</li>" for n in notes)
        body.append(f'<h2 id="notes">Notes</h2><ul class="notes">{items}</ul>')
    body.append('<h2 id="figures">Figures</h2><p class="summary">One colour per run: the '
                "mean over seeds with the run report's 95% t-interval (a band where a run "
                "has 3 or more seeds, each seed's value as a point where it has 2, none "
                "where it has 1). Hover a point for the interval and its n.</p>")
    specs = {}
    for i, (name, chart) in enumerate(figures.items()):
        body.append(f'<figure id="figure-{i}"><figcaption>{esc(name)}</figcaption>'
                    f'<div id="vis-{i}"></div></figure>')
        specs[f"vis-{i}"] = chart.to_dict()
    items = "".join(f'<li><a href="tables/{esc(n)}.parquet">tables/{esc(n)}.parquet</a> '
                    f"({frame.height} rows &times; {frame.width} columns)</li>"
                    for n, frame in tables.items())
    body.append(f'<h2 id="tables">Tables</h2><p class="summary">Each run\'s rows, '
                f"concatenated; {esc(LABEL)} and the run metadata columns "
                f"({esc(', '.join(RUN_COLUMNS))}) tell them apart.</p><ul>{items}</ul>")
    bundle = _js_bundle().replace("</script", "<\\/script")
    script = (f"const specs = {_script_json(specs)};\n"
              f"const options = {_script_json(_EMBED_OPTIONS)};\n"
              "for (const [id, spec] of Object.entries(specs)) {\n"
              "  vegaEmbed('#' + id, spec, options).catch(console.error);\n}\n")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="UTF-8">\n'
            f"<title>{esc(title)}</title>\n<style>{_CSS}{_RUNS_CSS}</style>\n"
            f'<script type="text/javascript">\n{bundle}\n</script>\n</head>\n<body>\n'
            + "\n".join(body)
            + f'\n<script type="text/javascript">\n{script}</script>\n</body>\n</html>\n')


# ------------------------------------------------------------------ entry point


def compare_runs(run_dirs: Sequence[Path], out: Path, labels: Sequence[str] | None = None,
                 pm: Any = None) -> Path:
    """Write ``out/index.html`` (one self-contained page, Vega inlined: no network)
    overlaying the finished runs in ``run_dirs``, ``out/tables/<name>.parquet`` (each
    shared table, the runs' rows concatenated) and ``out/summary.txt`` (the runs and
    their flattened spec diff); returns the page's path.

    ``labels``: one legend name per run (default: what differs between the specs, else
    the folder names). ``pm`` is accepted for symmetry with the other entry points and
    not needed: specs are read as plain YAML. RunError for fewer than two runs, a path
    that is not a complete run directory, the same run twice, or runs that share no
    table."""
    del pm  # specs are read as plain YAML, no plugin is needed
    paths = [Path(p) for p in run_dirs]
    if len(paths) < 2:
        raise RunError(f"compare needs at least 2 run directories, got {len(paths)}")
    resolved = [p.resolve() for p in paths]
    twice = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if twice:
        raise RunError(f"the same run is given twice: {', '.join(twice)}")
    if labels is not None and len(labels) != len(paths):
        raise RunError(f"{len(labels)} label(s) for {len(paths)} runs; give one per run")
    if labels is not None and len(set(labels)) != len(labels):
        raise RunError(f"labels must differ, got {list(labels)}")
    out = Path(out)
    if (out / "run.json").exists() or out.resolve() in resolved:
        raise RunError(f"--out {out} is a run directory; choose another folder for the "
                       "comparison")
    runs = [load_run(p) for p in paths]
    names = [set(r.tables) for r in runs]
    shared = sorted(set.intersection(*names))
    if not shared:
        listed = "; ".join(f"{r.path}: {', '.join(sorted(r.tables)) or 'none'}" for r in runs)
        raise RunError(f"the runs have no table in common ({listed})")
    diff = spec_diff([r.spec for r in runs])
    for run, label in zip(runs, labels if labels is not None else run_labels(runs, diff)):
        run.label = label
        # as the run stamped its tables (run.json), else rebuilt for a run from before
        run.columns = dict(run.meta.get("run_columns") or run_columns(
            run.spec, run.path, run.meta, _estimator_words(run)))
    stamped = [stamped_tables(r) for r in runs]
    tables: dict[str, pl.DataFrame] = {}
    for name in shared:
        try:
            tables[name] = pl.concat([s[name] for s in stamped], how="diagonal_relaxed")
        except pl.exceptions.PolarsError as exc:
            raise RunError(f"table {name!r} cannot be concatenated across the runs (a column "
                           f"has incompatible types): {str(exc).splitlines()[0]}") from None
    figures: dict[str, Any] = {}
    notes: list[str] = []
    for name in figure_order(tables, {str((r.spec.get("experiment") or {}).get("kind"))
                                      for r in runs}):
        frame = tables[name]
        if {"seed", "site", "depth"} <= set(frame.columns):
            drawn, why = site_figures(name, frame, runs, tables.get(f"summary_{name}"))
            figures.update(drawn)
            notes += why
        else:
            figures.update(other_figures(name, frame))
    for name, frame in tables.items():
        write_parquet(out / "tables" / f"{name}.parquet", frame)
    atomic_write_text(out / "summary.txt", summary_text(runs, diff, shared))
    title = "mi-probe compare: " + " vs ".join(r.label for r in runs)
    index = out / "index.html"
    atomic_write_text(index, _page(title, runs, diff, figures, tables, notes))
    return index
