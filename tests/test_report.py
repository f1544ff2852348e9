"""Tests of mi_probe._core.report: figure files, seed-aggregated charts and the index page."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import altair as alt
import polars as pl
import pytest
from scipy.stats import t as student_t

from mi_probe._core import report
from mi_probe.errors import RunError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SITES = ["stem", "layer1.0", "layer2.0"]


def site_frame(n_seeds: int) -> pl.DataFrame:
    """Per-seed layer_mi-like table: value = depth + seed (+1 when trained)."""
    rows = [dict(seed=seed, state=state, site=site, depth=depth, site_kind="block",
                 i_xt=float(depth + seed + (state == "trained")))
            for seed in range(n_seeds) for state in ("init", "trained")
            for depth, site in enumerate(SITES)]
    return pl.DataFrame(rows)


def chart_rows(chart: alt.TopLevelMixin, kind: str | None = "mean") -> list[dict]:
    """The data rows a chart carries (altair consolidates inline data into ``datasets``):
    the aggregate rows (``kind="mean"``), the per-seed rows (``"replicate"``) or all."""
    spec = chart.to_dict()
    rows = spec["datasets"][spec["data"]["name"]]
    return [r for r in rows if kind is None or r.get("_row_kind", "mean") == kind]


def marks(chart: alt.TopLevelMixin) -> list[str]:
    return [layer["mark"]["type"] for layer in chart.to_dict()["layer"]]


def layer(chart: alt.TopLevelMixin, mark: str) -> dict:
    (found,) = [lay for lay in chart.to_dict()["layer"] if lay["mark"]["type"] == mark]
    return found


def subtitle(chart: alt.TopLevelMixin) -> str:
    title = chart.to_dict()["title"]
    return title.get("subtitle") or title["text"]


def no_external_resources(text: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert not re.search(r"<script[^>]*\ssrc\s*=", text, re.I)
    assert "<link" not in text.lower()


def strict_json(text: str) -> object:
    def reject(token: str) -> None:
        raise AssertionError(f"non-JSON constant {token}")
    return json.loads(text, parse_constant=reject)


# --------------------------------------------------------------------------- save_chart


def test_save_chart_writes_png_html_and_svg(tmp_path: Path) -> None:
    chart = report.by_depth(site_frame(2), "i_xt", title="I(X;T) by depth",
                            y_title="I(X;T) (nats)")
    out = report.save_chart(chart, tmp_path / "figures", "mi", formats=("png", "html", "svg"))

    assert out == {fmt: tmp_path / "figures" / f"mi.{fmt}" for fmt in ("png", "html", "svg")}
    png = out["png"].read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000

    page = out["html"].read_text()
    assert "vegaEmbed(" in page and "layer2.0" in page and "I(X;T) (nats)" in page
    assert len(page) > 100_000  # the vega / vega-lite / vega-embed bundle is inlined
    no_external_resources(page)

    svg = out["svg"].read_text().lstrip()
    assert svg.startswith("<svg") or svg.startswith("<?xml")
    assert "I(X;T) (nats)" in svg
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["mi.html", "mi.png", "mi.svg"]


def test_html_figure_survives_script_tags_in_data(tmp_path: Path) -> None:
    frame = pl.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0], "label": ["</script><b>x", "<!--"]})
    chart = report.scatter(frame, "x", "y", tooltip=["label"])
    page = report.save_chart(chart, tmp_path, "s", formats=("html",))["html"].read_text()
    assert page.count("</script>") == 2  # the bundle's and the embed call's, none from data
    assert "<!--" not in page
    spec_text = page[page.index("vegaEmbed('#vis', ") + len("vegaEmbed('#vis', "):]
    spec, _ = json.JSONDecoder().raw_decode(spec_text)
    labels = {row["label"] for row in spec["datasets"][spec["data"]["name"]]}
    assert labels == {"</script><b>x", "<!--"}


def test_unknown_format_raises_and_writes_nothing(tmp_path: Path) -> None:
    chart = report.scatter(site_frame(1), "depth", "i_xt")
    with pytest.raises(RunError, match=r"unknown figure format.*'jpg'.*valid formats.*png"):
        report.save_chart(chart, tmp_path / "figures", "x", formats=("png", "jpg"))
    assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize("name", ["", "a/b", "..", "a\\b"])
def test_figure_name_must_be_a_plain_file_name(tmp_path: Path, name: str) -> None:
    chart = report.scatter(site_frame(1), "depth", "i_xt")
    with pytest.raises(RunError, match="plain file name"):
        report.save_chart(chart, tmp_path, name, formats=("html",))


# --------------------------------------------------------------------------- charts


def test_by_depth_three_seeds_draws_mean_and_t_interval() -> None:
    chart = report.by_depth(site_frame(3), "i_xt", y_title="I(X;T) (nats)")
    rows = chart_rows(chart)
    assert len(rows) == 2 * len(SITES) and not chart_rows(chart, "replicate")

    # seeds give values base, base+1, base+2: mean base+1, sd 1
    half = student_t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    for row in rows:
        base = row["depth"] + (row["state"] == "trained")
        assert row["site"] == SITES[row["depth"]]
        assert row["n_seeds"] == row["i_xt_n"] == 3
        assert row["i_xt_mean"] == pytest.approx(base + 1)
        assert row["i_xt_ci_low"] == pytest.approx(base + 1 - half)
        assert row["i_xt_ci_high"] == pytest.approx(base + 1 + half)

    assert marks(chart) == ["area", "line"]
    band, mean_line = chart.to_dict()["layer"]
    assert band["encoding"]["y"]["field"] == "band_low"
    assert band["encoding"]["y2"]["field"] == "band_high"
    assert {t["as"]: t["calculate"] for t in band["transform"] if "calculate" in t} == {
        "band_low": 'datum["i_xt_n"] >= 3 ? datum["i_xt_ci_low"] : null',
        "band_high": 'datum["i_xt_n"] >= 3 ? datum["i_xt_ci_high"] : null'}
    enc = mean_line["encoding"]
    assert enc["x"]["field"] == "depth" and enc["x"]["type"] == "quantitative"
    assert enc["y"] == {"field": "i_xt_mean", "type": "quantitative", "title": "I(X;T) (nats)"}
    assert enc["color"]["field"] == "state"
    tips = {tip["field"]: tip["title"] for tip in enc["tooltip"]}
    assert {"site", "i_xt_mean", "i_xt_ci_low", "i_xt_ci_high", "i_xt_n"} <= set(tips)
    assert tips["i_xt_n"] == "n (seeds with a value)"
    assert subtitle(chart) == "mean and 95% t-interval over seeds, n = 3"


def test_by_depth_one_seed_is_a_line_without_band_or_interval(tmp_path: Path) -> None:
    chart = report.by_depth(site_frame(1), "i_xt", title="one seed")
    assert marks(chart) == ["line"]
    for row in chart_rows(chart):
        assert row["n_seeds"] == row["i_xt_n"] == 1
        assert row["i_xt_ci_low"] is None and row["i_xt_ci_high"] is None
        assert row["i_xt_mean"] == row["depth"] + (row["state"] == "trained")
    assert chart.to_dict()["title"] == {"text": "one seed",
                                        "subtitle": "mean over seeds, n = 1: no interval"}
    svg = report.save_chart(chart, tmp_path, "one", formats=("svg",))["svg"].read_text()
    assert "one seed" in svg


def test_by_depth_facets_and_rejects_missing_columns() -> None:
    frame = site_frame(3)
    spec = report.by_depth(frame, "i_xt", color="site_kind", facet="state", title="t").to_dict()
    assert spec["facet"]["field"] == "state"
    assert spec["title"] == {"text": "t", "subtitle": "mean and 95% t-interval over seeds, n = 3"}
    assert {(r["state"], r["i_xt_n"]) for r in spec["datasets"][spec["data"]["name"]]} == {
        ("init", 3), ("trained", 3)}
    with pytest.raises(RunError, match=r"by_depth: frame lacks columns \['i_ty'\]"):
        report.by_depth(frame, "i_ty")
    with pytest.raises(RunError, match=r"by_depth: 'site_kind' must be numeric, found String"):
        report.by_depth(frame, "site_kind")


def test_two_seeds_draw_their_values_as_points_not_a_band() -> None:
    frame = pl.DataFrame({"seed": [0, 0, 1, 1, 0, 1], "epoch": [1, 2, 1, 2, 1, 1],
                          "val_acc": [0.1, 0.2, 0.3, 0.4, 0.5, 0.7],
                          "regularizer": ["none"] * 4 + ["l2"] * 2})
    chart = report.line(frame, "epoch", "val_acc", "regularizer", y_title="accuracy")
    got = {(r["regularizer"], r["epoch"]): (r["val_acc_mean"], r["val_acc_n"])
           for r in chart_rows(chart)}
    assert got == {("none", 1): (pytest.approx(0.2), 2), ("none", 2): (pytest.approx(0.3), 2),
                   ("l2", 1): (pytest.approx(0.6), 2)}
    # the interval is still in the data (and the tooltip), but not drawn as a band
    half = student_t.ppf(0.975, 1) * math.sqrt(0.02) / math.sqrt(2)
    l2 = [r for r in chart_rows(chart) if r["regularizer"] == "l2"][0]
    assert l2["val_acc_ci_high"] == pytest.approx(0.6 + half)
    assert marks(chart) == ["line", "point"]
    seeds = sorted((r["regularizer"], r["epoch"], r["seed"], r["val_acc"])
                   for r in chart_rows(chart, "replicate"))
    assert seeds == [("l2", 1, 0, 0.5), ("l2", 1, 1, 0.7), ("none", 1, 0, 0.1),
                     ("none", 1, 1, 0.3), ("none", 2, 0, 0.2), ("none", 2, 1, 0.4)]
    assert layer(chart, "point")["encoding"]["y"]["field"] == "val_acc"
    # each fact once (it read "n = 2; n = 2: values drawn as points")
    assert subtitle(chart) == ("mean over seeds, n = 2: values drawn as points, no band "
                               "(95% t-interval in the tooltip)")


def test_rows_of_one_seed_are_averaged_before_the_interval() -> None:
    # 3 seeds x 4 classes x 2 sites per q: the interval is over the 3 seed means, not 24 rows
    rows = [dict(seed=seed, site=site, cls=cls, q=q, selection="top",
                 drop=q + seed + (cls - 1.5) * 0.1 + (site == "b") * 0.01)
            for seed in range(3) for site in ("a", "b") for cls in range(4) for q in (0.1, 0.5)]
    chart = report.line(pl.DataFrame(rows), "q", "drop", color="selection")
    half = student_t.ppf(0.975, 2) / math.sqrt(3)  # seed means q+0.005, q+1.005, q+2.005
    for row in chart_rows(chart):
        assert row["n_seeds"] == row["drop_n"] == 3
        assert row["drop_mean"] == pytest.approx(row["q"] + 1.005)
        assert row["drop_ci_low"] == pytest.approx(row["q"] + 1.005 - half)
        assert row["drop_ci_high"] == pytest.approx(row["q"] + 1.005 + half)

    rows_chart = report.line(pl.DataFrame(rows), "q", "drop", color="selection", replicate=None)
    assert {r["drop_n"] for r in chart_rows(rows_chart)} == {24}
    assert subtitle(rows_chart) == "mean and 95% t-interval over rows, n = 24"
    with pytest.raises(RunError, match=r"line: replicate column 'run' is not in the frame"):
        report.line(pl.DataFrame(rows), "q", "drop", replicate="run")

    # a frame without a seed column: every row is an observation, and the chart says so
    no_seed = report.line(pl.DataFrame(rows).drop("seed"), "q", "drop")
    assert {r["drop_n"] for r in chart_rows(no_seed)} == {24}
    assert subtitle(no_seed) == "mean and 95% t-interval over rows, n = 24"
    tips = {t["field"]: t["title"] for t in layer(no_seed, "line")["encoding"]["tooltip"]}
    assert tips["drop_n"] == "n (rows with a value)"
    # another replicate column: rows of one pair are averaged, n counts pairs
    pairs = report.line(pl.DataFrame(rows).with_columns(pair=pl.col("seed") % 2), "q", "drop",
                        replicate="pair")
    assert {r["drop_n"] for r in chart_rows(pairs)} == {2}
    assert subtitle(pairs).startswith("mean over pairs, n = 2: values drawn as points")


def test_varying_n_is_labelled_and_bands_break_where_n_is_small(tmp_path: Path) -> None:
    # 4 seeds; depth 2 has 2 values (null / NaN elsewhere), depth 3 one, depth 4 four again
    rows = []
    for seed in range(4):
        for depth, site in enumerate(["s0", "s1", "s2", "s3", "s4"]):
            value = float(depth + seed)
            if (depth == 2 and seed >= 2) or (depth == 3 and seed >= 1):
                value = None if seed % 2 else float("nan")
            rows.append(dict(seed=seed, state="trained", site=site, depth=depth, i_ty=value))
    chart = report.by_depth(pl.DataFrame(rows), "i_ty", title="t")

    means = {r["depth"]: r for r in chart_rows(chart)}
    assert {d: r["i_ty_n"] for d, r in means.items()} == {0: 4, 1: 4, 2: 2, 3: 1, 4: 4}
    assert {d: r["n_seeds"] for d, r in means.items()} == {d: 4 for d in range(5)}
    assert {d: r["_n_label"] for d, r in means.items()} == {0: None, 1: None, 2: "n=2",
                                                            3: "n=1", 4: None}
    assert means[2]["i_ty_mean"] == 2.5 and means[3]["i_ty_mean"] == 3.0
    # depth 4 has a band but no neighbour with one: it gets an error bar instead
    assert {d: r["_lone_band"] for d, r in means.items()} == {0: False, 1: False, 2: False,
                                                              3: False, 4: True}
    assert marks(chart) == ["area", "rule", "line", "point", "text"]
    assert sorted((r["depth"], r["i_ty"]) for r in chart_rows(chart, "replicate")) == [
        (2, 2.0), (2, 3.0)]
    assert subtitle(chart) == ("mean and 95% t-interval over seeds, n = 1–4 (points labelled "
                               "where n < 4); band only where n ≥ 3, values drawn as points "
                               "where n = 2")
    png = report.save_chart(chart, tmp_path, "varying", formats=("png",))["png"].read_bytes()
    assert png.startswith(PNG_SIGNATURE)


def test_heatmap_averages_seeds_and_shows_n() -> None:
    frame = pl.DataFrame({"seed": [0, 1, 2, 0, 1, 2], "site": ["a"] * 6,
                          "site_b": ["a", "a", "a", "b", "b", "b"],
                          "mi": [1.0, 3.0, 2.0, 0.5, 0.5, None]})
    chart = report.heatmap(frame, "site", "site_b", "mi", "layer-layer MI",
                           value_title="MI (nats)", y_sort=["b", "a"])
    got = {r["site_b"]: (r["mi_mean"], r["mi_n"], r["_n_label"]) for r in chart_rows(chart)}
    assert got == {"a": (2.0, 3, None), "b": (0.5, 2, "n=2")}
    rect, text = chart.to_dict()["layer"]
    assert rect["encoding"]["color"]["title"] == "MI (nats)"
    assert rect["encoding"]["y"]["sort"] == ["b", "a"]
    assert "mi_n" in {tip["field"] for tip in rect["encoding"]["tooltip"]}
    assert text["mark"]["type"] == "text" and text["encoding"]["text"]["field"] == "_n_label"
    assert subtitle(chart) == ("mean and 95% t-interval (tooltip) over seeds, n = 2–3 "
                               "(cells labelled where n < 3)")
    # a caller's subtitle lines come first; the n line is kept
    lines = report.heatmap(frame, "site", "site_b", "mi", "t",
                           subtitle=["floor 0.01 nats", "cannot show X"]).to_dict()["title"]
    assert lines == {"text": "t", "subtitle": [
        "floor 0.01 nats", "cannot show X",
        "mean and 95% t-interval (tooltip) over seeds, n = 2–3 (cells labelled where n < 3)"]}
    untitled = report.line(frame, "site_b", "mi", subtitle="one line").to_dict()["title"]
    assert untitled["text"] == ["one line", "mean and 95% t-interval over seeds, n = 2–3 "
                                "(points labelled where n < 3); band only where n ≥ 3, "
                                "values drawn as points where n = 2"]


def test_chart_data_is_strict_json_and_not_row_limited() -> None:
    n = 6000  # over altair's default 5000-row limit
    frame = pl.DataFrame({"x": [float(i) for i in range(n)],
                          "y": [float("nan"), float("inf")] + [1.0] * (n - 2),
                          "channel": list(range(n))})
    chart = report.scatter(frame, "x", "y", color="channel", tooltip=["channel"])
    spec = strict_json(chart.to_json())
    rows = spec["datasets"][spec["data"]["name"]]
    assert len(rows) == n and rows[0]["y"] is None and rows[1]["y"] is None


def test_dotted_column_names_are_escaped() -> None:
    frame = pl.DataFrame({"a.b": [1.0, 2.0], "y": [1.0, 2.0]})
    enc = report.scatter(frame, "a.b", "y").to_dict()["encoding"]
    assert enc["x"]["field"] == "a\\.b" and enc["x"]["title"] == "a.b"


# --------------------------------------------------------------------------- index page


def test_write_index_lists_everything_escapes_and_truncates(tmp_path: Path) -> None:
    figures = {"mi_by_depth": {"png": tmp_path / "figures" / "mi_by_depth.png",
                               "html": tmp_path / "figures" / "mi_by_depth.html"},
               "vector_only": {"svg": Path("figures/vector_only.svg")}}
    long = pl.DataFrame({"channel": list(range(5120)), "i_xt": [1.234567] * 5120})
    evil = pl.DataFrame({"site": ["<script>alert(1)</script>"], "value": [0.000123456],
                         "missing": [None]}, schema_overrides={"missing": pl.Float64})
    meta = {"spec": "smoke <test>", "status": "complete",
            "versions": {"torch": "2.4", "timm": "1.0"}, "seconds": 12.345678}
    path = report.write_index(
        tmp_path, "Run <one>", meta, figures, {"channel_mi": long, "layer_mi": evil},
        notes=["I(X;T) is capped by log B = 3.00 nats per channel"],
        warnings=["estimator saturated at layer4"],
        checks=[{"name": "finite", "passed": True, "detail": "all values finite"},
                {"name": "monotone", "passed": False, "detail": "I(X;T) rose at depth 3"}])

    assert path == tmp_path / "index.html"
    page = path.read_text()
    no_external_resources(page)
    assert "<title>Run &lt;one&gt;</title>" in page and "smoke &lt;test&gt;" in page
    assert "<pre>" in page and "&quot;torch&quot;: &quot;2.4&quot;" in page
    for name in ("mi_by_depth", "vector_only", "channel_mi", "layer_mi"):
        assert name in page
    assert '<img src="figures/mi_by_depth.png"' in page
    assert '<a href="figures/mi_by_depth.html"' in page
    assert '<img src="figures/vector_only.svg"' in page
    # table cells are escaped; floats keep 4 significant digits
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<td>0.0001235</td>" in page and "<td>1.235</td>" in page
    assert "showing 50 of 5120 rows; full table: tables/channel_mi.parquet" in page
    assert page.count("<tr>") == 1 + 50 + 1 + 1  # two header rows, 50 + 1 body rows
    assert "Warnings" in page and "estimator saturated at layer4" in page
    assert "log B = 3.00 nats per channel" in page
    assert "Claims (1 of 2 hold, 1 do not, 0 inconclusive)" in page
    assert re.search(r'class="fail"><b>does not hold</b>: monotone &mdash; I\(X;T\) rose at depth 3', page)


def test_the_page_reads_like_a_paper(tmp_path: Path) -> None:
    """Verdicts first, then notes and figures, summary tables before long per-observation
    tables, and the run metadata last, collapsed (it used to fill the first screens)."""
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "f.png").write_bytes(b"png")
    long = pl.DataFrame({"channel": list(range(5000))})
    short = pl.DataFrame({"site": ["a", "b"], "i_ty": [0.1, 0.2]})
    summary = pl.DataFrame({"site": ["a"], "i_ty_mean": [0.1]})
    meta = {"status": "complete", "seeds": [0, 1], "versions": {"torch": "2.4"},
            "data": {"n_eval": 899, "classes": list("0123456789")}}
    page = report.write_index(
        tmp_path, "t", meta, {"f": {"png": tmp_path / "figures" / "f.png"}},
        {"channel_mi": long, "layer_mi": short, "summary_layer_mi": summary},
        notes=["a note"], checks=[{"name": "c", "passed": True}]).read_text()
    order = [page.index(marker) for marker in (
        'id="checks"', 'id="notes"', 'id="figures"', 'id="table-summary_layer_mi"',
        'id="table-layer_mi"', 'id="table-channel_mi"', '<details id="metadata">')]
    assert order == sorted(order), order
    assert "status <b>complete</b> &middot; 2 seeds (0, 1) &middot; 899 evaluation " \
        "samples, 10 classes" in page
    assert page.index("&quot;torch&quot;") > page.index('<details id="metadata">')


def test_table_preview_shows_each_interval_beside_its_n(tmp_path: Path) -> None:
    summary = pl.DataFrame({"act": ["relu"], "n_seeds": [5], "a_mean": [2.0],
                            "a_ci_low": [-0.48], "a_ci_high": [4.48], "b_mean": [1.0],
                            "b_ci_low": [0.5], "b_ci_high": [1.5], "b_n": [5], "a_n": [3]})
    page = report.write_index(tmp_path, "t", {}, {}, {"summary_dynamics": summary}).read_text()
    header = re.findall(r"<th[^>]*>([^<]*)</th>", page)
    assert header == ["act", "n_seeds", "a_mean", "a_ci_low", "a_ci_high", "a_n", "b_mean",
                      "b_ci_low", "b_ci_high", "b_n"]
    assert ('title="Int64; values of a (non-null, non-NaN) the interval is over">a_n</th>'
            in page)
    assert "<td>-0.48</td><td>4.48</td><td>3</td>" in page


def test_write_index_without_warnings_has_no_warning_section(tmp_path: Path) -> None:
    page = report.write_index(tmp_path, "t", {}, {}, {}).read_text()
    assert "Warnings" not in page and "<h1>t</h1>" in page
    with pytest.raises(RunError, match="lacks keys"):
        report.write_index(tmp_path, "t", {}, {}, {}, checks=[{"name": "x"}])


def test_render_run_saves_figures_and_index(tmp_path: Path) -> None:
    chart = report.by_depth(site_frame(2), "i_xt", title="I(X;T)", y_title="I(X;T) (nats)")
    tables = {"layer_mi": site_frame(2)}
    index = report.render_run(tmp_path, {"mi_by_depth": chart}, tables, {"spec": "demo"},
                              notes=["a note"])
    assert index == tmp_path / "index.html"
    assert (tmp_path / "figures" / "mi_by_depth.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (tmp_path / "figures" / "mi_by_depth.html").stat().st_size > 100_000
    page = index.read_text()
    assert "<h1>demo</h1>" in page and '<img src="figures/mi_by_depth.png"' in page
    assert "layer_mi" in page and "a note" in page


def test_render_run_reports_failed_figure_after_writing_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(chart, figures_dir, name, formats=("png", "html")):
        raise RunError(f"figure {name!r}: rendering png failed: boom")

    monkeypatch.setattr(report, "save_chart", broken)
    chart = report.scatter(site_frame(1), "depth", "i_xt")
    with pytest.raises(RunError, match=r"figures \['bad'\] could not be rendered"):
        report.render_run(tmp_path, {"bad": chart}, {}, {"spec": "demo"})
    page = (tmp_path / "index.html").read_text()
    assert "Warnings" in page and "rendering png failed: boom" in page


def test_render_run_rejects_unknown_format_before_rendering(tmp_path: Path) -> None:
    chart = report.scatter(site_frame(1), "depth", "i_xt")
    with pytest.raises(RunError, match="valid formats"):
        report.render_run(tmp_path, {"x": chart}, {}, {}, formats=("pdf",))
    assert not (tmp_path / "index.html").exists()


def test_report_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, mi_probe._core.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_report_plugin_writes_after_index_html(tmp_path, monkeypatch, tiny_spec_file, capsys):
    """mi_probe_register_reports: writers named in report.writers run after index.html,
    on a run and on a re-render; an unknown writer is a located spec error."""
    from pathlib import Path

    from mi_probe import cli
    from mi_probe._core.runner.driver import rerender
    from mi_probe._core.plugins import get_plugin_manager

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugins"))
    monkeypatch.chdir(tmp_path)
    pm = get_plugin_manager(["summary_report"], autoload=False)
    spec = tiny_spec_file("")
    spec.write_text(spec.read_text().replace(
        "report: {formats: [png]}", "report: {formats: [png], writers: [{kind: table_summary}]}"))
    code = cli.main(["run", str(spec), "--out", str(tmp_path / "r"), "--cache-dir",
                     str(tmp_path / "cache"), "--no-progress"], pm=pm)
    assert code == 0
    summary = (tmp_path / "r" / "tables.md").read_text()
    assert summary.startswith("# tiny") and "- layer_mi: " in summary
    (tmp_path / "r" / "tables.md").unlink()
    rerender(tmp_path / "r", pm=pm)
    assert (tmp_path / "r" / "tables.md").is_file()

    bad = tiny_spec_file("", name="bad.yaml")
    bad.write_text(bad.read_text().replace(
        "report: {formats: [png]}", "report: {formats: [png], writers: [{kind: pdf}]}"))
    assert cli.main(["validate", str(bad)], pm=pm) == 2
    assert "table_summary" in capsys.readouterr().err


def test_one_colour_per_state_in_every_chart() -> None:
    """A state keeps its colour from chart to chart (orange once meant "random (shuffled
    labels)" in one figure and "trained" in the next)."""
    rows = [{"seed": s, "state": st, "site": f"s{d}", "depth": d, "site_kind": "k",
             "v": float(d + s)} for s in (0, 1, 2) for st in ("trained", "random")
            for d in range(3)]
    frame = pl.DataFrame(rows)
    only_trained = frame.filter(pl.col("state") == "trained")

    def scale_of(chart) -> dict:
        spec = chart.to_dict()
        for layer in spec.get("layer", []):
            color = layer.get("encoding", {}).get("color", {})
            if "scale" in color:
                return dict(zip(color["scale"]["domain"], color["scale"]["range"]))
        raise AssertionError("no colour scale")

    both = scale_of(report.by_depth(frame, "v", color="state"))
    one = scale_of(report.by_depth(only_trained, "v", color="state"))
    assert both["trained"] == one["trained"] == report.PALETTE["trained"]
    assert both["random"] == report.PALETTE["random"] != both["trained"]


