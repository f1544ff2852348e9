"""Hook specifications of mi-probe (pluggy project name ``mi_probe``).

A plugin is any module or object with functions marked ``@hookimpl`` whose names match
the specifications below. The ``register`` hooks are called once per plugin manager (when
its registry is first built), :func:`mi_probe_resolve_adapter` whenever the engine needs
an adapter for a model; implementations run in pluggy's order (later-registered plugins
first, ``tryfirst`` / ``trylast`` respected). Only :func:`mi_probe_resolve_adapter` is
``firstresult``.

The hooks, grouped by purpose:

* **What a spec can name** (``mi_probe_register_<kind>``): estimators, adapters, datasets,
  experiments, metrics, interventions, regularizers, reports, executors, trackers.
* **What the engine asks at run time**: :func:`mi_probe_resolve_adapter`.

Every ``mi_probe_register_<kind>`` hook receives one parameter, ``register``: a callback
``register(name, factory, params_model)`` that the hook calls once per thing it provides,
and returns None:

* ``name``: the value users write as ``kind:`` in a spec;
* ``factory``: ``factory(params) -> object`` builds the thing from validated params;
* ``params_model``: a pydantic model with ``kind: Literal[name]`` and
  ``model_config = ConfigDict(extra="forbid")``; the spec's unions are assembled from
  these, so a plugin's entry validates and appears in ``mi-probe schema`` exactly like
  a built-in one.

Registering the same name twice (in one kind) is a ``PluginError`` that names both
plugins; block a built-in module with ``-p no:NAME`` to replace its entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from mi_probe.interfaces import Adapter, Register

if TYPE_CHECKING:
    from torch import nn

PROJECT = "mi_probe"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------- measuring

@hookspec
def mi_probe_register_estimators(register: Register) -> None:
    """Register MI estimators (``interfaces.Estimator``; optional abilities ``PairMI``,
    ``Diagnoses``, ``Binned``), e.g. ``histogram``.

    :param register: ``register(name, factory, params_model)``; the factory returns an
        estimator whose tensors stay on the input's device and whose results are float64
        nats.
    :return: None (all implementations are called).
    """


@hookspec
def mi_probe_register_metrics(register: Register) -> None:
    """Register per-site metrics over per-channel values (``interfaces.Metric``), e.g.
    concentration measures such as Gini or top-k share.

    :param register: the registration callback; a metric maps a (C,) tensor to a dict of
        floats (table columns).
    :return: None (all implementations are called).
    """


# --------------------------------------------------------------------------- models and data

@hookspec
def mi_probe_register_adapters(register: Register) -> None:
    """Register site adapters (``interfaces.Adapter``; optional abilities ``HasSuffix``,
    ``HasProducers``, ``HasSkipGainHooks``) by name, so a spec can force one with
    ``sites: {adapter: NAME}``. Automatic choice goes through
    :func:`mi_probe_resolve_adapter`.

    :param register: the registration callback.
    :return: None (all implementations are called).
    """


@hookspec(firstresult=True)
def mi_probe_resolve_adapter(model: nn.Module, arch: str) -> Adapter | None:
    """Return an adapter instance that understands ``model``, or None.

    :param model: the ``nn.Module`` built from the spec (weights may be random).
    :param arch: the timm architecture name it was built from.
    :return: an adapter, or None to let the next implementation answer.

    ``firstresult``: the first non-None answer wins, so a plugin that claims a family
    answers before the generic fallback, which is registered ``trylast``.
    """


@hookspec
def mi_probe_register_datasets(register: Register) -> None:
    """Register data sources (``interfaces.DataSource``): ``digits``, ``imagefolder``,
    ``synthetic``.

    :param register: the registration callback; a source returns a ``DataBundle`` of
        train / evaluation datasets and class names; optional ability ``ChecksSource``.
    :return: None (all implementations are called).
    """


# --------------------------------------------------------------------------- analysing

@hookspec
def mi_probe_register_experiments(register: Register) -> None:
    """Register experiments (``interfaces.Experiment``): ``layer_mi``, ``knockout``...

    :param register: the registration callback. An experiment plans
        (``plan(ctx) -> Plan``), runs units from the plan alone
        (``run_unit(ctx, unit, plan)``), finalises and draws figures; optional
        abilities ``DeclaresTrainings``, ``HasNotes``, ``ChecksSpec``.
    :return: None (all implementations are called).
    """


@hookspec
def mi_probe_register_interventions(register: Register) -> None:
    """Register evaluation-time interventions (``interfaces.Intervention``): knockouts,
    shuffles, perturbations. They are applied as forward hooks and always removed.

    :param register: the registration callback.
    :return: None (all implementations are called).
    """


@hookspec
def mi_probe_register_regularizers(register: Register) -> None:
    """Register training-loss terms (``interfaces.Regularizer``), e.g. an HSIC reward.
    ``train.py`` adds each configured regulariser's penalty to the cross-entropy.

    :param register: the registration callback.
    :return: None (all implementations are called).
    """


# --------------------------------------------------------------------------- running and reporting

@hookspec
def mi_probe_register_executors(register: Register) -> None:
    """Register executors (``interfaces.Executor``): where the independent units of a run
    (one training per model and seed, one analysis per experiment unit) are computed.
    Built in: ``local`` (sequential, this process) and ``ray`` (Ray tasks).

    :param register: the registration callback.
    :return: None (all implementations are called).
    """


@hookspec
def mi_probe_register_trackers(register: Register) -> None:
    """Register live tracking sinks (``interfaces.Tracker``), e.g. ``tensorboard`` and
    ``mlflow``. A spec names them in ``track: [{kind: NAME, ...params}]``; each receives
    the run's start, every training epoch's values as they come (losses, accuracy, and
    the per-site I(X;T) and I(T;Y) a tracked training measures), and the finished run's
    tables and figures.

    :param register: the registration callback.
    :return: None (all implementations are called).
    """


@hookspec
def mi_probe_register_reports(register: Register) -> None:
    """Register extra report writers: ``factory(params)`` returns an object with
    ``render(run_dir, tables, meta) -> Path``. A spec runs them by naming them in
    ``report.writers`` (``[{kind: NAME, ...params}]``); they run in that order after the
    built-in figures and index.html, on a run and on ``mi-probe report DIR``.

    :param register: the registration callback.
    :return: None (all implementations are called).
    """
