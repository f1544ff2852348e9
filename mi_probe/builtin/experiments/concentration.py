"""Built-in experiment ``concentration`` (paper Figs. 3–4): how unevenly label
information is spread over the channels of each site, trained vs random, and the
trained − random deltas. Metrics are registered as plugins too (``gini``,
``norm_entropy``, ``top_k_share`` in ``mi_probe/builtin/metrics/``) so a third party can
add more and name them in ``extra_metrics``."""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

import polars as pl
from pydantic import ConfigDict, Field

from mi_probe.builtin.experiments._depth import site_columns, with_rel_depth
from mi_probe.plugin import (
    aggregate_seeds, channel_masses, channel_masses_streamed, ChannelMassParams, hookimpl,
    Plan, RANDOM, RunContext, seed_units, SITE_COLUMNS, SpecError, streamed_capture, streams,
    TableSchema, TRAINED, unit_seed)

METRIC_COLUMNS = ["gini", "top_k_share", "norm_entropy"]


class ConcentrationParams(ChannelMassParams):
    """Gini, top-k% share and normalised entropy of per-channel I(T_c;Y) per site, on
    raw and on bias-corrected masses side by side."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["concentration"] = "concentration"
    states: list[Literal["trained", "random"]] = Field([TRAINED, RANDOM], min_length=1)
    top_k: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        [0.05, 0.1, 0.2], min_length=1,
        description="fractions k in (0, 1] for the top-k% share (one row each)")
    extra_metrics: list[str] = Field([], description="names of registered metric plugins "
                                     "(built with default params) added as columns, computed "
                                     "on the masses `mass` names")


def _metrics(values, top_k: list[float]) -> dict[str, Any]:
    from mi_probe.functional import concentration as C

    out = {"gini": C.gini(values), "norm_entropy": C.normalized_entropy(values)}
    out.update({f"top_k_share@{k}": C.top_k_share(values, k) for k in top_k})
    return out


class ConcentrationExperiment:
    """Raw measures (``*_raw``) are the paper's; ``*_corrected`` use the shuffled-null
    corrected masses (or Miller–Madow when ``mass: miller_madow``) and are missing at a
    site whose channels do not beat the null; ``*_signal`` are the same measures over
    the channels that beat the null only (``signal_fraction`` of them), which clipping
    at the noise floor cannot inflate (missing with fewer than two such channels). ``gini``, ``top_k_share`` and
    ``norm_entropy`` are the measures of the spec's ``mass``."""

    name = "concentration"

    def __init__(self, params: ConcentrationParams):
        self.params = params
        bad = [k for k in params.top_k if not 0 < k <= 1]
        if bad:
            raise SpecError(f"experiment.top_k: fractions must be in (0, 1], got {bad}")
        # extra metrics add columns whose names the metric chooses: open to them
        self.table_schemas = {
            "concentration": TableSchema(
                ("seed", "state", "site", "depth", "rel_depth", "site_kind", "gini", "top_k",
                 "top_k_share", "norm_entropy"),
                ("top_k_channels", "gini_raw", "gini_corrected", "top_k_share_raw",
                 "top_k_share_corrected", "norm_entropy_raw", "norm_entropy_corrected",
                 "gini_signal", "top_k_share_signal", "norm_entropy_signal",
                 "mass_kind", "corrected_kind", "total_i_ty", "total_mass_corrected",
                 "signal_channels", "signal_fraction", "signal_p", "has_signal", "channels"),
                open=bool(params.extra_metrics)),
            "channel_mass": TableSchema(tuple(SITE_COLUMNS) + ("rel_depth", "channel"),
                                        ("i_ty", "i_ty_corrected", "mass")),
            "concentration_delta": TableSchema(
                ("seed", "site", "depth", "rel_depth", "site_kind", "top_k"),
                tuple(f"delta_{m}{suffix}" for suffix in ("", "_raw", "_corrected", "_signal")
                      for m in METRIC_COLUMNS))}

    def plan(self, ctx: RunContext) -> Plan:
        for name in self.params.extra_metrics:  # unknown names fail before any training
            ctx.plugin("metrics", name)
        return seed_units(ctx)

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        from mi_probe.functional import concentration as C
        from mi_probe.functional.masses import SignalTest

        seed = unit_seed(unit)
        params = self.params
        extra_metrics = [ctx.plugin("metrics", name) for name in params.extra_metrics]
        corrected_kind = params.mass if params.mass != "raw" else "null_subtracted"
        rows, channels = [], []
        for state in params.states:
            # a capture over eval.stream_mb stays in the store and is read chunk by
            # chunk when the estimator streams; else it is held, and since no accuracy
            # is reported the forward pass may halt after the deepest site
            streamed = streamed_capture(ctx, seed, state) if streams(ctx.estimator) else None
            cap = streamed if streamed is not None else ctx.capture(seed, state,
                                                                    need_logits=False)
            for site in cap.sites:
                purpose = f"{state}/{site.name}"
                if streamed is not None:
                    corrected = channel_masses_streamed(
                        ctx, streamed.chunks(site.name), site.channels, cap.labels,
                        ctx.num_classes, corrected_kind, seed=seed, purpose=purpose,
                        null_draws=params.mass_null_draws)
                else:
                    corrected = channel_masses(ctx, cap.acts[site.name], cap.labels,
                                               ctx.num_classes, corrected_kind, seed=seed,
                                               purpose=purpose,
                                               null_draws=params.mass_null_draws)
                raw = corrected.raw
                # corrected kinds always carry their signal test (only raw has none)
                signal = cast(SignalTest, corrected.signal)
                raw_m = _metrics(raw, params.top_k)
                # the same measures over the channels that beat the null only
                signal_m = C.signal_measures(
                    C.signal_values(corrected.values, raw, signal.threshold),
                    params.top_k) if signal.has_signal else None
                corr_m = _metrics(corrected.values, params.top_k) if corrected.usable else None
                chosen_m = raw_m if params.mass == "raw" else corr_m
                chosen_values = raw if params.mass == "raw" else corrected.values
                extra: dict[str, Any] = {}
                for metric in extra_metrics:
                    for key, val in metric(chosen_values).items():
                        extra[key] = val if chosen_m is not None else None
                base = site_columns(seed, state, site)
                common = {
                    "mass_kind": params.mass, "corrected_kind": corrected_kind,
                    "total_i_ty": float(raw.clamp(min=0).sum()),
                    "total_mass_corrected": float(corrected.values.sum()),
                    "signal_channels": signal.signal_channels,
                    "signal_fraction": signal.signal_channels / max(1, site.channels),
                    "signal_p": signal.p_value,
                    "has_signal": signal.has_signal,
                    "channels": site.channels, **extra}
                for k in params.top_k:
                    row = {**base, "top_k": k, "top_k_channels": C.top_k_count(site.channels, k)}
                    for m in METRIC_COLUMNS:
                        key = m if m != "top_k_share" else f"top_k_share@{k}"
                        row[m] = None if chosen_m is None else chosen_m[key]
                        row[f"{m}_raw"] = raw_m[key]
                        row[f"{m}_corrected"] = None if corr_m is None else corr_m[key]
                        row[f"{m}_signal"] = None if signal_m is None else signal_m[key]
                    rows.append({**row, **common})
                channels.append(pl.DataFrame({
                    **{key: [val] * site.channels for key, val in base.items()},
                    "channel": list(range(site.channels)), "i_ty": raw.cpu().numpy(),
                    "i_ty_corrected": corrected.values.cpu().numpy(),
                    "mass": (C.mass(chosen_values).cpu().numpy() if chosen_m is not None
                             else [None] * site.channels)},
                    schema_overrides={"mass": pl.Float64}))
        floats = {c: pl.Float64 for m in METRIC_COLUMNS
                  for c in (m, f"{m}_corrected", f"{m}_signal")}
        return {"concentration": pl.DataFrame(rows, schema_overrides=floats,
                                              infer_schema_length=None),
                "channel_mass": pl.concat(channels)}

    def finalize(self, ctx, tables):
        conc = tables["concentration"]
        keys = with_rel_depth(["state", "site", "depth", "site_kind", "top_k"], conc)
        measured = [f"{m}{suffix}" for suffix in ("", "_raw", "_corrected", "_signal")
                    for m in METRIC_COLUMNS] + ["signal_fraction"]
        out = {"summary_concentration": aggregate_seeds(conc, keys, measured)}
        states = set(conc["state"].unique())
        if {TRAINED, RANDOM} <= states:
            idx = with_rel_depth(["seed", "site", "depth", "site_kind", "top_k"], conc)
            trained = conc.filter(pl.col("state") == TRAINED).select(idx + measured)
            random = conc.filter(pl.col("state") == RANDOM).select(idx + measured)
            delta = trained.join(random, on=idx, suffix="_random").with_columns(
                [(pl.col(m) - pl.col(f"{m}_random")).alias(f"delta_{m}") for m in measured]
            ).select(idx + [f"delta_{m}" for m in measured])
            out["concentration_delta"] = delta
            out["summary_concentration_delta"] = aggregate_seeds(
                delta, with_rel_depth(["site", "depth", "site_kind", "top_k"], delta),
                [f"delta_{m}" for m in measured])
        return out

    def figures(self, tables):
        import altair as alt

        from mi_probe.plugin import charts

        conc = tables["concentration"]
        first_k = conc["top_k"].min()
        one_k = conc.filter(pl.col("top_k") == first_k)
        figs = {
            "gini_by_depth": charts.by_depth(
                _raw_vs_corrected(one_k, "gini"), "gini", color="state", facet="masses",
                title="Gini of per-channel label-MI mass by depth: raw plug-in vs "
                      "bias-corrected (missing where no channel beats the null)",
                y_title="Gini"),
            "norm_entropy_by_depth": charts.by_depth(
                _raw_vs_corrected(one_k, "norm_entropy"), "norm_entropy", color="state",
                facet="masses", title="Normalised entropy of channel mass: raw vs corrected",
                y_title="H(p) / log C"),
            "top_k_share_by_depth": charts.by_depth(conc, "top_k_share", color="state",
                                                    facet="top_k",
                                                    title="Top-k% share of label MI mass "
                                                    f"({conc['mass_kind'][0]} masses)",
                                                    y_title="share"),
        }
        if "concentration_delta" in tables:
            delta = tables["concentration_delta"].filter(pl.col("top_k") == first_k)
            long = delta.unpivot(index=["seed", "site", "depth", "site_kind"],
                                 on=["delta_gini", "delta_norm_entropy", "delta_top_k_share"],
                                 variable_name="metric", value_name="delta").drop_nulls("delta")
            figs["delta_by_depth"] = charts.by_depth(long.with_columns(state=pl.col("metric")),
                                                     "delta", color="state",
                                                     title="Trained − random, by depth",
                                                     y_title="trained − random")
        mass = tables.get("channel_mass")
        if mass is not None and mass.height:
            seed0 = mass.filter(pl.col("seed") == mass["seed"].min())
            # the states' fixed colours and order, as in every other chart
            state_color = charts.color_encoding(seed0["state"], "state")
            figs["channel_mi_distribution"] = alt.Chart(alt.InlineData(
                values=seed0.select("state", "depth", "site", "i_ty").to_dicts())).mark_boxplot(
                extent="min-max").encode(
                x=alt.X("depth", type="ordinal", title="depth"),
                y=alt.Y("i_ty", type="quantitative", title="I(T_c;Y) [nats]"),
                color=state_color,
                xOffset=alt.XOffset("state", type="nominal",
                                    sort=charts.series_order(seed0["state"]))).properties(
                title="Per-channel label MI by depth (first seed)", width=600)
        return figs


def _raw_vs_corrected(frame: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Rows of ``metric_raw`` and ``metric_corrected`` in one column, told apart by
    ``masses``; rows where the corrected value is missing (no signal) are dropped."""
    index = ["seed", "state", "site", "depth", "site_kind"]
    long = frame.select(index + [f"{metric}_raw", f"{metric}_corrected"]).unpivot(
        index=index, on=[f"{metric}_raw", f"{metric}_corrected"], variable_name="masses",
        value_name=metric)
    return long.with_columns(pl.col("masses").str.replace(f"{metric}_", "")).drop_nulls(metric)


@hookimpl
def mi_probe_register_experiments(register):
    register("concentration", ConcentrationExperiment, ConcentrationParams)
