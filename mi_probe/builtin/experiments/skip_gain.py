"""Built-in ``skip_gain`` experiment (paper App. A), for residual blocks of any family
whose adapter can scale a skip (``resnet``; ``blocks`` for ViT, ConvNeXt, EfficientNet
and the other families whose residual add the trace finds).

(a) **Pre-add vs post-add concentration**: for every residual block, the Gini
coefficient and top-k share of per-channel I(T_c;Y) at its ``pre_add`` site (residual
branch output) and its ``post_add`` site (block output after the add and activation).

(b) **Skip-gain sweep**: for every block and gain g, the block computes
act(residual + g · shortcut) (hooks from the adapter's ``skip_gain_hooks``,
removed in a ``finally``); the evaluation-set accuracy and the concentration of label MI
at the block's ``post_add`` site are measured with the hooks in place. g = 1 is the
unmodified network, g = 0 removes the skip.

Blocks are those with a ``pre_add`` or ``post_add`` site among the spec's sites
(optionally narrowed by ``blocks``). When the spec lists only one of a block's two sites
the other is captured here with one extra evaluation pass, so ``sites: {include:
["*.pre_add", "*.post_add"]}`` is the natural choice but not required. The ``depth``
column is the model's own depth (index among all its sites) of the block's ``post_add``
site (of its ``pre_add`` site when only that one is in the spec), ``rel_depth`` that
depth scaled to [0, 1]; ``block_index`` is the block's 0-based position among all
residual blocks of the model (it never depended on the spec's sites).
"""

from __future__ import annotations

from dataclasses import replace

import fnmatch
from typing import TYPE_CHECKING, Any, Literal, cast

import polars as pl
from pydantic import ConfigDict, Field, field_validator

from mi_probe.builtin.experiments._depth import with_rel_depth
from mi_probe.plugin import (
    channel_masses, ChannelMassParams, HasSkipGainHooks, hookimpl, Plan, RANDOM, RunContext,
    seed_units, Site, SpecError, TableSchema, TRAINED, unit_seed)

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch


class SkipGainParams(ChannelMassParams):
    """Pre- vs post-add concentration per block, and accuracy / post-add concentration
    while each block's skip connection is scaled by a gain g."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["skip_gain"] = "skip_gain"
    state: Literal["trained", "random"] = Field(TRAINED, description="model state measured")
    gains: list[float] = Field([0.0, 0.5, 1.0, 1.5], min_length=1,
                               description="skip gains g: the block computes "
                               "act(residual + g * shortcut); 1 = unmodified")
    blocks: list[str] | None = Field(
        None, description="fnmatch patterns over block paths (e.g. 'layer4.*'); default: "
        "every block with a pre_add or post_add site in the spec")
    top_k: float = Field(0.1, gt=0, le=1, description="fraction k for the top-k share")

    @field_validator("gains")
    @classmethod
    def _finite(cls, value: list[float]) -> list[float]:
        bad = [g for g in value if g != g or g in (float("inf"), float("-inf"))]
        if bad:
            raise ValueError(f"gains must be finite numbers, got {bad}")
        return value


def resnet_adapter(ctx: RunContext, model) -> HasSkipGainHooks:
    """The run's site adapter for ``model`` (``ctx.adapter``: the spec's, or the first
    that claims it, built-in or third-party) if it can scale a block's shortcut;
    SpecError naming the model otherwise."""
    adapter = ctx.adapter(model)
    if not isinstance(adapter, HasSkipGainHooks):
        raise SpecError(f"skip_gain needs a site adapter with skip_gain_hooks (built in: "
                        f"resnet, and blocks for residual blocks of any timm family), but "
                        f"model.arch {ctx.spec.model.arch!r} is a {type(model).__name__} "
                        f"handled by adapter {adapter.name!r}; use a residual architecture "
                        "and sites.adapter: auto")
    return adapter


def _block_of(site: Site) -> str | None:
    for suffix in (".pre_add", ".post_add"):
        if site.kind == suffix[1:] and site.name.endswith(suffix):
            return site.name[: -len(suffix)]
    return None


def plan_blocks(adapter, model, sites: list[Site], patterns: list[str] | None
                ) -> list[dict[str, Any]]:
    """Per block (forward order): its path, block index and its pre/post Site objects
    (constructed from the adapter's site list when the spec lacks one of them)."""
    refs = {r.name: r for r in adapter.site_refs(model)}
    # blocks whose residual branch is a site (both kinds); others cannot be measured
    all_blocks = [r.name[: -len(".post_add")] for r in refs.values() if r.kind == "post_add"
                  and f"{r.name[: -len('.post_add')]}.pre_add" in refs]
    by_name = {s.name: s for s in sites}
    chosen = [b for b in all_blocks
              if any(_block_of(s) == b for s in sites)]
    if patterns is not None:
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(b, p) for b in chosen)]
        if unmatched:
            raise SpecError(f"experiment.blocks {unmatched} match none of the blocks with sites "
                            f"in the spec: {chosen}")
        chosen = [b for b in chosen if any(fnmatch.fnmatchcase(b, p) for p in patterns)]
    if not chosen:
        raise SpecError(f"skip_gain needs pre_add / post_add sites; the spec's sites are "
                        f"{[s.name for s in sites]}; use sites: {{include: ['*.pre_add', "
                        "'*.post_add']}")
    plan = []
    for b in chosen:
        pre, post = by_name.get(f"{b}.pre_add"), by_name.get(f"{b}.post_add")
        # b was chosen for having a site in the spec, so one of the two is there
        anchor = cast(Site, post or pre)
        # a site the spec lacks is built from the other one: it is only captured, and its
        # depth fields (the anchor's) never reach a table, which uses the anchor's depth
        if pre is None:
            ref = refs[f"{b}.pre_add"]
            pre = replace(anchor, name=ref.name, module=ref.module, kind=ref.kind,
                          index=ref.index)
        if post is None:
            ref = refs[f"{b}.post_add"]
            post = replace(anchor, name=ref.name, module=ref.module, kind=ref.kind,
                           index=ref.index)
        plan.append({"block": b, "block_index": all_blocks.index(b), "depth": anchor.depth,
                     "rel_depth": anchor.rel_depth, "pre": pre, "post": post})
    return plan


