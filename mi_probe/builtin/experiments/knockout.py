"""Built-in experiment ``knockout`` (paper Fig. 5, abstract): zero (``plain``) or
zero-and-rescale (``energy``) the top-MI channels of each site at MI-mass levels q,
against size-matched random and bottom-MI controls. The sweep itself is
:class:`~mi_probe.builtin.experiments._sweep.InterventionSweep`, shared with ``shuffle``
and ``perturb``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mi_probe.builtin.experiments._sweep import InterventionSweep, SweepParams
from mi_probe.plugin import hookimpl

__all__ = ["InterventionSweep", "KnockoutParams"]


class KnockoutParams(SweepParams):
    """Knock out top / random / bottom MI-mass sets; accuracy drop per site and q."""

    kind: Literal["knockout"] = "knockout"
    variants: list[Literal["plain", "energy"]] = Field(
        ["plain", "energy"], min_length=1,
        description="plain: zero; energy: zero, then rescale the remaining channels per "
        "sample to the pre-ablation L2 norm")


@hookimpl
def mi_probe_register_experiments(register):
    register("knockout", InterventionSweep, KnockoutParams)
