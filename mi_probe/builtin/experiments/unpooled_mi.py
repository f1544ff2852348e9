"""Built-in experiment ``unpooled_mi`` (issue 24: MI without pooling).

The paper average-pools every channel before estimating, because a histogram cannot
cope with a whole C·H·W layer. With ``sites.reduce: none`` (every value) or
``{project: <dims>}`` (a seeded random Gaussian projection of them) capture keeps each
site whole, and an estimator that estimates I(T;Y) of a whole vector
(``interfaces.VectorLabelMI``, e.g. ``lmi`` from ``mi-probe-lmi``) measures the layer
as one variable. Per seed, model state and site: that value, the sample count, the
dimension it was measured in, and beside it the pooled layer's value (``pooled``).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from mi_probe.builtin.experiments._depth import site_columns, with_rel_depth
from mi_probe.plugin import (
    aggregate_seeds, EstimatorError, hookimpl, Plan, RANDOM, RunContext, seed_units,
    SpecError, TableSchema, TRAINED, unit_seed, VectorLabelMI)

SITE_KEYS = ["state", "site", "depth", "site_kind"]


class UnpooledMIParams(BaseModel):
    """I(T;Y) of whole layers (sites.reduce: none or a projection), trained and random."""

    model_config = ConfigDict(extra="forbid")
    #: this experiment reads sites kept whole (``sites.reduce``): the spec accepts
    #: reductions other than ``mean`` only for experiments that say so
    reads_unpooled_sites: ClassVar[bool] = True
    kind: Literal["unpooled_mi"] = "unpooled_mi"
    states: list[Literal["trained", "random"]] = Field(
        [TRAINED, RANDOM], min_length=1, description="model states to measure")
    pooled: Literal["mean", "joint", "none"] = Field(
        "mean", description="the pooled layer's value written beside each unpooled one: "
        "mean (the mean over channels of the estimator's per-channel I(T_c;Y), what "
        "layer_mi reports; cheap), joint (the same vector estimator on the pooled (N, C) "
        "channel vector: the value that pooling bounds, I(pool(T);Y) <= I(T;Y); costs a "
        "second estimate per site) or none")


#: The tables a run writes (``interfaces.DeclaresTables``).
TABLE_SCHEMAS = {
    "unpooled_mi": TableSchema(
        ("seed", "state", "site", "depth", "rel_depth", "site_kind", "i_ty", "n_samples",
         "dims", "channels", "site_reduce"),
        ("i_ty_pooled", "pooled", "seconds")),
    "evaluation": TableSchema(("seed", "state", "accuracy", "n_samples"), ()),
}


def site_reduce_name(spec: Any) -> str:
    """``mean``, ``none`` or ``project:<dims>``: how the spec keeps its sites."""
    reduce = spec.sites.reduce
    if isinstance(reduce, str):
        return reduce
    return "none" if reduce.project is None else f"project:{reduce.project}"


class UnpooledMIExperiment:
    name = "unpooled_mi"
    table_schemas = TABLE_SCHEMAS

    def __init__(self, params: UnpooledMIParams):
        self.params = params

    def check_spec(self, spec: Any, estimator: Any) -> None:
        if not isinstance(estimator, VectorLabelMI):
            raise SpecError(
                f"experiment unpooled_mi needs an estimator of I(T;Y) for a whole layer "
                f"vector (interfaces.VectorLabelMI: vector_label_mi), and estimator "
                f"{estimator.name!r} has none; use e.g. estimator: {{kind: lmi}} (plugin "
                "mi-probe-lmi)")

    def plan(self, ctx: RunContext) -> Plan:
        return seed_units(ctx)

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        import torch

        seed = unit_seed(unit)
        est: Any = ctx.estimator  # a VectorLabelMI (check_spec)
        reduce = site_reduce_name(ctx.spec)
        rows, evals = [], []
        for state in self.params.states:
            cap = ctx.capture(seed, state)  # (N, D) per site, as sites.reduce says
            n = int(cap.labels.numel())
            evals.append({"seed": seed, "state": state, "accuracy": cap.accuracy,
                          "n_samples": n})
            pooled: dict[str, torch.Tensor] = {}
            if self.params.pooled != "none":
                pooled = (cap.acts if reduce == "mean" else ctx.evaluate(
                    ctx.model(seed, state), sites=cap.sites).acts)
            for site in cap.sites:
                acts = cap.acts[site.name]
                dims = int(acts.shape[1])
                if est.max_dims is not None and dims > est.max_dims:
                    raise EstimatorError(
                        f"site {site.name!r} keeps D = {dims} dims (sites.reduce: {reduce}), "
                        f"above estimator {est.name!r}'s max_dims = {est.max_dims}; set "
                        f"sites.reduce: {{project: {min(est.max_dims, 1024)}}} or select "
                        "other sites")
                ctx.progress(f"seed {seed}: {state} {site.name}: I(T;Y) of {dims} dims")
                start = time.perf_counter()
                i_ty = est.vector_label_mi(acts.float(), cap.labels, ctx.num_classes)
                seconds = time.perf_counter() - start
                i_pooled = None
                if self.params.pooled == "mean":
                    i_pooled = est.label_mi(pooled[site.name], cap.labels,
                                            ctx.num_classes).mean().item()
                elif self.params.pooled == "joint":
                    i_pooled = est.vector_label_mi(pooled[site.name], cap.labels,
                                                   ctx.num_classes)
                rows.append({**site_columns(seed, state, site), "i_ty": float(i_ty),
                             "n_samples": n, "dims": dims, "channels": site.channels,
                             "site_reduce": reduce, "i_ty_pooled": i_pooled,
                             "pooled": self.params.pooled, "seconds": seconds})
        return {"unpooled_mi": pl.DataFrame(rows, schema_overrides={"i_ty_pooled": pl.Float64}),
                "evaluation": pl.DataFrame(evals)}

    def finalize(self, ctx: RunContext | None, tables: dict[str, pl.DataFrame]
                 ) -> dict[str, pl.DataFrame]:
        table = tables["unpooled_mi"]
        values = ["i_ty"] + (["i_ty_pooled"] if table["i_ty_pooled"].drop_nulls().len()
                             else [])
        out = {"summary_unpooled_mi": aggregate_seeds(
            table, with_rel_depth(SITE_KEYS, table), values)}
        if "evaluation" in tables:
            out["summary_evaluation"] = aggregate_seeds(tables["evaluation"], ["state"],
                                                        ["accuracy"])
        return out

    def figures(self, tables: dict[str, pl.DataFrame]) -> dict[str, Any]:
        from mi_probe.plugin import charts

        table = tables["unpooled_mi"]
        keys = ["seed", "site", "depth", "site_kind"]
        reduce = ", ".join(sorted(set(table["site_reduce"].to_list())))
        series = table.select(*keys, pl.col("i_ty"),
                              (pl.col("state") + f" (whole layer: {reduce})").alias("series"))
        if table["i_ty_pooled"].drop_nulls().len():
            how = table["pooled"][0]
            series = pl.concat([series, table.filter(pl.col("i_ty_pooled").is_not_null()).select(
                *keys, pl.col("i_ty_pooled").alias("i_ty"),
                (pl.col("state") + f" (pooled, {how})").alias("series"))])
        return {"unpooled_i_ty": charts.by_depth(
            series, "i_ty", color="series",
            title="Label information of whole layers by depth, I(T;Y)",
            y_title="I(T;Y) [nats]")}

    def notes(self, tables: dict[str, pl.DataFrame]) -> list[str]:
        table = tables.get("unpooled_mi")
        if table is None or not table.height:
            return []
        reduce = sorted(set(table["site_reduce"].to_list()))
        dims = table.group_by("site").agg(pl.col("dims").first(), pl.col("channels").first())
        shown = ", ".join(f"{r['site']} {r['dims']} (C = {r['channels']})"
                          for r in dims.sort("site").iter_rows(named=True))
        notes = [f"Whole layers kept as sites.reduce {', '.join(reduce)}: dims measured per "
                 f"site {shown}. A random projection to fewer dims than C·H·W is a function "
                 "of the layer, so its I(T;Y) is at most the layer's (data processing).",
                 "The network is deterministic and the label is a function of the image, so "
                 "a layer from which the image could be recovered has I(T;Y) = H(Y) in truth; "
                 "estimates below H(Y) measure how much of the label an estimator recovers "
                 "from these samples (LMI: a code learned on half of them), and that is what "
                 "differs between layers and states."]
        pooled = table["pooled"][0] if "pooled" in table.columns else "none"
        if pooled == "mean":
            notes.append("i_ty_pooled is the mean over channels of the per-channel label MI "
                         "(layer_mi's value with this estimator), a different quantity from "
                         "the whole layer's I(T;Y): compare trends, not values. pooled: joint "
                         "gives the comparable I(pool(T);Y), which pooling makes <= I(T;Y).")
        elif pooled == "joint":
            notes.append("i_ty_pooled is the same estimator on the pooled (N, C) channel "
                         "vector: I(pool(T);Y) <= I(T;Y) in truth (pooling is a function of "
                         "the layer); an estimate above the whole layer's shows the "
                         "estimator's error.")
        return notes


@hookimpl
def mi_probe_register_experiments(register):
    register("unpooled_mi", UnpooledMIExperiment, UnpooledMIParams)