#: The tables a run writes (``interfaces.DeclaresTables``): required columns, then
#: those that appear with some settings.
TABLE_SCHEMAS = {
    "skip_gain": TableSchema(
        ("seed", "state", "site", "depth", "rel_depth", "site_kind", "block", "gain",
         "accuracy", "baseline_accuracy", "change"),
        ("block_index", "post_gini", "post_top_k_share", "post_gini_raw", "mass_kind",
         "top_k")),
    "skip_concentration": TableSchema(
        ("seed", "state", "block", "depth", "rel_depth"),
        ("block_index", "pre_gini", "post_gini", "pre_top_k_share", "post_top_k_share",
         "pre_gini_raw", "post_gini_raw", "gini_raw_change", "top_overlap",
         "channel_rank_spearman", "mass_kind", "top_k")),
}


class SkipGain:
    name = "skip_gain"
    table_schemas = TABLE_SCHEMAS

    def __init__(self, params: SkipGainParams):
        self.params = params

    def plan(self, ctx: RunContext) -> Plan:
        # A random-state model is cheap to build and has the spec's architecture: refuse
        # a model without scalable skips before any training starts.
        resnet_adapter(ctx, ctx.model(ctx.spec.seeds[0], RANDOM))
        return seed_units(ctx)

    def _concentration(self, ctx, acts: torch.Tensor, labels: torch.Tensor, seed: int,
                       purpose: str) -> tuple[float | None, float | None, float, torch.Tensor]:
        """(Gini, top-k share) of the spec's masses (None without signal beyond the
        null), the raw Gini, and the raw per-channel I(T_c;Y)."""
        from mi_probe.functional.concentration import gini, top_k_share

        m = channel_masses(ctx, acts, labels, ctx.num_classes, self.params.mass, seed=seed,
                           purpose=purpose, null_draws=self.params.mass_null_draws)
        if not m.usable:
            return None, None, gini(m.raw), m.raw
        return gini(m.values), top_k_share(m.values, self.params.top_k), gini(m.raw), m.raw

    def _identity(self, pre: torch.Tensor, post: torch.Tensor) -> dict[str, float | None]:
        """Whether the skip changes which channels carry label information: the share of
        the top-k% channels by raw I(T_c;Y) that pre_add and post_add have in common, and
        the Spearman correlation of their per-channel values (None when the two sites
        have different channel counts, e.g. a projection changes the width)."""
        from mi_probe.functional.concentration import top_k_count
        from mi_probe.functional.masses import set_overlap

        if pre.numel() != post.numel():
            return {"top_overlap": None, "channel_rank_spearman": None}
        from scipy.stats import spearmanr

        k = top_k_count(pre.numel(), self.params.top_k)
        top_pre, top_post = pre.topk(k).indices, post.topk(k).indices
        rho = (float(spearmanr(pre.cpu().numpy(), post.cpu().numpy()).statistic)
               if pre.numel() >= 3 and bool(pre.std() > 0) and bool(post.std() > 0) else None)
        return {"top_overlap": set_overlap(top_pre, top_post), "channel_rank_spearman": rho}

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        seed = unit_seed(unit)
        state = self.params.state
        model = ctx.model(seed, state)
        adapter = resnet_adapter(ctx, model)
        cap = ctx.capture(seed, state)
        blocks = plan_blocks(adapter, model, cap.sites, self.params.blocks)
        acts = dict(cap.acts)
        missing = [s for b in blocks for s in (b["pre"], b["post"]) if s.name not in acts]
        if missing:
            ctx.progress(f"seed {seed}: capturing {len(missing)} site(s) not in the spec")
            extra = ctx.evaluate(model, sites=missing)
            acts.update(extra.acts)
        baseline = cap.accuracy
        conc_rows, gain_rows = [], []
        for b in blocks:
            pre_gini, pre_top, pre_raw, pre_mi = self._concentration(
                ctx, acts[b["pre"].name], cap.labels, seed, f"{state}/{b['pre'].name}")
            post_gini, post_top, post_raw, post_mi = self._concentration(
                ctx, acts[b["post"].name], cap.labels, seed, f"{state}/{b['post'].name}")
            base = {"seed": seed, "state": state, "block": b["block"], "depth": b["depth"],
                    "rel_depth": b["rel_depth"], "block_index": b["block_index"]}
            conc_rows.append({**base, "pre_gini": pre_gini, "post_gini": post_gini,
                              "pre_top_k_share": pre_top, "post_top_k_share": post_top,
                              "pre_gini_raw": pre_raw, "post_gini_raw": post_raw,
                              "gini_raw_change": post_raw - pre_raw,
                              **self._identity(pre_mi, post_mi),
                              "mass_kind": self.params.mass, "top_k": self.params.top_k})
            post = b["post"]
            for g in self.params.gains:
                ctx.progress(f"seed {seed}: skip gain {g:g} at {b['block']}")
                handles = adapter.skip_gain_hooks(model, b["block"], g)
                try:
                    result = ctx.evaluate(model, sites=[post])
                finally:
                    for handle in handles:
                        handle.remove()
                g_gini, g_top, g_raw, _ = self._concentration(
                    ctx, result.acts[post.name], result.labels, seed, f"{state}/{post.name}")
                acc = result.accuracy
                gain_rows.append({"seed": seed, "state": state, "site": post.name,
                                  "depth": b["depth"], "rel_depth": b["rel_depth"],
                                  "site_kind": post.kind,
                                  "block": b["block"], "block_index": b["block_index"],
                                  "gain": float(g), "accuracy": acc, "baseline_accuracy": baseline,
                                  "change": acc - baseline, "post_gini": g_gini,
                                  "post_top_k_share": g_top, "post_gini_raw": g_raw,
                                  "mass_kind": self.params.mass, "top_k": self.params.top_k})
        floats = {c: pl.Float64 for c in ("pre_gini", "post_gini", "pre_top_k_share",
                                          "post_top_k_share", "top_overlap",
                                          "channel_rank_spearman")}
        return {"skip_concentration": pl.DataFrame(conc_rows, schema_overrides=floats),
                "skip_gain": pl.DataFrame(gain_rows, schema_overrides={
                    c: pl.Float64 for c in ("post_gini", "post_top_k_share")})}

    def finalize(self, ctx, tables):
        from mi_probe.plugin import aggregate_seeds

        out = {}
        conc = tables.get("skip_concentration")
        if conc is not None and conc.height:
            conc = conc.with_columns(gini_gap=pl.col("post_gini") - pl.col("pre_gini"))
            out["summary_skip_concentration"] = aggregate_seeds(
                conc, with_rel_depth(["state", "block", "depth", "block_index"], conc),
                ["pre_gini", "post_gini", "gini_gap", "pre_top_k_share", "post_top_k_share",
                 "pre_gini_raw", "post_gini_raw"])
        frame = tables.get("skip_gain")
        if frame is not None and frame.height:
            out["summary_skip_gain"] = aggregate_seeds(
                frame, with_rel_depth(["state", "site", "depth", "site_kind", "block", "gain"],
                                      frame),
                ["accuracy", "change", "post_gini", "post_top_k_share", "post_gini_raw"])
        return out

    def figures(self, tables):
        from mi_probe.plugin import charts

        figs = {}
        frame = tables.get("skip_gain")
        if frame is not None and frame.height:
            figs["skip_gain_accuracy"] = charts.line(
                frame, x="gain", y="accuracy", color="block",
                title="Accuracy vs skip gain g (block computes act(residual + g·shortcut))",
                x_title="skip gain g", y_title="accuracy")
            with_gini = frame.drop_nulls("post_gini")
        if frame is not None and frame.height and with_gini.height:
            figs["skip_gain_post_gini"] = charts.line(
                with_gini, x="gain", y="post_gini", color="block",
                title="Post-add Gini of I(T_c;Y) vs skip gain g", x_title="skip gain g",
                y_title="post-add Gini")
        conc = tables.get("skip_concentration")
        if conc is not None and conc.height:
            # x = block index, so pre and post of one block share a position
            long = conc.unpivot(index=["seed", "block", "block_index"],
                                on=["pre_gini", "post_gini"], variable_name="where",
                                value_name="gini").drop_nulls("gini").with_columns(
                site=pl.col("block"), depth=pl.col("block_index"),
                where=pl.col("where").str.replace("_gini", "_add"))
            figs["skip_pre_post_gini"] = charts.by_depth(
                long, "gini", color="where",
                title="Gini of per-channel I(T_c;Y): residual branch (pre-add) vs block output "
                      "(post-add)", y_title="Gini", x_title="block (0-based, forward order)")
        return figs


@hookimpl
def mi_probe_register_experiments(register):
    register("skip_gain", SkipGain, SkipGainParams)
