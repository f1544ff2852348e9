"""Built-in intervention ``shuffle``: permute the chosen channels across the
samples of the evaluation set (calibrated on it first)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from mi_probe.builtin.interventions._base import _Base, _Params
from mi_probe.plugin import EstimatorError, hookimpl

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch


class ShuffleParams(_Params):
    """Permute the chosen channels across samples of the evaluation set (keeps each
    channel's marginal distribution, breaks its link to the input)."""

    kind: Literal["shuffle"] = "shuffle"


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
        from mi_probe.plugin import channel_axis

        axis = channel_axis(site.layout) % output.ndim
        self._parts.append((int(start), output.index_select(axis, channels).detach().clone()))

    def _prepare(self, device: torch.device) -> None:
        import torch

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
        from mi_probe.plugin import channel_axis

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


@hookimpl
def mi_probe_register_interventions(register):
    register("shuffle", Shuffle, ShuffleParams)
