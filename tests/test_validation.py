"""Validate once: one pipeline (``mi_probe._core.validation``) builds the estimator, the
experiment and the regularisers once per run and runs every refusal that needs no data
or weights; the engine uses what it built."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import TINY_SPEC
from mi_probe._core.runner.driver import run
from mi_probe._core.spec import load_spec_text
from mi_probe._core.validation import Validated, validate
from mi_probe.errors import SiteError, SpecError


def _counting(pm, monkeypatch) -> Counter:
    built: Counter = Counter()
    original = pm.registry.build

    def build(kind, params):
        built[kind] += 1
        return original(kind, params)

    monkeypatch.setattr(pm.registry, "build", build)
    return built


def test_a_run_builds_its_estimator_and_experiment_once(pm, monkeypatch, tmp_path):
    built = _counting(pm, monkeypatch)
    spec = load_spec_text(TINY_SPEC.replace("epochs: 2", "epochs: 1"), "<t>", [], pm)
    outcome = run(spec, pm, out=tmp_path / "run", cache_dir=tmp_path / "cache",
                  progress=False, log=lambda _m: None)
    assert outcome.status == "complete"
    assert built["estimators"] == 1 and built["experiments"] == 1, built


def test_validate_returns_the_built_plugins_and_the_engine_uses_them(pm, monkeypatch, tmp_path):
    from mi_probe._core.runner.context import Engine

    spec = load_spec_text(TINY_SPEC, "<t>", [], pm)
    validated = validate(spec, pm)
    assert isinstance(validated, Validated) and validated.spec is spec
    built = _counting(pm, monkeypatch)
    engine = Engine(spec, pm, tmp_path / "cache", log=lambda _m: None, progress=False,
                    validated=validated)
    assert engine.estimator is validated.estimator
    assert engine.experiment is validated.experiment
    assert built == Counter({"datasets": 1})  # the engine loads the data, builds nothing else


def test_validate_refuses_what_the_spec_and_the_structure_rule_out(pm):
    with pytest.raises(SiteError, match=r"site pattern\(s\) \['layer9\.\*'\] match no site"):
        validate(load_spec_text(TINY_SPEC.replace('"*.post_add"', '"layer9.*"'), "<t>", [],
                                pm), pm)
    # the structural part can be left out (a worker that re-creates the engine)
    validate(load_spec_text(TINY_SPEC.replace('"*.post_add"', '"layer9.*"'), "<t>", [], pm),
             pm, structural=False)
    text = TINY_SPEC.replace("experiment: {kind: layer_mi}",
                             "experiment: {kind: knockout, mass: miller_madow}").replace(
        "estimator: {kind: histogram, bins: 8}", "estimator: {kind: histogram, bins: 8, "
        "correction: miller_madow}")
    spec = load_spec_text(text, "<t>", [], pm)
    validate(spec, pm)  # a histogram estimator can give Miller-Madow masses


def test_plugin_params_are_validated_by_the_registry(pm):
    params = pm.registry.validate_params("interventions", {"kind": "knockout"})
    assert params.kind == "knockout"
    with pytest.raises(SpecError, match="must be a mapping with 'kind'"):
        pm.registry.validate_params("interventions", ["knockout"])
    with pytest.raises(SpecError, match="invalid parameters for intervention 'perturb'"):
        pm.registry.validate_params("interventions", {"kind": "perturb", "alpha": "x"})
