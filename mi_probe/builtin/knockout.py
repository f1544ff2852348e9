"""Built-in intervention experiments (paper Figs. 5–6, App. B, abstract):

* ``knockout``: zero (``plain``) or zero-and-rescale (``energy``) the top-MI channels
  of each site at MI-mass levels q, against size-matched random and bottom-MI controls;
* ``shuffle`` and ``perturb``: the same sweep with shuffled or noised channels;
* ``semantic_knockout``: per class k, knock out the smallest set reaching mass q of the
  class-conditional MI I(T_c; 1[Y=k]) and measure accuracy on class k (and the change on
  the other classes).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import polars as pl
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mi_probe.analysis import (ChannelMassParams, channel_masses, check_mass_levels,
                               class_accuracies, mean_over_draws, seed_units, site_row,
                               split_halves, unit_seed)
from mi_probe.functional.concentration import mass
from mi_probe.functional.masses import set_overlap
from mi_probe.functional.selection import bottom_set, mass_set, select
from mi_probe.errors import SpecError
from mi_probe.hookspecs import hookimpl
from mi_probe.interfaces import Plan, RunContext, TRAINED

SELECTIONS = ("top", "random", "bottom")
FITS = ("in_sample", "cross_fit")


class _FitParams(ChannelMassParams):
    fit: list[Literal["in_sample", "cross_fit"]] = Field(
        ["in_sample"], min_length=1,
        description="in_sample: choose channels by MI on the evaluation set and score "
        "accuracy on the same set (the paper); cross_fit: split the evaluation set into two "
        "class-stratified halves, choose on one and score on the other, both ways round. "
        "Give both to report both (rows carry a `fit` column)")


def fit_plans(ctx: RunContext, params: _FitParams, seed: int, labels: torch.Tensor
              ) -> list[tuple[str, int, torch.Tensor | None, torch.Tensor | None]]:
    """(fit, part, indices to choose channels on, indices to score on); None = all."""
    plans: list[tuple[str, int, torch.Tensor | None, torch.Tensor | None]] = []
    if "in_sample" in params.fit:
        plans.append(("in_sample", 0, None, None))
    if "cross_fit" in params.fit:
        first, second = split_halves(labels, ctx.rng(seed, "cross-fit"))
        plans += [("cross_fit", 0, first, second), ("cross_fit", 1, second, first)]
    return plans


def _rows(tensor: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return tensor if index is None else tensor[index.to(tensor.device)]


def _mean(correct: torch.Tensor) -> float:
    return correct.double().mean().item() if correct.numel() else float("nan")


def selection_columns(channels: torch.Tensor, n_channels: int, top: torch.Tensor,
                      bottom: torch.Tensor) -> dict[str, Any]:
    """Size of a selection as a fraction of the site, and how much the top and bottom
    sets of its level share (above half the site they must overlap)."""
    return {"n_channels": int(channels.numel()),
            "frac_channels": channels.numel() / max(1, n_channels),
            "top_bottom_overlap": set_overlap(top, bottom)}


class _SweepParams(_FitParams):
    model_config = ConfigDict(extra="forbid")
    state: Literal["trained", "random"] = Field(TRAINED, description="model state intervened on")
    q: list[float] = Field([0.1, 0.2, 0.5], min_length=1,
                           description="MI-mass levels: the top set is the smallest set of "
                           "highest-MI channels holding this fraction of the site's label MI")
    selections: list[Literal["top", "random", "bottom"]] = Field(list(SELECTIONS), min_length=1)
    random_draws: int = Field(3, ge=1, description="size-matched random sets per (site, q)")

    _q_range = field_validator("q")(check_mass_levels)


class KnockoutParams(_SweepParams):
    """Knock out top / random / bottom MI-mass sets; accuracy drop per site and q."""

    kind: Literal["knockout"] = "knockout"
    variants: list[Literal["plain", "energy"]] = Field(
        ["plain", "energy"], min_length=1,
        description="plain: zero; energy: zero, then rescale the remaining channels per "
        "sample to the pre-ablation L2 norm")


class ShuffleExpParams(_SweepParams):
    """Shuffle the chosen channels across evaluation samples."""

    kind: Literal["shuffle"] = "shuffle"


class PerturbExpParams(_SweepParams):
    """Add Gaussian noise (alpha channel standard deviations) to the chosen channels."""

    kind: Literal["perturb"] = "perturb"
    alphas: list[Annotated[float, Field(gt=0)]] = Field(
        [0.5, 1.0, 2.0], min_length=1,
        description="noise scales in channel standard deviations (each > 0)")


def _variants(params: BaseModel) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(variant label, intervention name, intervention params, extra row columns)."""
    if params.kind == "knockout":
        return [(v, "knockout" if v == "plain" else "energy", {}, {}) for v in params.variants]
    if params.kind == "shuffle":
        return [("shuffle", "shuffle", {}, {})]
    return [("perturb", "perturb", {"alpha": a}, {"alpha": a}) for a in params.alphas]


