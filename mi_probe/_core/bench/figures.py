"""The bench's two charts (Altair), drawn from its tables alone."""

from __future__ import annotations

from typing import Any

import altair as alt
import polars as pl


def _estimator_order(frame: pl.DataFrame) -> list[str]:
    """mi-probe's estimators first, then bmi's, each alphabetically."""
    pairs = frame.select("estimator", "source").unique()
    return [e for _, e in sorted((s != "mi-probe", e) for e, s in pairs.iter_rows())]


def _task_order(frame: pl.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["title"].to_list()))  # tables are in bmi's order


def ratio_heatmap(summary: pl.DataFrame) -> Any:
    """Mean estimate / truth per task (rows, bmi's order) × estimator (columns, after
    a ``truth`` column), each cell labelled with the mean estimate over seeds, as bmi's
    paper figure; white at 1, red above, blue below (clipped to [0, 2]); a cell an
    estimator could not take is grey and labelled with its status."""
    n_values = sorted(set(summary["n"].to_list()))
    frame = summary.filter(pl.col("n") == n_values[-1])  # the largest N when mixed
    truth = (frame.select("title", "truth").unique("title", maintain_order=True)
             .with_columns(estimator=pl.lit("truth"), estimate_mean=pl.col("truth"),
                           ratio=pl.lit(1.0), status=pl.lit("ok"),
                           n_seeds=pl.lit(None, dtype=pl.Int64)))
    cells = pl.concat([truth.select("title", "estimator", "estimate_mean", "truth", "ratio",
                                    "status", "n_seeds"),
                       frame.select("title", "estimator", "estimate_mean", "truth", "ratio",
                                    "status", "n_seeds")], how="vertical_relaxed")
    cells = cells.with_columns(
        label=pl.when(pl.col("status") == "ok")
        .then(pl.col("estimate_mean").round(2).cast(pl.String))
        .otherwise(pl.col("status")),
        # a cell without a value keeps a number: Vega-Lite drops marks with null fields
        shown=pl.col("ratio").clip(0.0, 2.0).fill_null(1.0).fill_nan(1.0))
    x = alt.X("estimator:N", sort=["truth", *_estimator_order(frame)], title=None,
              axis=alt.Axis(labelAngle=-40, orient="top"))
    y = alt.Y("title:N", sort=_task_order(frame), title=None)
    tips = [alt.Tooltip("title:N", title="task"), alt.Tooltip("estimator:N"),
            alt.Tooltip("estimate_mean:Q", title="mean estimate", format=".4f"),
            alt.Tooltip("truth:Q", format=".4f"), alt.Tooltip("ratio:Q", format=".3f"),
            alt.Tooltip("n_seeds:Q", title="seeds"), alt.Tooltip("status:N")]
    base = alt.Chart(alt.Data(values=cells.to_dicts()))
    rect = base.mark_rect().encode(
        x=x, y=y, tooltip=tips,
        color=alt.condition("datum.status == 'ok'", alt.Color(
            "shown:Q", title="estimate / truth",
            scale=alt.Scale(scheme="redblue", domain=[0, 2], domainMid=1, reverse=True)),
            alt.value("#dddddd")))
    text = base.mark_text(fontSize=9).encode(x=x, y=y, text="label:N", tooltip=tips)
    rows = cells["title"].n_unique()
    columns = cells["estimator"].n_unique()
    return (rect + text).properties(
        width=max(200, 55 * columns), height=max(120, 16 * rows),
        title=alt.TitleParams(f"Mean estimate over seeds (nats), N = {n_values[-1]}",
                              subtitle="colour: mean estimate / true MI (white = exact)"))


def error_chart(results: pl.DataFrame) -> Any:
    """Every seed's estimate − truth (nats) per task, one colour per estimator, with the
    mean over seeds as a bar tick; a rule at 0."""
    n_values = sorted(set(results["n"].to_list()))
    frame = results.filter((pl.col("n") == n_values[-1]) & (pl.col("status") == "ok"))
    order = _estimator_order(frame)
    y = alt.Y("title:N", sort=_task_order(frame), title=None)
    # estimators are no PALETTE series: one scheme colour each, legend in table order
    colour = alt.Color("estimator:N", sort=order, title="estimator",
                       scale=alt.Scale(domain=order, scheme="tableau10"))
    data = alt.Data(values=frame.select("title", "estimator", "seed", "estimate", "truth",
                                        "error").to_dicts())
    points = alt.Chart(data).mark_point(size=18, opacity=0.55, filled=True).encode(
        x=alt.X("error:Q", title="estimate − truth (nats)"), y=y,
        yOffset=alt.YOffset("estimator:N", sort=order), color=colour,
        tooltip=["title:N", "estimator:N", "seed:Q",
                 alt.Tooltip("estimate:Q", format=".4f"), alt.Tooltip("truth:Q", format=".4f"),
                 alt.Tooltip("error:Q", format=".4f")])
    means = alt.Chart(data).mark_tick(thickness=2, size=9).encode(
        x="mean(error):Q", y=y, yOffset=alt.YOffset("estimator:N", sort=order), color=colour)
    zero = alt.Chart(alt.Data(values=[{"zero": 0}])).mark_rule(color="#444").encode(x="zero:Q")
    rows = frame["title"].n_unique()
    return (zero + points + means).properties(
        width=520, height=max(120, 22 * rows),
        title=alt.TitleParams(f"Error per seed (points) and mean (ticks), N = {n_values[-1]}",
                              subtitle="estimate − true MI" + (
                                  "; bmi's estimators saw the same samples"
                                  if (frame["source"] == "bmi").any() else "")))
