"""Hook specifications of mi-probe (pluggy project name ``mi_probe``).

A plugin is any module or object with functions marked ``@hookimpl`` whose names match
the specifications below. Each ``mi_probe_register_<kind>`` hook receives a
``register(name, factory, params_model)`` callback and calls it once per thing it
provides:

* ``name``: the value users write as ``kind:`` in a spec;
* ``factory``: ``factory(params) -> object`` builds the thing from validated params;
* ``params_model``: a pydantic model with ``kind: Literal[name]`` and
  ``model_config = ConfigDict(extra="forbid")``; the spec's unions are assembled from
  these, so a plugin's entry validates and appears in ``mi-probe schema`` exactly like
  a built-in one.

Registering the same name twice (in one kind) is an error that names both plugins.
"""

from __future__ import annotations

from typing import Any

import pluggy

from mi_probe.interfaces import Adapter, Register

PROJECT = "mi_probe"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def mi_probe_register_estimators(register: Register) -> None:
    """Register MI estimators (``interfaces.Estimator``), e.g. ``histogram``."""


@hookspec
def mi_probe_register_adapters(register: Register) -> None:
    """Register site adapters (``interfaces.Adapter``) by name, so a spec can force one
    with ``sites: {adapter: NAME}``. Automatic choice goes through
    :func:`mi_probe_resolve_adapter`."""


@hookspec
def mi_probe_register_datasets(register: Register) -> None:
    """Register data sources (``interfaces.DataSource``): ``digits``, ``imagefolder``..."""


@hookspec
def mi_probe_register_experiments(register: Register) -> None:
    """Register experiments (``interfaces.Experiment``): ``layer_mi``, ``knockout``..."""


@hookspec
def mi_probe_register_metrics(register: Register) -> None:
    """Register per-site metrics over per-channel values (``interfaces.Metric``), e.g.
    concentration measures such as Gini or top-k share."""


@hookspec
def mi_probe_register_interventions(register: Register) -> None:
    """Register evaluation-time interventions (``interfaces.Intervention``): knockouts,
    shuffles, perturbations. They are applied as forward hooks and always removed."""


@hookspec
def mi_probe_register_regularizers(register: Register) -> None:
    """Register training-loss terms (``interfaces.Regularizer``), e.g. an HSIC reward.
    ``train.py`` adds each configured regulariser's penalty to the cross-entropy."""


@hookspec
def mi_probe_register_reports(register: Register) -> None:
    """Register extra report writers: ``factory(params)`` returns an object with
    ``render(run_dir, tables, meta) -> Path``. A spec runs them by naming them in
    ``report.writers`` (``[{kind: NAME, ...params}]``); they run in that order after the
    built-in figures and index.html, on a run and on ``mi-probe report DIR``."""


@hookspec
def mi_probe_register_executors(register: Register) -> None:
    """Register executors (``interfaces.Executor``): where the independent units of a run
    (one training per model and seed, one analysis per experiment unit) are computed.
    Built in: ``local`` (sequential, this process) and ``ray`` (Ray tasks)."""


@hookspec(firstresult=True)
def mi_probe_resolve_adapter(model: Any, arch: str) -> Adapter | None:
    """Return an adapter instance that understands ``model`` (built from timm
    architecture ``arch``), or None. The first non-None answer wins; the generic
    fallback adapter is registered ``trylast``."""
