"""Built-in experiment ``layer_mi`` (paper Fig. 1).

Per seed and model state (trained / random init): per-channel I(T_c;Y) and I(X;T_c)
for every site, the layer values (mean over channels, or the joint symbol), and the
evaluation accuracy of the model.
"""

from __future__ import annotations

import math
from typing import Any, Literal, cast

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from mi_probe.builtin.experiments._depth import site_columns, with_rel_depth
from mi_probe.plugin import (
    aggregate_seeds, DiagnosesLabels, hookimpl, Intervals, Plan, prepare_site, RANDOM,
    RunContext, seed_units, SpecError, streamed_capture, streams, Streams, TableSchema,
    TRAINED, unit_seed)

SITE_KEYS = ["state", "site", "depth", "site_kind"]


class LayerMIParams(BaseModel):
    """Per-layer I(X;T) and I(T;Y) for trained and randomly initialised models."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["layer_mi"] = "layer_mi"
    states: list[Literal["trained", "random"]] = Field(
        [TRAINED, RANDOM], min_length=1, description="model states to measure")
    reduce: str = Field("mean", description="layer reduction: mean over channels, or joint "
                        "(the binned channel vector as one symbol); others if the estimator "
                        "offers them")
    channel_table: bool = Field(True, description="also write tables/channel_mi.parquet")
    null_draws: int = Field(3, ge=0, description="shuffled-label null: the same estimate with "
                            "labels permuted, this many draws, reported beside every value "
                            "(i_ty_null, i_ty_null_sd); 0 turns it off")
    interval: float | None = Field(
        None, gt=0, lt=1, description="confidence level (e.g. 0.95) of an interval on every "
        "label-MI value: i_ty_ci_low and i_ty_ci_high in layer_mi (the site's mean over "
        "channels) and channel_mi, made by the estimator's own valid method (its "
        "interval_method: bootstrap for histogram, disjoint subsamples for ksg; "
        "docs/estimators.md, 'Intervals'; the histogram's basic bootstrap removes the "
        "plug-in bias, so with few samples per bin its interval can lie below i_ty); "
        "null: none. Needs reduce: mean")


#: The tables a run writes (``interfaces.DeclaresTables``): required columns, then
#: those that appear with some settings.
TABLE_SCHEMAS = {
    "layer_mi": TableSchema(
        ("seed", "state", "site", "depth", "rel_depth", "site_kind", "i_xt", "i_ty"),
        ("i_ty_bias", "i_ty_null", "i_ty_null_sd", "i_ty_excess", "channels", "reduce",
         "i_ty_ci_low", "i_ty_ci_high", "ci_level", "ci_method")),
    "channel_mi": TableSchema(
        ("seed", "state", "site", "depth", "rel_depth", "site_kind", "channel", "i_xt",
         "i_ty"),
        ("i_ty_null", "i_ty_bias", "i_ty_ci_low", "i_ty_ci_high")),
    "evaluation": TableSchema(
        ("seed", "state", "accuracy", "n_samples"),
        ()),
    "diagnostics": TableSchema(
        ("seed", "state", "site", "depth", "rel_depth", "site_kind"),
        ("n_samples", "channels", "log_n", "n_constant", "frac_edge_bins", "frac_near_cap",
         "i_xt_cap", "bin_range", "frac_clipped", "h_y", "frac_h_y_channel_max",
         "frac_h_y_channel_mean", "frac_h_y_layer", "frac_unique_patterns"), open=True),
}


class LayerMIExperiment:
    name = "layer_mi"
    table_schemas = TABLE_SCHEMAS

    def __init__(self, params: LayerMIParams):
        self.params = params

    def check_spec(self, spec: Any, estimator: Any) -> None:
        reductions = {"mean"} | set(estimator.reductions)
        if self.params.reduce not in reductions:
            raise SpecError(f"experiment.reduce: estimator {estimator.name!r} has no "
                            f"reduction {self.params.reduce!r}; valid: {sorted(reductions)}")
        if self.params.interval is not None:
            if not isinstance(estimator, Intervals):
                raise SpecError(f"experiment.interval: estimator {estimator.name!r} has no "
                                f"interval method (the Intervals ability, "
                                f"docs/estimators.md); remove interval or choose an "
                                f"estimator that has one (histogram: bootstrap; ksg: "
                                f"disjoint subsamples)")
            if self.params.reduce != "mean":
                raise SpecError(f"experiment.interval is for reduce: mean (the mean over "
                                f"channels); found reduce: {self.params.reduce!r}")

    def plan(self, ctx: RunContext) -> Plan:
        return seed_units(ctx)

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        import torch

        seed = unit_seed(unit)
        est = ctx.estimator
        layers, channels, evals, diags = [], [], [], []
        for state in self.params.states:
            streamed = self._streamed_capture(ctx, seed, state)
            cap = streamed if streamed is not None else ctx.capture(seed, state)
            n = int(cap.labels.numel())
            bias = est.bias(n, ctx.num_classes)
            evals.append({"seed": seed, "state": state, "accuracy": cap.accuracy, "n_samples": n})
            perms = [torch.randperm(n, generator=ctx.rng(seed, f"null/{state}/{d}")).to(
                cap.labels.device) for d in range(self.params.null_draws)]
            for site in cap.sites:
                interval: dict[str, Any] = {}
                chan_ci = None
                if streamed is not None:
                    acts = None
                    i_ty_c, i_xt_c, nulls, constant, site_diags = self._site_streamed(
                        ctx, streamed, site, perms)
                else:
                    acts = cap.acts[site.name]
                    # every quantity of this site from one state when the estimator
                    # Prepares (the histogram bins it once), else from its per-quantity
                    # methods
                    prepared = prepare_site(est, acts)
                    if self.params.interval is not None:
                        # the estimator's own valid method; a seed per (seed, state,
                        # site). Its estimate is label_mi's (the Intervals contract), so a
                        # neural estimator trains once per site, not twice
                        draw_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.rng(
                            seed, f"interval/{state}/{site.name}")).item())
                        chan_ci, mean_ci = cast(Intervals, est).label_mi_interval(
                            acts, cap.labels, ctx.num_classes, self.params.interval, draw_seed)
                        interval = {"i_ty_ci_low": float(mean_ci.low), "i_ty_ci_high":
                                    float(mean_ci.high), "ci_level": mean_ci.level,
                                    "ci_method": mean_ci.method}
                        i_ty_c = chan_ci.estimate
                    else:
                        i_ty_c = prepared.label_mi(cap.labels, ctx.num_classes)
                    i_xt_c = prepared.input_mi()
                    nulls = [prepared.label_mi(cap.labels[perm], ctx.num_classes)
                             for perm in perms]
                    # every estimator gets the estimator-free facts; one that Diagnoses
                    # adds its own (the histogram: edge bins, near-cap channels, range)
                    constant = int((acts.amax(dim=0) == acts.amin(dim=0)).sum().item())
                    # an estimator that DiagnosesLabels adds how its discretisation
                    # relates to the labels (the histogram: share of H(Y) its bins explain)
                    labelled = (est.label_diagnostics(acts, cap.labels, ctx.num_classes)
                                if isinstance(est, DiagnosesLabels) else {})
                    site_diags = {**prepared.diagnostics(), **labelled}
                null_c = torch.stack(nulls).mean(0) if nulls else None
                null_layer = torch.stack([v.mean() for v in nulls]) if nulls else None
                diags.append({**site_columns(seed, state, site), "n_samples": n,
                              "channels": site.channels, "log_n": math.log(n),
                              "n_constant": constant, **site_diags})
                if self.params.reduce == "mean":
                    i_ty = i_ty_c.mean().item()
                    i_xt = i_xt_c.mean().item() if i_xt_c is not None else None
                else:
                    assert acts is not None  # a joint layer value is never streamed
                    layer = est.layer_mi(acts, cap.labels, ctx.num_classes, self.params.reduce)
                    i_xt, i_ty = layer.i_xt, layer.i_ty
                base = site_columns(seed, state, site)
                null_mean = null_layer.mean().item() if null_layer is not None else None
                layers.append({**base, "i_xt": i_xt, "i_ty": i_ty, "i_ty_bias": bias,
                               "i_ty_null": null_mean,
                               # label MI beyond the shuffled-label null: what a random
                               # network's "low" label MI is measured by
                               "i_ty_excess": (i_ty - null_mean if null_mean is not None
                                               else None),
                               "i_ty_null_sd": (null_layer.std().item()
                                                if null_layer is not None and len(nulls) > 1
                                                else None),
                               "channels": site.channels, "reduce": self.params.reduce,
                               **interval})
                if self.params.channel_table:
                    count = site.channels
                    channels.append(pl.DataFrame({
                        "seed": [seed] * count, "state": [state] * count,
                        "site": [site.name] * count, "depth": [site.depth] * count,
                        "rel_depth": [site.rel_depth] * count,
                        "site_kind": [site.kind] * count, "channel": list(range(count)),
                        "i_xt": (i_xt_c.cpu().numpy() if i_xt_c is not None
                                 else [None] * count),
                        "i_ty": i_ty_c.cpu().numpy(),
                        "i_ty_null": (null_c.cpu().numpy() if null_c is not None
                                      else [None] * count),
                        "i_ty_bias": [bias] * count,
                        **({"i_ty_ci_low": chan_ci.low.cpu().numpy(),
                            "i_ty_ci_high": chan_ci.high.cpu().numpy()}
                           if chan_ci is not None else {})}))
        floats = {c: pl.Float64 for c in ("i_xt", "i_ty_null", "i_ty_null_sd", "i_ty_excess")}
        tables = {"layer_mi": pl.DataFrame(layers, schema_overrides=floats),
                  "evaluation": pl.DataFrame(evals)}
        if diags:
            tables["diagnostics"] = pl.DataFrame(diags)
        if channels:
            tables["channel_mi"] = pl.concat(
                [c.with_columns(pl.col("i_xt").cast(pl.Float64),
                                pl.col("i_ty_null").cast(pl.Float64)) for c in channels])
        return tables

    def _streamed_capture(self, ctx: RunContext, seed: int, state: str) -> Any:
        """The capture of ``state`` streamed from the activation store (``streamed_capture``)
        when every quantity asked streams (an estimator that ``Streams``, the mean over
        channels, no interval); else None (the capture is held in memory, as always)."""
        if (not streams(ctx.estimator) or self.params.reduce != "mean"
                or self.params.interval is not None):
            return None
        return streamed_capture(ctx, seed, state)

    def _site_streamed(self, ctx: RunContext, cap: Any, site: Any, perms: list[Any]
                       ) -> tuple[Any, Any, list[Any], int, dict[str, Any]]:
        """One site's per-channel label MI, input MI, nulls, constant channels and
        diagnostics from the store's chunks: the labels and every null counted in one
        pass. The pattern diagnostics of ``DiagnosesLabels`` need the whole matrix and
        are left out (docs/store.md, 'Streaming')."""
        import torch

        est = cast(Streams, ctx.estimator)
        chunks = cap.chunks(site.name)
        state = est.prepare_stream(chunks, cap.n, cap.channels(site.name))
        labels = [cap.labels, *[cap.labels[perm] for perm in perms]]
        found = est.label_mi_streamed(state, labels, ctx.num_classes)
        i_xt_c = est.input_mi_prepared(state)
        low, high = getattr(state, "col_min", None), getattr(state, "col_max", None)
        if low is None or high is None:  # an estimator whose state has no ranges: a pass
            lows, highs = [], []
            for block in chunks():
                lows.append(block.amin(dim=0))
                highs.append(block.amax(dim=0))
            low, high = torch.stack(lows).amin(dim=0), torch.stack(highs).amax(dim=0)
        constant = int((low == high).sum().item())
        return found[0], i_xt_c, list(found[1:]), constant, est.diagnostics_prepared(state)

    def finalize(self, ctx: RunContext | None, tables: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
        values = ["i_xt", "i_ty"] + (["i_ty_null"] if tables["layer_mi"]["i_ty_null"].drop_nulls().len()
                                      else [])
        layer = tables["layer_mi"]
        out = {"summary_layer_mi": aggregate_seeds(layer, with_rel_depth(SITE_KEYS, layer),
                                                   values)}
        if "evaluation" in tables:
            out["summary_evaluation"] = aggregate_seeds(tables["evaluation"], ["state"], ["accuracy"])
        return out

    def figures(self, tables: dict[str, pl.DataFrame]) -> dict[str, Any]:
        import altair as alt

        from mi_probe.plugin import charts

        layer = tables["layer_mi"]
        series = layer.select("seed", "state", "site", "depth", "site_kind", "i_ty")
        if "i_ty_null" in layer.columns and layer["i_ty_null"].drop_nulls().len():
            null = layer.select("seed", "state", "site", "depth", "site_kind",
                                pl.col("i_ty_null").alias("i_ty")).with_columns(
                state=pl.col("state") + " (shuffled labels)")
            series = pl.concat([series, null])
        i_ty = charts.by_depth(series, "i_ty", color="state",
                               title="Label information by depth, I(T;Y) (dashed: plug-in bias)",
                               y_title="I(T;Y) [nats]")
        if "i_ty_bias" in layer.columns and layer["i_ty_bias"].max():
            # drawn last and dark, so the null lines (light, shuffled labels) never hide it
            top = cast(float, layer["i_ty_bias"].max())  # a float column
            rule = alt.Chart(alt.InlineData(values=[{"bias": float(top)}])
                             ).mark_rule(strokeDash=[6, 3], color="#333", strokeWidth=1.5
                                         ).encode(y=alt.Y("bias", type="quantitative"))
            i_ty = alt.layer(i_ty, rule)
        i_xt: Any = charts.by_depth(layer, "i_xt", color="state",
                                    title="Input information by depth, I(X;T) = H(T)",
                                    y_title="I(X;T) [nats]")
        cap = i_xt_cap(tables)
        if cap is not None:
            i_xt = alt.layer(i_xt, *cap_rule(*cap, y_title="I(X;T) [nats]"))
        figs = {"layer_i_ty": i_ty, "layer_i_xt": i_xt}
        summary = tables.get("summary_layer_mi")
        if summary is not None:
            figs["information_plane"] = charts.scatter(
                summary, x="i_xt_mean", y="i_ty_mean", color="state",
                title="Information plane (mean over seeds)", tooltip=("site", "depth"),
                x_title="I(X;T) [nats], mean over seeds",
                y_title="I(T;Y) [nats], mean over seeds")
        return figs


def i_xt_cap(tables: dict[str, pl.DataFrame]) -> tuple[float, str] | None:
    """(value in nats, label) of the ceiling on the layer I(X;T) values: with the
    histogram estimator (its diagnostics carry ``i_xt_cap`` = log B), log B per channel
    for ``reduce: mean`` and log N (``log_n``) for ``reduce: joint``, where the binned
    channel vector is one symbol among N samples. None for other estimators."""
    diag = tables.get("diagnostics")
    if diag is None or "i_xt_cap" not in diag.columns:
        return None
    caps = diag["i_xt_cap"].drop_nulls()
    if not caps.len():
        return None
    layer = tables.get("layer_mi")
    reduce = (set(layer["reduce"].drop_nulls().unique().to_list())
              if layer is not None and "reduce" in layer.columns else {"mean"})
    if reduce <= {"mean"}:
        log_b = float(cast(float, caps.max()))
        return log_b, (f"log B = {log_b:.3f} nats: the histogram's I(X;T) cap per channel "
                       f"(B = {round(math.exp(log_b))} bins)")
    if reduce == {"joint"} and "log_n" in diag.columns and diag["log_n"].drop_nulls().len():
        log_n = float(cast(float, diag["log_n"].max()))
        return log_n, (f"log N = {log_n:.3f} nats: the cap of the joint symbol's entropy "
                       f"(N = {round(math.exp(log_n))} samples)")
    return None


def cap_rule(value: float, label: str, y_title: str) -> list[Any]:
    """A dashed horizontal rule at ``value`` with ``label`` under its left end (inside
    the plot), to layer over a chart whose y axis is ``y_title`` (the same title, so the
    axis keeps it). The y scale then reaches the cap: how far below it the values lie
    is what the rule shows."""
    import altair as alt

    base = alt.Chart(alt.InlineData(values=[{"cap": value, "label": label}]))
    y = alt.Y("cap", type="quantitative", title=y_title)
    return [base.mark_rule(strokeDash=[6, 3], color="#555", strokeWidth=1.5).encode(y=y),
            base.mark_text(align="left", baseline="top", dx=4, dy=4, fontSize=10,
                           color="#555").encode(x=alt.value(0), y=y, text=alt.Text(
                               "label", type="nominal"))]


@hookimpl
def mi_probe_register_experiments(register):
    register("layer_mi", LayerMIExperiment, LayerMIParams)
