"""The plugin manager: built-ins, third-party registration, duplicates, listing."""

from __future__ import annotations

import sys
import textwrap
import types

import pytest
from pydantic import BaseModel

from mi_probe import cli
from mi_probe.engine import run
from mi_probe.errors import PluginError, UnknownPluginError
from mi_probe.hookspecs import hookimpl
from mi_probe.plugins import KINDS, get_plugin_manager
from mi_probe.spec import load_spec

from conftest import TINY_SPEC

THROWAWAY = '''
"""A third-party estimator: MI of the sign of each channel (2 bins at zero)."""
from typing import Literal
import torch
from pydantic import BaseModel, ConfigDict
from mi_probe.hookspecs import hookimpl
from mi_probe.errors import EstimatorError
from mi_probe.interfaces import LayerMI
from mi_probe.functional import histogram as F

class SignParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["sign_mi"] = "sign_mi"
    threshold: float = 0.0

class SignEstimator:
    name = "sign_mi"
    reductions = frozenset()
    calls = 0
    def __init__(self, params):
        self.threshold = params.threshold
    def _codes(self, acts):
        SignEstimator.calls += 1
        return (acts > self.threshold).long()
    def label_mi(self, acts, labels, num_classes):
        return F.label_mi_from_codes(self._codes(acts), labels, 2, num_classes)
    def input_mi(self, acts):
        return F.entropy_from_codes(self._codes(acts), 2)
    def layer_mi(self, acts, labels, num_classes, reduce):
        raise EstimatorError(f'sign_mi has no layer reduction {reduce!r}')
    def bias(self, n, k):
        return (k - 1) / (2.0 * n)
    def describe(self):
        return {"estimator": "sign_mi", "threshold": self.threshold}

@hookimpl
def mi_probe_register_estimators(register):
    register("sign_mi", SignEstimator, SignParams)
'''


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    (tmp_path / "throwaway_plugin.py").write_text(THROWAWAY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "throwaway_plugin"
    sys.modules.pop("throwaway_plugin", None)


def test_builtins_are_registered_like_plugins(pm):
    reg = pm.registry
    assert set(reg.entries("estimators")) >= {"histogram"}
    assert set(reg.entries("datasets")) >= {"digits", "imagefolder", "synthetic"}
    assert set(reg.entries("experiments")) >= {"layer_mi"}
    assert set(reg.entries("adapters")) >= {"vgg", "resnet", "generic"}
    assert reg.get("estimators", "histogram").plugin == "mi_probe.builtin.estimators"
    for kind in KINDS:  # every hook exists, even those later issues fill
        assert hasattr(pm.hook, f"mi_probe_register_{kind}")


def test_throwaway_plugin_usable_from_spec_and_listed(throwaway, tiny_spec_file, monkeypatch,
                                                      capsys, tmp_path):
    monkeypatch.setenv("MI_PROBE_PLUGINS", throwaway)
    pm = get_plugin_manager(autoload=False)
    assert pm.registry.get("estimators", "sign_mi").plugin == throwaway
    text = TINY_SPEC.replace("estimator: {kind: histogram, bins: 8}",
                             "estimator: {kind: sign_mi, threshold: 0.0}")
    spec = load_spec(tiny_spec_file(text=text), pm=pm)
    assert spec.estimator.kind == "sign_mi"
    outcome = run(spec, pm, out=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
                  log=lambda m: None)
    est_cls = sys.modules[throwaway].SignEstimator
    assert est_cls.calls > 0  # the plugin's estimator computed the tables
    layer = outcome.tables["layer_mi"]
    assert layer["i_xt"].max() <= 0.6932  # a 2-symbol entropy is at most log 2
    assert cli.main(["plugins"], pm=pm) == 0
    out = capsys.readouterr().out
    assert f"{throwaway} (-)\n  estimator sign_mi" in out
    assert "mi_probe.builtin.estimators" in out and "estimator histogram" in out


def test_cli_plugin_flag_imports_module(throwaway, capsys):
    assert cli.main(["-p", throwaway, "plugins"]) == 0
    assert "estimator sign_mi" in capsys.readouterr().out


def test_unknown_plugin_module_is_a_clear_error(capsys):
    assert cli.main(["-p", "no_such_plugin_module", "plugins"]) == 1
    assert "cannot import plugin module 'no_such_plugin_module'" in capsys.readouterr().err


def _estimator_plugin(name: str, plugin_name: str):
    from mi_probe.builtin.estimators import HistogramEstimator, HistogramParams

    module = types.ModuleType(plugin_name)

    @hookimpl
    def mi_probe_register_estimators(register):
        register(name, HistogramEstimator, HistogramParams)

    module.mi_probe_register_estimators = mi_probe_register_estimators
    return module


def test_duplicate_name_names_both_plugins():
    pm = get_plugin_manager([_estimator_plugin("histogram", "copycat")], autoload=False)
    with pytest.raises(PluginError, match=r"estimator 'histogram' is registered twice: by plugin "
                       r"'mi_probe.builtin.estimators' and by plugin 'copycat'"):
        pm.registry


def test_params_model_must_declare_its_kind():
    pm = get_plugin_manager([_estimator_plugin("other", "mismatch")], autoload=False)
    with pytest.raises(PluginError, match=r"must declare kind: Literal\['other'\]"):
        pm.registry


def test_check_pending_rejects_unknown_hooks():
    module = types.ModuleType("typo_plugin")

    @hookimpl
    def mi_probe_register_estimator(register):  # missing "s"
        pass

    module.mi_probe_register_estimator = mi_probe_register_estimator
    with pytest.raises(PluginError, match=r"implements a hook that mi-probe does not define"):
        get_plugin_manager([module], autoload=False)


def test_unknown_name_lookup_suggests(pm):
    with pytest.raises(UnknownPluginError, match=r"unknown estimator 'histogrm'; valid: histogram "
                       r"\(did you mean 'histogram'\?\)"):
        pm.registry.get("estimators", "histogrm")


def test_entry_points_are_skipped_when_disabled(monkeypatch):
    calls = []
    from mi_probe import plugins

    monkeypatch.setattr(plugins.MiProbePluginManager, "load_setuptools_entrypoints",
                        lambda self, group: calls.append(group))
    monkeypatch.setenv("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
    get_plugin_manager()
    assert calls == []
    monkeypatch.setenv("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "0")
    get_plugin_manager()
    assert calls == ["mi_probe"]


def test_a_builtin_plugin_blocked_by_name_can_be_replaced(tmp_path, monkeypatch, tiny_spec_file):
    """pytest-style ``no:NAME``: the built-in module's entries are not registered, so a
    third-party plugin may register the same names; workers get the block too."""
    from pathlib import Path

    import polars as pl

    from mi_probe import cli
    from mi_probe.errors import PluginError
    from mi_probe.plugins import get_plugin_manager

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugins"))
    with pytest.raises(PluginError, match="experiment 'layer_mi' is registered twice"):
        get_plugin_manager(["replacement_layer_mi"], autoload=False).registry
    pm = get_plugin_manager(["no:experiments", "replacement_layer_mi"], autoload=False)
    assert pm.registry.get("experiments", "layer_mi").plugin == "replacement_layer_mi"
    assert "no:experiments" in pm.recipe()["extra_plugins"]
    assert pm.get_plugin("mi_probe.builtin.experiments") is None
    monkeypatch.chdir(tmp_path)
    code = cli.main(["run", str(tiny_spec_file("")), "--out", str(tmp_path / "r"),
                     "--cache-dir", str(tmp_path / "cache"), "--no-progress"], pm=pm)
    assert code == 0
    frame = pl.read_parquet(tmp_path / "r" / "tables" / "layer_mi.parquet")
    assert frame["replaced"].all()
