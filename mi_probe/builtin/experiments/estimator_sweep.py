"""Built-in experiment ``estimator_sweep`` (App. F): the main MI quantities across bin
counts, bin ranges (min/max or quantile-clipped), binnings (uniform or equal-count) and
evaluation-set fractions, with the rank agreement of layers and channels against a
reference setting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Sequence

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mi_probe.builtin.experiments._depth import site_columns
from mi_probe.plugin import (
    hookimpl, Plan, prepare_site, RunContext, seed_units, SpecError, TableSchema,
    TRAINED, unit_seed)

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch

BinRange = Literal["minmax", "quantile"]
Binning = Literal["uniform", "equal_count"]


class EstimatorSweepParams(BaseModel):
    """Robustness of the MI quantities to the bin count, the bin range and the sample size."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["estimator_sweep"] = "estimator_sweep"
    states: list[Literal["trained", "random"]] = Field([TRAINED], min_length=1)
    bins: list[int] = Field([10, 20, 30, 50], min_length=1)
    fractions: list[float] = Field([0.25, 0.5, 1.0], min_length=1,
                                   description="fractions of the evaluation set (random subsets)")
    ranges: list[BinRange] | None = Field(
        None, min_length=1, description="bin ranges to sweep (the estimator's range "
        "parameter; quantile uses its range_quantile). Default: [minmax, quantile] when the "
        "estimator has a range parameter (the histogram does), else its own binning only "
        "(range column null)")
    reference_bins: int = Field(20, ge=2)
    reference_fraction: float = Field(1.0, gt=0, le=1)
    reference_range: BinRange = Field("minmax", description="the range of the reference "
                                      "setting (ignored for estimators without a range)")
    binnings: list[Binning] | None = Field(
        None, min_length=1, description="binnings to sweep (the estimator's binning "
        "parameter): uniform bins over the range, or equal_count bins at each channel's "
        "quantiles (no range applies: one setting per bin count, range column null). "
        "Default: the estimator's own binning only")
    reference_binning: Binning = Field("uniform", description="the binning of the reference "
                                       "setting (ignored for estimators without a binning)")

    @field_validator("bins")
    @classmethod
    def _bins(cls, value):
        if any(b < 2 for b in value):
            raise ValueError(f"bin counts must be >= 2, got {value}")
        return value

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, value):
        if any(not 0 < f <= 1 for f in value):
            raise ValueError(f"fractions must lie in (0, 1], got {value}")
        return value

    @field_validator("ranges", "binnings")
    @classmethod
    def _distinct(cls, value, info):
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"{info.field_name} must be distinct, got {value}")
        return value


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman rank correlation (None when either side is constant or too short)."""
    from scipy.stats import spearmanr

    a_np, b_np = a.detach().cpu().double().numpy(), b.detach().cpu().double().numpy()
    if len(a_np) < 3 or a_np.std() == 0 or b_np.std() == 0:
        return None
    return float(spearmanr(a_np, b_np).statistic)


#: The tables a run writes (``interfaces.DeclaresTables``): required columns, then
#: those that appear with some settings.
TABLE_SCHEMAS = {
    "estimator_sweep": TableSchema(
        ("seed", "state", "site", "depth", "rel_depth", "site_kind", "bins", "range", "fraction",
         "n_samples", "i_ty"),
        ("i_xt", "i_ty_bias", "binning")),
    "estimator_sweep_agreement": TableSchema(
        ("seed", "state", "bins", "range", "fraction", "n_samples"),
        ("comparison", "layer_rank_spearman", "channel_rank_spearman", "binning")),
}


class EstimatorSweep:
    name = "estimator_sweep"
    table_schemas = TABLE_SCHEMAS

    def __init__(self, params: EstimatorSweepParams):
        self.params = params
        if params.reference_bins not in params.bins or \
                params.reference_fraction not in params.fractions:
            raise SpecError(f"experiment.reference_bins/reference_fraction "
                            f"({params.reference_bins}, {params.reference_fraction}) must be "
                            f"in bins {params.bins} and fractions {params.fractions}")

    def plan(self, ctx: RunContext) -> Plan:
        base = ctx.spec.estimator.model_dump(mode="json")
        if "bins" not in base:
            raise SpecError(f"estimator_sweep varies the bin count; estimator "
                            f"{base['kind']!r} has no bins parameter")
        p = self.params
        ranges: Sequence[str | None]
        if "range" in base:
            ranges = p.ranges or ["minmax", "quantile"]
            if p.reference_range not in ranges:
                raise SpecError(f"experiment.reference_range ({p.reference_range!r}) must be "
                                f"in ranges {ranges}")
            reference_range = p.reference_range
        elif p.ranges is not None:
            raise SpecError(f"estimator_sweep.ranges varies the bin range; estimator "
                            f"{base['kind']!r} has no range parameter (leave ranges unset)")
        else:
            ranges, reference_range = [None], None
        binnings, reference_binning = self._binnings(base)
        if reference_binning == "equal_count":
            reference_range = None  # equal-count bins have no range
        # every (bins, binning, range) estimator's params; None = the estimator's own
        grid = []
        for b in p.bins:
            for binning in binnings:
                # equal-count edges are quantiles: no range applies, one setting per count
                for r in ranges if binning != "equal_count" else [None]:
                    params = {**base, "bins": b, **({"range": r} if r is not None else {})}
                    if binning is not None:
                        params["binning"] = binning
                    if binning == "equal_count" and "range" in base:
                        params["range"] = "minmax"
                    ctx.plugin("estimators", params.pop("kind"), **params)  # refuse bad values
                    grid.append({"bins": b, "range": r, "binning": binning,
                                 "params": {**params, "kind": base["kind"]}})
        return seed_units(ctx, grid=grid, reference_range=reference_range,
                          reference_binning=reference_binning)

    def _binnings(self, base: dict[str, Any]) -> tuple[Sequence[str | None], str | None]:
        """The binnings to sweep and the reference's: the estimator's own binning only
        when ``binnings`` is unset (then it is the reference), [None] for an estimator
        without a binning parameter."""
        p = self.params
        if "binning" not in base:
            if p.binnings is not None:
                raise SpecError(f"estimator_sweep.binnings varies the binning; estimator "
                                f"{base['kind']!r} has no binning parameter (leave binnings "
                                f"unset)")
            return [None], None
        if p.binnings is None:
            return [base["binning"]], base["binning"]
        if p.reference_binning not in p.binnings:
            raise SpecError(f"experiment.reference_binning ({p.reference_binning!r}) must be "
                            f"in binnings {p.binnings}")
        return p.binnings, p.reference_binning

    @staticmethod
    def _estimators(ctx: RunContext, plan: Plan) -> dict[tuple, Any]:
        """(bins, range, binning) -> estimator, built from the plan's grid."""
        out = {}
        for entry in plan.settings["grid"]:
            params = dict(entry["params"])
            # plans made before binnings existed have no binning key
            key = (entry["bins"], entry["range"], entry.get("binning"))
            out[key] = ctx.plugin("estimators", params.pop("kind"), **params)
        return out

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        import torch

        seed = unit_seed(unit)
        rows, agreement = [], []
        estimators = self._estimators(ctx, plan)
        ref_key = (self.params.reference_bins, plan.settings["reference_range"],
                   plan.settings.get("reference_binning"), self.params.reference_fraction)
        for state in self.params.states:
            # no accuracy here: the forward pass may halt after the deepest site
            cap = ctx.capture(seed, state, need_logits=False)
            n = int(cap.labels.numel())
            # keyed by (bins, range, binning, fraction)
            channel_values: dict[tuple, dict[str, torch.Tensor]] = {}
            layer_values: dict[tuple, torch.Tensor] = {}
            for fraction in self.params.fractions:
                size = max(2, round(fraction * n))
                idx = torch.randperm(n, generator=ctx.rng(seed, f"sweep/{state}/{fraction}"))[:size]
                idx = idx.sort().values.to(cap.labels.device)
                labels = cap.labels[idx]
                for (b, r, binning), est in estimators.items():
                    per_site = {}
                    for site in cap.sites:
                        prepared = prepare_site(est, cap.acts[site.name][idx])
                        i_ty_c = prepared.label_mi(labels, ctx.num_classes)
                        i_xt_c = prepared.input_mi()  # the histogram: from the same count
                        per_site[site.name] = i_ty_c
                        rows.append({**site_columns(seed, state, site), "bins": b, "range": r,
                                     "binning": binning, "fraction": fraction,
                                     "n_samples": size,
                                     "i_xt": i_xt_c.mean().item() if i_xt_c is not None else None,
                                     "i_ty": i_ty_c.mean().item(),
                                     "i_ty_bias": est.bias(size, ctx.num_classes)})
                    channel_values[(b, r, binning, fraction)] = per_site
                    layer_values[(b, r, binning, fraction)] = torch.stack(
                        [v.mean() for v in per_site.values()])
            # agreement: never the reference with itself (rho = 1 by construction).
            # Binning rows: another (bins, range, binning) on the reference's samples.
            for key, per_site in channel_values.items():
                if key[3] != self.params.reference_fraction or key == ref_key:
                    continue
                agreement.append(self._agreement(
                    seed, state, key, "binning", max(2, round(key[3] * n)),
                    (per_site, layer_values[key]),
                    (channel_values[ref_key], layer_values[ref_key]), cap.sites))
            # sample-size rows: two disjoint subsamples of the same size, with the
            # reference estimator (overlapping samples would agree by sharing images)
            reference = estimators[ref_key[:3]]
            for fraction in self.params.fractions:
                size = max(2, round(fraction * n))
                if 2 * size > n:
                    continue
                perm = torch.randperm(n, generator=ctx.rng(seed, f"sweep-disjoint/{state}/"
                                                                 f"{fraction}"))
                halves = []
                for part in (perm[:size], perm[size:2 * size]):
                    idx = part.sort().values.to(cap.labels.device)
                    per_site = {site.name: prepare_site(reference, cap.acts[site.name][idx])
                                .label_mi(cap.labels[idx], ctx.num_classes)
                                for site in cap.sites}
                    halves.append((per_site, torch.stack([v.mean() for v in per_site.values()])))
                agreement.append(self._agreement(
                    seed, state, (*ref_key[:3], fraction), "disjoint_subsamples", size,
                    halves[0], halves[1], cap.sites))
        return {"estimator_sweep": pl.DataFrame(rows, schema_overrides={
                    "i_xt": pl.Float64, "range": pl.Utf8, "binning": pl.Utf8}),
                "estimator_sweep_agreement": pl.DataFrame(agreement, schema_overrides={
                    "layer_rank_spearman": pl.Float64, "channel_rank_spearman": pl.Float64,
                    "range": pl.Utf8, "binning": pl.Utf8})}

    @staticmethod
    def _agreement(seed: int, state: str, key: tuple, comparison: str, n_samples: int,
                   these: tuple[dict[str, torch.Tensor], torch.Tensor],
                   others: tuple[dict[str, torch.Tensor], torch.Tensor], sites) -> dict:
        """Rank agreement of layers (by mean I(T;Y)) and of channels (per site, averaged)
        between two measurements."""
        rank_corrs = [spearman(these[0][s.name], others[0][s.name]) for s in sites]
        chan = [c for c in rank_corrs if c is not None]
        return {"seed": seed, "state": state, "bins": key[0], "range": key[1],
                "binning": key[2], "fraction": key[3], "n_samples": n_samples,
                "comparison": comparison,
                "layer_rank_spearman": spearman(these[1], others[1]),
                "channel_rank_spearman": sum(chan) / len(chan) if chan else None}

    def finalize(self, ctx, tables):
        from mi_probe.plugin import aggregate_seeds

        agree = _with_setting(tables["estimator_sweep_agreement"])
        return {"summary_estimator_sweep_agreement": aggregate_seeds(
            agree,  # each column counts its own non-null seeds (<value>_n)
            ["state", "comparison", "bins", "range", "binning", "fraction"],
            ["layer_rank_spearman", "channel_rank_spearman"])}

    def figures(self, tables):
        from mi_probe.plugin import charts

        sweep = _with_setting(tables["estimator_sweep"])
        p = self.params
        # the reference binning: the only one swept, or reference_binning; None for an
        # estimator without one (binning column null)
        binnings = sweep["binning"].drop_nulls().unique()
        ref_binning = (None if binnings.is_empty() else binnings.item()
                       if binnings.len() == 1 else p.reference_binning)
        # the reference range, or None for an estimator without one and for equal-count
        # bins (range column null)
        ref_range = (p.reference_range if sweep["range"].null_count() < sweep.height
                     and ref_binning != "equal_count" else None)
        at_ref_range = (pl.col("range").eq_missing(pl.lit(ref_range, dtype=pl.Utf8))
                        & pl.col("binning").eq_missing(pl.lit(ref_binning, dtype=pl.Utf8)))
        by_bins = sweep.filter(at_ref_range & (pl.col("fraction") == p.reference_fraction)
                               ).with_columns(series=pl.format("{} bins", pl.col("bins")))
        by_frac = sweep.filter(at_ref_range & (pl.col("bins") == p.reference_bins)
                               ).with_columns(series=pl.format("{} samples", pl.col("n_samples")))
        agree = _with_setting(tables["estimator_sweep_agreement"]).drop_nulls(
            "layer_rank_spearman")
        range_note = (f", {ref_range} range" if ref_range else "") + \
            (f", {ref_binning} bins" if ref_binning == "equal_count" else "")
        # one panel (or heatmap) per state: trained and random values are never averaged
        figs = {
            "sweep_i_ty_by_bins": charts.by_depth(by_bins, "i_ty", color="series",
                                                  facet="state",
                                                  title=f"I(T;Y) by depth for each bin "
                                                        f"count{range_note}",
                                                  y_title="I(T;Y) [nats]"),
            "sweep_i_ty_by_samples": charts.by_depth(by_frac, "i_ty", color="series",
                                                     facet="state",
                                                     title=f"I(T;Y) by depth for each sample "
                                                           f"size ({p.reference_bins} bins"
                                                           f"{range_note})",
                                                     y_title="I(T;Y) [nats]"),
        }
        by_range = sweep.filter((pl.col("bins") == p.reference_bins)
                                & (pl.col("fraction") == p.reference_fraction)
                                ).drop_nulls("range")
        if by_range["range"].n_unique() > 1:
            for value, name in (("i_xt", "I(X;T)"), ("i_ty", "I(T;Y)")):
                part = by_range.drop_nulls(value)
                if part.height:
                    figs[f"sweep_{value}_by_range"] = charts.by_depth(
                        part, value, color="range", facet="state",
                        y_title=f"{name} [nats]",
                        title=f"{name} by depth, min/max vs quantile-clipped bin range "
                              f"({p.reference_bins} bins)")
        at_ref = sweep.filter((pl.col("bins") == p.reference_bins)
                              & (pl.col("fraction") == p.reference_fraction))
        if at_ref["binning"].drop_nulls().n_unique() > 1:
            at_ref = at_ref.with_columns(setting=_setting_label())
            for value, name in (("i_xt", "I(X;T)"), ("i_ty", "I(T;Y)")):
                part = at_ref.drop_nulls(value)
                if part.height:
                    figs[f"sweep_{value}_by_binning"] = charts.by_depth(
                        part, value, color="setting", facet="state",
                        y_title=f"{name} [nats]",
                        title=f"{name} by depth, uniform vs equal-count bins "
                              f"({p.reference_bins} bins; equal-count I(X;T) is about "
                              f"log B by construction)")
        for state in agree["state"].unique().sort():
            part = agree.filter(pl.col("state") == state)
            if "comparison" in part.columns:  # runs before disjoint subsamples had none
                part = part.with_columns(pl.format(
                    "{} ({})", pl.col("comparison"), _setting_label()).alias("comparison"))
            else:
                part = part.with_columns(comparison=pl.lit("vs reference"))
            figs[f"sweep_layer_rank_agreement_{state}"] = charts.heatmap(
                part.with_columns(setting=pl.format("{} bins, {} of the set",
                                                    pl.col("bins"), pl.col("fraction"))),
                x="setting", y="comparison", value="layer_rank_spearman",
                value_title="Spearman",
                title=f"Rank agreement of layers, {state}: other binnings vs the reference "
                      f"on the same images; disjoint subsamples vs each other")
        return figs


def _with_setting(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with ``range`` and ``binning`` columns (null in tables written before
    ranges or binnings existed)."""
    for column in ("range", "binning"):
        if column not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Utf8).alias(column))
    return frame


def _setting_label() -> pl.Expr:
    """A row's binning in words: ``equal_count``, else its range (``own`` when the
    estimator has neither)."""
    return pl.coalesce(pl.when(pl.col("binning") == "equal_count").then(pl.col("binning")),
                       pl.col("range"), pl.col("binning"), pl.lit("own"))


@hookimpl
def mi_probe_register_experiments(register):
    register("estimator_sweep", EstimatorSweep, EstimatorSweepParams)
