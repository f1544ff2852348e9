"""Built-in intervention plugin: knockout, energy-preserving knockout, shuffle, perturb.

Each acts on the chosen channels of one site's output and returns a new tensor (the
hooked output is never modified in place, so in-place layers around the site cannot
leak the change elsewhere).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from mi_probe.errors import EstimatorError
from mi_probe.hookspecs import hookimpl
from mi_probe.interfaces import Site
from mi_probe.sites import channel_axis


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KnockoutParams(_Params):
    """Zero the chosen channels."""

    kind: Literal["knockout"] = "knockout"


class EnergyParams(_Params):
    """Zero the chosen channels, then rescale the remaining channels of the site, per
    sample, so the activation tensor's L2 norm equals the pre-ablation norm."""

    kind: Literal["energy"] = "energy"


class ShuffleParams(_Params):
    """Permute the chosen channels across samples of the evaluation set (keeps each
    channel's marginal distribution, breaks its link to the input)."""

    kind: Literal["shuffle"] = "shuffle"


class PerturbParams(_Params):
    """Add Gaussian noise of σ = alpha · (channel std over the evaluation set, all
    positions) to the chosen channels."""

    kind: Literal["perturb"] = "perturb"
    alpha: float = Field(1.0, gt=0, description="noise scale in channel standard deviations")


def _move_channels_last(output: torch.Tensor, site: Site) -> tuple[torch.Tensor, int]:
    axis = channel_axis(site.layout) % output.ndim
    return output.movedim(axis, -1), axis


class _Base:
    needs_calibration = False

    def __init__(self, params: BaseModel):
        self.params = params
        # usable without the engine: a fixed seed until the first reset(generator)
        self.reset(torch.Generator().manual_seed(0))

    def reset(self, generator: torch.Generator) -> None:
        self._seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())

    def calibrate(self, output, site, channels, start) -> None:  # pragma: no cover - unused
        return None


class Knockout(_Base):
    name = "knockout"
    variant = "plain"

    def __call__(self, output: torch.Tensor, site: Site, channels: torch.Tensor,
                 start: int) -> torch.Tensor:
        out = output.clone()
        out.index_fill_(channel_axis(site.layout) % out.ndim, channels, 0.0)
        return out


class EnergyKnockout(Knockout):
    name = "energy"
    variant = "energy"

    def __call__(self, output: torch.Tensor, site: Site, channels: torch.Tensor,
                 start: int) -> torch.Tensor:
        out = super().__call__(output, site, channels, start)
        before = output.flatten(1).norm(dim=1)
        after = out.flatten(1).norm(dim=1)
        scale = torch.where(after > 0, before / after.clamp_min(torch.finfo(out.dtype).tiny),
                            torch.ones_like(after))
        return out * scale.view(-1, *([1] * (out.ndim - 1)))


class Shuffle(_Base):
    name = "shuffle"
    variant = "shuffle"
    needs_calibration = True

    def reset(self, generator: torch.Generator) -> None:
        super().reset(generator)
        self._parts: list[tuple[int, torch.Tensor]] = []
        self._values: torch.Tensor | None = None
        self._perm: torch.Tensor | None = None

    def calibrate(self, output, site, channels, start) -> None:
        axis = channel_axis(site.layout) % output.ndim
        self._parts.append((int(start), output.index_select(axis, channels).detach().clone()))

    def _prepare(self, device: torch.device) -> None:
        if not self._parts:
            raise EstimatorError("shuffle intervention was applied without calibration")
        parts = sorted(self._parts, key=lambda part: part[0])
        expected = 0
        for start, part in parts:
            if start != expected:
                raise EstimatorError(f"shuffle calibration batches do not tile the evaluation "
                                     f"set: a batch starts at {start}, expected {expected}")
            expected += part.shape[0]
        self._values = torch.cat([part for _, part in parts])
        self._parts = []
        gen = torch.Generator().manual_seed(self._seed)
        self._perm = torch.randperm(self._values.shape[0], generator=gen).to(device)

    def __call__(self, output, site, channels, start):
        if self._values is None:
            self._prepare(output.device)
        n = self._values.shape[0]
        if start < 0 or start + output.shape[0] > n:
            raise EstimatorError(f"shuffle was calibrated on {n} samples but is applied to "
                                 f"samples {start}..{start + output.shape[0] - 1}")
        axis = channel_axis(site.layout) % output.ndim
        rows = self._perm[start:start + output.shape[0]]
        out = output.clone()
        out.index_copy_(axis, channels, self._values.index_select(0, rows).to(out.dtype))
        return out


class Perturb(_Base):
    name = "perturb"
    variant = "perturb"
    needs_calibration = True

    def reset(self, generator: torch.Generator) -> None:
        super().reset(generator)
        self._sum = self._sumsq = None
        self._count = 0
        self._device_gen: torch.Generator | None = None

    def calibrate(self, output, site, channels, start) -> None:
        moved, _ = _move_channels_last(output.index_select(channel_axis(site.layout) % output.ndim,
                                                           channels).to(torch.float64), site)
        flat = moved.reshape(-1, moved.shape[-1])
        self._sum = flat.sum(0) if self._sum is None else self._sum + flat.sum(0)
        sq = (flat * flat).sum(0)
        self._sumsq = sq if self._sumsq is None else self._sumsq + sq
        self._count += flat.shape[0]

    def std(self) -> torch.Tensor:
        mean = self._sum / self._count
        var = (self._sumsq / self._count - mean * mean).clamp_min(0)
        return var.sqrt()

    def __call__(self, output, site, channels, start):
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


INTERVENTIONS = {"knockout": (Knockout, KnockoutParams), "energy": (EnergyKnockout, EnergyParams),
                 "shuffle": (Shuffle, ShuffleParams), "perturb": (Perturb, PerturbParams)}


@hookimpl
def mi_probe_register_interventions(register):
    for name, (cls, params) in INTERVENTIONS.items():
        register(name, cls, params)