def test_depth_axes_name_the_sites() -> None:
    rows = [{"seed": s, "state": "trained", "site": name, "depth": d, "site_kind": "k",
             "v": 1.0 + s} for s in (0, 1) for d, name in enumerate(["stem", "layer1.0"])]
    spec = report.by_depth(pl.DataFrame(rows), "v").to_dict()
    axes = [layer["encoding"]["x"].get("axis", {}) for layer in spec["layer"]]
    assert any('{0: "stem", 1: "layer1.0"}[datum.value]' == a.get("labelExpr") for a in axes)


def test_screenshots_of_the_page_in_headless_chromium(tmp_path: Path) -> None:
    """scripts/report_screenshots.py: the first screen and each figure as the page shows
    them (skipped where no Chromium is installed)."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "report_screenshots.py"
    spec = importlib.util.spec_from_file_location("report_screenshots", script)
    shots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shots)
    if shots.find_chromium() is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    rows = [{"seed": s, "state": st, "site": f"s{d}", "depth": d, "site_kind": "k",
             "v": float(d + s)} for s in (0, 1, 2) for st in ("trained", "random")
            for d in range(3)]
    wide = pl.DataFrame({f"a_long_column_name_{i}": [1.23456789] * 3 for i in range(40)})
    report.render_run(tmp_path, {"v_by_depth": report.by_depth(pl.DataFrame(rows), "v")},
                      {"t": pl.DataFrame(rows), "wide": wide}, {"status": "complete"},
                      formats=["png"], checks=[{"name": "c", "passed": True}])
    # exit 0: the screenshots were written and the page does not scroll sideways at
    # 1,280 px, although the 40-column table is far wider (it scrolls in its own box)
    assert shots.main([str(tmp_path), "--out", str(tmp_path / "shots")]) == 0
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.html").write_text(
        '<html><body><div style="width:3000px">wide</div></body></html>')
    assert shots.sideways_scroll(shots.find_chromium(), broken / "index.html") > 0
    from PIL import Image

    for name in ("top", "figure-v_by_depth"):
        image = Image.open(tmp_path / "shots" / f"{name}.png").convert("L")
        assert image.size[0] == 1280
        low, high = image.getextrema()
        assert high - low > 100, f"{name}.png is blank"


def test_links_work_when_the_run_directory_is_relative(tmp_path: Path, monkeypatch) -> None:
    """`make demo` writes to the relative reports/<name>/<time>/: its index.html once
    linked reports/<name>/<time>/figures/x.png from inside that folder (broken)."""
    monkeypatch.chdir(tmp_path)
    rows = [{"seed": s, "x": float(x), "y": float(x * s)} for s in (0, 1, 2) for x in range(3)]
    index = report.render_run(Path("reports/demo/t1"), {"curve": report.line(
        pl.DataFrame(rows), "x", "y")}, {}, {}, formats=["png", "html"])
    page = index.read_text()
    assert '<img src="figures/curve.png"' in page and '<a href="figures/curve.html"' in page
    assert (index.parent / "figures" / "curve.png").is_file()


# --------------------------------------------------------------------------- issue 26


def css_rule(page: str, selector: str) -> str:
    """The declarations of ``selector``'s rule in the page's inline CSS."""
    match = re.search(r"(?:^|[}\n])\s*" + re.escape(selector) + r"\s*\{([^}]*)\}", page)
    assert match, f"no CSS rule for {selector}"
    return match.group(1)


def test_the_page_does_not_scroll_sideways_and_wide_tables_are_cut(tmp_path: Path) -> None:
    """At a 1,300 px window the nav ran off the page ("metad…": its links had no break
    between them) and a 180 x 20 table was shown whole."""
    wide = pl.DataFrame({f"column_{i}": [float(i)] * 20 for i in range(180)})
    tall = pl.DataFrame({f"c{i}": list(range(180)) for i in range(20)})
    tables = {f"table_with_a_long_name_{i}": tall.head(3) for i in range(30)}
    page = report.write_index(tmp_path, "t", {"status": "complete"}, {},
                              {"wide": wide, "tall": tall, **tables}).read_text()
    nav = css_rule(page, "nav")
    assert "display: flex" in nav and "flex-wrap: wrap" in nav
    wrap = css_rule(page, ".tablewrap")
    assert "overflow-x: auto" in wrap and "max-width: 100%" in wrap
    # a wide table shows its first columns, and says where the rest is
    section = page[page.index('id="table-wide"'):page.index('id="table-tall"')]
    assert section.count("<th ") == report.MAX_COLUMNS < 180
    assert (f"showing {report.MAX_COLUMNS} of 180 columns; full table: tables/wide.parquet"
            in section)
    assert "column_23</th>" in section and "column_24</th>" not in section
    # a 180-row table is cut too, and a table both long and wide says both
    tall_section = page[page.index('id="table-tall"'):]
    assert f"showing {report.MAX_ROWS} of 180 rows; full table: tables/tall.parquet" in tall_section
    both = report.write_index(tmp_path, "t", {}, {}, {"w": wide}, max_rows=5,
                              max_columns=3).read_text()
    assert "showing 5 of 20 rows and 3 of 180 columns; full table: tables/w.parquet" in both
    with pytest.raises(RunError, match="max_columns"):
        report.write_index(tmp_path, "t", {}, {}, {}, max_columns=0)


def colour_of(chart: alt.TopLevelMixin) -> dict:
    """The colour encoding of a chart's first layer that has one (nested layers too)."""
    def find(spec: dict) -> dict | None:
        color = spec.get("encoding", {}).get("color")
        if color and "field" in color:
            return color
        for inner in spec.get("layer", []):
            found = find(inner)
            if found:
                return found
        return None
    found = find(chart.to_dict())
    assert found, "no colour encoding"
    return found


