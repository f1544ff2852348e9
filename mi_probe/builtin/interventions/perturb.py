"""Built-in intervention ``perturb``: add Gaussian noise scaled by each chosen
channel's standard deviation over the evaluation set (calibrated on it first)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, cast

from pydantic import Field

from mi_probe.builtin.interventions._base import _Base, _Params, _move_channels_last
from mi_probe.plugin import EstimatorError, hookimpl

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch


class PerturbParams(_Params):
    """Add Gaussian noise of σ = alpha · (channel std over the evaluation set, all
    positions) to the chosen channels."""

    kind: Literal["perturb"] = "perturb"
    alpha: float = Field(1.0, gt=0, description="noise scale in channel standard deviations")


class Perturb(_Base):
    name = "perturb"
    variant = "perturb"
    needs_calibration = True

    def reset(self, generator: torch.Generator) -> None:
        super().reset(generator)
        self._sum: torch.Tensor | None = None
        self._sumsq: torch.Tensor | None = None
        self._count = 0
        self._device_gen: torch.Generator | None = None

    def calibrate(self, output, site, channels, start) -> None:
        import torch

        from mi_probe.plugin import channel_axis

        moved, _ = _move_channels_last(output.index_select(channel_axis(site.layout) % output.ndim,
                                                           channels).to(torch.float64), site)
        flat = moved.reshape(-1, moved.shape[-1])
        self._sum = flat.sum(0) if self._sum is None else self._sum + flat.sum(0)
        sq = (flat * flat).sum(0)
        self._sumsq = sq if self._sumsq is None else self._sumsq + sq
        self._count += flat.shape[0]

    def std(self) -> torch.Tensor:
        import torch

        # set by calibrate (__call__ refuses an uncalibrated perturb first)
        total, total_sq = cast(torch.Tensor, self._sum), cast(torch.Tensor, self._sumsq)
        mean = total / self._count
        var = (total_sq / self._count - mean * mean).clamp_min(0)
        return var.sqrt()

    def __call__(self, output, site, channels, start):
        import torch

        from mi_probe.plugin import channel_axis

        if self._sum is None:
            raise EstimatorError("perturb intervention was applied without calibration")
        if self._device_gen is None:
            self._device_gen = torch.Generator(device=output.device).manual_seed(self._seed)
        axis = channel_axis(site.layout) % output.ndim
        chosen = output.index_select(axis, channels)
        noise = torch.randn(chosen.shape, generator=self._device_gen, device=output.device,
                            dtype=output.dtype)
        shape = [1] * output.ndim
        shape[axis] = -1
        sigma = (self.params.alpha * self.std()).to(output.dtype).view(shape)
        out = output.clone()
        out.index_copy_(axis, channels, chosen + noise * sigma)
        return out


@hookimpl
def mi_probe_register_interventions(register):
    register("perturb", Perturb, PerturbParams)
