from typing import Literal

from pydantic import BaseModel

from mi_probe.plugin import hookimpl


class MaxShareParams(BaseModel, extra="forbid"):
    kind: Literal["max_share"] = "max_share"


class MaxShare:
    """The share of a site's total channel value held by its largest channel."""
    name = "max_share"

    def __init__(self, params): self.params = params

    def __call__(self, values):  # (C,) non-negative per-channel values -> columns
        total = float(values.sum())
        return {"max_share": float(values.max()) / total if total > 0 else float("nan")}


@hookimpl
def mi_probe_register_metrics(register):
    register("max_share", MaxShare, MaxShareParams)
