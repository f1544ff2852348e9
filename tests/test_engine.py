"""End to end through the CLI: run directory contract, resume, and every bad-input path."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch

from mi_probe import cli
from mi_probe._core.models import build_model, save_weights
from mi_probe.builtin.experiments.layer_mi import TABLE_SCHEMAS
from mi_probe._core.tables import CORE_SCHEMAS

SITE = ("seed", "state", "site", "depth", "site_kind")
#: The contract other tools read, written out here so that dropping a column from both
#: the code and its declared schema still fails a test.
CONTRACT = {"layer_mi": SITE + ("i_xt", "i_ty"),
            "channel_mi": SITE + ("channel", "i_xt", "i_ty"),
            "evaluation": ("seed", "state", "accuracy", "n_samples"),
            "training": ("seed", "epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds",
                         "regularizer")}


def test_the_declared_schemas_keep_the_contract():
    for name in ("layer_mi", "channel_mi", "evaluation"):
        assert set(CONTRACT[name]) <= set(TABLE_SCHEMAS[name].required), name
    assert set(CONTRACT["training"]) <= set(CORE_SCHEMAS["training"])


def test_run_writes_the_contract(run_cli, tiny_spec_file, tmp_path):
    spec = tiny_spec_file("")
    code, out, err = run_cli(spec, "--out", tmp_path / "r", "--set", "seeds=[0, 1]")
    assert code == 0, err
    run_dir = tmp_path / "r"
    assert out.strip() == f"report: {run_dir / 'index.html'}"
    for name in ("spec.yaml", "run.json", "index.html", "figures/layer_i_ty.png",
                 "figures/layer_i_xt.png", "tables/layer_mi.parquet", "tables/channel_mi.parquet",
                 "tables/training.parquet", "tables/summary_layer_mi.parquet"):
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete" and info["seeds"] == [0, 1] and info["device"] == "cpu"
    import yaml

    resolved = yaml.safe_load((run_dir / "spec.yaml").read_text())
    assert resolved["seeds"] == [0, 1]
    assert resolved["estimator"]["bins"] == 8  # from the spec
    assert resolved["estimator"]["correction"] == "none"  # a default, filled in
    for name, columns in CONTRACT.items():
        frame = pl.read_parquet(run_dir / "tables" / f"{name}.parquet")
        assert set(columns) <= set(frame.columns), name
    layer = pl.read_parquet(run_dir / "tables" / "layer_mi.parquet")
    assert sorted(layer["seed"].unique()) == [0, 1]
    assert sorted(layer["state"].unique()) == ["random", "trained"]
    assert set(layer["site_kind"].unique()) == {"post_add"}
    assert layer.height == 2 * 2 * 4  # seeds x states x post_add sites of test_resnet
    assert layer["i_ty"].is_finite().all() and (layer["i_ty"] >= 0).all()
    assert (layer["i_xt"] <= math.log(8) + 1e-9).all()  # capped by log B
    channel = pl.read_parquet(run_dir / "tables" / "channel_mi.parquet")
    # the layer value is the mean of the channel values
    means = channel.group_by(["seed", "state", "site"]).agg(pl.col("i_ty").mean().alias("m"))
    joined = layer.join(means, on=["seed", "state", "site"])
    assert (joined["i_ty"] - joined["m"]).abs().max() < 1e-12
    html = (run_dir / "index.html").read_text()
    assert "layer_i_ty" in html and "log B" in html and "Plug-in bias" in html
    # the shuffled-label null sits beside every value, and diagnostics are stored
    assert layer["i_ty_null"].is_finite().all() and channel["i_ty_null"].is_finite().all()
    diag = pl.read_parquet(run_dir / "tables" / "diagnostics.parquet")
    assert {"n_constant", "frac_edge_bins", "frac_near_cap", "i_xt_cap"} <= set(diag.columns)
    assert diag.height == layer.height
    train = pl.read_parquet(run_dir / "tables" / "training.parquet")
    assert sorted(train["seed"].unique()) == [0, 1] and train["epoch"].max() == 2


def test_rerun_same_out_reuses_units_and_other_spec_is_refused(run_cli, tiny_spec_file, tmp_path):
    spec = tiny_spec_file("")
    assert run_cli(spec, "--out", tmp_path / "r")[0] == 0
    code, _, err = run_cli(spec, "--out", tmp_path / "r")
    assert code == 0 and "reused 1 finished unit(s)" in err
    code, _, err = run_cli(spec, "--out", tmp_path / "r", "--set", "estimator.bins=5")
    assert code == 1
    assert "holds a run of another spec" in err and "Traceback" not in err


def test_interrupted_run_resumes_only_missing_units(run_cli, tiny_spec_file, tmp_path, monkeypatch):
    from mi_probe.builtin.experiments.layer_mi import LayerMIExperiment

    original = LayerMIExperiment.run_unit
    done = []

    def interrupt_second(self, ctx, unit, plan):
        if unit == "seed=1":
            raise KeyboardInterrupt
        done.append(unit)
        return original(self, ctx, unit, plan)

    monkeypatch.setattr(LayerMIExperiment, "run_unit", interrupt_second)
    spec = tiny_spec_file("")
    # the interrupt propagates out of cli.main (a test runner must stop on Ctrl-C); the
    # mi-probe command turns it into exit status 130 (cli.entry)
    with pytest.raises(KeyboardInterrupt):
        run_cli(spec, "--out", tmp_path / "r", "--set", "seeds=[0, 1]")
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["status"] == "interrupted"
    assert (tmp_path / "r" / "units" / "seed=0" / "done.json").is_file()

    monkeypatch.setattr(LayerMIExperiment, "run_unit",
                        lambda self, ctx, unit, plan: done.append(unit) or original(self, ctx,
                                                                                     unit, plan))
    code, _, err = run_cli(spec, "--out", tmp_path / "r", "--set", "seeds=[0, 1]")
    assert code == 0, err
    assert done == ["seed=0", "seed=1"]  # seed=0 once before the interrupt, seed=1 once after
    layer = pl.read_parquet(tmp_path / "r" / "tables" / "layer_mi.parquet")
    assert sorted(layer["seed"].unique()) == [0, 1]


def test_missing_data_folder_is_one_clear_line(run_cli, tiny_spec_file, tmp_path):
    spec = tiny_spec_file("", text=open(tiny_spec_file()).read().replace(
        "data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 60, image_size: 16, noise: 0.5}",
        f"data: {{kind: imagefolder, root: {tmp_path / 'nowhere'}, image_size: 16}}"),
        name="folder.yaml")
    code, out, err = run_cli(spec, "--out", tmp_path / "r")
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "nowhere" in lines[-1]
    assert "does not exist" in lines[-1] and "Traceback" not in err


def test_unknown_model_and_wrong_checkpoint(run_cli, tiny_spec_file, tmp_path):
    code, _, err = run_cli(tiny_spec_file("", text=open(tiny_spec_file()).read().replace(
        "arch: test_resnet", "arch: resnet81"), name="m.yaml"), "--out", tmp_path / "a")
    assert code == 1 and "unknown model architecture 'resnet81'" in err and "resnet18" in err

    other = build_model("resnet10t", 3, 0)
    path = tmp_path / "other.safetensors"
    save_weights(other, path, {"arch": "resnet10t", "num_classes": 3, "act": None,
                               "head": "timm", "zero_init_last": False})
    code, _, err = run_cli(tiny_spec_file("", text=open(tiny_spec_file()).read().replace(
        "weights: train", f"weights: {path}"), name="w.yaml"), "--out", tmp_path / "b")
    assert code == 1
    assert "holds a model with arch='resnet10t'; the spec asks for arch='test_resnet'" in err


def _nan_weights(tmp_path):
    model = build_model("test_resnet", 3, 0)
    with torch.no_grad():
        model.layer3[0].conv1.weight[0].fill_(float("nan"))
    path = tmp_path / "nan.safetensors"
    save_weights(model, path, {"arch": "test_resnet", "num_classes": 3, "act": None,
                               "head": "timm", "zero_init_last": False})
    return path


def test_nan_activation_is_refused_or_skipped(run_cli, tiny_spec_file, tmp_path):
    path = _nan_weights(tmp_path)
    text = open(tiny_spec_file()).read().replace("weights: train", f"weights: {path}") \
        .replace("experiment: {kind: layer_mi}", "experiment: {kind: layer_mi, states: [trained]}")
    spec = tiny_spec_file("", text=text, name="nan.yaml")
    code, _, err = run_cli(spec, "--out", tmp_path / "a")
    assert code == 1
    assert "site 'layer3.0.post_add' (trained model, seed 0) has" in err
    assert "non-finite" in err and "on_nonfinite: skip" in err
    code, _, err = run_cli(spec, "--out", tmp_path / "b", "--set", "eval.on_nonfinite=skip")
    assert code == 0, err
    assert "warning: site 'layer3.0.post_add'" in err
    layer = pl.read_parquet(tmp_path / "b" / "tables" / "layer_mi.parquet")
    assert "layer3.0.post_add" not in layer["site"].to_list()
    assert layer["i_ty"].is_finite().all()


def test_trained_state_needs_weights(run_cli, tiny_spec_file, tmp_path):
    spec = tiny_spec_file("", text=open(tiny_spec_file()).read().replace(
        "weights: train", "weights: random"), name="r.yaml")
    code, _, err = run_cli(spec, "--out", tmp_path / "a")
    assert code == 2 and "asks for the trained state but model.weights is 'random'" in err


def test_zero_init_random_model_gives_zero_not_nan(run_cli, tiny_spec_file, tmp_path):
    text = open(tiny_spec_file()).read().replace("weights: train", "weights: random\n  zero_init_last: true") \
        .replace("experiment: {kind: layer_mi}", "experiment: {kind: layer_mi, states: [random]}") \
        .replace('include: ["*.post_add"]', 'include: ["*"]')
    code, _, err = run_cli(tiny_spec_file("", text=text, name="z.yaml"), "--out", tmp_path / "a")
    assert code == 0, err
    layer = pl.read_parquet(tmp_path / "a" / "tables" / "layer_mi.parquet")
    pre = layer.filter(pl.col("site_kind") == "pre_add")
    assert pre.height == 4 and (pre["i_ty"] == 0).all() and (pre["i_xt"] == 0).all()
    post = layer.filter(pl.col("site_kind") == "post_add")
    assert (post["i_xt"] > 0).all()


def test_report_command_redraws(run_cli, tiny_spec_file, tmp_path, pm, capsys):
    assert run_cli(tiny_spec_file(""), "--out", tmp_path / "r")[0] == 0
    (tmp_path / "r" / "index.html").unlink()
    (tmp_path / "r" / "figures" / "layer_i_ty.png").unlink()
    assert cli.main(["report", str(tmp_path / "r")], pm=pm) == 0
    assert (tmp_path / "r" / "index.html").is_file()
    assert (tmp_path / "r" / "figures" / "layer_i_ty.png").is_file()
    assert cli.main(["report", str(tmp_path)], pm=pm) == 1
    assert "not an mi-probe run directory" in capsys.readouterr().err


def _image_folder(root, classes=("cat", "dog", "fish"), n_train=6, n_val=4):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                base = np.zeros((24, 24, 3), dtype=np.uint8)
                base[..., k] = 200  # class colour: planted structure
                noise = rng.integers(0, 55, base.shape, dtype=np.uint8)
                mode = "L" if i == 0 else "RGB"  # grayscale files are converted to RGB
                img = Image.fromarray(base + noise).convert(mode)
                img.save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def _folder_spec(tiny_spec_file, root, name="folder.yaml"):
    text = open(tiny_spec_file()).read().replace(
        "data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 60, image_size: 16, noise: 0.5}",
        f"data: {{kind: imagefolder, root: {root}, image_size: 16}}").replace(
        "epochs: 2", "epochs: 1")
    return tiny_spec_file("", text=text, name=name)


def test_imagefolder_runs_through_the_same_path(run_cli, tiny_spec_file, tmp_path):
    root = _image_folder(tmp_path / "imagenette_like")
    code, _, err = run_cli(_folder_spec(tiny_spec_file, root), "--out", tmp_path / "r")
    assert code == 0, err
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["data"]["classes"] == ["cat", "dog", "fish"]
    assert info["data"]["n_train"] == 18 and info["data"]["n_eval"] == 12
    layer = pl.read_parquet(tmp_path / "r" / "tables" / "layer_mi.parquet")
    assert layer.height == 2 * 4 and layer["i_ty"].is_finite().all()


def test_corrupt_image_is_named(run_cli, tiny_spec_file, tmp_path):
    root = _image_folder(tmp_path / "data")
    bad = root / "val" / "dog" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    code, _, err = run_cli(_folder_spec(tiny_spec_file, root), "--out", tmp_path / "r")
    assert code == 1
    assert "Traceback" not in err
    assert str(bad) in err.strip().splitlines()[-1]


def test_evaluations_that_return_sites_refuse_nan_naming_the_site(tiny_spec_file, tmp_path, pm):
    from mi_probe._core.runner.context import Engine
    from mi_probe.errors import NonFiniteActivationError
    from mi_probe._core.spec import load_spec

    path = _nan_weights(tmp_path)
    text = open(tiny_spec_file()).read().replace("weights: train", f"weights: {path}")
    engine = Engine(load_spec(tiny_spec_file("", text=text, name="nan_eval.yaml"), pm=pm), pm,
                    cache_dir=tmp_path / "cache", log=lambda m: None, progress=False)
    model = engine.model(0, "trained")
    site = next(s for s in engine.sites(model) if s.name == "layer3.0.post_add")
    with pytest.raises(NonFiniteActivationError,
                       match=r"site 'layer3\.0\.post_add' \(evaluation\) has \d+ non-finite"):
        engine.evaluate(model, sites=[site])


def test_layer_mi_writes_diagnostics_for_a_plugin_estimator_too(tmp_path, monkeypatch,
                                                                 tiny_spec_file):
    """diagnostics.parquet has its estimator-free columns for any estimator; only the
    ones an estimator adds (interfaces.Diagnoses) depend on it."""
    pytest.importorskip("mi_probe_ksg")
    import polars as pl

    from mi_probe import cli
    from mi_probe._core.plugins import get_plugin_manager

    pm = get_plugin_manager(["mi_probe_ksg.plugin"], autoload=False)
    spec = tiny_spec_file("")
    spec.write_text(spec.read_text().replace("estimator: {kind: histogram, bins: 8}",
                                             "estimator: {kind: ksg}"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "r"), "--cache-dir",
                     str(tmp_path / "cache"), "--no-progress"], pm=pm) == 0
    diag = pl.read_parquet(tmp_path / "r" / "tables" / "diagnostics.parquet")
    layer = pl.read_parquet(tmp_path / "r" / "tables" / "layer_mi.parquet")
    assert diag.height == layer.height > 0
    assert {"n_samples", "channels", "log_n", "n_constant"} <= set(diag.columns)
    assert "frac_edge_bins" not in diag.columns  # a histogram fact, not the KSG's
