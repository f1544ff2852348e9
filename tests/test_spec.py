"""Spec loading: located errors, overrides, did-you-mean, schema, every shipped spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mi_probe import cli
from mi_probe.errors import SpecError
from mi_probe._core.spec import apply_overrides, dump_spec, json_schema, load_spec, load_spec_text

ROOT = Path(__file__).resolve().parents[1]

THREE_ERRORS = """\
name: broken
data: {kind: digits}
model:
  arch: resnet18
  colour: blue
estimator:
  kind: histgram
experiment: {kind: layer_mi}
"""


def test_three_located_errors_exit_2(tmp_path, capsys, pm):
    path = tmp_path / "broken.yaml"
    path.write_text(THREE_ERRORS.replace("  kind: histgram", "  kind: histgram\n  bins: -3")
                    .replace("data: {kind: digits}", "data: {kind: digits}"))
    # misspelt estimator kind, an extra key, a negative bin count
    assert cli.main(["validate", str(path)], pm=pm) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err
    assert f"{path}:5: model.colour: unknown field; valid fields: act, arch," in err
    assert "did you mean 'histogram'?" in err
    assert f"{path}:7: estimator.kind: unknown estimator kind 'histgram'; valid: histogram" in err
    assert f"{path}:8: estimator.bins: Input should be greater than 1 (got -3)" in err
    assert "Traceback" not in err


def test_negative_bins_with_valid_kind_is_located(tmp_path, pm):
    path = tmp_path / "s.yaml"
    path.write_text(THREE_ERRORS.replace("  colour: blue\n", "").replace("histgram", "histogram")
                    + "seeds: [0, 0]\n")
    with pytest.raises(SpecError, match=r"s.yaml:6: estimator.kind|seeds must be distinct") as exc:
        load_spec_text(path.read_text() + "", str(path), ["estimator.bins=-2"], pm)
    problems = "\n".join(exc.value.problems)
    assert "--set estimator.bins=-2: estimator.bins: Input should be greater than 1 (got -2)" \
        in problems
    assert "seeds: seeds must be distinct, got [0, 0]" in problems


def test_did_you_mean_for_fields_and_literals(pm):
    text = THREE_ERRORS.replace("colour: blue", "act: rleu").replace("histgram", "histogram") \
        .replace("{kind: layer_mi}", "{kind: layer_mi, reduc: mean}")
    with pytest.raises(SpecError) as exc:
        load_spec_text(text, "x.yaml", pm=pm)
    problems = "\n".join(exc.value.problems)
    assert "x.yaml:5: model.act: unknown value 'rleu'; valid: relu, tanh (did you mean 'relu'?)" in problems
    assert "experiment.reduc: unknown field; valid fields: channel_table, interval, kind, null_draws, reduce, states " \
           "(did you mean 'reduce'?)" in problems


def test_unknown_experiment_kind_lists_registered(pm):
    text = THREE_ERRORS.replace("  colour: blue\n", "").replace("histgram", "histogram") \
        .replace("layer_mi", "layer_my")
    with pytest.raises(SpecError, match=r"experiment.kind: unknown experiment kind 'layer_my'; "
                       r"valid: layer_mi, .*semantic_knockout.* \(did you mean 'layer_mi'\?\)"):
        load_spec_text(text, "x.yaml", pm=pm)


def test_missing_required_and_yaml_syntax(pm):
    with pytest.raises(SpecError, match=r"model: required field is missing"):
        load_spec_text("name: a\ndata: {kind: digits}\nexperiment: {kind: layer_mi}\n", "a.yaml", pm=pm)
    with pytest.raises(SpecError, match=r"b.yaml:3: not valid YAML"):
        load_spec_text("name: a\nmodel: {arch: resnet18\nx: [\n", "b.yaml", pm=pm)
    with pytest.raises(SpecError, match=r"the spec is empty"):
        load_spec_text("", "c.yaml", pm=pm)
    with pytest.raises(SpecError, match=r"d.yaml:2: duplicate key 'name' \(first at line 1\)"):
        load_spec_text("name: a\nname: b\n", "d.yaml", pm=pm)
    with pytest.raises(SpecError, match=r"spec file .*nope.yaml does not exist"):
        load_spec("nope.yaml", pm=pm)


def test_pickled_weights_refused(pm):
    text = THREE_ERRORS.replace("colour: blue", "weights: model.pt").replace("histgram", "histogram")
    with pytest.raises(SpecError, match=r"model.weights: expected 'random', 'train', 'pretrained', a timm "
                       r"tag such as 'resnet50.a1_in1k' or a path to a \.safetensors file, got "
                       r"'model.pt' \(pickled checkpoints"):
        load_spec_text(text, "w.yaml", pm=pm)


def test_overrides_parse_yaml_values_and_nest():
    data = {"model": {"arch": "resnet18", "train": {"epochs": 3}}, "seeds": [0]}
    touched = apply_overrides(data, ["model.train.epochs=7", "seeds=[1, 2]", "model.act=tanh",
                                     "sites.include=['*.post_add']"])
    assert data["model"]["train"]["epochs"] == 7
    assert data["seeds"] == [1, 2]
    assert data["sites"] == {"include": ["*.post_add"]}
    assert touched[("model", "train", "epochs")] == "model.train.epochs=7"
    with pytest.raises(SpecError, match=r"expected key.path=value"):
        apply_overrides(data, ["model.arch"])
    with pytest.raises(SpecError, match=r"model.arch is not a mapping"):
        apply_overrides(data, ["model.arch.x=1"])


def test_defaults_are_resolved_and_dumped(pm):
    spec = load_spec(ROOT / "specs" / "layer_mi.yaml", pm=pm)
    dumped = dump_spec(spec)
    assert "bins: 20" in dumped and "plateau_patience: 10" in dumped
    again = load_spec_text(dumped, "dumped.yaml", pm=pm)
    assert again == spec


def test_schema_lists_registered_kinds(pm, capsys):
    schema = json_schema(pm)
    text = json.dumps(schema)
    for kind in ("histogram", "digits", "imagefolder", "synthetic", "layer_mi"):
        assert f'"{kind}"' in text
    assert cli.main(["schema"], pm=pm) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Spec"


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "specs").rglob("*.yaml")
                                         if not p.name.startswith("_")), ids=lambda p: p.name)
def test_every_shipped_spec_validates(path, pm):
    spec = load_spec(path, pm=pm)
    assert spec.name


def test_validate_refuses_what_run_would_refuse_before_any_training(tmp_path, tiny_spec_file,
                                                                     capsys, monkeypatch):
    """Estimator/experiment mismatches need no data or model: `validate` exits 2 naming
    them, and `run` stops before training (no model cache is created)."""
    pytest.importorskip("mi_probe_ksg")
    from mi_probe import cli
    from mi_probe._core.plugins import get_plugin_manager

    pm = get_plugin_manager(["mi_probe_ksg.plugin"], autoload=False)
    joint = tiny_spec_file("", name="joint.yaml")
    joint.write_text(joint.read_text().replace(
        "estimator: {kind: histogram, bins: 8}", "estimator: {kind: ksg}").replace(
        "experiment: {kind: layer_mi}", "experiment: {kind: layer_mi, reduce: joint}"))
    mass = tiny_spec_file("", name="mass.yaml")
    mass.write_text(mass.read_text().replace(
        "estimator: {kind: histogram, bins: 8}", "estimator: {kind: ksg}").replace(
        "experiment: {kind: layer_mi}", "experiment: {kind: concentration, mass: miller_madow}"))
    for path, message in ((joint, "estimator 'ksg' has no reduction 'joint'"),
                          (mass, "miller_madow is a histogram-estimator correction")):
        assert cli.main(["validate", str(path)], pm=pm) == 2
        assert message in capsys.readouterr().err
        monkeypatch.chdir(tmp_path)
        code = cli.main(["run", str(path), "--out", str(tmp_path / path.stem), "--cache-dir",
                         str(tmp_path / "cache"), "--no-progress"], pm=pm)
        assert code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "cache").exists()  # refused before anything was trained
