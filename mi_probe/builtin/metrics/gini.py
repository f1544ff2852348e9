"""Built-in metric ``gini``: the Gini coefficient of a site's per-channel mass, for the
``concentration`` experiment's ``extra_metrics``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from mi_probe.plugin import hookimpl


class GiniParams(BaseModel):
    """Gini coefficient of the per-channel mass p_c = v_c / Σ v."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["gini"] = "gini"


class Gini:
    name = "gini"

    def __init__(self, params):
        self.params = params

    def __call__(self, values):
        from mi_probe.functional import concentration as C

        return {"gini": C.gini(values)}


@hookimpl
def mi_probe_register_metrics(register):
    register("gini", Gini, GiniParams)
