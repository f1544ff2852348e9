from typing import Literal

import polars as pl
from pydantic import BaseModel

from mi_probe.plugin import charts
from mi_probe.plugin import (
    aggregate_seeds, hookimpl, seed_units, SITE_COLUMNS, site_row, unit_seed)


class ScaleParams(BaseModel, extra="forbid"):
    kind: Literal["activation_scale"] = "activation_scale"


class ActivationScale:
    name = "activation_scale"
    table_schemas = {"scale": SITE_COLUMNS + ("mean_abs",)}  # DeclaresTables: checked
    def __init__(self, params): self.params = params
    def plan(self, ctx): return seed_units(ctx)  # one unit per seed; nothing kept on self

    def run_unit(self, ctx, unit, plan):  # reads only the spec, ctx and plan
        seed = unit_seed(unit)
        caps = {state: ctx.capture(seed, state) for state in ("trained", "random")}
        rows = [{**site_row(seed, state, s), "mean_abs": cap.acts[s.name].abs().mean().item()}
                for state, cap in caps.items() for s in cap.sites]  # acts: pooled (N, C)
        return {"scale": pl.DataFrame(rows)}

    def finalize(self, ctx, tables):  # per site and state: mean and 95% interval over seeds
        return {"summary_scale": aggregate_seeds(tables["scale"], ["state", "site"], ["mean_abs"])}

    def figures(self, tables):  # drawn from tables alone, so `mi-probe report` can redraw
        return {"scale_by_depth": charts.line(tables["scale"], "depth", "mean_abs", "state")}


@hookimpl
def mi_probe_register_experiments(register):
    register("activation_scale", ActivationScale, ScaleParams)
