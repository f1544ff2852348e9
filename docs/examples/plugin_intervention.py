from typing import Literal

from pydantic import BaseModel

from mi_probe.plugin import channel_axis, hookimpl


class NegateParams(BaseModel, extra="forbid"):
    kind: Literal["negate"] = "negate"


class Negate:
    """Flip the sign of the chosen channels: their magnitude is kept, their direction not."""
    name, variant, needs_calibration = "negate", "negate", False

    def __init__(self, params): self.params = params
    def reset(self, generator): pass  # no randomness
    def calibrate(self, output, site, channels, start): pass  # never called: no calibration

    def __call__(self, output, site, channels, start):  # must not modify `output` in place
        out = output.clone()
        index = [slice(None)] * out.dim()
        index[channel_axis(site.layout)] = channels
        out[tuple(index)] = -out[tuple(index)]
        return out


@hookimpl
def mi_probe_register_interventions(register):
    register("negate", Negate, NegateParams)
