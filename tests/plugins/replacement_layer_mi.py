"""A test plugin: its own ``layer_mi`` experiment, which can only be registered once the
built-in one is blocked (``-p no:experiments.layer_mi``)."""

from __future__ import annotations

from mi_probe.builtin.experiments.layer_mi import LayerMIExperiment, LayerMIParams
from mi_probe.hookspecs import hookimpl


class MarkedLayerMI(LayerMIExperiment):
    """The built-in layer_mi, plus a column that shows which plugin ran."""

    def run_unit(self, ctx, unit, plan):
        tables = super().run_unit(ctx, unit, plan)
        tables["layer_mi"] = tables["layer_mi"].with_columns(replaced=True)
        return tables


@hookimpl
def mi_probe_register_experiments(register):
    register("layer_mi", MarkedLayerMI, LayerMIParams)
