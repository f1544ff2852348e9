"""Built-in experiment ``shuffle``: the ``knockout`` sweep (:class:`InterventionSweep`)
with the chosen channels shuffled across evaluation samples instead of zeroed."""

from __future__ import annotations

from typing import Literal

from mi_probe.builtin.experiments.knockout import InterventionSweep, _SweepParams
from mi_probe.hookspecs import hookimpl


class ShuffleExpParams(_SweepParams):
    """Shuffle the chosen channels across evaluation samples."""

    kind: Literal["shuffle"] = "shuffle"


class ShuffleSweep(InterventionSweep):
    """The ``knockout`` sweep with the chosen channels shuffled across samples."""


@hookimpl
def mi_probe_register_experiments(register):
    register("shuffle", ShuffleSweep, ShuffleExpParams)
