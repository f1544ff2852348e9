"""Built-in experiment ``layer_pairs`` (paper Fig. 2): the layer–layer MI matrix
I(T_l;T_m) = mean over channel pairs (c in l, d in m) of the binned pair MI, trained and
random; with l = m the mean over c ≠ d (inter-channel MI within a layer). Beside it, the
same mean with the samples of one layer permuted (the plug-in floor of independent
layers) and the value above that floor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Mapping, cast

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from mi_probe.builtin.experiments._depth import selected_rank, site_columns, with_rel_depth
from mi_probe.plugin import (
    hookimpl, PairMI, Plan, RANDOM, RunContext, RunError, seed_units, SpecError,
    streamed_capture, streams, Streams, TableSchema, TRAINED, unit_seed)

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch


class LayerPairsParams(BaseModel):
    """Layer–layer MI matrix (mean pair MI over channel pairs)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["layer_pairs"] = "layer_pairs"
    states: list[Literal["trained", "random"]] = Field([TRAINED, RANDOM], min_length=1)
    max_channels: int | None = Field(
        128, ge=2, description="use a random subset of at most this many channels per site "
        "(the same subset for every pair; None: all channels). The mean over the subset's "
        "pairs estimates the mean over all pairs")
    null_draws: int = Field(
        1, ge=0, le=100, description="row permutations of one layer per layer pair and state: "
        "the same mean pair MI with the samples' pairing broken, i.e. the plug-in floor of "
        "independent layers (mi_null; mi_null_sd needs >= 2 draws; mi_excess = mi - "
        "mi_null). Each draw costs as much as the estimate itself; 0 turns the null off")


#: What the layer–layer quantity can and cannot show, as subtitle lines (figures) that
#: the report notes join into sentences.
PAIRS_CAN = ("Shows: which layer pairs depend on each other more than the plug-in floor,",
             "relative to other pairs and trained vs random "
             "(mi_excess = mi − row-permuted null).")
PAIRS_CANNOT = ("Cannot show: an absolute MI. Each pair is capped at log B and biased up by about",
                "(B−1)²/2N (the null measures it); the mean over channel pairs mixes many weak "
                "pairs with few strong ones.")


def mean_pair_mi(mi: torch.Tensor, same_site: bool) -> tuple[float, int]:
    """Mean of a (C1, C2) pair-MI matrix and its pair count; within one site the
    diagonal (a channel with itself: its entropy) is left out."""
    import torch

    if same_site:
        off = ~torch.eye(mi.shape[0], dtype=torch.bool, device=mi.device)
        return mi[off].mean().item(), int(off.sum().item())
    return mi.mean().item(), mi.numel()


#: The tables a run writes (``interfaces.DeclaresTables``): required columns, then
#: those that appear with some settings.
TABLE_SCHEMAS = {
    "layer_pairs": TableSchema(
        ("seed", "state", "site", "depth", "rel_depth", "site_kind", "site_b", "depth_b",
         "rel_depth_b", "mi"),
        ("site_kind_b", "mi_null", "mi_null_sd", "mi_excess", "mi_bias", "n_pairs",
         "n_samples", "distance", "pair_rank")),
    "layer_pairs_delta": TableSchema(
        ("seed", "site", "depth", "rel_depth", "site_b", "depth_b", "rel_depth_b"),
        ("mi", "mi_excess", "mi_random", "mi_excess_random", "delta_mi", "delta_mi_excess")),
}


