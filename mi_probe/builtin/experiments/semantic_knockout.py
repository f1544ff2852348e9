"""Built-in experiment ``semantic_knockout`` (paper Fig. 6, App. B): per class k, knock
out the smallest set reaching mass q of the class-conditional MI I(T_c; 1[Y=k]) and
measure accuracy on class k (and the change on the other classes). Fit plans and
selection columns are shared with ``knockout``.
"""

from __future__ import annotations

from typing import Literal, cast

import polars as pl
from pydantic import ConfigDict, Field, field_validator

from mi_probe.builtin.experiments._depth import site_columns, with_rel_depth
from mi_probe.plugin import (
    channel_masses, check_mass_levels, hookimpl, mean_over_draws, Plan, RunContext, seed_units,
    SpecError, TableSchema, TRAINED, unit_seed)
from mi_probe.builtin.experiments._sweep import (FitParams, mean_of, rows_at, fit_plans,
                                                  selection_columns, SweepPoint)


class SemanticKnockoutParams(FitParams):
    """Class-conditional ("semantic") knockouts (paper Fig. 6, App. B)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["semantic_knockout"] = "semantic_knockout"
    state: Literal["trained", "random"] = TRAINED
    q: list[float] = Field([0.1, 0.2, 0.5], min_length=1)
    controls: list[Literal["random", "bottom"]] = Field(["random", "bottom"])
    random_draws: int = Field(3, ge=1)
    variant: Literal["plain", "energy"] = "plain"
    classes: list[int] | None = Field(None, description="class indices (None: every class)")

    _q_range = field_validator("q")(check_mass_levels)


#: The tables a run writes (``interfaces.DeclaresTables``): required columns, then
#: those that appear with some settings.
TABLE_SCHEMAS = {
    "semantic_knockout": TableSchema(
        ("seed", "state", "site", "depth", "rel_depth", "site_kind", "class", "q", "selection",
         "n_channels", "class_accuracy", "baseline_class_accuracy", "drop",
         "other_classes_change"),
        ("fit", "part", "class_name", "draw", "frac_channels", "top_bottom_overlap",
         "class_mass", "mass_kind")),
    "semantic_knockout_site_masses": TableSchema(
        ("seed", "state", "site", "depth", "rel_depth", "site_kind", "class"),
        ("fit", "part", "mass_kind", "signal_channels", "signal_p", "has_signal",
         "total_mass")),
}


class SemanticKnockout:
    name = "semantic_knockout"
    table_schemas = TABLE_SCHEMAS

    def __init__(self, params: SemanticKnockoutParams):
        self.params = params

    def plan(self, ctx: RunContext) -> Plan:
        bad = [k for k in (self.params.classes or []) if not 0 <= k < ctx.num_classes]
        if bad:
            raise SpecError(f"experiment.classes: {bad} are not class indices of the data "
                            f"(0..{ctx.num_classes - 1})")
        return seed_units(ctx)

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        import torch

        from mi_probe.functional.concentration import mass
        from mi_probe.functional.selection import bottom_set, mass_set, select

        seed = unit_seed(unit)
        state = self.params.state
        model = ctx.model(seed, state)
        cap = ctx.capture(seed, state)
        labels = cap.labels
        # captures and evaluations of the engine always keep the logits
        correct0 = (cast(torch.Tensor, cap.logits).argmax(1) == labels)
        classes = self.params.classes or list(range(ctx.num_classes))
        iv_name = "knockout" if self.params.variant == "plain" else "energy"
        plans = fit_plans(ctx, self.params, seed, labels)
        rows, mass_rows = [], []
        for site in cap.sites:
            acts = cap.acts[site.name]
            ctx.progress(f"seed {seed}: semantic knockouts at {site.name}")
            # every knockout of the site is scored in one call (stacked suffix passes);
            # ``pending`` holds what each row needs besides its correctness
            points, pending = [], []
            for k in classes:
                in_k = labels == k
                if not in_k.any():
                    continue
                for fit, part, choose, score in plans:
                    tag = "" if choose is None else f"/half{part}"
                    masses = channel_masses(ctx, rows_at(acts, choose), rows_at(in_k.long(), choose),
                                            2, self.params.mass, seed=seed,
                                            purpose=f"{state}/{site.name}/class{k}{tag}",
                                            null_draws=self.params.mass_null_draws)
                    fit_cols = {"fit": fit, "part": part}
                    mass_rows.append({**site_columns(seed, state, site), "class": k, **fit_cols,
                                      **masses.columns(), "total_mass": float(masses.values.sum())})
                    if not masses.usable:
                        continue
                    v = masses.values
                    p = mass(v)
                    score_k, score_other = rows_at(in_k, score), rows_at(~in_k, score)
                    if not score_k.any():
                        continue  # a class too small to appear in this scoring half
                    scored0 = rows_at(correct0, score)
                    base_k = mean_of(scored0[score_k])
                    other_before = mean_of(scored0[score_other])
                    for q in self.params.q:
                        top = mass_set(v, q)
                        if top.numel() == 0:
                            continue
                        sizes = selection_columns(top, site.channels, top,
                                                  bottom_set(v, top.numel()))
                        for selection in ["top", *self.params.controls]:
                            draws = range(self.params.random_draws) if selection == "random" else [0]
                            for draw in draws:
                                gen = ctx.rng(seed, f"semantic/{site.name}/{k}/{q}/{draw}{tag}")
                                channels = select(v, q, selection, gen, size=top.numel())
                                iv = ctx.plugin("interventions", iv_name)
                                points.append(SweepPoint(iv, channels, score))
                                pending.append((score_k.cpu(), score_other.cpu(), base_k,
                                                other_before, {
                                    **site_columns(seed, state, site), **fit_cols, "class": k,
                                    "class_name": ctx.class_names[k], "q": q,
                                    "selection": selection, "draw": draw, **sizes,
                                    "n_channels": int(channels.numel()),
                                    "class_mass": float(p[channels].sum()),
                                    "mass_kind": masses.kind}))
            if not points:
                continue
            results = ctx.evaluate_points(model, site, points, sites=cap.sites)  # type: ignore[attr-defined]
            for (score_k, score_other, base_k, other_before, row), result in zip(pending, results):
                correct = result.correct  # on the point's score rows, in their order
                class_acc = mean_of(correct[score_k])
                rows.append({**row, "class_accuracy": class_acc,
                             "baseline_class_accuracy": base_k, "drop": base_k - class_acc,
                             "other_classes_change": mean_of(correct[score_other]) - other_before})
        out = {"semantic_knockout_site_masses": pl.DataFrame(mass_rows)}
        if rows:  # none when no (site, class) beats the null: the site-masses table says so
            out["semantic_knockout"] = pl.DataFrame(rows)
        return out

    def finalize(self, ctx, tables):
        from mi_probe.plugin import aggregate_seeds

        frame = tables.get("semantic_knockout")
        if frame is None or frame.height == 0:
            return {}
        values = ["drop", "other_classes_change", "class_accuracy"]
        keys = with_rel_depth(["fit", "site", "depth", "site_kind", "class", "q", "selection"],
                              frame)
        per_seed = mean_over_draws(frame, ["seed", *keys], values + ["n_channels"])
        # Sites and classes of one seed are not independent observations: average them
        # within the seed, then take the interval over seeds.
        by_q_per_seed = mean_over_draws(per_seed, ["seed", "fit", "q", "selection"], values)
        by_q = aggregate_seeds(by_q_per_seed, ["fit", "q", "selection"], values)
        return {"summary_semantic_knockout": aggregate_seeds(per_seed, keys, values),
                "summary_semantic_knockout_by_q": by_q}

    def figures(self, tables):
        from mi_probe.plugin import charts

        frame = tables.get("semantic_knockout")
        if frame is None or frame.height == 0:
            return {}
        if frame["fit"].n_unique() > 1:
            frame = frame.filter(pl.col("fit") == "cross_fit")
        fit = frame["fit"][0].replace("_", "-")
        keys = ["seed", "site", "class", "q", "selection"]
        per_obs = mean_over_draws(frame, keys, ["drop", "other_classes_change"])
        per_seed = mean_over_draws(per_obs, ["seed", "q", "selection"],
                                   ["drop", "other_classes_change"])
        figs = {"semantic_drop_vs_q": charts.line(
            per_seed, x="q", y="drop", color="selection",
            title=f"Class-k accuracy drop vs class MI mass q ({fit}; mean over classes and "
                  "sites within a seed, interval over seeds)", y_title="class-k accuracy drop"),
            "semantic_other_classes_vs_q": charts.line(
            per_seed, x="q", y="other_classes_change", color="selection",
            title=f"Accuracy change on the other classes ({fit})", y_title="accuracy change")}
        q_max = frame["q"].max()
        # sites (and draws) of one seed are averaged first; the error bars are over seeds
        figs["semantic_drop_per_class"] = charts.bars(
            per_obs.filter(pl.col("q") == q_max), x="class", y="drop", color="selection",
            title=f"Per-class drop at q = {q_max:g} ({fit}; mean over sites within a seed, "
                  "interval over seeds)", y_title="class-k accuracy drop", width=600)
        return figs


@hookimpl
def mi_probe_register_experiments(register):
    register("semantic_knockout", SemanticKnockout, SemanticKnockoutParams)
