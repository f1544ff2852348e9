"""Built-in metric ``top_k_share``: the share of a site's per-channel mass held by its
⌈k·C⌉ largest channels, for the ``concentration`` experiment's ``extra_metrics``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mi_probe.builtin.metrics.gini import Gini
from mi_probe.plugin import hookimpl


class TopKShareParams(BaseModel):
    """Mass held by the ⌈k·C⌉ largest channels."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["top_k_share"] = "top_k_share"
    k: float = Field(0.1, gt=0, le=1)


class TopKShare(Gini):
    name = "top_k_share"

    def __call__(self, values):
        from mi_probe.functional import concentration as C

        return {f"top_{self.params.k:g}_share": C.top_k_share(values, self.params.k)}


@hookimpl
def mi_probe_register_metrics(register):
    register("top_k_share", TopKShare, TopKShareParams)
