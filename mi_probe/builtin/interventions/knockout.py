"""Built-in intervention ``knockout``: zero the chosen channels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from mi_probe.builtin.interventions._base import _Base, _Params
from mi_probe.plugin import hookimpl, Site

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch


class KnockoutParams(_Params):
    """Zero the chosen channels."""

    kind: Literal["knockout"] = "knockout"


class Knockout(_Base):
    name = "knockout"
    variant = "plain"
    #: each image's result depends on that image alone (no randomness, no calibration):
    #: a sweep may score only the images it needs and stack several knockouts in a pass
    row_wise = True

    def __call__(self, output: torch.Tensor, site: Site, channels: torch.Tensor,
                 start: int) -> torch.Tensor:
        from mi_probe.plugin import channel_axis

        out = output.clone()
        out.index_fill_(channel_axis(site.layout) % out.ndim, channels, 0.0)
        return out


@hookimpl
def mi_probe_register_interventions(register):
    register("knockout", Knockout, KnockoutParams)
