"""The plugin-author surface: everything a plugin may use, in one module.

A plugin (built in or third party) imports from here and from :mod:`mi_probe.functional`
(the pure kernels), nothing else of mi-probe; the conformance suites are in
:mod:`mi_probe.testing`. The engine's own modules live in ``mi_probe._core`` and may
change between releases; what is named here is the contract (docs/plugins.md).
``tests/test_import_graph.py`` enforces the rule for the built-ins and the plugin
distributions in ``plugins/``.

    from mi_probe.plugin import hookimpl, Plan, RunContext, TableSchema, seed_units
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

#: where each name lives; imported on first use, so ``from mi_probe.plugin import
#: hookimpl, SiteRef`` loads neither torch-heavy engine modules nor the report stack
_HOME = {
    **dict.fromkeys([
        'ChannelMassParams', 'ChannelMasses', 'PreparedSite', 'channel_label_mi',
        'channel_masses', 'channel_masses_streamed', 'check_mass_levels',
        'mean_over_draws', 'prepare_site', 'seed_units', 'site_masses', 'site_row',
        'split_halves', 'streamed_capture', 'streams', 'unit_seed'],
        "mi_probe._core.analysis"),
    **dict.fromkeys([
        'ImageFileDataset', 'TensorImageDataset', 'UpsampledGrayDataset',
        'check_fits_in_memory', 'load_rgb', 'tensor_train_transform'], "mi_probe._core.data"),
    # torch-free: data-source params models name CropScale when their plugin registers
    **dict.fromkeys([
        'CropScale', 'EVAL_CROP_PCT', 'IMAGENET_MEAN', 'IMAGENET_STD',
        'IMAGE_EXTENSIONS'], "mi_probe._core.data_fields"),
    **dict.fromkeys([
        'channel_axis', 'site_output'], "mi_probe._core.sites"),
    **dict.fromkeys([
        'BlockTrace', 'Unit', 'head_paths', 'probe_for', 'trace_blocks'],
        "mi_probe._core.sites.trace"),
    **dict.fromkeys([
        'SITE_COLUMNS', 'aggregate_seeds', 'mean_t_interval'], "mi_probe._core.tables"),
    **dict.fromkeys([
        'derive_seed'], "mi_probe._core.train"),
    **dict.fromkeys([
        'CheckpointError', 'DataError', 'EstimatorError', 'MiProbeError',
        'ModelError', 'NonFiniteActivationError', 'PluginError', 'RunError',
        'SiteError', 'SpecError'], "mi_probe.errors"),
    **dict.fromkeys([
        'hookimpl'], "mi_probe.hookspecs"),
    **dict.fromkeys([
        'Adapter', 'Binned', 'Captured', 'ChecksSource', 'ChecksSpec', 'DataBundle',
        'DataSource', 'DeclaresTables', 'DeclaresTrainings', 'Diagnoses',
        'DiagnosesLabels', 'Estimator', 'Executor', 'Experiment', 'ExplainsEstimates',
        'HasNotes', 'HasProducers', 'HasSkipGainHooks', 'HasSuffix', 'Intervention',
        'Interval', 'Intervals', 'JointMI', 'JointMIIntervals', 'LayerMI', 'Metric',
        'OUTPUT_KINDS', 'PairMI', 'Plan', 'PointResult', 'Prepares', 'RANDOM', 'Register',
        'Regularizer', 'RunContext', 'Site', 'SiteRef', 'StageJobs', 'Streams',
        'SweepPoint', 'TRAINED',
        'TableSchema', 'TrainingRequest', 'VectorLabelMI', 'as_schema'],
        "mi_probe.interfaces"),
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    charts: SimpleNamespace
    from mi_probe._core.analysis import (  # noqa: F401
        ChannelMassParams, ChannelMasses, PreparedSite, channel_label_mi,
        channel_masses, channel_masses_streamed, check_mass_levels, mean_over_draws,
        prepare_site, seed_units, site_masses, site_row, split_halves, streamed_capture,
        streams, unit_seed)
    from mi_probe._core.data import (  # noqa: F401
        ImageFileDataset, TensorImageDataset, UpsampledGrayDataset,
        check_fits_in_memory, load_rgb, tensor_train_transform)
    from mi_probe._core.data_fields import (  # noqa: F401
        CropScale, EVAL_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, IMAGE_EXTENSIONS)
    from mi_probe._core.sites import (  # noqa: F401
        channel_axis, site_output)
    from mi_probe._core.sites.trace import (  # noqa: F401
        BlockTrace, Unit, head_paths, probe_for, trace_blocks)
    from mi_probe._core.tables import (  # noqa: F401
        SITE_COLUMNS, aggregate_seeds, mean_t_interval)
    from mi_probe._core.train import (  # noqa: F401
        derive_seed)
    from mi_probe.errors import (  # noqa: F401
        CheckpointError, DataError, EstimatorError, MiProbeError, ModelError,
        NonFiniteActivationError, PluginError, RunError, SiteError, SpecError)
    from mi_probe.hookspecs import (  # noqa: F401
        hookimpl)
    from mi_probe.interfaces import (  # noqa: F401
        Adapter, Binned, Captured, ChecksSource, ChecksSpec, DataBundle, DataSource,
        DeclaresTables, DeclaresTrainings, Diagnoses, DiagnosesLabels, Estimator,
        Executor, Experiment, ExplainsEstimates, HasNotes, HasProducers,
        HasSkipGainHooks, HasSuffix, Intervention, Interval, Intervals, JointMI,
        JointMIIntervals, LayerMI, Metric, OUTPUT_KINDS, PairMI, Plan,
        PointResult, Prepares, RANDOM, Register, Regularizer, RunContext, Site, SiteRef,
        SweepPoint,
        StageJobs, Streams, TRAINED, TableSchema, TrainingRequest, VectorLabelMI,
        as_schema)


def _charts() -> SimpleNamespace:
    from mi_probe._core import report

    return SimpleNamespace(bars=report.bars, by_depth=report.by_depth,
                           color_encoding=report.color_encoding, heatmap=report.heatmap,
                           line=report.line, scatter=report.scatter,
                           series_order=report.series_order)


def __getattr__(name: str) -> Any:
    if name == "charts":  # the chart helpers experiments draw their figures with
        value: Any = _charts()
    elif name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
    else:
        raise AttributeError(f"module 'mi_probe.plugin' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    # hooks
    "hookimpl",
    # protocols and abilities
    "Adapter", "HasSuffix", "HasProducers", "HasSkipGainHooks", "Estimator", "PairMI",
    "Diagnoses", "Prepares", "Streams", "Binned", "ExplainsEstimates", "Regularizer",
    "Intervention", "Metric", "DataSource", "ChecksSource", "RunContext", "Experiment",
    "DeclaresTrainings", "HasNotes", "DeclaresTables", "ChecksSpec", "Executor", "Register",
    # result types and constants
    "SiteRef", "Site", "DataBundle", "Captured", "LayerMI", "Plan", "TableSchema",
    "TrainingRequest", "StageJobs", "as_schema", "TRAINED", "RANDOM", "OUTPUT_KINDS",
    "SweepPoint", "PointResult",
    # errors
    "MiProbeError", "SpecError", "PluginError", "ModelError", "CheckpointError", "SiteError",
    "DataError", "NonFiniteActivationError", "EstimatorError", "RunError",
    # experiment helpers: units and seeds, rows, channel masses
    "seed_units", "unit_seed", "derive_seed", "site_row", "split_halves", "mean_over_draws",
    "ChannelMassParams", "ChannelMasses", "channel_masses", "site_masses", "channel_label_mi",
    "check_mass_levels", "PreparedSite", "prepare_site",
    # captures kept in the activation store and estimated chunk by chunk
    "streamed_capture", "streams", "channel_masses_streamed",
    # tables and charts
    "SITE_COLUMNS", "aggregate_seeds", "mean_t_interval", "charts",
    # sites
    "channel_axis", "site_output", "trace_blocks", "probe_for", "head_paths", "BlockTrace",
    "Unit",
    # data sources
    "CropScale", "TensorImageDataset", "ImageFileDataset", "UpsampledGrayDataset", "load_rgb",
    "tensor_train_transform", "check_fits_in_memory", "IMAGE_EXTENSIONS", "IMAGENET_MEAN",
    "IMAGENET_STD", "EVAL_CROP_PCT",
]
