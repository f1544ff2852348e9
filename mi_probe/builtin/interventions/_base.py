"""What the built-in interventions share (not a plugin): the params base class, the
base class with the per-run seed, and moving a site's channel axis last.

Each intervention acts on the chosen channels of one site's output and returns a new
tensor (the hooked output is never modified in place, so in-place layers around the
site cannot leak the change elsewhere).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from mi_probe.plugin import Site

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _move_channels_last(output: torch.Tensor, site: Site) -> tuple[torch.Tensor, int]:
    from mi_probe.plugin import channel_axis

    axis = channel_axis(site.layout) % output.ndim
    return output.movedim(axis, -1), axis


class _Base:
    needs_calibration = False

    def __init__(self, params: BaseModel):
        import torch

        self.params = params
        # usable without the engine: a fixed seed until the first reset(generator)
        self.reset(torch.Generator().manual_seed(0))

    def reset(self, generator: torch.Generator) -> None:
        import torch

        self._seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())

    def calibrate(self, output, site, channels, start) -> None:  # pragma: no cover - unused
        return None