def test_a_series_has_one_colour_and_one_order_in_every_chart() -> None:
    """`bottom` was green in the line charts and blue in the per-class bars, and legends
    were alphabetical (bottom, random, top)."""
    rows = [dict(seed=s, q=q, selection=sel, site=f"s{d}", depth=d, site_kind="k",
                 cls=k, drop=q + s + d + k * 0.1)
            for s in range(3) for q in (0.1, 0.3, 0.5) for sel in ("bottom", "random", "top")
            for d in range(2) for k in range(2)]
    frame = pl.DataFrame(rows)
    charts = [report.line(frame, "q", "drop", color="selection"),
              report.by_depth(frame, "drop", color="selection"),
              report.bars(frame, "cls", "drop", color="selection"),
              report.scatter(frame, "q", "drop", color="selection")]
    for chart in charts:
        color = colour_of(chart)
        assert color["scale"]["domain"] == ["top", "random", "bottom"]
        assert color["sort"] == ["top", "random", "bottom"]
        assert dict(zip(color["scale"]["domain"], color["scale"]["range"])) == {
            name: report.PALETTE[name] for name in ("top", "random", "bottom")}
    # a chart with only some of the series gives them the same colours, in the same order
    some = colour_of(report.bars(frame.filter(pl.col("selection") != "random"), "cls", "drop",
                                 color="selection"))
    assert some["scale"] == {"domain": ["top", "bottom"],
                             "range": [report.PALETTE["top"], report.PALETTE["bottom"]]}
    # the other families, each in its reading order
    for values, order in [(["random", "trained"], ["trained", "random"]),
                          (["random", "redundant", "cover"], ["cover", "redundant", "random"]),
                          (["hsic", "none"], ["none", "hsic"]), (["tanh", "relu"], ["relu", "tanh"])]:
        assert report.series_order(values) == order
        assert report.color_scale(values).domain == order
    # a series not in the palette gets a colour no listed series of the chart uses
    mixed = report.color_scale(["top", "middle"])
    assert mixed.domain == ["top", "middle"] and mixed.range[1] != report.PALETTE["top"]
    assert report.color_scale(["a", "b"]) is alt.Undefined  # Vega's scheme


