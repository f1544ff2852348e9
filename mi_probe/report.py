"""Charts, figure files and the offline ``index.html`` of a run.

Chart helpers take long-format per-seed frames (the tables of ``mi_probe.tables``) and
aggregate over seeds themselves, so every curve is a mean with a 95% t-interval band
(no band with one seed). Figures are written as PNG (for papers and the index page),
HTML with the Vega JavaScript inlined (interactive, opens without network) and,
on request, SVG. ``index.html`` ties a run together with no external resources.

This module never imports torch: reports can be rebuilt from tables alone.
"""

from __future__ import annotations

import functools
import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union
from urllib.parse import quote

import altair as alt
import polars as pl

from mi_probe.errors import RunError
from mi_probe.tables import aggregate_seeds, atomic_write_bytes, atomic_write_text

#: Anything altair can save: single, layered, faceted or concatenated charts.
AnyChart = Union[alt.Chart, alt.LayerChart, alt.FacetChart, alt.ConcatChart,
                 alt.HConcatChart, alt.VConcatChart, alt.RepeatChart]

#: Figure formats ``save_chart`` writes.
FORMATS = ("png", "html", "svg")

#: Default chart size (pixels); faceted panels are narrower so three fit side by side.
WIDTH, HEIGHT, FACET_WIDTH, FACET_COLUMNS = 500, 300, 300, 3

#: Interactive HTML keeps export/source actions but drops the "open in editor" link,
#: which would need the network.
_EMBED_OPTIONS = {"renderer": "svg",
                  "actions": {"export": True, "source": True, "compiled": False, "editor": False}}


# --------------------------------------------------------------------------- data


def _json_safe(frame: pl.DataFrame) -> pl.DataFrame:
    """Frame whose values serialise to strict JSON: NaN/inf become null, dates strings.

    Vega reads nulls as gaps; NaN or Infinity would make the spec invalid JSON.
    """
    exprs = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if dtype.is_float():
            exprs.append(pl.when(col.is_finite()).then(col).otherwise(None).alias(name))
        elif dtype.is_temporal():
            exprs.append(col.cast(pl.String).alias(name))
    return frame.with_columns(exprs) if exprs else frame


def _data(frame: pl.DataFrame) -> alt.InlineData:
    """Inline chart data; bypasses altair's 5000-row limit (channel tables exceed it)."""
    return alt.InlineData(values=_json_safe(frame).to_dicts())


def _field(name: str) -> str:
    """Vega-Lite field reference for a column (dots and brackets would mean nesting)."""
    return re.sub(r"([.\[\]\\])", r"\\\1", name)


def _require(frame: pl.DataFrame, columns: Iterable[str | None], what: str) -> None:
    missing = [c for c in dict.fromkeys(columns) if c is not None and c not in frame.columns]
    if missing:
        raise RunError(f"{what}: frame lacks columns {missing}; found {frame.columns}")


def _is_numeric(frame: pl.DataFrame, column: str) -> bool:
    return frame.schema[column].is_numeric()


def _x_type(frame: pl.DataFrame, column: str) -> str:
    return "quantitative" if _is_numeric(frame, column) else "ordinal"


def _integer_axis(frame: pl.DataFrame, column: str) -> Any:
    """Whole-number ticks for a short integer axis (depth, epoch); Vega would add 0.5 steps."""
    if frame.height == 0 or not frame.schema[column].is_integer():
        return alt.Undefined
    lo, hi = int(frame[column].min()), int(frame[column].max())
    return alt.Axis(values=list(range(lo, hi + 1)), format="d") if hi - lo <= 20 else alt.Undefined


def _tip(frame: pl.DataFrame, column: str, title: str | None = None,
         fmt: str | None = None) -> alt.Tooltip:
    """Tooltip for a column; the type is explicit because the data is inline (not pandas)."""
    vtype = "quantitative" if _is_numeric(frame, column) else "nominal"
    if fmt is None and frame.schema[column].is_float():
        fmt = ".4g"
    return alt.Tooltip(_field(column), type=vtype, title=title or column,
                       format=fmt if fmt is not None else alt.Undefined)


def _sized(chart: AnyChart, title: str, width: int, height: int) -> AnyChart:
    """Chart with its size and, when given, its title (an empty title draws none)."""
    props: dict[str, Any] = {"width": width, "height": height}
    if title:
        props["title"] = title
    return chart.properties(**props)


