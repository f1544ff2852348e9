"""``mi-probe compare``: two tiny finished runs (ReLU on every site, tanh on the post-add
sites only) overlaid in one offline page; depth is the model's own site index, so the
two runs agree on it; the run metadata columns; and every refusal."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from mi_probe import cli
from mi_probe._core.compare import compare_runs, flatten, spec_diff
from mi_probe._core.tables import RUN_COLUMNS
from mi_probe.errors import RunError

SPEC = """\
name: tiny_compare
seeds: [0, 1]
data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 60, image_size: 16, noise: 0.5}
model:
  arch: test_resnet
  weights: train
  act: relu
  train: {epochs: 2, batch_size: 16, lr: 0.05}
sites: {include: ["*"]}
estimator: {kind: histogram, bins: 8}
experiment: {kind: layer_mi, null_draws: 1}
report: {formats: [png]}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pm, shared_cache):
    """(relu run on every site, tanh run on the post-add sites), both complete."""
    folder = tmp_path_factory.mktemp("compare")
    spec = folder / "spec.yaml"
    spec.write_text(SPEC)
    made = []
    for name, sets in (("relu", []), ("tanh", ["--set", "model.act=tanh", "--set",
                                               'sites.include=["*.post_add"]'])):
        out = folder / name
        code = cli.main(["run", str(spec), "--out", str(out), "--no-progress",
                         "--cache-dir", str(shared_cache), *sets], pm=pm)
        assert code == 0
        made.append(out)
    return tuple(made)


def test_compare_writes_one_offline_page_and_the_concatenated_tables(runs, tmp_path):
    relu, tanh = runs
    index = compare_runs([relu, tanh], tmp_path / "cmp")
    assert index == tmp_path / "cmp" / "index.html"
    page = index.read_text()
    # Vega is inlined as in the run report: no script is fetched from anywhere
    assert "vegaEmbed" in page and "cdn.jsdelivr" not in page
    assert not re.search(r"<script[^>]*\bsrc=", page)
    # each run is labelled by what differs between the specs
    assert "act=relu" in page and "act=tanh" in page
    assert 'id="vis-0"' in page and "layer_mi.i_ty" in page
    summary = (tmp_path / "cmp" / "summary.txt").read_text()
    assert "model.act: relu | tanh" in summary
    assert 'sites.include: ["*"] | ["*.post_add"]' in summary
    layer = pl.read_parquet(tmp_path / "cmp" / "tables" / "layer_mi.parquet")
    assert set(RUN_COLUMNS) | {"run_label", "rel_depth"} <= set(layer.columns)
    assert layer["run_id"].n_unique() == 2
    assert sorted(layer["act"].unique()) == ["relu", "tanh"]
    assert set(layer["arch"].unique()) == {"test_resnet"}
    assert set(layer["data"].unique()) == {"synthetic"}
    assert layer["estimator"].str.starts_with("histogram, 8 bins").all()
    # every row of each run is there
    assert layer.height == sum(pl.read_parquet(r / "tables" / "layer_mi.parquet").height
                               for r in runs)


def test_depth_is_the_models_own_site_index(runs):
    """The tanh run selects only post-add sites; they keep the depth they have in the
    run over every site, so the runs line up."""
    every, post = (pl.read_parquet(r / "tables" / "layer_mi.parquet") for r in runs)
    depth_of = dict(every.select("site", "depth").unique().iter_rows())
    pairs = post.select("site", "depth", "rel_depth").unique().sort("depth")
    assert all(depth_of[site] == depth for site, depth, _ in pairs.iter_rows())
    deepest = every["depth"].max()
    assert pairs["depth"].to_list() == [2, 4, 6, 8] and deepest == 8  # not 0, 1, 2, 3
    assert pairs["rel_depth"].to_list() == [d / deepest for d in pairs["depth"]]
    for frame in (every, post):
        assert frame["rel_depth"].is_between(0.0, 1.0).all()
    assert every.filter(pl.col("depth") == 0)["rel_depth"].unique().to_list() == [0.0]
    # the run writes its metadata once per table and says it in run.json
    meta = json.loads((runs[1] / "run.json").read_text())
    assert meta["run_columns"]["act"] == "tanh"
    assert meta["run_columns"]["run_id"].startswith("tiny_compare/tanh@")
    assert post["run_id"].unique().to_list() == [meta["run_columns"]["run_id"]]


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("figures", "units", "*.html"))
    return to


def test_runs_from_before_the_metadata_columns_get_them(runs, tmp_path):
    old = _copy_run(runs[1], tmp_path / "old")
    for path in (old / "tables").glob("*.parquet"):
        frame = pl.read_parquet(path)
        frame.drop([c for c in (*RUN_COLUMNS, "rel_depth") if c in frame.columns]
                   ).write_parquet(path)
    meta = json.loads((old / "run.json").read_text())
    del meta["run_columns"]
    (old / "run.json").write_text(json.dumps(meta))
    compare_runs([runs[0], old], tmp_path / "cmp", labels=["new", "old"])
    layer = pl.read_parquet(tmp_path / "cmp" / "tables" / "layer_mi.parquet")
    old_rows = layer.filter(pl.col("run_label") == "old")
    assert old_rows.height and old_rows.select(RUN_COLUMNS).null_count().sum_horizontal()[0] == 0
    assert old_rows["act"].unique().to_list() == ["tanh"]
    assert old_rows["run_id"].unique().to_list() == [f"tiny_compare/old@{meta['started']}"]
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert "predate rel_depth" in page  # its x is its position among its own sites


