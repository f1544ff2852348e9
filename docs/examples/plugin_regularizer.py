from typing import Literal

import torch
from pydantic import BaseModel, Field

from mi_probe.plugin import hookimpl


class ActivityL1Params(BaseModel, extra="forbid"):
    kind: Literal["activity_l1"] = "activity_l1"
    sites: list[str] = Field(["*.post_add"], min_length=1, description="fnmatch patterns")
    weight: float = Field(1e-3, ge=0)


class ActivityL1:
    """weight x mean |pooled activation| over the chosen sites: sparser layers."""

    def __init__(self, params):
        self.name, self.weight = params.kind, params.weight
        self.site_patterns = list(params.sites)  # the trainer pools these sites, with grad

    def penalty(self, pooled, labels):  # {site: (n, C)} of one batch -> scalar, added to CE
        if not pooled:
            return torch.zeros((), device=labels.device)
        return self.weight * torch.stack([a.abs().mean() for a in pooled.values()]).mean()


@hookimpl
def mi_probe_register_regularizers(register):
    register("activity_l1", ActivityL1, ActivityL1Params)
