"""The ``unpooled_mi`` experiment: I(T;Y) of whole layers from sites kept unpooled
(``sites.reduce``), with the ``lmi`` estimator of ``plugins/mi-probe-lmi``."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest

from mi_probe import cli

pytest.importorskip("mi_probe_lmi", reason="needs the mi-probe-lmi plugin (plugins/mi-probe-lmi)")

IMAGENETTE_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-dev"

SPEC = """\
name: unpooled
seeds: [0]
data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 90, image_size: 16, noise: 0.5}
model:
  arch: test_resnet
  weights: train
  train: {epochs: 2, batch_size: 16, lr: 0.05}
sites: {include: ["layer2.*.post_add", "layer4.*.post_add"], reduce: REDUCE}
estimator: {kind: lmi, hidden: 16, epochs: 10, lr: 1.0e-3}
experiment: {kind: unpooled_mi, pooled: POOLED}
report: {formats: [png]}
"""


@pytest.fixture(scope="module")
def lmi_pm():
    from mi_probe._core.plugins import get_plugin_manager

    return get_plugin_manager(["mi_probe_lmi.plugin"], autoload=False)


def run(tmp_path: Path, monkeypatch, pm, text: str, name: str = "run") -> tuple[int, Path]:
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(text)
    out = tmp_path / name
    code = cli.main(["run", str(spec), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                     "--no-progress"], pm=pm)
    return code, out


def test_whole_layers_are_measured_per_site_with_the_pooled_value_beside(
        tmp_path, monkeypatch, lmi_pm):
    text = SPEC.replace("REDUCE", "none").replace("POOLED", "mean")
    code, out = run(tmp_path, monkeypatch, lmi_pm, text)
    assert code == 0
    table = pl.read_parquet(out / "tables" / "unpooled_mi.parquet")
    assert table.height == 4  # 2 states x 2 sites
    assert set(table["state"]) == {"trained", "random"}
    assert set(table["site_reduce"]) == {"none"} and set(table["n_samples"]) == {90}
    for row in table.iter_rows(named=True):
        positions = row["dims"] // row["channels"]  # C·H·W: H·W positions per channel
        assert row["dims"] == row["channels"] * positions
        assert math.isqrt(positions) ** 2 == positions
        assert 0 <= row["i_ty"] <= math.log(3) + 0.5 and math.isfinite(row["i_ty"])
        assert row["i_ty_pooled"] is not None and row["pooled"] == "mean"
    assert (out / "figures" / "unpooled_i_ty.png").is_file()
    assert (out / "tables" / "summary_unpooled_mi.parquet").is_file()
    assert "Whole layers kept as sites.reduce none" in (out / "index.html").read_text()


def test_a_projection_fixes_the_dims_and_the_pooled_joint_value(tmp_path, monkeypatch, lmi_pm):
    text = SPEC.replace("REDUCE", "{project: 12}").replace("POOLED", "joint")
    code, out = run(tmp_path, monkeypatch, lmi_pm, text)
    assert code == 0
    table = pl.read_parquet(out / "tables" / "unpooled_mi.parquet")
    assert set(table["dims"]) == {12} and set(table["site_reduce"]) == {"project:12"}
    assert table["i_ty_pooled"].null_count() == 0 and set(table["pooled"]) == {"joint"}


def test_estimators_without_a_whole_layer_estimate_are_refused(tmp_path, capsys, lmi_pm):
    spec = tmp_path / "hist.yaml"
    spec.write_text(SPEC.replace("REDUCE", "none").replace("POOLED", "mean").replace(
        "{kind: lmi, hidden: 16, epochs: 10, lr: 1.0e-3}", "{kind: histogram}"))
    assert cli.main(["validate", str(spec)], pm=lmi_pm) == 2
    err = capsys.readouterr().err
    assert "experiment unpooled_mi needs an estimator of I(T;Y) for a whole layer vector" in err
    assert "estimator 'histogram' has none" in err


def test_a_site_above_the_estimators_limit_names_the_projection(tmp_path, monkeypatch,
                                                               lmi_pm, capsys):
    text = SPEC.replace("REDUCE", "none").replace("POOLED", "none").replace(
        "epochs: 10,", "epochs: 10, max_dims: 50,")
    code, _ = run(tmp_path, monkeypatch, lmi_pm, text)
    assert code != 0
    err = capsys.readouterr().err
    assert "above estimator 'lmi''s max_dims = 50; set sites.reduce: {project: 50}" in err


@pytest.mark.skipif(not IMAGENETTE_DEV.is_dir(),
                    reason=f"real images not found at {IMAGENETTE_DEV} (../shared/data/"
                           "imagenette-dev, see its README)")
def test_real_images_random_resnet18_projected(tmp_path, monkeypatch, lmi_pm):
    """imagenette-dev at 64 px, a randomly initialised resnet18 (nothing trained), the
    last stage projected to 64 dims, 60 evaluation images."""
    text = f"""\
name: real
seeds: [0]
data: {{kind: imagefolder, root: {IMAGENETTE_DEV}, image_size: 64}}
model: {{arch: resnet18, weights: random}}
eval: {{max_samples: 60}}
sites: {{include: ["layer4.1.post_add"], reduce: {{project: 64}}}}
estimator: {{kind: lmi, hidden: 16, epochs: 5}}
experiment: {{kind: unpooled_mi, states: [random], pooled: none}}
report: {{formats: [png]}}
"""
    code, out = run(tmp_path, monkeypatch, lmi_pm, text)
    assert code == 0
    table = pl.read_parquet(out / "tables" / "unpooled_mi.parquet")
    assert table.select("site", "dims", "channels", "n_samples").rows() == [
        ("layer4.1.post_add", 64, 512, 60)]
