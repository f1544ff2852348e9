"""Built-in estimator studies:

* ``layer_pairs`` (paper Fig. 2): the layer–layer MI matrix I(T_l;T_m) = mean over
  channel pairs (c in l, d in m) of the binned pair MI, trained and random; with l = m
  the mean over c ≠ d (inter-channel MI within a layer).
* ``estimator_sweep`` (App. F): the main MI quantities across bin counts and
  evaluation-set fractions, with the rank agreement of layers and channels against a
  reference setting.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mi_probe.analysis import seed_units, site_row, unit_seed
from mi_probe.errors import SpecError
from mi_probe.hookspecs import hookimpl
from mi_probe.interfaces import RANDOM, TRAINED, RunContext


class LayerPairsParams(BaseModel):
    """Layer–layer MI matrix (mean pair MI over channel pairs)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["layer_pairs"] = "layer_pairs"
    states: list[Literal["trained", "random"]] = Field([TRAINED, RANDOM], min_length=1)
    max_channels: int | None = Field(
        128, ge=2, description="use a random subset of at most this many channels per site "
        "(the same subset for every pair; None: all channels). The mean over the subset's "
        "pairs estimates the mean over all pairs")


class LayerPairs:
    name = "layer_pairs"

    def __init__(self, params: LayerPairsParams):
        self.params = params

    def units(self, ctx: RunContext) -> list[str]:
        if not hasattr(ctx.estimator, "pair_mi"):
            raise SpecError(f"layer_pairs needs an estimator with pair_mi; "
                            f"{ctx.estimator.name!r} has none")
        return seed_units(ctx)

    def run_unit(self, ctx: RunContext, unit: str) -> dict[str, pl.DataFrame]:
        seed = unit_seed(unit)
        rows = []
        for state in self.params.states:
            cap = ctx.capture(seed, state)
            chosen = {}
            for site in cap.sites:
                acts = cap.acts[site.name]
                limit = self.params.max_channels
                if limit is not None and site.channels > limit:
                    keep = torch.randperm(site.channels, generator=ctx.rng(seed, f"pairs/{site.name}"))
                    acts = acts[:, keep[:limit].sort().values.to(acts.device)]
                chosen[site.name] = acts
            ctx.progress(f"seed {seed}: {state} layer pairs over {len(cap.sites)} sites")
            for i, a in enumerate(cap.sites):
                for b in cap.sites[i:]:
                    mi = ctx.estimator.pair_mi(chosen[a.name], chosen[b.name])
                    if a.name == b.name:
                        off = ~torch.eye(mi.shape[0], dtype=torch.bool, device=mi.device)
                        value, n_pairs = mi[off].mean().item(), int(off.sum().item())
                    else:
                        value, n_pairs = mi.mean().item(), mi.numel()
                    for x, y in ((a, b), (b, a)) if a.name != b.name else ((a, b),):
                        rows.append({**site_row(seed, state, x), "site_b": y.name,
                                     "depth_b": y.depth, "site_kind_b": y.kind, "mi": value,
                                     "n_pairs": n_pairs})
        return {"layer_pairs": pl.DataFrame(rows)}

    def finalize(self, ctx, tables):
        from mi_probe.tables import aggregate_seeds

        frame = tables["layer_pairs"]
        out = {"summary_layer_pairs": aggregate_seeds(
            frame, ["state", "site", "depth", "site_b", "depth_b"], ["mi"])}
        if {TRAINED, RANDOM} <= set(frame["state"].unique()):
            keys = ["seed", "site", "depth", "site_b", "depth_b"]
            delta = frame.filter(pl.col("state") == TRAINED).select(keys + ["mi"]).join(
                frame.filter(pl.col("state") == RANDOM).select(keys + ["mi"]), on=keys,
                suffix="_random").with_columns(delta_mi=pl.col("mi") - pl.col("mi_random"))
            out["layer_pairs_delta"] = delta
        return out

    def figures(self, tables):
        from mi_probe import report

        frame = tables["layer_pairs"]
        order = frame.select("site", "depth").unique().sort("depth")["site"].to_list()
        figs = {}
        for state in frame["state"].unique().sort():
            part = frame.filter(pl.col("state") == state)
            figs[f"layer_pairs_{state}"] = report.heatmap(
                part, x="site_b", y="site", value="mi", value_title="I(T_l;T_m) [nats]",
                title=f"Layer–layer MI, {state} (mean pair MI)", x_sort=order, y_sort=order)
        if "layer_pairs_delta" in tables:
            figs["layer_pairs_delta"] = report.heatmap(
                tables["layer_pairs_delta"], x="site_b", y="site", value="delta_mi",
                value_title="trained − random [nats]", title="Layer–layer MI, trained − random",
                x_sort=order, y_sort=order)
        return figs


class EstimatorSweepParams(BaseModel):
    """Robustness of the MI quantities to the bin count and the sample size."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["estimator_sweep"] = "estimator_sweep"
    states: list[Literal["trained", "random"]] = Field([TRAINED], min_length=1)
    bins: list[int] = Field([10, 20, 30, 50], min_length=1)
    fractions: list[float] = Field([0.25, 0.5, 1.0], min_length=1,
                                   description="fractions of the evaluation set (random subsets)")
    reference_bins: int = Field(20, ge=2)
    reference_fraction: float = Field(1.0, gt=0, le=1)

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


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman rank correlation (None when either side is constant or too short)."""
    from scipy.stats import spearmanr

    a_np, b_np = a.detach().cpu().double().numpy(), b.detach().cpu().double().numpy()
    if len(a_np) < 3 or a_np.std() == 0 or b_np.std() == 0:
        return None
    return float(spearmanr(a_np, b_np).statistic)


