"""Built-in intervention ``energy``: the ``knockout``, then the remaining channels
rescaled per sample to the pre-ablation L2 norm."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from mi_probe.builtin.interventions._base import _Params
from mi_probe.builtin.interventions.knockout import Knockout
from mi_probe.plugin import hookimpl, Site

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch


class EnergyParams(_Params):
    """Zero the chosen channels, then rescale the remaining channels of the site, per
    sample, so the activation tensor's L2 norm equals the pre-ablation norm."""

    kind: Literal["energy"] = "energy"


class EnergyKnockout(Knockout):
    name = "energy"
    variant = "energy"

    def __call__(self, output: torch.Tensor, site: Site, channels: torch.Tensor,
                 start: int) -> torch.Tensor:
        import torch

        out = super().__call__(output, site, channels, start)
        before = output.flatten(1).norm(dim=1)
        after = out.flatten(1).norm(dim=1)
        scale = torch.where(after > 0, before / after.clamp_min(torch.finfo(out.dtype).tiny),
                            torch.ones_like(after))
        return out * scale.view(-1, *([1] * (out.ndim - 1)))


@hookimpl
def mi_probe_register_interventions(register):
    register("energy", EnergyKnockout, EnergyParams)
