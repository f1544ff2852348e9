"""Built-in experiment ``shuffle``: the ``knockout`` sweep (:class:`InterventionSweep`)
with the chosen channels shuffled across evaluation samples instead of zeroed."""

from __future__ import annotations

from typing import Literal

from mi_probe.builtin.experiments._sweep import InterventionSweep, SweepParams
from mi_probe.plugin import hookimpl


class ShuffleExpParams(SweepParams):
    """Shuffle the chosen channels across evaluation samples."""

    kind: Literal["shuffle"] = "shuffle"


class ShuffleSweep(InterventionSweep):
    """The ``knockout`` sweep with the chosen channels shuffled across samples."""


@hookimpl
def mi_probe_register_experiments(register):
    register("shuffle", ShuffleSweep, ShuffleExpParams)
