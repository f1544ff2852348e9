"""Built-in metric ``norm_entropy``: the normalised entropy H(p) / log C of a site's
per-channel mass, for the ``concentration`` experiment's ``extra_metrics``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from mi_probe.builtin.metrics.gini import Gini
from mi_probe.plugin import hookimpl


class NormEntropyParams(BaseModel):
    """H(p) / log C of the per-channel mass."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["norm_entropy"] = "norm_entropy"


class NormEntropy(Gini):
    name = "norm_entropy"

    def __call__(self, values):
        from mi_probe.functional import concentration as C

        return {"norm_entropy": C.normalized_entropy(values)}


@hookimpl
def mi_probe_register_metrics(register):
    register("norm_entropy", NormEntropy, NormEntropyParams)