def test_the_experiments_per_class_bars_and_lines_share_colours() -> None:
    from mi_probe.builtin.experiments.semantic_knockout import (SemanticKnockout,
                                                                SemanticKnockoutParams)

    figs = SemanticKnockout(SemanticKnockoutParams()).figures(
        {"semantic_knockout": semantic_frame()})
    line_colour = colour_of(figs["semantic_drop_vs_q"])
    bar_colour = colour_of(figs["semantic_drop_per_class"])
    assert line_colour["scale"] == bar_colour["scale"]
    assert bar_colour["scale"]["domain"] == ["top", "random", "bottom"]
    offset = layer(figs["semantic_drop_per_class"], "bar")["encoding"]["xOffset"]
    assert offset["sort"] == ["top", "random", "bottom"]


def test_few_x_values_get_a_tick_each_at_the_values() -> None:
    """q in {0.1, 0.3, 0.5} showed ticks at 0.14, 0.18, ..."""
    rows = [dict(seed=s, q=q, drop=q + s) for s in range(3) for q in (0.1, 0.3, 0.5)]
    chart = report.line(pl.DataFrame(rows), "q", "drop")
    axis = layer(chart, "line")["encoding"]["x"]["axis"]
    assert axis["values"] == [0.1, 0.3, 0.5]
    # many values: Vega's ticks
    many = [dict(seed=s, q=q / 20, drop=q + s) for s in range(3) for q in range(20)]
    assert "axis" not in layer(report.line(pl.DataFrame(many), "q", "drop"),
                               "line")["encoding"]["x"]
    # a few whole numbers far apart (epochs 0, 50, 100) get exactly those ticks
    epochs = [dict(seed=s, epoch=e, acc=0.5) for s in range(3) for e in (0, 50, 100)]
    axis = layer(report.line(pl.DataFrame(epochs), "epoch", "acc"), "line")["encoding"]["x"]["axis"]
    assert axis["values"] == [0, 50, 100] and axis["format"] == "d"