def _mean_ci_layers(agg: pl.DataFrame, x: str, y: str, color: str | None, x_title: str,
                    y_title: str, extra_tooltip: Sequence[str] = (),
                    points: bool = True) -> list[alt.Chart]:
    """A mean line (with points) and, when any group has >1 seed, a CI band beneath it."""
    x_enc = alt.X(_field(x), type=_x_type(agg, x), title=x_title, axis=_integer_axis(agg, x))
    # Both layers share the colour legend; opaque symbols so it matches the lines, not the band.
    color_enc = (alt.Color(_field(color), type="nominal", title=color,
                           legend=alt.Legend(symbolOpacity=1))
                 if color is not None else alt.Undefined)
    tooltip = [_tip(agg, c) for c in dict.fromkeys([*extra_tooltip, x, color]) if c is not None]
    tooltip += [_tip(agg, f"{y}_mean", f"{y} mean", ".4g"),
                _tip(agg, f"{y}_ci_low", "95% CI low", ".4g"),
                _tip(agg, f"{y}_ci_high", "95% CI high", ".4g"),
                _tip(agg, "n_seeds")]
    line = alt.Chart().mark_line(point=points).encode(
        x=x_enc, y=alt.Y(_field(f"{y}_mean"), type="quantitative", title=y_title),
        color=color_enc, tooltip=tooltip)
    layers = [line]
    if agg.height and int(agg["n_seeds"].max()) > 1:
        band = alt.Chart().mark_area(opacity=0.2).encode(
            x=x_enc, y=alt.Y(_field(f"{y}_ci_low"), type="quantitative", title=y_title),
            y2=alt.Y2(_field(f"{y}_ci_high")), color=color_enc)
        layers.insert(0, band)
    return layers


# --------------------------------------------------------------------------- charts


def by_depth(frame: pl.DataFrame, y: str, color: str = "state", title: str = "",
             y_title: str | None = None, facet: str | None = None,
             x_title: str = "depth") -> AnyChart:
    """Per-site value against depth: mean over seeds with a 95% CI band, one line per ``color``.

    ``frame`` is a per-seed site table (seed, state, site, depth, site_kind, ``y``);
    rows are aggregated by [color, site, depth] (+ ``facet``). Pass units in ``y_title``,
    e.g. ``"I(X;T) (nats)"``.
    """
    _require(frame, ["site", "depth", y, color, facet], "by_depth")
    by = list(dict.fromkeys([c for c in (color, "site", "depth", facet) if c is not None]))
    agg = aggregate_seeds(frame, by, [y])
    layers = _mean_ci_layers(agg, "depth", y, color, x_title, y_title or y,
                             extra_tooltip=["site"])
    chart = alt.layer(*layers, data=_data(agg))
    if facet is None:
        return _sized(chart, title, WIDTH, HEIGHT)
    faceted = chart.properties(width=FACET_WIDTH, height=HEIGHT).facet(
        facet=alt.Facet(_field(facet), type="nominal", title=facet), columns=FACET_COLUMNS)
    return faceted.properties(title=title) if title else faceted


def line(frame: pl.DataFrame, x: str, y: str, color: str | None = None, title: str = "",
         *, x_title: str | None = None, y_title: str | None = None) -> AnyChart:
    """``y`` against ``x`` (e.g. val_acc per epoch), mean over seeds with a 95% CI band.

    Rows are aggregated by [color, x], so one line per ``color`` value.
    """
    _require(frame, [x, y, color], "line")
    by = list(dict.fromkeys([c for c in (color, x) if c is not None]))
    agg = aggregate_seeds(frame, by, [y])
    points = agg.height == 0 or agg[x].n_unique() <= 30
    layers = _mean_ci_layers(agg, x, y, color, x_title or x, y_title or y, points=points)
    return _sized(alt.layer(*layers, data=_data(agg)), title, WIDTH, HEIGHT)


def scatter(frame: pl.DataFrame, x: str, y: str, color: str | None = None, title: str = "",
            tooltip: Sequence[str] = (), *, x_title: str | None = None,
            y_title: str | None = None) -> alt.Chart:
    """Plain scatter of per-row values (no seed aggregation), e.g. I(X;T) vs I(T;Y) per channel."""
    _require(frame, [x, y, color, *tooltip], "scatter")
    tips = [_tip(frame, c) for c in dict.fromkeys([*tooltip, x, y, color]) if c is not None]
    color_enc = alt.Undefined
    if color is not None:
        color_type = "quantitative" if _is_numeric(frame, color) and color != "seed" else "nominal"
        color_enc = alt.Color(_field(color), type=color_type, title=color)
    chart = alt.Chart(_data(frame)).mark_circle(size=30, opacity=0.6).encode(
        x=alt.X(_field(x), type="quantitative", title=x_title or x),
        y=alt.Y(_field(y), type="quantitative", title=y_title or y),
        color=color_enc, tooltip=tips)
    return _sized(chart, title, WIDTH, HEIGHT)