class InterventionSweep:
    """One experiment class for knockout, shuffle and perturb (the table is named after
    the experiment kind)."""

    def __init__(self, params: _SweepParams):
        self.params = params
        self.name = params.kind

    def plan(self, ctx: RunContext) -> Plan:
        return seed_units(ctx)

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        seed = unit_seed(unit)
        state = self.params.state
        model = ctx.model(seed, state)
        cap = ctx.capture(seed, state)
        correct0 = cap.logits.argmax(1) == cap.labels
        plans = fit_plans(ctx, self.params, seed, cap.labels)
        rows, mass_rows = [], []
        for site in cap.sites:
            acts = cap.acts[site.name]
            ctx.progress(f"seed {seed}: {self.name} at {site.name}")
            for fit, part, choose, score in plans:
                tag = "" if choose is None else f"/half{part}"
                masses = channel_masses(ctx, _rows(acts, choose), _rows(cap.labels, choose),
                                        ctx.num_classes, self.params.mass, seed=seed,
                                        purpose=f"{state}/{site.name}{tag}",
                                        null_draws=self.params.mass_null_draws)
                fit_cols = {"fit": fit, "part": part}
                mass_rows.append({**site_row(seed, state, site), **fit_cols, **masses.columns(),
                                  "total_mass": float(masses.values.sum())})
                if not masses.usable:
                    ctx.progress(f"seed {seed}: no label MI beyond the null at {site.name}; "
                                 "not intervened on")
                    continue
                v = masses.values
                p = mass(v)
                baseline = _mean(_rows(correct0, score))
                for q in self.params.q:
                    top = mass_set(v, q)
                    if top.numel() == 0:
                        continue  # no label MI at this site: nothing to target
                    sizes = selection_columns(top, site.channels, top,
                                              bottom_set(v, top.numel()))
                    for selection in self.params.selections:
                        draws = range(self.params.random_draws) if selection == "random" else [0]
                        for draw in draws:
                            gen = ctx.rng(seed, f"select/{site.name}/{q}/{draw}{tag}")
                            channels = select(v, q, selection, gen, size=top.numel())
                            for label, iv_name, iv_params, extra in _variants(self.params):
                                iv = ctx.plugin("interventions", iv_name, **iv_params)
                                result = ctx.evaluate(model, [(site, iv, channels)],
                                                      generator=ctx.rng(seed, f"apply/{site.name}/"
                                                                        f"{q}/{selection}/{draw}/{label}{tag}"))
                                correct = result.logits.argmax(1) == result.labels
                                acc = _mean(_rows(correct, score))
                                rows.append({**site_row(seed, state, site), **fit_cols, "q": q,
                                             "selection": selection, "variant": label, **extra,
                                             "draw": draw, **sizes,
                                             "n_channels": int(channels.numel()),
                                             "mass": float(p[channels].sum()),
                                             "mass_kind": masses.kind, "accuracy": acc,
                                             "baseline_accuracy": baseline,
                                             "drop": baseline - acc})
        out = {f"{self.name}_site_masses": pl.DataFrame(mass_rows)}
        if rows:  # none when no site beats the null: the site-masses table says so
            out[self.name] = pl.DataFrame(rows)
        return out

    def _keys(self) -> list[str]:
        extra = ["alpha"] if self.params.kind == "perturb" else []
        return ["fit", "site", "depth", "site_kind", "q", "selection", "variant", *extra]

    def finalize(self, ctx, tables):
        frame = tables.get(self.name)
        if frame is None or frame.height == 0:
            return {}
        # draws and cross-fit halves are averaged within a seed: intervals are over seeds
        per_seed = mean_over_draws(frame, ["seed", *self._keys()],
                                   ["drop", "accuracy", "mass", "frac_channels"])
        return {f"summary_{self.name}": aggregate(per_seed, self._keys(),
                                                  ["drop", "accuracy", "frac_channels"])}

    def figures(self, tables):
        from mi_probe import report

        frame = tables.get(self.name)
        if frame is None or frame.height == 0:
            return {}
        figs = {}
        group = "alpha" if self.params.kind == "perturb" else "variant"
        for value in frame[group].unique().sort():
            part = frame.filter(pl.col(group) == value)
            if part["fit"].n_unique() > 1:
                part = part.filter(pl.col("fit") == "cross_fit")
            fit = part["fit"][0].replace("_", "-")
            per_seed = part.group_by(["seed", "q", "selection"]).agg(pl.col("drop").mean())
            figs[f"drop_vs_q_{value}"] = report.line(
                per_seed, x="q", y="drop", color="selection",
                title=f"{self.name} ({group} {value}, {fit}): accuracy drop vs MI mass q, "
                      "mean over sites",
                y_title="accuracy drop")
            q_max = part["q"].max()
            by_site = mean_over_draws(part.filter(pl.col("q") == q_max),
                                      ["seed", "site", "depth", "site_kind", "selection"], ["drop"])
            figs[f"drop_by_depth_{value}"] = report.by_depth(
                by_site, "drop", color="selection",
                title=f"{self.name} ({group} {value}, {fit}): drop by depth at q = {q_max:g}",
                y_title="accuracy drop")
        return figs