class LayerPairs:
    name = "layer_pairs"
    table_schemas = TABLE_SCHEMAS

    def __init__(self, params: LayerPairsParams):
        self.params = params

    def check_spec(self, spec: Any, estimator: Any) -> None:
        if not isinstance(estimator, PairMI):
            raise SpecError(f"layer_pairs needs an estimator with pair_mi; "
                            f"{estimator.name!r} has none")

    def plan(self, ctx: RunContext) -> Plan:
        return seed_units(ctx)

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        import torch

        from mi_probe.functional.histogram import plugin_bias

        seed = unit_seed(unit)
        est = ctx.estimator
        pair_est = cast(PairMI, est)  # check_spec refused an estimator without pair_mi
        bins = est.describe().get("bins")
        rows = []
        for state in self.params.states:
            # a capture over eval.stream_mb stays in the activation store: only each
            # site's chosen channels are read from it, or, without a null and with an
            # estimator that streams, none are held (pair MI counted chunk by chunk).
            # Held in memory it may halt after the deepest site (no accuracy here)
            streamed = streamed_capture(ctx, seed, state)
            cap = streamed if streamed is not None else ctx.capture(seed, state,
                                                                    need_logits=False)
            n = int(cap.labels.numel())
            # first-order plug-in bias of one pair's MI: (B-1)^2 / 2N for fully used bins
            bias = plugin_bias(bins, bins, n) if isinstance(bins, int) else None
            columns = {site.name: self._columns(ctx, seed, site) for site in cap.sites}
            chosen: dict[str, Any] = {}
            stream_pairs = (streamed is not None and self.params.null_draws == 0
                            and streams(est))
            for site in cap.sites:
                cols = columns[site.name]
                if streamed is None:
                    acts = cap.acts[site.name]
                    chosen[site.name] = acts if cols is None else acts[:, cols.to(acts.device)]
                    continue
                chunks = _column_chunks(streamed.chunks(site.name), cols)
                width = site.channels if cols is None else int(cols.numel())
                if stream_pairs:  # the estimator's streamed state, never the matrix
                    chosen[site.name] = cast(Streams, est).prepare_stream(chunks, n, width)
                else:  # the chosen channels only: N x max_channels, not N x C
                    chosen[site.name] = _gather(chunks, n, width)

            ctx.progress(f"seed {seed}: {state} layer pairs over {len(cap.sites)} sites")
            # distance counts selected sites apart (adjacent selected sites: 1), as it did
            # when depth numbered the selected sites; depth is now the model's own index
            rank = selected_rank(cap.sites)
            for i, a in enumerate(cap.sites):
                for b in cap.sites[i:]:
                    same = a.name == b.name
                    acts_a, acts_b = chosen[a.name], chosen[b.name]
                    value, n_pairs = mean_pair_mi(
                        cast(Streams, est).pair_mi_streamed(acts_a, acts_b) if stream_pairs
                        else pair_est.pair_mi(acts_a, acts_b), same)
                    # null: a's rows permuted, so every pair keeps its marginals but loses
                    # the pairing of samples; its mean pair MI is the floor of the estimate
                    nulls = []
                    for d in range(self.params.null_draws):  # never streamed (see above)
                        perm = torch.randperm(n, generator=ctx.rng(
                            seed, f"pairs-null/{state}/{a.name}/{b.name}/{d}")).to(acts_a.device)
                        nulls.append(mean_pair_mi(pair_est.pair_mi(acts_a[perm], acts_b), same)[0])
                    null = sum(nulls) / len(nulls) if nulls else None
                    null_sd = (torch.tensor(nulls, dtype=torch.float64).std().item()
                               if len(nulls) > 1 else None)
                    for x, y in ((a, b), (b, a)) if not same else ((a, b),):
                        rows.append({**site_columns(seed, state, x), "site_b": y.name,
                                     "depth_b": y.depth, "rel_depth_b": y.rel_depth,
                                     "site_kind_b": y.kind, "mi": value,
                                     "mi_null": null, "mi_null_sd": null_sd,
                                     "mi_excess": value - null if null is not None else None,
                                     "mi_bias": bias, "n_pairs": n_pairs, "n_samples": n,
                                     "distance": abs(rank[y.name] - rank[x.name])})
        floats = {c: pl.Float64 for c in ("mi_null", "mi_null_sd", "mi_excess", "mi_bias")}
        frame = pl.DataFrame(rows, schema_overrides=floats)
        # rank of each pair of distinct sites by MI within a seed and state (1 = the
        # largest; both orientations of a pair share it); the diagonal has none
        off = pl.col("distance") > 0
        return {"layer_pairs": frame.with_columns(pair_rank=pl.when(off).then(
            pl.when(off).then(pl.col("mi")).otherwise(None)
            .rank("dense", descending=True).over(["seed", "state"])))}

    def _columns(self, ctx: RunContext, seed: int, site: Any) -> torch.Tensor | None:
        """The sorted random subset of ``max_channels`` channels of ``site`` (the same
        for both states and every pair), or None for all of them."""
        import torch

        limit = self.params.max_channels
        if limit is None or site.channels <= limit:
            return None
        keep = torch.randperm(site.channels, generator=ctx.rng(seed, f"pairs/{site.name}"))
        return keep[:limit].sort().values

    def finalize(self, ctx, tables):
        from mi_probe.plugin import aggregate_seeds

        frame = tables["layer_pairs"]
        values = ["mi"] + (["mi_null", "mi_excess"] if _has_null(frame) else [])
        pair = with_rel_depth(with_rel_depth(["site", "depth", "site_b", "depth_b"], frame),
                              frame, after="depth_b", column="rel_depth_b")
        out = {"summary_layer_pairs": aggregate_seeds(frame, ["state", *pair], values)}
        if {TRAINED, RANDOM} <= set(frame["state"].unique()):
            keys = ["seed", *pair]
            both = ["mi", "mi_excess"] if "mi_excess" in frame.columns else ["mi"]
            delta = frame.filter(pl.col("state") == TRAINED).select(keys + both).join(
                frame.filter(pl.col("state") == RANDOM).select(keys + both), on=keys,
                suffix="_random").with_columns(
                    pl.col(v).sub(pl.col(f"{v}_random")).alias(f"delta_{v}") for v in both)
            out["layer_pairs_delta"] = delta
        return out

    def notes(self, tables: Mapping[str, pl.DataFrame]) -> list[str]:
        """Report notes: what the layer–layer quantity can and cannot show, with this
        run's measured floor."""
        frame = tables.get("layer_pairs")
        lines = ["Layer–layer MI. " + " ".join(PAIRS_CAN + PAIRS_CANNOT)]
        if frame is not None and _has_null(frame):
            bias, null = frame["mi_bias"].drop_nulls(), frame["mi_null"]
            # a float column (polars types a Series' aggregates as any Python scalar)
            mean, low, high = (cast(float, v) for v in (null.mean(), null.min(), null.max()))
            lines.append(f"Row-permuted null (plug-in floor) here: mean {mean:.4f} nats, "
                         f"range {low:.4f}–{high:.4f}"
                         + (f" (first-order (B−1)²/2N = {bias[0]:.4f})" if bias.len() else "")
                         + "; mi_excess = mi − mi_null, not clipped (negative: no dependence "
                         "above the floor).")
        return lines

    def figures(self, tables):
        from mi_probe.plugin import charts

        frame = tables["layer_pairs"]
        order = frame.select("site", "depth").unique().sort("depth")["site"].to_list()
        has_null = _has_null(frame)
        figs = {}
        for state in frame["state"].unique().sort():
            part = frame.filter(pl.col("state") == state)
            floor = (f"row-permuted null (plug-in floor): mean {part['mi_null'].mean():.3f} nats"
                     if has_null else "no null computed (null_draws: 0)")
            figs[f"layer_pairs_{state}"] = charts.heatmap(
                part, x="site_b", y="site", value="mi", value_title="I(T_l;T_m) [nats]",
                x_sort=order, y_sort=order, title=f"Layer–layer MI, {state} (mean pair MI)",
                subtitle=[floor, *PAIRS_CANNOT])
            if has_null:
                figs[f"layer_pairs_excess_{state}"] = charts.heatmap(
                    part, x="site_b", y="site", value="mi_excess",
                    value_title="MI − null [nats]", x_sort=order, y_sort=order,
                    title=f"Layer–layer MI above the row-permuted null, {state}",
                    subtitle=[*PAIRS_CAN, *PAIRS_CANNOT])
        delta = tables.get("layer_pairs_delta")
        if delta is not None:
            figs["layer_pairs_delta"] = charts.heatmap(
                delta, x="site_b", y="site", value="delta_mi",
                value_title="trained − random [nats]", x_sort=order, y_sort=order,
                title="Layer–layer MI, trained − random", subtitle=list(PAIRS_CANNOT))
            if has_null and "delta_mi_excess" in delta.columns:
                figs["layer_pairs_delta_excess"] = charts.heatmap(
                    delta, x="site_b", y="site", value="delta_mi_excess",
                    value_title="trained − random [nats]", x_sort=order, y_sort=order,
                    title="Layer–layer MI above the null, trained − random",
                    subtitle=["Each state minus its own floor: the floors differ with the "
                              "channels' marginals.", *PAIRS_CANNOT])
        return figs


def _column_chunks(chunks: Any, cols: torch.Tensor | None) -> Any:
    """A ``Streams`` chunk source of the columns ``cols`` of ``chunks`` (all: None)."""
    if cols is None:
        return chunks
    return lambda: (block[:, cols.to(block.device)] for block in chunks())


def _gather(chunks: Any, n: int, width: int) -> torch.Tensor:
    """The (n, width) matrix of a chunk source, filled chunk by chunk (one buffer, not
    the chunks and their concatenation)."""
    import torch

    out: torch.Tensor | None = None
    start = 0
    for block in chunks():
        if out is None:
            out = torch.empty(n, width, dtype=block.dtype, device=block.device)
        out[start:start + block.shape[0]] = block
        start += block.shape[0]
    if out is None or start != n:
        raise RunError(f"layer_pairs: the activation store gave {start} rows of a site, "
                       f"expected {n}")
    return out


def _has_null(frame: pl.DataFrame) -> bool:
    """True when the layer_pairs rows carry a measured null (null_draws > 0)."""
    return "mi_null" in frame.columns and frame["mi_null"].null_count() < frame.height


@hookimpl
def mi_probe_register_experiments(register):
    register("layer_pairs", LayerPairs, LayerPairsParams)