class EstimatorSweep:
    name = "estimator_sweep"

    def __init__(self, params: EstimatorSweepParams):
        self.params = params
        if params.reference_bins not in params.bins or \
                params.reference_fraction not in params.fractions:
            raise SpecError(f"experiment.reference_bins/reference_fraction "
                            f"({params.reference_bins}, {params.reference_fraction}) must be "
                            f"in bins {params.bins} and fractions {params.fractions}")

    def units(self, ctx: RunContext) -> list[str]:
        base = ctx.spec.estimator.model_dump()
        if "bins" not in base:
            raise SpecError(f"estimator_sweep varies the bin count; estimator "
                            f"{base['kind']!r} has no bins parameter")
        self._estimators = {}
        for b in self.params.bins:
            params = {k: v for k, v in base.items() if k != "kind"}
            params["bins"] = b
            self._estimators[b] = ctx.plugin("estimators", base["kind"], **params)
        return seed_units(ctx)

    def run_unit(self, ctx: RunContext, unit: str) -> dict[str, pl.DataFrame]:
        seed = unit_seed(unit)
        rows, agreement = [], []
        ref_key = (self.params.reference_bins, self.params.reference_fraction)
        for state in self.params.states:
            cap = ctx.capture(seed, state)
            n = int(cap.labels.numel())
            channel_values: dict[tuple[int, float], dict[str, torch.Tensor]] = {}
            layer_values: dict[tuple[int, float], torch.Tensor] = {}
            for fraction in self.params.fractions:
                size = max(2, round(fraction * n))
                idx = torch.randperm(n, generator=ctx.rng(seed, f"sweep/{state}/{fraction}"))[:size]
                idx = idx.sort().values.to(cap.labels.device)
                labels = cap.labels[idx]
                for b, est in self._estimators.items():
                    per_site = {}
                    for site in cap.sites:
                        acts = cap.acts[site.name][idx]
                        i_ty_c = est.label_mi(acts, labels, ctx.num_classes)
                        i_xt_c = est.input_mi(acts)
                        per_site[site.name] = i_ty_c
                        rows.append({**site_row(seed, state, site), "bins": b,
                                     "fraction": fraction, "n_samples": size,
                                     "i_xt": i_xt_c.mean().item() if i_xt_c is not None else None,
                                     "i_ty": i_ty_c.mean().item(),
                                     "i_ty_bias": est.bias(size, ctx.num_classes)})
                    channel_values[(b, fraction)] = per_site
                    layer_values[(b, fraction)] = torch.stack([v.mean() for v in per_site.values()])
            for key, per_site in channel_values.items():
                chan = [spearman(per_site[s.name], channel_values[ref_key][s.name])
                        for s in cap.sites]
                chan = [c for c in chan if c is not None]
                agreement.append({"seed": seed, "state": state, "bins": key[0],
                                  "fraction": key[1], "n_samples": max(2, round(key[1] * n)),
                                  "layer_rank_spearman": spearman(layer_values[key],
                                                                  layer_values[ref_key]),
                                  "channel_rank_spearman": (sum(chan) / len(chan) if chan
                                                            else None)})
        return {"estimator_sweep": pl.DataFrame(rows, schema_overrides={"i_xt": pl.Float64}),
                "estimator_sweep_agreement": pl.DataFrame(agreement, schema_overrides={
                    "layer_rank_spearman": pl.Float64, "channel_rank_spearman": pl.Float64})}

    def finalize(self, ctx, tables):
        from mi_probe.tables import aggregate_seeds

        return {"summary_estimator_sweep_agreement": aggregate_seeds(
            tables["estimator_sweep_agreement"].drop_nulls(), ["state", "bins", "fraction"],
            ["layer_rank_spearman", "channel_rank_spearman"])}

    def figures(self, tables):
        from mi_probe import report

        sweep = tables["estimator_sweep"]
        p = self.params
        by_bins = sweep.filter(pl.col("fraction") == p.reference_fraction).with_columns(
            series=pl.format("{} bins", pl.col("bins")))
        by_frac = sweep.filter(pl.col("bins") == p.reference_bins).with_columns(
            series=pl.format("{} samples", pl.col("n_samples")))
        agree = tables["estimator_sweep_agreement"].drop_nulls("layer_rank_spearman")
        figs = {
            "sweep_i_ty_by_bins": report.by_depth(by_bins, "i_ty", color="series",
                                                  title="I(T;Y) by depth for each bin count",
                                                  y_title="I(T;Y) [nats]"),
            "sweep_i_ty_by_samples": report.by_depth(by_frac, "i_ty", color="series",
                                                     title=f"I(T;Y) by depth for each sample "
                                                           f"size ({p.reference_bins} bins)",
                                                     y_title="I(T;Y) [nats]"),
        }
        if agree.height:
            figs["sweep_layer_rank_agreement"] = report.heatmap(
                agree, x="bins", y="fraction", value="layer_rank_spearman",
                value_title="Spearman vs reference",
                title="Rank agreement of layers with the reference setting")
        return figs


@hookimpl
def mi_probe_register_experiments(register):
    register("layer_pairs", LayerPairs, LayerPairsParams)
    register("estimator_sweep", EstimatorSweep, EstimatorSweepParams)
