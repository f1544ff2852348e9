"""The plugin manager: built-ins, third-party registration, duplicates, listing."""

from __future__ import annotations

import importlib
import re
import sys
import textwrap
import types

import pytest
from pydantic import BaseModel

from mi_probe import cli
from mi_probe._core.runner.driver import run
from mi_probe.errors import PluginError, UnknownPluginError
from mi_probe.hookspecs import hookimpl
from mi_probe._core.plugins import BUILTIN_PLUGINS, KINDS, get_plugin_manager
from mi_probe._core.spec import load_spec

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
    assert reg.get("estimators", "histogram").plugin == "mi_probe.builtin.estimators.histogram"
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
    assert re.search(rf"^{throwaway} \(-\)\n  estimator sign_mi +{throwaway}$", out, re.M)
    assert re.search(r"^  estimator histogram +mi_probe\.builtin\.estimators\.histogram$", out,
                     re.M)


def test_cli_plugin_flag_imports_module(throwaway, capsys):
    assert cli.main(["-p", throwaway, "plugins"]) == 0
    assert "estimator sign_mi" in capsys.readouterr().out


def test_unknown_plugin_module_is_a_clear_error(capsys):
    assert cli.main(["-p", "no_such_plugin_module", "plugins"]) == 1
    assert "cannot import plugin module 'no_such_plugin_module'" in capsys.readouterr().err


def _estimator_plugin(name: str, plugin_name: str):
    from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams

    module = types.ModuleType(plugin_name)

    @hookimpl
    def mi_probe_register_estimators(register):
        register(name, HistogramEstimator, HistogramParams)

    module.mi_probe_register_estimators = mi_probe_register_estimators
    return module


def test_duplicate_name_names_both_plugins():
    pm = get_plugin_manager([_estimator_plugin("histogram", "copycat")], autoload=False)
    with pytest.raises(PluginError, match=r"estimator 'histogram' is registered twice: by plugin "
                       r"'mi_probe.builtin.estimators.histogram' and by plugin 'copycat'"):
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
    from mi_probe._core import plugins

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
    from mi_probe._core.plugins import get_plugin_manager

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugins"))
    with pytest.raises(PluginError, match="experiment 'layer_mi' is registered twice"):
        get_plugin_manager(["replacement_layer_mi"], autoload=False).registry
    pm = get_plugin_manager(["no:experiments.layer_mi", "replacement_layer_mi"], autoload=False)
    assert pm.registry.get("experiments", "layer_mi").plugin == "replacement_layer_mi"
    assert "no:experiments.layer_mi" in pm.recipe()["extra_plugins"]
    assert pm.get_plugin("mi_probe.builtin.experiments.layer_mi") is None
    assert "concentration" in pm.registry.entries("experiments")  # only layer_mi is blocked
    monkeypatch.chdir(tmp_path)
    code = cli.main(["run", str(tiny_spec_file("")), "--out", str(tmp_path / "r"),
                     "--cache-dir", str(tmp_path / "cache"), "--no-progress"], pm=pm)
    assert code == 0
    frame = pl.read_parquet(tmp_path / "r" / "tables" / "layer_mi.parquet")
    assert frame["replaced"].all()


# ----------------------------------------------------------------------------- layout

def test_every_builtin_entry_has_its_own_plugin_module(pm):
    """The layout rule of ``mi_probe.builtin``: the built-in entry NAME of kind KIND is
    registered by the plugin module ``mi_probe.builtin.KIND.NAME`` (no exceptions), and
    every public module of the kind folders is such a plugin, listed in BUILTIN_PLUGINS;
    a kind folder's ``__init__.py`` holds only its docstring."""
    import ast
    from pathlib import Path

    import mi_probe.builtin

    owners = {}
    for kind in KINDS:
        for name, entry in pm.registry.entries(kind).items():
            if entry.plugin.startswith("mi_probe.builtin."):
                assert entry.plugin == f"mi_probe.builtin.{kind}.{name}", (kind, name)
                owners[entry.plugin] = (kind, name)
    assert sorted(owners) == sorted(BUILTIN_PLUGINS)
    for module_name in BUILTIN_PLUGINS:
        assert pm.get_plugin(module_name) is importlib.import_module(module_name)
    root = Path(mi_probe.builtin.__file__).parent
    modules = {f"mi_probe.builtin.{path.parent.name}.{path.stem}" for path in root.glob("*/*.py")
               if not path.name.startswith("_")}
    assert modules == set(BUILTIN_PLUGINS)
    assert {path.parent.name for path in root.glob("*/__init__.py")} <= set(KINDS)
    for init in root.glob("*/__init__.py"):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), init  # a docstring only