def heatmap(frame: pl.DataFrame, x: str, y: str, value: str, title: str = "", *,
            value_title: str | None = None, x_sort: Sequence[Any] | None = None,
            y_sort: Sequence[Any] | None = None) -> alt.Chart:
    """Matrix of ``value`` over (x, y), e.g. layer-layer MI; mean over seeds when present.

    Pass ``x_sort``/``y_sort`` (e.g. sites in depth order) to fix the axis order; the
    default sorts the labels.
    """
    _require(frame, [x, y, value], "heatmap")
    agg = aggregate_seeds(frame, list(dict.fromkeys([x, y])), [value])
    tips = [_tip(agg, x), _tip(agg, y), _tip(agg, f"{value}_mean", f"{value} mean", ".4g"),
            _tip(agg, f"{value}_ci_low", "95% CI low", ".4g"),
            _tip(agg, f"{value}_ci_high", "95% CI high", ".4g"), _tip(agg, "n_seeds")]
    chart = alt.Chart(_data(agg)).mark_rect().encode(
        x=alt.X(_field(x), type="ordinal", title=x,
                sort=list(x_sort) if x_sort is not None else "ascending"),
        y=alt.Y(_field(y), type="ordinal", title=y,
                sort=list(y_sort) if y_sort is not None else "ascending"),
        color=alt.Color(_field(f"{value}_mean"), type="quantitative",
                        title=value_title or value, scale=alt.Scale(scheme="viridis")),
        tooltip=tips)
    return _sized(chart, title, WIDTH, WIDTH)


# --------------------------------------------------------------------------- figure files


def _vl_version() -> str | None:
    """The Vega-Lite version altair targets, in vl-convert's spelling (``"6.4"``)."""
    import vl_convert

    match = re.match(r"v?(\d+)\.(\d+)", alt.SCHEMA_VERSION)
    if match is None:
        return None
    version = f"{match.group(1)}.{match.group(2)}"
    return version if version in vl_convert.get_vegalite_versions() else None


@functools.lru_cache(maxsize=1)
def _js_bundle() -> str:
    """vega + vega-lite + vega-embed as one script (~0.9 MB; built once per process, ~1 s)."""
    import vl_convert

    return vl_convert.javascript_bundle(vl_version=_vl_version())