def test_refusals(runs, tmp_path):
    relu, tanh = runs
    with pytest.raises(RunError, match=r"at least 2 run directories, got 1"):
        compare_runs([relu], tmp_path / "a")
    with pytest.raises(RunError, match=r"same run is given twice"):
        compare_runs([relu, relu], tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"empty is not an mi-probe run directory \(no run.json\)"):
        compare_runs([relu, tmp_path / "empty"], tmp_path / "a")
    with pytest.raises(RunError, match=r"nowhere is not a run directory"):
        compare_runs([relu, tmp_path / "nowhere"], tmp_path / "a")
    running = _copy_run(tanh, tmp_path / "running")
    meta = json.loads((running / "run.json").read_text())
    (running / "run.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    with pytest.raises(RunError, match=r"running is not complete \(status 'interrupted'\)"):
        compare_runs([relu, running], tmp_path / "a")
    other = _copy_run(tanh, tmp_path / "other")
    for path in (other / "tables").glob("*.parquet"):
        path.rename(path.with_name(f"other_{path.name}"))
    with pytest.raises(RunError, match=r"no table in common"):
        compare_runs([relu, other], tmp_path / "a")
    with pytest.raises(RunError, match=r"1 label\(s\) for 2 runs"):
        compare_runs([relu, tanh], tmp_path / "a", labels=["x"])
    with pytest.raises(RunError, match=r"is a run directory"):
        compare_runs([relu, tanh], relu)
    assert not (tmp_path / "a").exists()  # nothing written by a refusal


def test_cli_compare(runs, tmp_path, capsys):
    relu, tanh = runs
    assert cli.main(["compare", str(relu), "--out", str(tmp_path / "a")]) == 1
    assert capsys.readouterr().err.startswith("error: compare needs at least 2")
    assert cli.main(["compare", str(relu), str(tmp_path), "--out", str(tmp_path / "a")]) == 1
    assert "not an mi-probe run directory" in capsys.readouterr().err
    assert cli.main(["compare", str(relu), str(tanh), "--out", str(tmp_path / "b"),
                     "--label", "ReLU", "--label", "tanh"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"report: {tmp_path / 'b' / 'index.html'}"
    assert "model.act: relu | tanh" in err
    assert "ReLU" in (tmp_path / "b" / "index.html").read_text()


def test_spec_diff_flattens_nested_keys():
    a = {"name": "x", "model": {"arch": "resnet18", "act": None, "train": {"epochs": 3}},
         "seeds": [0, 1]}
    b = {"name": "x", "model": {"arch": "resnet18", "act": "tanh", "train": {"epochs": 5}},
         "seeds": [0, 1], "extra": {"k": 1}}
    assert flatten(a)["model.train.epochs"] == "3" and flatten(a)["seeds"] == "[0, 1]"
    assert spec_diff([a, b]) == {"model.act": ["null", "tanh"],
                                 "model.train.epochs": ["3", "5"],
                                 "extra.k": ["(unset)", "1"]}


def test_a_resumed_run_recomputes_units_from_before_rel_depth(runs, tmp_path, pm,
                                                              shared_cache, capsys):
    """Units written before depth became the model's own index have no rel_depth; a
    run resumed over them computes them again instead of mixing two meanings of depth."""
    resumed = tmp_path / "resumed"
    shutil.copytree(runs[0], resumed)
    unit = resumed / "units" / "seed=1" / "layer_mi.parquet"
    assert unit.is_file()
    pl.read_parquet(unit).drop("rel_depth").write_parquet(unit)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    assert cli.main(["run", str(spec), "--out", str(resumed), "--no-progress",
                     "--cache-dir", str(shared_cache)], pm=pm) == 0
    assert "recomputing 1 finished unit(s)" in capsys.readouterr().err
    assert "rel_depth" in pl.read_parquet(unit).columns
    layer = pl.read_parquet(resumed / "tables" / "layer_mi.parquet")
    assert layer["rel_depth"].null_count() == 0 and layer["seed"].n_unique() == 2


def test_the_python_entry_point_takes_paths_and_runs(runs, tmp_path):
    import mi_probe

    relu, tanh = runs
    page = mi_probe.compare([mi_probe.load_run(relu), str(tanh)], out=tmp_path / "py",
                            labels=["ReLU", "tanh"])
    assert page == tmp_path / "py" / "index.html" and page.is_file()
    text = page.read_text()
    assert "ReLU" in text and "tanh" in text
    with pytest.raises(RunError, match="at least 2 run directories, got 1"):
        mi_probe.compare([relu], out=tmp_path / "one")