def semantic_frame(seeds: int = 3) -> pl.DataFrame:
    """A semantic_knockout table: 3 classes x 2 sites x 3 q x 3 selections per seed."""
    return pl.DataFrame([
        {"seed": s, "state": "trained", "site": site, "depth": d, "site_kind": "b",
         "fit": "in_sample", "part": 0, "class": k, "class_name": str(k), "q": q,
         "selection": sel, "draw": 0, "n_channels": 3, "class_accuracy": 0.5,
         "baseline_class_accuracy": 0.9, "other_classes_change": -0.01,
         "drop": 0.4 * (sel == "top") + 0.1 * s + 0.01 * k + 0.001 * d}
        for s in range(seeds) for d, site in enumerate(["a", "b"]) for k in range(3)
        for q in (0.1, 0.3, 0.5) for sel in ("top", "random", "bottom")])


def test_bars_show_the_interval_over_seeds_and_n() -> None:
    """The per-class bars had no interval and no n."""
    frame = semantic_frame()
    chart = report.bars(frame.filter(pl.col("q") == 0.5), "class", "drop", color="selection")
    rows = {(r["class"], r["selection"]): r for r in chart_rows(chart)}
    # sites of a seed are averaged first: seed means 0.1 s + 0.01 k + 0.0005 (+0.4 top)
    half = student_t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    top0 = rows[(0, "top")]
    assert top0["drop_n"] == 3 and top0["drop_mean"] == pytest.approx(0.5005)
    assert top0["drop_ci_low"] == pytest.approx(0.5005 - half)
    assert top0["drop_ci_high"] == pytest.approx(0.5005 + half)
    rule = layer(chart, "rule")
    assert rule["encoding"]["y"]["field"] == "drop_ci_low"
    assert rule["encoding"]["y2"]["field"] == "drop_ci_high"
    assert "drop_n" in {t["field"] for t in layer(chart, "bar")["encoding"]["tooltip"]}
    assert subtitle(chart) == "mean and 95% t-interval (error bars) over seeds, n = 3"
    # two seeds: the seeds' values as points, no error bar
    two = report.bars(semantic_frame(2).filter(pl.col("q") == 0.5), "class", "drop",
                      color="selection")
    assert marks(two) == ["bar", "point"]
    assert subtitle(two).startswith("mean over seeds, n = 2: values drawn as points")

    from mi_probe.builtin.experiments.semantic_knockout import (SemanticKnockout,
                                                                SemanticKnockoutParams)

    per_class = SemanticKnockout(SemanticKnockoutParams()).figures(
        {"semantic_knockout": frame})["semantic_drop_per_class"]
    assert "rule" in marks(per_class)
    assert per_class.to_dict()["title"]["subtitle"] == (
        "mean and 95% t-interval (error bars) over seeds, n = 3")
    assert {r["drop_n"] for r in chart_rows(per_class)} == {3}


