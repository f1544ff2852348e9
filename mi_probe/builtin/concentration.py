"""Built-in concentration plugin (paper Figs. 3–4): how unevenly label information is
spread over the channels of each site, trained vs random, and the trained − random
deltas. Metrics are registered as plugins too (``gini``, ``norm_entropy``,
``top_k_share``) so a third party can add more and name them in ``extra_metrics``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from mi_probe.analysis import channel_label_mi, seed_units, site_row, unit_seed
from mi_probe.errors import SpecError
from mi_probe.functional import concentration as C
from mi_probe.hookspecs import hookimpl
from mi_probe.interfaces import RANDOM, TRAINED, RunContext
from mi_probe.tables import aggregate_seeds

METRIC_COLUMNS = ["gini", "top_k_share", "norm_entropy"]


class GiniParams(BaseModel):
    """Gini coefficient of the per-channel mass p_c = v_c / Σ v."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["gini"] = "gini"


class NormEntropyParams(BaseModel):
    """H(p) / log C of the per-channel mass."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["norm_entropy"] = "norm_entropy"


class TopKShareParams(BaseModel):
    """Mass held by the ⌈k·C⌉ largest channels."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["top_k_share"] = "top_k_share"
    k: float = Field(0.1, gt=0, le=1)


class Gini:
    name = "gini"

    def __init__(self, params):
        self.params = params

    def __call__(self, values):
        return {"gini": C.gini(values)}


class NormEntropy(Gini):
    name = "norm_entropy"

    def __call__(self, values):
        return {"norm_entropy": C.normalized_entropy(values)}


class TopKShare(Gini):
    name = "top_k_share"

    def __call__(self, values):
        return {f"top_{self.params.k:g}_share": C.top_k_share(values, self.params.k)}


class ConcentrationParams(BaseModel):
    """Gini, top-k% share and normalised entropy of per-channel I(T_c;Y) per site."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["concentration"] = "concentration"
    states: list[Literal["trained", "random"]] = Field([TRAINED, RANDOM], min_length=1)
    top_k: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        [0.05, 0.1, 0.2], min_length=1,
        description="fractions k in (0, 1] for the top-k% share (one row each)")
    extra_metrics: list[str] = Field([], description="names of registered metric plugins "
                                     "(built with default params) added as columns")


class ConcentrationExperiment:
    name = "concentration"

    def __init__(self, params: ConcentrationParams):
        self.params = params
        bad = [k for k in params.top_k if not 0 < k <= 1]
        if bad:
            raise SpecError(f"experiment.top_k: fractions must be in (0, 1], got {bad}")

    def units(self, ctx: RunContext) -> list[str]:
        self._extra = [ctx.plugin("metrics", name) for name in self.params.extra_metrics]
        return seed_units(ctx)

    def run_unit(self, ctx: RunContext, unit: str) -> dict[str, pl.DataFrame]:
        seed = unit_seed(unit)
        rows, channels = [], []
        for state in self.params.states:
            cap = ctx.capture(seed, state)
            values = channel_label_mi(ctx, cap)
            for site in cap.sites:
                v = values[site.name]
                base = site_row(seed, state, site)
                extra: dict[str, Any] = {}
                for metric in getattr(self, "_extra", []):
                    extra.update(metric(v))
                common = {"gini": C.gini(v), "norm_entropy": C.normalized_entropy(v),
                          "total_i_ty": float(v.sum()), "channels": site.channels, **extra}
                for k in self.params.top_k:
                    rows.append({**base, "top_k": k, "top_k_share": C.top_k_share(v, k),
                                 "top_k_channels": C.top_k_count(site.channels, k), **common})
                p = C.mass(v).cpu().numpy()
                channels.append(pl.DataFrame({
                    **{key: [val] * site.channels for key, val in base.items()},
                    "channel": list(range(site.channels)), "i_ty": v.cpu().numpy(), "mass": p}))
        return {"concentration": pl.DataFrame(rows), "channel_mass": pl.concat(channels)}

    def finalize(self, ctx, tables):
        conc = tables["concentration"]
        keys = ["state", "site", "depth", "site_kind", "top_k"]
        out = {"summary_concentration": aggregate_seeds(conc, keys, METRIC_COLUMNS)}
        states = set(conc["state"].unique())
        if {TRAINED, RANDOM} <= states:
            idx = ["seed", "site", "depth", "site_kind", "top_k"]
            trained = conc.filter(pl.col("state") == TRAINED).select(idx + METRIC_COLUMNS)
            random = conc.filter(pl.col("state") == RANDOM).select(idx + METRIC_COLUMNS)
            delta = trained.join(random, on=idx, suffix="_random").with_columns(
                [(pl.col(m) - pl.col(f"{m}_random")).alias(f"delta_{m}") for m in METRIC_COLUMNS]
            ).select(idx + [f"delta_{m}" for m in METRIC_COLUMNS])
            out["concentration_delta"] = delta
            out["summary_concentration_delta"] = aggregate_seeds(
                delta, ["site", "depth", "site_kind", "top_k"],
                [f"delta_{m}" for m in METRIC_COLUMNS])
        return out

    def figures(self, tables):
        import altair as alt

        from mi_probe import report

        conc = tables["concentration"]
        first_k = conc["top_k"].min()
        one_k = conc.filter(pl.col("top_k") == first_k)
        figs = {
            "gini_by_depth": report.by_depth(one_k, "gini", color="state",
                                             title="Gini of per-channel I(T_c;Y) by depth",
                                             y_title="Gini"),
            "norm_entropy_by_depth": report.by_depth(one_k, "norm_entropy", color="state",
                                                     title="Normalised entropy of channel mass",
                                                     y_title="H(p) / log C"),
            "top_k_share_by_depth": report.by_depth(conc, "top_k_share", color="state",
                                                    facet="top_k",
                                                    title="Top-k% share of label MI mass",
                                                    y_title="share"),
        }
        if "concentration_delta" in tables:
            delta = tables["concentration_delta"].filter(pl.col("top_k") == first_k)
            long = delta.unpivot(index=["seed", "site", "depth", "site_kind"],
                                 on=["delta_gini", "delta_norm_entropy", "delta_top_k_share"],
                                 variable_name="metric", value_name="delta")
            figs["delta_by_depth"] = report.by_depth(long.with_columns(state=pl.col("metric")),
                                                     "delta", color="state",
                                                     title="Trained − random, by depth",
                                                     y_title="trained − random")
        mass = tables.get("channel_mass")
        if mass is not None and mass.height:
            seed0 = mass.filter(pl.col("seed") == mass["seed"].min())
            figs["channel_mi_distribution"] = alt.Chart(alt.InlineData(
                values=seed0.select("state", "depth", "site", "i_ty").to_dicts())).mark_boxplot(
                extent="min-max").encode(
                x=alt.X("depth", type="ordinal", title="depth"),
                y=alt.Y("i_ty", type="quantitative", title="I(T_c;Y) [nats]"),
                color=alt.Color("state", type="nominal"),
                xOffset=alt.XOffset("state", type="nominal")).properties(
                title="Per-channel label MI by depth (first seed)", width=600)
        return figs


@hookimpl
def mi_probe_register_metrics(register):
    register("gini", Gini, GiniParams)
    register("norm_entropy", NormEntropy, NormEntropyParams)
    register("top_k_share", TopKShare, TopKShareParams)


@hookimpl
def mi_probe_register_experiments(register):
    register("concentration", ConcentrationExperiment, ConcentrationParams)
