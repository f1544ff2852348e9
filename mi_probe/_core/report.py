"""Charts, figure files and the offline ``index.html`` of a run.

Chart helpers take long-format per-seed frames (the tables of ``mi_probe._core.tables``) and
aggregate over seeds themselves: rows that share a seed within a group (sites, classes,
draws) are averaged first, so every curve is a mean with a 95% t-interval over seeds,
and the number of seeds behind each interval is printed on the chart (see
``_mean_ci_layers``). Figures are written as PNG (for papers and the index page),
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
from typing import Any, Iterable, Literal, Mapping, Sequence, Union, cast
from urllib.parse import quote

import altair as alt
import polars as pl

from mi_probe.errors import RunError
from mi_probe._core.claims import FAILS, verdict_of
from mi_probe._core.files import atomic_write_bytes, atomic_write_text
from mi_probe._core.tables import N_SUFFIX, RUN_COLUMNS, aggregate_seeds

#: Anything altair can save: single, layered, faceted or concatenated charts.
AnyChart = Union[alt.Chart, alt.LayerChart, alt.FacetChart, alt.ConcatChart,
                 alt.HConcatChart, alt.VConcatChart, alt.RepeatChart]

#: Figure formats ``save_chart`` writes.
FORMATS = ("png", "html", "svg")

#: Default chart size (pixels); faceted panels are narrower so three fit side by side.
WIDTH, HEIGHT, FACET_WIDTH, FACET_COLUMNS = 500, 300, 300, 3

#: One colour per meaning in every chart, in reading order: a model state, a channel
#: selection, a knockout set, a regulariser or an activation keeps its colour from
#: figure to figure, and legends list the series in this order (top, random, bottom;
#: cover, redundant, random; trained, random), not alphabetically. "random" is the same
#: control, and the same colour, wherever it appears. Other categories use Vega's
#: scheme; in a chart that mixes both they get colours no listed series there uses.
PALETTE = {
    "trained": "#1f77b4",
    "top": "#d62728", "cover": "#d62728", "redundant": "#9467bd",
    "random": "#ff7f0e",
    "bottom": "#2ca02c",
    "trained (shuffled labels)": "#9ecae1", "random (shuffled labels)": "#fdd0a2",
    "none": "#1f77b4", "cross-entropy": "#1f77b4", "hsic": "#e377c2", "nhsic": "#8c564b",
    "relu": "#1f77b4", "tanh": "#9467bd",
}

#: Colours for categories not in ``PALETTE`` when a chart also shows some that are.
_SPARE_COLOURS = ("#7f7f7f", "#17becf", "#bcbd22", "#8c564b", "#e377c2", "#9467bd",
                  "#2ca02c", "#ff7f0e", "#d62728", "#1f77b4")


def series_order(values: Iterable[Any]) -> list[Any]:
    """The distinct non-null ``values`` in reading order: ``PALETTE``'s series first, in
    its order, then the others sorted (as text)."""
    distinct = [v for v in dict.fromkeys(values) if v is not None]
    rank = {name: i for i, name in enumerate(PALETTE)}
    known = sorted((v for v in distinct if isinstance(v, str) and v in rank), key=rank.__getitem__)
    return known + sorted((v for v in distinct if v not in known), key=str)


def color_scale(values: Iterable[Any]) -> Any:
    """A colour scale giving every ``PALETTE`` series its fixed colour, its domain in
    reading order (``series_order``); alt.Undefined (Vega's scheme, alphabetical) when
    none of ``values`` is a listed series."""
    domain = series_order(values)
    known = [v for v in domain if isinstance(v, str) and v in PALETTE]
    if not known:
        return alt.Undefined
    used = {PALETTE[v] for v in known}
    spare = [c for c in _SPARE_COLOURS if c not in used] or list(_SPARE_COLOURS)
    colours, extra = [], 0
    for v in domain:
        if v in known:
            colours.append(PALETTE[v])
        else:
            colours.append(spare[extra % len(spare)])
            extra += 1
    return alt.Scale(domain=domain, range=colours)


def color_encoding(values: Iterable[Any], field: str, title: str | None = None, **kwargs: Any) -> alt.Color:
    """Nominal colour encoding of ``field`` with the fixed colours and order of
    ``color_scale`` (the legend follows the domain's order). Every chart helper draws its
    series with it; experiments drawing their own charts should too. ``values``: the
    field's values in the chart (a column or list)."""
    scale = color_scale(values)
    sort = scale.domain if scale is not alt.Undefined else alt.Undefined
    return alt.Color(_field(field), type="nominal", title=title if title is not None else field,
                     scale=scale, sort=sort, **kwargs)


def _offset(values: Iterable[Any], field: str) -> alt.XOffset:
    """Side-by-side offset of grouped bars in the series' reading order."""
    return alt.XOffset(_field(field), type="nominal", sort=series_order(values))

#: Fewest values for which a chart draws its 95% band. With two, the t-quantile (12.7)
#: makes the band about nine standard deviations wide: it then shows the quantile more
#: than the data, so the two seeds' own values are drawn as points instead.
BAND_MIN_N = 3

#: Column of chart data telling aggregate rows ("mean") from per-seed rows ("replicate").
_ROW_KIND = "_row_kind"

#: Chart-data column marking points with a band whose neighbours have none: an area of
#: one point has no width, so these get an error bar instead.
_LONE_BAND = "_lone_band"

#: Chart-data column holding the "n=<k>" label of points whose n is below the chart's most.
_N_LABEL = "_n_label"

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


def _x_type(frame: pl.DataFrame, column: str) -> Literal["quantitative", "ordinal"]:
    return "quantitative" if _is_numeric(frame, column) else "ordinal"


def _integer_axis(frame: pl.DataFrame, column: str) -> Any:
    """Whole-number ticks for a short integer axis (depth, epoch); Vega would add 0.5 steps."""
    if frame.height == 0 or not frame.schema[column].is_integer():
        return alt.Undefined
    lo, hi = int(cast(int, frame[column].min())), int(cast(int, frame[column].max()))
    return alt.Axis(values=list(range(lo, hi + 1)), format="d") if hi - lo <= 20 else alt.Undefined


#: Most distinct values of a numeric x axis that get a tick each, exactly at the values
#: (q in {0.1, 0.3, 0.5}: ticks at 0.1, 0.3 and 0.5, not at Vega's 0.14, 0.18, ...).
FEW_TICKS = 8


def _x_axis(frame: pl.DataFrame, column: str) -> Any:
    """Axis of a numeric x: ticks exactly at its values when it takes at most
    ``FEW_TICKS`` of them, else whole-number ticks on a short integer axis
    (``_integer_axis``), else Vega's."""
    if frame.height == 0 or column not in frame.columns or not _is_numeric(frame, column):
        return alt.Undefined
    values = frame[column].drop_nulls()
    if frame.schema[column].is_float():
        values = values.filter(values.is_finite())
    distinct = sorted(values.unique().to_list())
    if 0 < len(distinct) <= FEW_TICKS:
        integer = frame.schema[column].is_integer()
        return alt.Axis(values=distinct, format="d" if integer else "~g")
    return _integer_axis(frame, column)


def _site_axis(frame: pl.DataFrame, x: str = "depth") -> Any:
    """A depth axis labelled with site names (one tick per depth) when every depth is one
    site, so a reader sees ``layer3.1.post_add`` rather than 11. Depths need not be
    consecutive (a spec that selects some sites keeps the model's own depths)."""
    if (frame.height == 0 or "site" not in frame.columns or x not in frame.columns
            or not frame.schema[x].is_integer()):
        return alt.Undefined
    pairs = frame.select(x, "site").unique()
    if pairs[x].n_unique() != pairs.height or pairs.height > 40:
        return alt.Undefined
    names = {int(d): str(s) for d, s in pairs.iter_rows()}
    lookup = "{" + ", ".join(f"{d}: {json.dumps(s)}" for d, s in sorted(names.items())) + "}"
    return alt.Axis(values=sorted(names), labelExpr=f"{lookup}[datum.value]", labelAngle=-45,
                    labelLimit=160, labelOverlap=False, labelFontSize=9 if len(names) > 12 else 10)


def _tip(frame: pl.DataFrame, column: str, title: str | None = None,
         fmt: str | None = None) -> alt.Tooltip:
    """Tooltip for a column; the type is explicit because the data is inline (not pandas)."""
    vtype: Literal["quantitative", "nominal"] = (
        "quantitative" if _is_numeric(frame, column) else "nominal")
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


def _plural(replicate: str | None) -> str:
    """What the replicates are called in chart text: "seeds", "pairs", or "rows" (None)."""
    return "rows" if replicate is None else f"{replicate}s"


def _aggregate(frame: pl.DataFrame, by: list[str], value: str, replicate: str | None,
               what: str) -> tuple[pl.DataFrame, pl.DataFrame, str | None]:
    """(mean/interval rows, per-replicate rows, replicate column used) of ``value``.

    Rows that share a replicate (a seed) within a group of ``by``, e.g. the sites,
    classes or random draws of one seed, are averaged first: they are not independent,
    so only the replicates count towards n. Null and NaN are skipped. The default
    replicate "seed" falls back to one observation per row (replicate None) when the
    frame has no seed column; any other missing replicate column is an error.
    """
    if replicate not in (None, "seed") and replicate not in frame.columns:
        raise RunError(f"{what}: replicate column {replicate!r} is not in the frame; "
                       f"found {frame.columns}")
    dtype = frame.schema[value]
    if not (dtype.is_numeric() or dtype in (pl.Boolean, pl.Null)):
        raise RunError(f"{what}: {value!r} must be numeric, found {dtype}")
    clean = pl.col(value).cast(pl.Float64).fill_nan(None)
    if replicate not in frame.columns:
        values, replicate = frame.select(*by, clean), None
    else:
        keys = list(dict.fromkeys([*by, replicate]))
        values = frame.group_by(keys, maintain_order=True).agg(clean.mean())
    return aggregate_seeds(values, by, [value]), values, replicate


def _n_range(agg: pl.DataFrame, n: str) -> tuple[int, int]:
    if agg.height == 0:
        return 0, 0
    return int(cast(int, agg[n].min())), int(cast(int, agg[n].max()))


def _interval_note(agg: pl.DataFrame, n: str, unit: str, band: bool = True,
                   mark: Literal["band", "cell", "bar"] | None = None) -> str:
    """Subtitle naming the interval and the n behind it, e.g. "... over seeds, n = 3";
    every fact once (n = 2 once said "n = 2; n = 2: values drawn as points").

    ``mark``: how the chart draws the interval. "band" (line charts, the default with
    ``band``): bands, and per-seed points where n = 2; "cell" (heatmaps, ``band=False``):
    in the tooltip only, varying n labelled on cells; "bar" (bar charts): error bars,
    and per-seed points where n = 2.
    """
    mark = mark or ("band" if band else "cell")
    lo, hi = _n_range(agg, n)
    if hi < 2:
        return f"mean over {unit}, n = 1: no interval" if hi == 1 else "no values (n = 0)"
    where = {"band": "points", "cell": "cells", "bar": "bars"}[mark]
    drawn = {"band": "band", "cell": "", "bar": "error bar"}[mark]
    interval = {"band": "95% t-interval", "cell": "95% t-interval (tooltip)",
                "bar": "95% t-interval (error bars)"}[mark]
    counts = f"n = {hi}" if lo == hi else f"n = {lo}–{hi} ({where} labelled where n < {hi})"
    if hi < BAND_MIN_N and drawn:
        # at most two values per point: none gets a band, the values are drawn instead
        return (f"mean over {unit}, {counts}" + (": " if lo == hi else "; ")
                + f"values drawn as points{' where n = 2' if lo < hi else ''}, no {drawn} "
                "(95% t-interval in the tooltip)")
    note = f"mean and {interval} over {unit}, {counts}"
    if drawn and lo < BAND_MIN_N:
        note += f"; {drawn} only where n ≥ {BAND_MIN_N}, values drawn as points where n = 2"
    return note


def _with_n_labels(agg: pl.DataFrame, n: str) -> pl.DataFrame:
    """``agg`` with the "n=<k>" label of rows whose n is below the most (null elsewhere)."""
    _, hi = _n_range(agg, n)
    return agg.with_columns(pl.when(pl.col(n) < hi).then(pl.format("n={}", pl.col(n)))
                            .otherwise(None).cast(pl.String).alias(_N_LABEL))


def _chart_data(agg: pl.DataFrame, values: pl.DataFrame, by: list[str], y: str, x: str,
                series: list[str]) -> pl.DataFrame:
    """Aggregate rows (``_row_kind`` = mean) plus the per-replicate rows of groups whose n
    is at least 2 but below ``BAND_MIN_N`` (``_row_kind`` = replicate), as one frame so
    that faceted charts can share it. ``series`` are the columns that tell lines apart;
    they decide which band points are isolated (``_lone_band``)."""
    n = f"{y}{N_SUFFIX}"
    wide = (pl.col(n) >= BAND_MIN_N) & pl.col(f"{y}_ci_low").is_not_null()
    before, after = wide.shift(1), wide.shift(-1)
    if series:
        before, after = before.over(series), after.over(series)
    rows = (_with_n_labels(agg, n).sort([*series, x], maintain_order=True)
            .with_columns((wide & ~before.fill_null(False) & ~after.fill_null(False))
                          .alias(_LONE_BAND), pl.lit("mean").alias(_ROW_KIND)))
    few = agg.filter((pl.col(n) >= 2) & (pl.col(n) < BAND_MIN_N)).select(*by, n)
    if few.height == 0:
        return rows
    points = values.join(few, on=by, how="inner", nulls_equal=True).drop_nulls(y).with_columns(
        pl.lit("replicate").alias(_ROW_KIND))
    return pl.concat([rows, points], how="diagonal_relaxed")


def _js_field(name: str) -> str:
    """Vega expression reading field ``name`` of the current datum (any characters)."""
    return f"datum[{json.dumps(name)}]"


def _mean_ci_layers(data: pl.DataFrame, x: str, y: str, color: str | None, x_title: str,
                    y_title: str, extra_tooltip: Sequence[str] = (),
                    points: bool = True, replicate: str | None = "seed",
                    x_axis: Any = None) -> list[alt.Chart]:
    """Layers of a mean-over-seeds chart drawn from ``_chart_data`` rows.

    * a mean line (with points), its tooltip giving the 95% interval and its n;
    * a 95% band beneath it where n ≥ ``BAND_MIN_N`` (the band breaks elsewhere, and a
      point with a band but no neighbour to span to gets an error bar);
    * where n = 2, each seed's value as a hollow point instead of a band;
    * when n differs between points, an "n=<k>" label on each point below the most.

    n is the number of seeds with a value (``<y>_n``), not of rows; the chart's
    subtitle (``_interval_note``) states it for the whole chart.
    """
    n = f"{y}{N_SUFFIX}"
    is_mean = alt.FieldEqualPredicate(field=_ROW_KIND, equal="mean")
    if x_axis is None or x_axis is alt.Undefined:
        x_axis = _x_axis(data, x)
    x_enc = alt.X(_field(x), type=_x_type(data, x), title=x_title, axis=x_axis)
    # Layers share the colour legend; opaque symbols so it matches the lines, not the band.
    color_enc = (color_encoding(data[color].to_list() if color in data.columns else [], color,
                                legend=alt.Legend(symbolOpacity=1))
                 if color is not None else alt.Undefined)
    tooltip = [_tip(data, c) for c in dict.fromkeys([*extra_tooltip, x, color]) if c is not None]
    tooltip += [_tip(data, f"{y}_mean", f"{y} mean", ".4g"),
                _tip(data, f"{y}_ci_low", "95% CI low", ".4g"),
                _tip(data, f"{y}_ci_high", "95% CI high", ".4g"),
                _tip(data, n, f"n ({_plural(replicate)} with a value)")]
    line = alt.Chart().mark_line(point=points).encode(
        x=x_enc, y=alt.Y(_field(f"{y}_mean"), type="quantitative", title=y_title),
        color=color_enc, tooltip=tooltip).transform_filter(is_mean)
    layers = [line]
    means = data.filter(pl.col(_ROW_KIND) == "mean")
    if means.height and int(cast(int, means[n].max())) >= BAND_MIN_N:
        wide = f"{_js_field(n)} >= {BAND_MIN_N}"
        band = alt.Chart().mark_area(opacity=0.2, invalid="break-paths-filter-domains").encode(
            x=x_enc, y=alt.Y("band_low", type="quantitative", title=y_title),
            y2=alt.Y2("band_high"), color=color_enc).transform_filter(is_mean).transform_calculate(
            band_low=f"{wide} ? {_js_field(f'{y}_ci_low')} : null",
            band_high=f"{wide} ? {_js_field(f'{y}_ci_high')} : null")
        layers.insert(0, band)
        if bool(means[_LONE_BAND].any()):
            bars = alt.Chart().mark_rule(opacity=0.5, strokeWidth=2).encode(
                x=x_enc, y=alt.Y(_field(f"{y}_ci_low"), type="quantitative", title=y_title),
                y2=alt.Y2(_field(f"{y}_ci_high")), color=color_enc).transform_filter(
                is_mean).transform_filter(alt.FieldEqualPredicate(field=_LONE_BAND, equal=True))
            layers.insert(1, bars)
    if (data[_ROW_KIND] == "replicate").any():
        seeds = alt.Chart().mark_point(filled=False, size=40, opacity=0.8).encode(
            x=x_enc, y=alt.Y(_field(y), type="quantitative", title=y_title), color=color_enc,
            tooltip=[_tip(data, c) for c in dict.fromkeys(
                [replicate, *extra_tooltip, x, color, y])
                if c is not None]).transform_filter(
            alt.FieldEqualPredicate(field=_ROW_KIND, equal="replicate"))
        layers.append(seeds)
    if means[_N_LABEL].drop_nulls().len():
        labels = alt.Chart().mark_text(align="left", dx=5, dy=-7, fontSize=9).encode(
            x=x_enc, y=alt.Y(_field(f"{y}_mean"), type="quantitative", title=y_title),
            text=alt.Text(_N_LABEL, type="nominal"), color=color_enc).transform_filter(
            is_mean).transform_filter(f"isValid({_js_field(_N_LABEL)})")
        layers.append(labels)
    return layers


def _statements(lines: Sequence[str]) -> list[str]:
    """``lines`` with every statement (a line's "; "-separated parts) kept only where it
    first appears, and lines left empty dropped: a caller's subtitle and the interval
    note may say the same thing."""
    seen: set[str] = set()
    out = []
    for line in lines:
        parts = []
        for part in str(line).split("; "):
            key = part.strip()
            if key and key not in seen:
                seen.add(key)
                parts.append(part)
        if parts:
            out.append("; ".join(parts))
    return out


def _title(title: str, subtitle: Sequence[str] | str, note: str) -> alt.TitleParams:
    """Chart title with the caller's ``subtitle`` lines and the interval note beneath it
    (the lines alone, in plain type, when there is no title); each statement once."""
    lines = _statements(([subtitle] if isinstance(subtitle, str) else [*subtitle]) + [note])
    text: str | list[str] = lines if len(lines) > 1 else (lines[0] if lines else note)
    if not title:
        return alt.TitleParams(text=text, fontSize=11, fontWeight="normal")
    return alt.TitleParams(text=title, subtitle=text)


# --------------------------------------------------------------------------- charts


def by_depth(frame: pl.DataFrame, y: str, color: str = "state", title: str = "",
             y_title: str | None = None, facet: str | None = None,
             x_title: str | None = None, *, replicate: str | None = "seed",
             subtitle: Sequence[str] = (), x: str = "depth") -> AnyChart:
    """Per-site value against depth: mean over seeds with a 95% CI band, one line per ``color``.

    ``frame`` is a per-seed site table (seed, state, site, depth, site_kind, ``y``);
    rows are aggregated by [color, site, depth] (+ ``facet``) after averaging the rows
    one seed has in a group (``replicate`` names the seed column; None: every row is
    an observation; the default "seed" counts rows when the frame has no seed column,
    and the subtitle then says "over rows"). Pass units in ``y_title``, e.g.
    ``"I(X;T) (nats)"``. The title's subtitle holds the ``subtitle`` lines, then a line
    stating the interval and its n. How n and small n are drawn: ``_mean_ci_layers``.

    ``x``: the depth column, ``depth`` (the site's index among the model's sites; the
    axis is labelled with site names when each depth is one site) or ``rel_depth``
    (depth scaled to [0, 1], which lines up models with different site counts).
    ``x_title`` defaults to ``x``.
    """
    _require(frame, ["site", x, y, color, facet], "by_depth")
    by = list(dict.fromkeys([c for c in (color, "site", x, facet) if c is not None]))
    agg, values, replicate = _aggregate(frame, by, y, replicate, "by_depth")
    data = _chart_data(agg, values, by, y, x, [c for c in (color, facet) if c])
    layers = _mean_ci_layers(data, x, y, color, x_title or x, y_title or y,
                             extra_tooltip=["site"], replicate=replicate,
                             x_axis=_site_axis(agg, x))
    chart = alt.layer(*layers, data=_data(data))
    note = _interval_note(agg, f"{y}{N_SUFFIX}", _plural(replicate))
    heading = _title(title, subtitle, note)
    if facet is None:
        return chart.properties(width=WIDTH, height=HEIGHT, title=heading)
    faceted = chart.properties(width=FACET_WIDTH, height=HEIGHT).facet(
        facet=alt.Facet(_field(facet), type="nominal", title=facet), columns=FACET_COLUMNS)
    return faceted.properties(title=heading)


def line(frame: pl.DataFrame, x: str, y: str, color: str | None = None, title: str = "",
         *, x_title: str | None = None, y_title: str | None = None,
         replicate: str | None = "seed", subtitle: Sequence[str] = ()) -> AnyChart:
    """``y`` against ``x`` (e.g. val_acc per epoch), mean over seeds with a 95% CI band.

    Rows are aggregated by [color, x], so one line per ``color`` value; rows one seed
    has in a group (sites, classes, draws) are averaged first (``replicate`` and
    ``subtitle``: see ``by_depth``). How n and small n are drawn: ``_mean_ci_layers``.
    """
    _require(frame, [x, y, color], "line")
    by = list(dict.fromkeys([c for c in (color, x) if c is not None]))
    agg, values, replicate = _aggregate(frame, by, y, replicate, "line")
    data = _chart_data(agg, values, by, y, x, [color] if color is not None else [])
    points = agg.height == 0 or agg[x].n_unique() <= 30
    layers = _mean_ci_layers(data, x, y, color, x_title or x, y_title or y, points=points,
                             replicate=replicate)
    note = _interval_note(agg, f"{y}{N_SUFFIX}", _plural(replicate))
    return alt.layer(*layers, data=_data(data)).properties(
        width=WIDTH, height=HEIGHT, title=_title(title, subtitle, note))


def bars(frame: pl.DataFrame, x: str, y: str, color: str | None = None, title: str = "",
         *, x_title: str | None = None, y_title: str | None = None,
         replicate: str | None = "seed", subtitle: Sequence[str] = (),
         width: int = WIDTH) -> AnyChart:
    """Bars of ``y`` per ``x`` (e.g. the drop per class), one bar per ``color`` value side
    by side in the series' reading order: mean over seeds with a 95% t-interval error bar.

    Rows are aggregated by [x, color] after averaging the rows one seed has in a group
    (sites, draws; ``replicate`` and ``subtitle``: see ``by_depth``), so the interval is
    over seeds like the line charts'. Where n = 2 the two values are drawn as hollow
    points instead of an error bar (a 2-seed t-interval is about nine standard
    deviations wide); where n varies, bars below the most are labelled "n=<k>". The
    tooltip gives the interval and n, the subtitle states n for the whole chart.
    """
    _require(frame, [x, y, color], "bars")
    by = list(dict.fromkeys([c for c in (x, color) if c is not None]))
    agg, values, replicate = _aggregate(frame, by, y, replicate, "bars")
    series = [color] if color is not None and color != x else []
    data = _chart_data(agg, values, by, y, x, series)
    n = f"{y}{N_SUFFIX}"
    is_mean = alt.FieldEqualPredicate(field=_ROW_KIND, equal="mean")
    x_sort: Any = ("ascending" if _is_numeric(agg, x) else series_order(agg[x].to_list()))
    x_enc = alt.X(_field(x), type="ordinal", title=x_title or x, sort=x_sort,
                  axis=alt.Axis(labelAngle=0))
    y_title = y_title or y
    shared: dict[str, Any] = {"x": x_enc}
    if color is not None:
        shared["color"] = color_encoding(agg[color].to_list(), color,
                                         legend=alt.Legend(symbolOpacity=1))
        if series:
            shared["xOffset"] = _offset(agg[color].to_list(), color)
    tooltip = [_tip(data, c) for c in dict.fromkeys([x, color]) if c is not None]
    tooltip += [_tip(data, f"{y}_mean", f"{y} mean", ".4g"),
                _tip(data, f"{y}_ci_low", "95% CI low", ".4g"),
                _tip(data, f"{y}_ci_high", "95% CI high", ".4g"),
                _tip(data, n, f"n ({_plural(replicate)} with a value)")]
    layers: list[alt.Chart] = [alt.Chart().mark_bar().encode(
        y=alt.Y(_field(f"{y}_mean"), type="quantitative", title=y_title), tooltip=tooltip,
        **shared).transform_filter(is_mean)]
    means = data.filter(pl.col(_ROW_KIND) == "mean")
    wide = means.filter((pl.col(n) >= BAND_MIN_N) & pl.col(f"{y}_ci_low").is_not_null())
    if wide.height:
        layers.append(alt.Chart().mark_rule(color="#333", strokeWidth=1.5).encode(
            y=alt.Y(_field(f"{y}_ci_low"), type="quantitative", title=y_title),
            y2=alt.Y2(_field(f"{y}_ci_high")), tooltip=tooltip,
            **{k: v for k, v in shared.items() if k != "color"}).transform_filter(
            is_mean).transform_filter(
            f"{_js_field(n)} >= {BAND_MIN_N} && isValid({_js_field(f'{y}_ci_low')})"))
    if (data[_ROW_KIND] == "replicate").any():
        layers.append(alt.Chart().mark_point(filled=False, size=40, color="#333").encode(
            y=alt.Y(_field(y), type="quantitative", title=y_title),
            tooltip=[_tip(data, c) for c in dict.fromkeys([replicate, x, color, y])
                     if c is not None],
            **{k: v for k, v in shared.items() if k != "color"}).transform_filter(
            alt.FieldEqualPredicate(field=_ROW_KIND, equal="replicate")))
    if means[_N_LABEL].drop_nulls().len():
        layers.append(alt.Chart().mark_text(dy=-7, fontSize=9).encode(
            y=alt.Y(_field(f"{y}_mean"), type="quantitative", title=y_title),
            text=alt.Text(_N_LABEL, type="nominal"),
            **{k: v for k, v in shared.items() if k != "color"}).transform_filter(
            is_mean).transform_filter(f"isValid({_js_field(_N_LABEL)})"))
    note = _interval_note(agg, n, _plural(replicate), mark="bar")
    return alt.layer(*layers, data=_data(data)).properties(
        width=width, height=HEIGHT, title=_title(title, subtitle, note))


def scatter(frame: pl.DataFrame, x: str, y: str, color: str | None = None, title: str = "",
            tooltip: Sequence[str] = (), *, x_title: str | None = None,
            y_title: str | None = None) -> alt.Chart:
    """Plain scatter of per-row values (no seed aggregation), e.g. I(X;T) vs I(T;Y) per channel."""
    _require(frame, [x, y, color, *tooltip], "scatter")
    tips = [_tip(frame, c) for c in dict.fromkeys([*tooltip, x, y, color]) if c is not None]
    color_enc: Any = alt.Undefined
    if color is not None:
        color_type: Literal["quantitative", "nominal"] = (
            "quantitative" if _is_numeric(frame, color) and color != "seed" else "nominal")
        color_enc = (color_encoding(frame[color].to_list(), color) if color_type == "nominal"
                     else alt.Color(_field(color), type=color_type, title=color))
    chart = alt.Chart(_data(frame)).mark_circle(size=30, opacity=0.6).encode(
        x=alt.X(_field(x), type="quantitative", title=x_title or x),
        y=alt.Y(_field(y), type="quantitative", title=y_title or y),
        color=color_enc, tooltip=tips)
    # properties() of a plain Chart is a plain Chart
    return cast(alt.Chart, _sized(chart, title, WIDTH, HEIGHT))


def heatmap(frame: pl.DataFrame, x: str, y: str, value: str, title: str = "", *,
            value_title: str | None = None, x_sort: Sequence[Any] | None = None,
            y_sort: Sequence[Any] | None = None, replicate: str | None = "seed",
            subtitle: Sequence[str] = ()) -> AnyChart:
    """Matrix of ``value`` over (x, y), e.g. layer-layer MI; mean over seeds when present.

    Rows one seed has in a cell are averaged first (``replicate`` and ``subtitle``: see
    ``by_depth``). The tooltip gives the 95% interval and its n; the subtitle states n
    (set titles through ``title``/``subtitle``, not ``.properties``, to keep it), and when n
    differs between cells those below the most are labelled "n=<k>". Pass
    ``x_sort``/``y_sort`` (e.g. sites in depth order) to fix the axis order; the default
    sorts the labels.
    """
    _require(frame, [x, y, value], "heatmap")
    by = list(dict.fromkeys([x, y]))
    agg, _, replicate = _aggregate(frame, by, value, replicate, "heatmap")
    n = f"{value}{N_SUFFIX}"
    agg = _with_n_labels(agg, n)
    tips = [_tip(agg, x), _tip(agg, y), _tip(agg, f"{value}_mean", f"{value} mean", ".4g"),
            _tip(agg, f"{value}_ci_low", "95% CI low", ".4g"),
            _tip(agg, f"{value}_ci_high", "95% CI high", ".4g"),
            _tip(agg, n, f"n ({_plural(replicate)} with a value)")]
    def order(column: str, given: Sequence[Any] | None) -> Any:
        # the series' reading order (top, random, bottom) for text labels, as in legends
        if given is not None:
            return list(given)
        return "ascending" if _is_numeric(agg, column) else series_order(agg[column])

    x_enc = alt.X(_field(x), type="ordinal", title=x, sort=order(x, x_sort))
    y_enc = alt.Y(_field(y), type="ordinal", title=y, sort=order(y, y_sort))
    rect = alt.Chart().mark_rect().encode(
        x=x_enc, y=y_enc,
        color=alt.Color(_field(f"{value}_mean"), type="quantitative",
                        title=value_title or value, scale=alt.Scale(scheme="viridis")),
        tooltip=tips)
    layers = [rect]
    if agg[_N_LABEL].drop_nulls().len():
        # viridis runs dark to light: white text on the lower half of the range, black above
        means = agg[f"{value}_mean"].drop_nulls()
        means = means.filter(means.is_finite())
        middle = ((float(cast(float, means.min())) + float(cast(float, means.max()))) / 2
                  if means.len() else 0.0)
        layers.append(alt.Chart().mark_text(fontSize=9).encode(
            x=x_enc, y=y_enc, text=alt.Text(_N_LABEL, type="nominal"), tooltip=tips,
            color=alt.condition(f"{_js_field(f'{value}_mean')} > {middle!r}",
                                alt.value("black"), alt.value("white"))
        ).transform_filter(f"isValid({_js_field(_N_LABEL)})"))
    note = _interval_note(agg, n, _plural(replicate), band=False)
    return alt.layer(*layers, data=_data(agg)).properties(
        width=WIDTH, height=WIDTH, title=_title(title, subtitle, note))


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

    # the stub makes ``snippet`` required; at runtime it defaults to None (the default snippet)
    return vl_convert.javascript_bundle(vl_version=_vl_version())  # type: ignore[call-arg]


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

#: Most rows and columns of a table the index page shows inline (the rest: its parquet
#: file, which the truncation note names); the preview scrolls inside its own box.
MAX_ROWS, MAX_COLUMNS = 50, 24

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
dl.meta { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: .2em 1em; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; min-width: 0; }
pre { background: #f6f8fa; padding: .4em .6em; margin: 0; overflow-x: auto; font-size: 85%; }
nav { display: flex; flex-wrap: wrap; gap: .2em .8em; }
nav a { white-space: nowrap; }
li, p, figcaption, h3 { overflow-wrap: anywhere; }
.warnings { background: #fff4e5; border-left: 4px solid #f0a000; padding: .5em 1em .5em 2em; }
.checks { list-style: none; padding-left: 0; }
.pass::before { content: "\\2714  "; color: #1a7f37; } .fail::before { content: "\\2718  "; color: #cf222e; }
.fail { font-weight: 600; }
.inconclusive::before { content: "?  "; color: #9a6700; font-weight: 700; }
figure { margin: 1em 0 2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-family: monospace; margin-bottom: .3em; }
.tablewrap { overflow-x: auto; overflow-y: auto; max-width: 100%; max-height: 40em; }
table { border-collapse: collapse; font-size: 85%; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; position: sticky; top: 0; } td.s { text-align: left; }
.null { color: #999; } .truncated { color: #9a6700; font-style: italic; }
.summary { color: #444; } details { margin-top: 2em; } summary { cursor: pointer; font-weight: 600; }
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
    """URL (escaped for an attribute) of ``path`` relative to the index page (a relative
    ``path`` is taken as relative to the run directory already)."""
    path = Path(path)
    rel = os.path.relpath(path, Path(run_dir).resolve()) if path.is_absolute() else str(path)
    return _esc(quote(Path(rel).as_posix()))


def _interval_counts(columns: Sequence[str]) -> dict[str, str]:
    """{``<v>_ci_high``: ``<v>_n``} for every interval in ``columns`` whose n is there too."""
    counts = {c: c[:-len("_ci_high")] + N_SUFFIX for c in columns if c.endswith("_ci_high")}
    return {high: n for high, n in counts.items() if n in columns}


def _interval_columns_together(columns: Sequence[str]) -> list[str]:
    """``columns`` with each ``<v>_n`` moved right after ``<v>_ci_high``, so a table
    preview shows every interval beside the n it is over."""
    counts = _interval_counts(columns)
    moved = set(counts.values())
    order: list[str] = []
    for c in columns:
        if c not in moved:
            order += [c, counts[c]] if c in counts else [c]
    return order


def _column_title(frame: pl.DataFrame, column: str, counts: set[str]) -> str:
    """Header tooltip: the dtype, and for an interval's n what it counts."""
    if column in counts:
        value = column[:-len(N_SUFFIX)]
        return f"{frame.schema[column]}; values of {value} (non-null, non-NaN) the interval is over"
    return str(frame.schema[column])


def _table_html(name: str, frame: pl.DataFrame, max_rows: int,
                max_columns: int = MAX_COLUMNS, stamp: Mapping[str, Any] | None = None) -> str:
    """A table's preview: its first ``max_rows`` rows and ``max_columns`` columns (each
    interval beside its n), with a note pointing at the parquet file when cut. The run
    metadata columns (``RUN_COLUMNS``) are left out where they hold just the run's own
    value (``stamp``, run.json's ``run_columns``): the page is about one run, and says
    once that every table carries them."""
    width = frame.width
    frame = frame.drop(_stamped_columns(frame, stamp or {}))
    frame = frame.select(_interval_columns_together(frame.columns))
    columns = frame.columns[:max_columns]
    shown = frame.head(max_rows).select(columns)
    counts = set(_interval_counts(frame.columns).values())
    head = "".join(f'<th title="{_esc(_column_title(frame, col, counts))}">{_esc(col)}</th>'
                   for col in columns)
    rows = []
    for row in shown.iter_rows():
        cells = []
        for value in row:
            text, is_text = _format_cell(value)
            cells.append(f'<td class="s">{text}</td>' if is_text else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    parts = [f'<h3 id="{_anchor("table", name)}">{_esc(name)} '
             f'<small>({frame.height} rows &times; {width} columns)</small></h3>']
    cut = ([f"{shown.height} of {frame.height} rows"] if frame.height > max_rows else []) + (
        [f"{len(columns)} of {frame.width} columns"] if frame.width > max_columns else [])
    if cut:
        parts.append(f'<p class="truncated">showing {" and ".join(cut)}; '
                     f'full table: tables/{_esc(name)}.parquet</p>')
    parts.append(f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table></div>')
    return "\n".join(parts)


def _stamped_columns(frame: pl.DataFrame, stamp: Mapping[str, Any]) -> list[str]:
    """The run metadata columns of ``frame`` that hold nothing but the run's own value
    (a table's own column of the same name, e.g. dynamics' ``act``, stays)."""
    return [c for c in RUN_COLUMNS if c in stamp and c in frame.columns
            and frame.height and bool((frame[c] == str(stamp[c])).all())]


def _check_html(check: Mapping[str, Any]) -> str:
    missing = [k for k in ("name", "passed") if k not in check]
    if missing:
        raise RunError(f"check {dict(check)!r} lacks keys {missing} (expected name, passed, detail)")
    verdict = verdict_of(check)
    css = {"holds": "pass", "does not hold": "fail"}.get(verdict, "inconclusive")
    detail = check.get("detail") or ""
    return (f'<li class="{css}"><b>{_esc(verdict)}</b>: {_esc(check["name"])}'
            + (f" &mdash; {_esc(detail)}" if detail else "") + "</li>")


def plain(value: Any) -> str:
    """A value as words for the page: numbers with at most 4 significant digits, yes/no,
    lists joined by commas, mappings as "key value" pairs; never JSON or a Python repr."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, Mapping):
        return "; ".join(f"{_words(str(k))} {plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(plain(v) for v in value)
    return str(value)


def _words(key: str) -> str:
    """A settings key as words: ``i_xt_cap`` -> "I(X;T) cap", ``max_samples`` -> "max samples"."""
    key = re.sub(r"(^|_)i_xt(?=_|$)", r"\1I(X;T)", key)
    key = re.sub(r"(^|_)i_ty(?=_|$)", r"\1I(T;Y)", key)
    return key.replace("_", " ")


#: Bias corrections by their spec name.
_CORRECTIONS = {"miller_madow": "Miller–Madow"}


def describe_estimator(facts: Mapping[str, Any], short: bool = False) -> str:
    """An estimator's ``describe()`` facts as words, e.g. "histogram, 20 bins, min–max
    range, no bias correction; I(X;T) = H(binned T) (deterministic network, distinct
    inputs), at most 2.996 nats per channel". ``short``: the name and the settings that
    change its values (bins, range, correction) only. Unknown keys read "key: value"."""
    name = facts.get("estimator") or facts.get("name") or facts.get("kind") or "estimator"
    settings = [plain(name)]
    done = {"estimator", "name", "kind"}
    if facts.get("bins") is not None:
        settings.append(f"{plain(facts['bins'])} bins")
    span, tail = facts.get("range"), facts.get("range_quantile")
    if span == "minmax":
        settings.append("min–max range")
    elif span == "quantile":
        settings.append("quantile range" + (f" ({plain(tail)} of samples clipped at each end)"
                                            if tail is not None else ""))
    elif span is not None:
        settings.append(f"{plain(span)} range")
    correction = facts.get("correction")
    if correction in ("none", False):
        settings.append("no bias correction")
    elif correction is not None:
        settings.append(f"{_CORRECTIONS.get(str(correction), plain(correction))} bias correction")
    done |= {"bins", "range", "range_quantile", "correction"}
    if short:
        return ", ".join(settings)
    i_xt = []
    convention = facts.get("i_xt_convention")
    if convention is not None:
        head, _, why = str(convention).partition(": ")
        i_xt.append(f"I(X;T) = {head}" + (f" ({why})" if why else ""))
    cap = facts.get("i_xt_cap_per_channel_nats")
    if cap is not None:
        i_xt.append(f"at most {plain(cap)} nats per channel")
    done |= {"i_xt_convention", "i_xt_cap_per_channel_nats"}
    others = [f"{_words(str(k))}: {plain(v)}" for k, v in facts.items() if k not in done]
    return "; ".join(part for part in (", ".join(settings), ", ".join(i_xt), *others) if part)


def _run_summary(meta: Mapping[str, Any]) -> str:
    """One line: status, seeds, device, evaluation samples, estimator, wall time."""
    parts = []
    if meta.get("status"):
        parts.append(f"status <b>{_esc(meta['status'])}</b>")
    seeds = meta.get("seeds")
    if seeds:
        listed = seeds if isinstance(seeds, (list, tuple)) else [seeds]
        parts.append(f"{len(listed)} seed{'s' if len(listed) != 1 else ''} "
                     f"({_esc(plain(listed))})")
    data = meta.get("data") or {}
    if isinstance(data, Mapping) and data.get("n_eval"):
        parts.append(f"{_esc(data['n_eval'])} evaluation samples, "
                     f"{len(data.get('classes', []))} classes")
    estimator = meta.get("estimator")
    if isinstance(estimator, Mapping) and estimator:
        parts.append(f"estimator: {_esc(describe_estimator(estimator, short=True))}")
    if meta.get("device"):
        parts.append(f"device {_esc(meta['device'])}")
    total = (meta.get("timings") or {}).get("total_seconds")
    if isinstance(total, (int, float)):
        parts.append(f"{total:.0f} s")
    return " &middot; ".join(parts)


def _reading_order(tables: Mapping[str, pl.DataFrame]) -> list[str]:
    """Summary tables first, then the others from the smallest: the long per-channel
    tables (thousands of rows) come last instead of burying the key numbers."""
    names = list(tables)
    summaries = [n for n in names if n.startswith("summary_")]
    rest = sorted((n for n in names if n not in summaries), key=lambda n: tables[n].height)
    return summaries + rest


def write_index(run_dir: Path, title: str, meta: Mapping[str, Any],
                figures: Mapping[str, Mapping[str, Path]], tables: Mapping[str, pl.DataFrame],
                notes: Sequence[str] = (), warnings: Sequence[str] = (),
                max_rows: int = MAX_ROWS, checks: Sequence[Mapping[str, Any]] = (),
                max_columns: int = MAX_COLUMNS) -> Path:
    """Write ``run_dir/index.html``: a one-line summary, the claims' verdicts, warnings,
    notes, figures, tables (summaries first) and the metadata (collapsed, last).

    The page is self-contained (inline CSS, no scripts, no network); figures are linked
    by relative path so the run folder can be moved or archived as a whole. All text is
    HTML-escaped; tables longer than ``max_rows`` or wider than ``max_columns`` are
    truncated with a note pointing at the parquet file, and scroll inside their own box
    (the page never scrolls sideways: the navigation wraps).
    """
    run_dir = Path(run_dir)
    if max_rows < 0:
        raise RunError(f"max_rows must be >= 0, got {max_rows}")
    if max_columns < 1:
        raise RunError(f"max_columns must be >= 1, got {max_columns}")
    # Reading order of a paper: what was found (claims, caveats), the figures, the
    # summary tables, then per-observation tables, and the full metadata last, collapsed.
    body = [f"<h1>{_esc(title)}</h1>"]
    summary = _run_summary(meta)
    if summary:
        body.append(f'<p class="summary">{summary}</p>')
    ordered = _reading_order(tables)
    nav = ['<a href="#checks">claims</a>'] if checks else []
    nav += ['<a href="#figures">figures</a>'] if figures else []
    nav += [f'<a href="#{_anchor("table", n)}">{_esc(n)}</a>' for n in ordered]
    nav += ['<a href="#metadata">metadata</a>'] if meta else []
    if nav:
        body.append("<nav>" + "".join(nav) + "</nav>")
    if checks:
        n_pass = sum(bool(c.get("passed")) for c in checks)
        n_fail = sum(verdict_of(c) == FAILS for c in checks)
        items = "".join(_check_html(c) for c in checks)
        body.append(f'<h2 id="checks">Claims ({n_pass} of {len(checks)} hold, {n_fail} do not, '
                    f'{len(checks) - n_pass - n_fail} inconclusive)</h2>'
                    f'<ul class="checks">{items}</ul>')
    if warnings:
        items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
        body.append(f'<h2 id="warnings">Warnings</h2><ul class="warnings">{items}</ul>')
    if notes:
        items = "".join(f"<li>{_esc(n)}</li>" for n in notes)
        body.append(f'<h2 id="notes">How to read these numbers</h2><ul class="notes">{items}</ul>')
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
    if ordered:
        body.append('<h2 id="tables">Tables</h2>')
        stamp = meta.get("run_columns") or {}
        hidden = sorted({c for n in ordered for c in _stamped_columns(tables[n], stamp)},
                        key=RUN_COLUMNS.index)
        if hidden:
            body.append(f'<p class="summary">Every table also carries the run metadata '
                        f'column(s) {_esc(", ".join(hidden))}, one value per run (see the '
                        'metadata below; the previews leave them out). They tell runs apart '
                        'when tables of several runs are put together, e.g. by mi-probe '
                        'compare.</p>')
        body += [_table_html(name, tables[name], max_rows, max_columns, stamp)
                 for name in ordered]
    if meta:
        items = "".join(f"<dt>{_esc(k)}</dt><dd>{_meta_value(v)}</dd>" for k, v in meta.items())
        body.append('<details id="metadata"><summary>Run metadata (run.json: versions, '
                    f'settings, timings, sites)</summary><dl class="meta">{items}</dl></details>')
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
               max_rows: int = MAX_ROWS, max_columns: int = MAX_COLUMNS) -> Path:
    """Save every chart under ``run_dir/figures/`` and write ``run_dir/index.html``.

    A chart that fails to render does not cost the rest of the report: the index is
    written with the failure among its warnings, then RunError names the failed figures.
    ``title`` defaults to meta's ``spec``/``name`` or the folder name.
    """
    # absolute, so the saved figures' paths are too: with a relative run directory (the
    # default reports/<name>/<time>) every image link once repeated that prefix and broke
    run_dir = Path(run_dir).resolve()
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
                        warnings=all_warnings, max_rows=max_rows, checks=checks,
                        max_columns=max_columns)
    if failed:
        raise RunError(f"figures {failed} could not be rendered (see warnings in {index})")
    return index