def _script_json(obj: Any) -> str:
    """JSON safe to place inside a <script> element (no ``</script>`` or ``<!--`` breakout)."""
    text = json.dumps(obj, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def chart_html(chart: AnyChart, title: str = "chart") -> str:
    """A standalone HTML page rendering ``chart`` with all JavaScript inlined (works offline).

    Built here rather than with ``chart.to_html(inline=True)`` because altair and
    vl-convert both embed the spec unescaped, so a data value such as ``</script>``
    would break the page.
    """
    spec = chart.to_dict()
    bundle = _js_bundle().replace("</script", "<\\/script")
    return f"""<!DOCTYPE html>
<html>
<head>
<meta charset="UTF-8">
<title>{html.escape(title)}</title>
<style>
  #vis.vega-embed {{ width: 100%; display: flex; }}
  #vis.vega-embed details, #vis.vega-embed details summary {{ position: relative; }}
</style>
<script type="text/javascript">
{bundle}
</script>
</head>
<body>
<div id="vis"></div>
<script type="text/javascript">
  vegaEmbed('#vis', {_script_json(spec)}, {_script_json(_EMBED_OPTIONS)}).catch(console.error);
</script>
</body>
</html>
"""


def save_chart(chart: AnyChart, figures_dir: Path, name: str,
               formats: Sequence[str] = ("png", "html")) -> dict[str, Path]:
    """Write ``figures_dir/<name>.<fmt>`` for each format; returns {format: path}.

    png: 2x raster via vl-convert; svg: vector; html: interactive and fully offline.
    Every file is written atomically, so a crash never leaves a half-written figure.
    """
    import vl_convert

    wanted = list(dict.fromkeys(formats))
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown:
        raise RunError(f"unknown figure format(s) {unknown} for {name!r}; "
                       f"valid formats are {list(FORMATS)}")
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise RunError(f"figure name must be a plain file name, got {name!r}")
    figures_dir = Path(figures_dir)
    try:
        spec_json = chart.to_json()
    except Exception as exc:
        raise RunError(f"figure {name!r}: chart cannot be serialised: {exc}") from exc
    version = _vl_version()
    out: dict[str, Path] = {}
    for fmt in wanted:
        path = figures_dir / f"{name}.{fmt}"
        try:
            if fmt == "png":
                atomic_write_bytes(path, vl_convert.vegalite_to_png(
                    spec_json, vl_version=version, scale=2))
            elif fmt == "svg":
                atomic_write_text(path, vl_convert.vegalite_to_svg(spec_json, vl_version=version))
            else:
                atomic_write_text(path, chart_html(chart, title=name))
        except (ValueError, RuntimeError) as exc:
            raise RunError(f"figure {name!r}: rendering {fmt} failed: {exc}") from exc
        out[fmt] = path
    return out


# --------------------------------------------------------------------------- index page

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
pre { background: #f6f8fa; padding: .4em .6em; margin: 0; overflow-x: auto; font-size: 85%; }
nav a { margin-right: .8em; }
.warnings { background: #fff4e5; border-left: 4px solid #f0a000; padding: .5em 1em .5em 2em; }
.checks { list-style: none; padding-left: 0; }
.pass::before { content: "\\2714  "; color: #1a7f37; } .fail::before { content: "\\2718  "; color: #cf222e; }
.fail { font-weight: 600; }
figure { margin: 1em 0 2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-family: monospace; margin-bottom: .3em; }
.tablewrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 85%; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; position: sticky; top: 0; } td.s { text-align: left; }
.null { color: #999; } .truncated { color: #9a6700; font-style: italic; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _anchor(kind: str, name: str) -> str:
    return f"{kind}-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _format_cell(value: Any) -> tuple[str, bool]:
    """Escaped cell text (floats to 4 significant digits) and whether it is text-like."""
    if value is None:
        return '<span class="null">null</span>', False
    if isinstance(value, bool):
        return _esc(value), False
    if isinstance(value, float):
        return _esc("NaN" if math.isnan(value) else f"{value:.4g}"), False
    if isinstance(value, int):
        return _esc(value), False
    return _esc(value), True


def _meta_value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return f"<pre>{_esc(json.dumps(value, indent=2, default=str))}</pre>"
    if isinstance(value, float):
        return _esc(f"{value:.4g}")
    return _esc(value)


def _relative(run_dir: Path, path: Path) -> str:
    """URL (escaped for an attribute) of ``path`` relative to the index page."""
    path = Path(path)
    rel = os.path.relpath(path, run_dir) if path.is_absolute() else str(path)
    return _esc(quote(Path(rel).as_posix()))


def _table_html(name: str, frame: pl.DataFrame, max_rows: int) -> str:
    shown = frame.head(max_rows)
    head = "".join(f'<th title="{_esc(dtype)}">{_esc(col)}</th>'
                   for col, dtype in frame.schema.items())
    rows = []
    for row in shown.iter_rows():
        cells = []
        for value in row:
            text, is_text = _format_cell(value)
            cells.append(f'<td class="s">{text}</td>' if is_text else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    parts = [f'<h3 id="{_anchor("table", name)}">{_esc(name)} '
             f'<small>({frame.height} rows &times; {frame.width} columns)</small></h3>']
    if frame.height > max_rows:
        parts.append(f'<p class="truncated">showing {shown.height} of {frame.height} rows; '
                     f'full table: tables/{_esc(name)}.parquet</p>')
    parts.append(f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table></div>')
    return "\n".join(parts)


def _check_html(check: Mapping[str, Any]) -> str:
    missing = [k for k in ("name", "passed") if k not in check]
    if missing:
        raise RunError(f"check {dict(check)!r} lacks keys {missing} (expected name, passed, detail)")
    passed = bool(check["passed"])
    detail = check.get("detail") or ""
    status = "PASS" if passed else "FAIL"
    return (f'<li class="{"pass" if passed else "fail"}">{status} {_esc(check["name"])}'
            + (f": {_esc(detail)}" if detail else "") + "</li>")


def write_index(run_dir: Path, title: str, meta: Mapping[str, Any],
                figures: Mapping[str, Mapping[str, Path]], tables: Mapping[str, pl.DataFrame],
                notes: Sequence[str] = (), warnings: Sequence[str] = (), max_rows: int = 200,
                checks: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write ``run_dir/index.html``: meta, notes, warnings, checks, figures and tables.

    The page is self-contained (inline CSS, no scripts, no network); figures are linked
    by relative path so the run folder can be moved or archived as a whole. All text is
    HTML-escaped; tables longer than ``max_rows`` are truncated with a note pointing at
    the parquet file.
    """
    run_dir = Path(run_dir)
    if max_rows < 0:
        raise RunError(f"max_rows must be >= 0, got {max_rows}")
    body = [f"<h1>{_esc(title)}</h1>"]
    if meta:
        items = "".join(f"<dt>{_esc(k)}</dt><dd>{_meta_value(v)}</dd>" for k, v in meta.items())
        body.append(f'<dl class="meta">{items}</dl>')
    nav = [f'<a href="#{_anchor("figure", n)}">{_esc(n)}</a>' for n in figures]
    nav += [f'<a href="#{_anchor("table", n)}">{_esc(n)}</a>' for n in tables]
    if nav:
        body.append("<nav>" + "".join(nav) + "</nav>")
    if warnings:
        items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
        body.append(f'<h2 id="warnings">Warnings</h2><ul class="warnings">{items}</ul>')
    if checks:
        n_pass = sum(bool(c.get("passed")) for c in checks)
        items = "".join(_check_html(c) for c in checks)
        body.append(f'<h2 id="checks">Checks ({n_pass}/{len(checks)} passed)</h2>'
                    f'<ul class="checks">{items}</ul>')
    if notes:
        items = "".join(f"<li>{_esc(n)}</li>" for n in notes)
        body.append(f'<h2 id="notes">Notes</h2><ul class="notes">{items}</ul>')
    if figures:
        body.append('<h2 id="figures">Figures</h2>')
        for name, files in figures.items():
            parts = [f'<figure id="{_anchor("figure", name)}"><figcaption>{_esc(name)}'
                     + "".join(f' &middot; <a href="{_relative(run_dir, p)}">{_esc(fmt)}</a>'
                               for fmt, p in files.items())
                     + "</figcaption>"]
            image = files.get("png") or files.get("svg")
            if image is not None:
                img = f'<img src="{_relative(run_dir, image)}" alt="{_esc(name)}">'
                link = files.get("html")
                parts.append(f'<a href="{_relative(run_dir, link)}" title="interactive">{img}</a>'
                             if link is not None else img)
            parts.append("</figure>")
            body.append("".join(parts))
    if tables:
        body.append('<h2 id="tables">Tables</h2>')
        body += [_table_html(name, frame, max_rows) for name, frame in tables.items()]
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="UTF-8">\n'
            f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
    path = run_dir / "index.html"
    atomic_write_text(path, page)
    return path


def render_run(run_dir: Path, figures_charts: Mapping[str, AnyChart],
               tables: Mapping[str, pl.DataFrame], meta: Mapping[str, Any],
               notes: Sequence[str] = (), warnings: Sequence[str] = (),
               formats: Sequence[str] = ("png", "html"),
               checks: Sequence[Mapping[str, Any]] = (), title: str | None = None,
               max_rows: int = 200) -> Path:
    """Save every chart under ``run_dir/figures/`` and write ``run_dir/index.html``.

    A chart that fails to render does not cost the rest of the report: the index is
    written with the failure among its warnings, then RunError names the failed figures.
    ``title`` defaults to meta's ``spec``/``name`` or the folder name.
    """
    run_dir = Path(run_dir)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise RunError(f"unknown figure format(s) {unknown}; valid formats are {list(FORMATS)}")
    figures: dict[str, dict[str, Path]] = {}
    failed: list[str] = []
    all_warnings = list(warnings)
    for name, chart in figures_charts.items():
        try:
            figures[name] = save_chart(chart, run_dir / "figures", name, formats)
        except RunError as exc:
            failed.append(name)
            all_warnings.append(str(exc))
    if title is None:
        title = str(meta.get("spec") or meta.get("name") or run_dir.name)
    index = write_index(run_dir, title, meta, figures, tables, notes=notes,
                        warnings=all_warnings, max_rows=max_rows, checks=checks)
    if failed:
        raise RunError(f"figures {failed} could not be rendered (see warnings in {index})")
    return index
