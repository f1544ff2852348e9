"""Built-in experiment ``perturb``: the ``knockout`` sweep (:class:`InterventionSweep`)
with Gaussian noise added to the chosen channels instead of zeroing them, at each noise
scale of ``alphas``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mi_probe.builtin.experiments._sweep import InterventionSweep, SweepParams
from mi_probe.plugin import hookimpl


class PerturbExpParams(SweepParams):
    """Add Gaussian noise (alpha channel standard deviations) to the chosen channels."""

    kind: Literal["perturb"] = "perturb"
    alphas: list[Annotated[float, Field(gt=0)]] = Field(
        [0.5, 1.0, 2.0], min_length=1,
        description="noise scales in channel standard deviations (each > 0)")


class PerturbSweep(InterventionSweep):
    """The ``knockout`` sweep with Gaussian noise on the chosen channels."""


@hookimpl
def mi_probe_register_experiments(register):
    register("perturb", PerturbSweep, PerturbExpParams)