def layer_mi_tables(with_cap: bool = True, reduce: str = "mean") -> dict[str, pl.DataFrame]:
    layer_mi = pl.DataFrame([
        dict(seed=s, state=st, site=site, depth=d, site_kind="b", i_xt=1.0 + d + 0.1 * s,
             i_ty=0.1 * d, i_ty_bias=0.05, i_ty_null=0.02, channels=8, reduce=reduce)
        for s in range(3) for st in ("trained", "random") for d, site in enumerate(SITES)])
    diag = layer_mi.select("seed", "state", "site", "depth", "site_kind").with_columns(
        log_n=pl.lit(math.log(899.0)))
    if with_cap:
        diag = diag.with_columns(i_xt_cap=pl.lit(math.log(20.0)))
    return {"layer_mi": layer_mi, "diagnostics": diag}


def rules_of(spec: dict) -> list[dict]:
    """Every rule layer of a (nested) layer spec with its data values."""
    found = []
    for inner in spec.get("layer", []):
        if inner.get("mark", {}).get("type") == "rule" or inner.get("mark") == "rule":
            found.append(inner)
        found += rules_of(inner)
    return found


def test_the_i_xt_chart_marks_the_log_b_cap(tmp_path: Path) -> None:
    from mi_probe.builtin.experiments.layer_mi import LayerMIExperiment, LayerMIParams

    experiment = LayerMIExperiment(LayerMIParams())
    chart = experiment.figures(layer_mi_tables())["layer_i_xt"]
    spec = chart.to_dict()
    (rule,) = rules_of(spec)
    assert rule["mark"]["strokeDash"] == [6, 3]
    values = spec["datasets"][rule["data"]["name"]]
    assert values[0]["cap"] == pytest.approx(math.log(20))
    assert values[0]["label"].startswith("log B = 2.996 nats")
    texts = [lay for lay in spec["layer"] if lay.get("mark", {}).get("type") == "text"]
    assert texts and texts[0]["encoding"]["text"]["field"] == "label"
    svg = report.save_chart(chart, tmp_path, "i_xt", formats=("svg",))["svg"].read_text()
    assert "log B = 2.996 nats" in svg and "I(X;T) [nats]" in svg
    # joint symbols: capped by log N instead
    joint = experiment.figures(layer_mi_tables(reduce="joint"))["layer_i_xt"].to_dict()
    (rule,) = rules_of(joint)
    assert joint["datasets"][rule["data"]["name"]][0]["label"].startswith("log N = 6.801")
    # another estimator (no i_xt_cap in its diagnostics): no rule
    assert not rules_of(experiment.figures(layer_mi_tables(with_cap=False))["layer_i_xt"]
                        .to_dict())