def aggregate(frame: pl.DataFrame, keys: list[str], values: list[str]) -> pl.DataFrame:
    from mi_probe.tables import aggregate_seeds

    return aggregate_seeds(frame, keys, values)


class SemanticKnockoutParams(_FitParams):
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


class SemanticKnockout:
    name = "semantic_knockout"

    def __init__(self, params: SemanticKnockoutParams):
        self.params = params

    def plan(self, ctx: RunContext) -> Plan:
        bad = [k for k in (self.params.classes or []) if not 0 <= k < ctx.num_classes]
        if bad:
            raise SpecError(f"experiment.classes: {bad} are not class indices of the data "
                            f"(0..{ctx.num_classes - 1})")
        return seed_units(ctx)

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        seed = unit_seed(unit)
        state = self.params.state
        model = ctx.model(seed, state)
        cap = ctx.capture(seed, state)
        labels = cap.labels
        correct0 = (cap.logits.argmax(1) == labels)
        classes = self.params.classes or list(range(ctx.num_classes))
        iv_name = "knockout" if self.params.variant == "plain" else "energy"
        plans = fit_plans(ctx, self.params, seed, labels)
        rows, mass_rows = [], []
        for site in cap.sites:
            acts = cap.acts[site.name]
            ctx.progress(f"seed {seed}: semantic knockouts at {site.name}")
            for k in classes:
                in_k = labels == k
                if not in_k.any():
                    continue
                for fit, part, choose, score in plans:
                    tag = "" if choose is None else f"/half{part}"
                    masses = channel_masses(ctx, _rows(acts, choose), _rows(in_k.long(), choose),
                                            2, self.params.mass, seed=seed,
                                            purpose=f"{state}/{site.name}/class{k}{tag}",
                                            null_draws=self.params.mass_null_draws)
                    fit_cols = {"fit": fit, "part": part}
                    mass_rows.append({**site_row(seed, state, site), "class": k, **fit_cols,
                                      **masses.columns(), "total_mass": float(masses.values.sum())})
                    if not masses.usable:
                        continue
                    v = masses.values
                    p = mass(v)
                    score_k, score_other = _rows(in_k, score), _rows(~in_k, score)
                    if not score_k.any():
                        continue  # a class too small to appear in this scoring half
                    scored0 = _rows(correct0, score)
                    base_k = _mean(scored0[score_k])
                    other_before = _mean(scored0[score_other])
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
                                result = ctx.evaluate(model, [(site, iv, channels)])
                                correct = _rows(result.logits.argmax(1) == result.labels, score)
                                class_acc = _mean(correct[score_k])
                                rows.append({
                                    **site_row(seed, state, site), **fit_cols, "class": k,
                                    "class_name": ctx.class_names[k], "q": q,
                                    "selection": selection, "draw": draw, **sizes,
                                    "n_channels": int(channels.numel()),
                                    "class_mass": float(p[channels].sum()),
                                    "mass_kind": masses.kind,
                                    "class_accuracy": class_acc,
                                    "baseline_class_accuracy": base_k,
                                    "drop": base_k - class_acc,
                                    "other_classes_change": _mean(correct[score_other]) - other_before})
        out = {"semantic_knockout_site_masses": pl.DataFrame(mass_rows)}
        if rows:  # none when no (site, class) beats the null: the site-masses table says so
            out["semantic_knockout"] = pl.DataFrame(rows)
        return out

    def finalize(self, ctx, tables):
        from mi_probe.tables import aggregate_seeds

        frame = tables.get("semantic_knockout")
        if frame is None or frame.height == 0:
            return {}
        values = ["drop", "other_classes_change", "class_accuracy"]
        keys = ["fit", "site", "depth", "site_kind", "class", "q", "selection"]
        per_seed = mean_over_draws(frame, ["seed", *keys], values + ["n_channels"])
        # Sites and classes of one seed are not independent observations: average them
        # within the seed, then take the interval over seeds.
        by_q_per_seed = mean_over_draws(per_seed, ["seed", "fit", "q", "selection"], values)
        by_q = aggregate_seeds(by_q_per_seed, ["fit", "q", "selection"], values)
        return {"summary_semantic_knockout": aggregate_seeds(per_seed, keys, values),
                "summary_semantic_knockout_by_q": by_q}

    def figures(self, tables):
        import altair as alt

        from mi_probe import report

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
        figs = {"semantic_drop_vs_q": report.line(
            per_seed, x="q", y="drop", color="selection",
            title=f"Class-k accuracy drop vs class MI mass q ({fit}; mean over classes and "
                  "sites within a seed, interval over seeds)", y_title="class-k accuracy drop"),
            "semantic_other_classes_vs_q": report.line(
            per_seed, x="q", y="other_classes_change", color="selection",
            title=f"Accuracy change on the other classes ({fit})", y_title="accuracy change")}
        q_max = frame["q"].max()
        per_class = per_obs.filter(pl.col("q") == q_max).group_by(
            ["class", "selection"]).agg(pl.col("drop").mean())
        figs["semantic_drop_per_class"] = alt.Chart(alt.InlineData(
            values=per_class.to_dicts())).mark_bar().encode(
            x=alt.X("class", type="ordinal", title="class"),
            xOffset=alt.XOffset("selection", type="nominal"),
            y=alt.Y("drop", type="quantitative", title="class-k accuracy drop"),
            color=alt.Color("selection", type="nominal")).properties(
            title=f"Per-class drop at q = {q_max:g} (mean over sites and seeds)", width=600)
        return figs


@hookimpl
def mi_probe_register_experiments(register):
    register("knockout", InterventionSweep, KnockoutParams)
    register("shuffle", InterventionSweep, ShuffleExpParams)
    register("perturb", InterventionSweep, PerturbExpParams)
    register("semantic_knockout", SemanticKnockout, SemanticKnockoutParams)