@pytest.mark.parametrize("block", ["no:experiments.shuffle",
                                   "no:mi_probe.builtin.experiments.shuffle"])
def test_one_builtin_entry_is_blocked_by_its_module_name(block):
    pm = get_plugin_manager([block], autoload=False)
    experiments = pm.registry.entries("experiments")
    assert "shuffle" not in experiments
    assert {"knockout", "perturb"} <= set(experiments)  # its module only, not the sweep's
    assert "shuffle" in pm.registry.entries("interventions")  # same name, another kind
    assert pm.get_plugin("mi_probe.builtin.experiments.shuffle") is None
    assert block in pm.recipe()["extra_plugins"]  # workers block it too


def test_plugins_command_shows_the_module_of_every_entry(capsys, monkeypatch):
    """Each entry line: kind, name and the module that defines its factory, under the
    plugin that registered it."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugins"))
    argv = ["-p", "no:experiments.layer_mi", "-p", "replacement_layer_mi", "plugins"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    # shuffle is registered by its own module, whose factory subclasses knockout's sweep
    assert re.search(r"^mi_probe\.builtin\.experiments\.shuffle \(-\)\n"
                     r"  experiment shuffle +mi_probe\.builtin\.experiments\.shuffle$", out, re.M)
    assert re.search(r"^  intervention shuffle +mi_probe\.builtin\.interventions\.shuffle$",
                     out, re.M)
    assert re.search(r"^  adapter vgg +mi_probe\.builtin\.adapters\.vgg$", out, re.M)
    # a test plugin's entry: the factory is defined in the test plugin module
    assert re.search(r"^replacement_layer_mi \(-\)\n  experiment layer_mi +replacement_layer_mi$",
                     out, re.M)
    assert re.search(r"^mi_probe\.builtin\.experiments\.layer_mi \(blocked\)$", out, re.M)
    assert out.count("experiment layer_mi") == 1


def test_a_module_given_with_p_that_an_entry_point_loads_again_is_registered_once(
        throwaway, monkeypatch, capsys):
    """``-p MODULE`` for an installed plugin: setuptools autoload then loads the same
    module under its entry-point name; it stays registered once, under the -p name, with
    its distribution's version."""
    import importlib.metadata

    class EntryPoint:
        group, name = "mi_probe", "sign"

        def load(self):
            return importlib.import_module(throwaway)

    class Distribution:
        entry_points = [EntryPoint()]
        metadata = {"name": "mi-probe-sign"}
        version = "1.2.3"

    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [Distribution()])
    pm = get_plugin_manager([throwaway], autoload=True)
    module = sys.modules[throwaway]
    assert pm.get_name(module) == throwaway and pm.get_plugin("sign") is None
    assert pm.registry.get("estimators", "sign_mi").plugin == throwaway
    assert pm.plugin_versions()[throwaway] == "1.2.3"
    assert pm.recipe() == {"extra_plugins": [throwaway], "autoload": True}
    # the same through the command line (autoload on), where it used to crash
    monkeypatch.setenv("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert cli.main(["-p", throwaway, "plugins"]) == 0
    out = capsys.readouterr().out
    assert f"{throwaway} (1.2.3)\n  estimator sign_mi" in out and out.count("sign_mi") == 1
    # the same module object again by another route: kept once as well
    again = get_plugin_manager([throwaway, module], autoload=False)
    assert again.get_name(module) == throwaway


def test_two_plugins_with_one_name_are_a_plugin_error(throwaway):
    impostor = types.ModuleType(throwaway)
    with pytest.raises(PluginError, match=rf"two different plugins are named '{throwaway}': "
                       rf"module {throwaway} \(.*{throwaway}\.py\) \(registered first\) and "
                       rf"module {throwaway}; register only one"):
        get_plugin_manager([throwaway, impostor], autoload=False)


def test_blocking_a_name_that_blocks_nothing_is_an_error():
    """`no:knockout` named a module before built-ins had one module per entry; now it would
    silently block nothing."""
    with pytest.raises(PluginError, match=r"-p no:knockout blocks nothing.*did you mean "
                       r"no:experiments.knockout, no:interventions.knockout\?"):
        get_plugin_manager(["no:knockout"], autoload=False)