def test_a_subtitle_states_each_fact_once() -> None:
    """A subtitle read "n = 2; n = 2: values drawn as points"."""
    rows = [dict(seed=s, x=x, y=float(x + s)) for s in range(2) for x in range(3)]
    text = subtitle(report.line(pl.DataFrame(rows), "x", "y", title="t"))
    assert text.count("n = 2") == 1
    # a caller's line repeating a statement of the note (or of another line) is dropped
    chart = report.line(pl.DataFrame(rows), "x", "y", title="t",
                        subtitle=["cross-fit", "cross-fit",
                                  "mean over seeds, n = 2: values drawn as points, no band "
                                  "(95% t-interval in the tooltip)"])
    assert chart.to_dict()["title"]["subtitle"] == [
        "cross-fit", "mean over seeds, n = 2: values drawn as points, no band "
        "(95% t-interval in the tooltip)"]
    three = [dict(seed=s, x=x, y=float(x + s)) for s in range(3) for x in range(3)]
    assert subtitle(report.line(pl.DataFrame(three), "x", "y", title="t",
                                subtitle="a; b; a")) == [
        "a; b", "mean and 95% t-interval over seeds, n = 3"]


def test_the_estimator_note_reads_as_words(tmp_path: Path) -> None:
    """The notes printed describe()'s JSON ({"estimator": "histogram", "bins": 20, ...,
    "i_xt_cap_per_channel_nats": 2.995732273553991}) and the summary "seed(s) [0]"."""
    from mi_probe._core.runner.rendering import run_notes
    from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams

    estimator = HistogramEstimator(HistogramParams())
    notes = run_notes(estimator, object(), 899, 10, {})
    assert notes[0] == ("Estimator: histogram, 20 bins, min–max range, no bias correction; "
                        "I(X;T) = H(binned T) (deterministic network, distinct inputs), at "
                        "most 2.996 nats per channel. All MI values are in nats.")
    quantile = HistogramEstimator(HistogramParams(bins=30, range="quantile",
                                                  correction="miller_madow"))
    assert report.describe_estimator(quantile.describe(), short=True) == (
        "histogram, 30 bins, quantile range (0.001 of samples clipped at each end), "
        "Miller–Madow bias correction")
    # a plugin's facts: every value in words, numbers to 4 significant digits
    assert report.describe_estimator({"estimator": "ksg", "k": 3, "standardize": True,
                                      "jitter": 0.000123456789, "i_xt": "not estimated",
                                      "sizes": [1, 2]}) == (
        "ksg; k: 3; standardize: yes; jitter: 0.0001235; I(X;T): not estimated; sizes: 1, 2")
    meta = {"status": "complete", "seeds": [0], "estimator": estimator.describe()}
    page = report.write_index(tmp_path, "t", meta, {}, {}, notes=notes).read_text()
    summary = re.search(r'<p class="summary">(.*?)</p>', page).group(1)
    assert summary == ("status <b>complete</b> &middot; 1 seed (0) &middot; estimator: "
                       "histogram, 20 bins, min–max range, no bias correction")
    notes_html = page[page.index('id="notes"'):page.index("</ul>", page.index('id="notes"'))]
    assert "{" not in notes_html and "&quot;" not in notes_html
    assert "2.995732" not in notes_html


def test_heatmap_labels_follow_the_series_order() -> None:
    frame = pl.DataFrame({"seed": [0, 0, 0], "selection": ["bottom", "random", "top"],
                          "q": [0.1, 0.1, 0.1], "drop": [0.0, 0.1, 0.5]})
    rect = report.heatmap(frame, "q", "selection", "drop").to_dict()["layer"][0]
    assert rect["encoding"]["y"]["sort"] == ["top", "random", "bottom"]
    assert rect["encoding"]["x"]["sort"] == "ascending"
