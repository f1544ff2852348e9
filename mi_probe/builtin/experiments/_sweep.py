"""The intervention sweep the ``knockout``, ``shuffle`` and ``perturb`` experiments share
(each registered by its own module), and the fit plans and selection columns that
``semantic_knockout`` uses too; not a plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Mapping, cast

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mi_probe.builtin.experiments._depth import site_columns, with_rel_depth
from mi_probe.plugin import (
    channel_masses, ChannelMassParams, check_mass_levels, mean_over_draws, Plan, RunContext,
    seed_units, SpecError, split_halves, SweepPoint, TableSchema, TRAINED, unit_seed)

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch

SELECTIONS: tuple[Literal["top", "random", "bottom"], ...] = ("top", "random", "bottom")
FITS = ("in_sample", "cross_fit")


class FitParams(ChannelMassParams):
    fit: list[Literal["in_sample", "cross_fit"]] = Field(
        ["in_sample"], min_length=1,
        description="in_sample: choose channels by MI on the evaluation set and score "
        "accuracy on the same set (the paper); cross_fit: split the evaluation set into two "
        "class-stratified halves, choose on one and score on the other, both ways round. "
        "Give both to report both (rows carry a `fit` column)")


def fit_plans(ctx: RunContext, params: FitParams, seed: int, labels: torch.Tensor
              ) -> list[tuple[str, int, torch.Tensor | None, torch.Tensor | None]]:
    """(fit, part, indices to choose channels on, indices to score on); None = all."""
    plans: list[tuple[str, int, torch.Tensor | None, torch.Tensor | None]] = []
    if "in_sample" in params.fit:
        plans.append(("in_sample", 0, None, None))
    if "cross_fit" in params.fit:
        first, second = split_halves(labels, ctx.rng(seed, "cross-fit"))
        plans += [("cross_fit", 0, first, second), ("cross_fit", 1, second, first)]
    return plans


def rows_at(tensor: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return tensor if index is None else tensor[index.to(tensor.device)]


def mean_of(correct: torch.Tensor) -> float:
    return correct.double().mean().item() if correct.numel() else float("nan")


def selection_columns(channels: torch.Tensor, n_channels: int, top: torch.Tensor,
                      bottom: torch.Tensor) -> dict[str, Any]:
    """Size of a selection as a fraction of the site, and how much the top and bottom
    sets of its level share (above half the site they must overlap)."""
    from mi_probe.functional.masses import set_overlap

    return {"n_channels": int(channels.numel()),
            "frac_channels": channels.numel() / max(1, n_channels),
            "top_bottom_overlap": set_overlap(top, bottom)}


class SequentialParams(BaseModel):
    """The paired sequential stopping rule of a knockout sweep point."""

    model_config = ConfigDict(extra="forbid")
    width: float = Field(gt=0, lt=2, description="stop once the drop's interval is "
                         "narrower than this (accuracy units: 0.05 = 5 points)")
    level: float = Field(0.95, gt=0, lt=1, description="confidence level of the interval, "
                         "Bonferroni-corrected over the looks a point can have")
    min_images: int = Field(100, ge=1, description="never stop before this many images")

    def rule(self, block: int) -> Any:
        """The rule for a point of ``n`` score rows, looking after every ``block``."""
        from mi_probe.functional.sequential import SequentialRule

        return lambda n: SequentialRule(width=self.width, level=self.level,
                                        min_images=self.min_images, block=block, n_total=n)


class SweepParams(FitParams):
    model_config = ConfigDict(extra="forbid")
    state: Literal["trained", "random"] = Field(TRAINED, description="model state intervened on")
    q: list[float] = Field([0.1, 0.2, 0.5], min_length=1,
                           description="MI-mass levels: the top set is the smallest set of "
                           "highest-MI channels holding this fraction of the site's label MI")
    selections: list[Literal["top", "random", "bottom"]] = Field(list(SELECTIONS), min_length=1)
    random_draws: int = Field(3, ge=1, description="size-matched random sets per (site, q)")
    if TYPE_CHECKING:  # each experiment's subclass declares its ``kind: Literal[...]``
        kind: str

    sequential: SequentialParams | None = Field(
        None, description="stop each knockout once the interval of its paired accuracy "
        "drop is narrower than `width`, visiting its images in a seeded random order "
        "(rows then carry n_images, drop_ci_low, drop_ci_high, stopped_early); null: "
        "every image (docs/interventions.md, 'Sequential knockouts')")

    _q_range = field_validator("q")(check_mass_levels)


def _shuffler(ctx: RunContext, seed: int, site: str) -> Any:
    """A seeded random order of a set of rows (the same set, the same order)."""
    import torch

    def order(rows: torch.Tensor) -> torch.Tensor:
        import zlib

        key = zlib.crc32(rows.cpu().long().numpy().tobytes())
        gen = ctx.rng(seed, f"sequential/{site}/{key}")
        return rows[torch.randperm(rows.numel(), generator=gen)]

    return order


def _variants(params: Any) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(variant label, intervention name, intervention params, extra row columns) of a
    sweep's params (``KnockoutParams``, ``ShuffleExpParams`` or ``PerturbExpParams``, whose
    modules import this one)."""
    if params.kind == "knockout":
        return [(v, "knockout" if v == "plain" else "energy", {}, {}) for v in params.variants]
    if params.kind == "shuffle":
        return [("shuffle", "shuffle", {}, {})]
    return [("perturb", "perturb", {"alpha": a}, {"alpha": a}) for a in params.alphas]


#: Columns of the sweep table (named after the experiment kind) and of its site masses.
SWEEP_COLUMNS = TableSchema(
    ("seed", "state", "site", "depth", "rel_depth", "site_kind", "q", "selection", "variant",
     "n_channels", "accuracy", "baseline_accuracy", "drop"),
    ("fit", "part", "alpha", "draw", "frac_channels", "top_bottom_overlap", "mass",
     "mass_kind", "n_images", "drop_ci_low", "drop_ci_high", "ci_level", "stopped_early"))
SITE_MASS_COLUMNS = TableSchema(
    ("seed", "state", "site", "depth", "rel_depth", "site_kind"),
    ("fit", "part", "mass_kind", "signal_channels", "signal_p", "has_signal", "total_mass"))


class InterventionSweep:
    """One experiment class for knockout, shuffle and perturb (the table is named after
    the experiment kind)."""

    def __init__(self, params: SweepParams):
        self.params = params
        self.name = params.kind
        self.table_schemas = {params.kind: SWEEP_COLUMNS,
                              f"{params.kind}_site_masses": SITE_MASS_COLUMNS}

    def plan(self, ctx: RunContext) -> Plan:
        return seed_units(ctx)

    def check_spec(self, spec: Any, estimator: Any) -> None:
        """Sequential stopping needs interventions that act on each image alone."""
        if self.params.sequential is not None and self.params.kind != "knockout":
            raise SpecError(f"experiment.sequential: {self.params.kind} draws random values "
                            "per batch, so its drop on a subset of images is not its drop "
                            "on those images within the whole set; sequential stopping is "
                            "for knockout (plain and energy). Remove sequential")

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        import torch

        from mi_probe.functional.concentration import mass
        from mi_probe.functional.selection import bottom_set, mass_set, select

        seed = unit_seed(unit)
        state = self.params.state
        model = ctx.model(seed, state)
        cap = ctx.capture(seed, state)
        # captures and evaluations of the engine always keep the logits
        correct0 = (cast(torch.Tensor, cap.logits).argmax(1) == cap.labels).cpu()
        plans = fit_plans(ctx, self.params, seed, cap.labels)
        sequential = self.params.sequential
        rows, mass_rows = [], []
        for site in cap.sites:
            acts = cap.acts[site.name]
            ctx.progress(f"seed {seed}: {self.name} at {site.name}")
            points, described = [], []
            for fit, part, choose, score in plans:
                tag = "" if choose is None else f"/half{part}"
                masses = channel_masses(ctx, rows_at(acts, choose), rows_at(cap.labels, choose),
                                        ctx.num_classes, self.params.mass, seed=seed,
                                        purpose=f"{state}/{site.name}{tag}",
                                        null_draws=self.params.mass_null_draws)
                fit_cols = {"fit": fit, "part": part}
                mass_rows.append({**site_columns(seed, state, site), **fit_cols, **masses.columns(),
                                  "total_mass": float(masses.values.sum())})
                if not masses.usable:
                    ctx.progress(f"seed {seed}: no label MI beyond the null at {site.name}; "
                                 "not intervened on")
                    continue
                v = masses.values
                p = mass(v)
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
                                apply = ctx.rng(seed, f"apply/{site.name}/{q}/{selection}/"
                                                f"{draw}/{label}{tag}")
                                points.append(SweepPoint(iv, channels, score, apply))
                                described.append({
                                    **site_columns(seed, state, site), **fit_cols, "q": q,
                                    "selection": selection, "variant": label, **extra,
                                    "draw": draw, **sizes, "n_channels": int(channels.numel()),
                                    "mass": float(p[channels].sum()),
                                    "mass_kind": masses.kind})
            if not points:
                continue
            rule = order = None
            if sequential is not None:
                rule = sequential.rule(ctx.spec.eval.batch_size)
                # one seeded order of each fit's score rows, shared by its points
                order = _shuffler(ctx, seed, site.name)
            # every point of the site at once: scored on its own rows, stacked into
            # shared suffix passes where the intervention acts on each image alone
            results = ctx.evaluate_points(model, site, points, sites=cap.sites,  # type: ignore[attr-defined]
                                          correct_before=correct0, rule=rule, order=order)
            for row, result in zip(described, results):
                baseline = mean_of(correct0[result.rows])
                acc = mean_of(result.correct)
                extra_cols: dict[str, Any] = {"n_images": int(result.rows.numel())}
                if result.interval is not None:
                    assert sequential is not None
                    extra_cols.update(drop_ci_low=result.interval.low,
                                      drop_ci_high=result.interval.high,
                                      ci_level=sequential.level,
                                      stopped_early=result.stopped_early)
                rows.append({**row, "accuracy": acc, "baseline_accuracy": baseline,
                             "drop": baseline - acc, **extra_cols})
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
        keys = with_rel_depth(self._keys(), frame)
        per_seed = mean_over_draws(frame, ["seed", *keys],
                                   ["drop", "accuracy", "mass", "frac_channels"])
        return {f"summary_{self.name}": aggregate(per_seed, keys,
                                                  ["drop", "accuracy", "frac_channels"])}

    def notes(self, tables: Mapping[str, pl.DataFrame]) -> list[str]:
        """Say so when no site was intervened on (no table of drops is then written)."""
        masses = tables.get(f"{self.name}_site_masses")
        swept = tables.get(self.name)
        if masses is None or (swept is not None and swept.height > 0):
            return []
        return [f"{self.name}: no site was intervened on. With mass: "
                f"{self.params.mass}, a site is skipped when its channels' label MI does not "
                f"beat the shuffled-label null (has_signal in {self.name}_site_masses: "
                f"{masses.height} site rows, none with signal). More evaluation images, a "
                "trained model, or mass: raw (no signal test) would give interventions."]

    def figures(self, tables):
        from mi_probe.plugin import charts

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
            figs[f"drop_vs_q_{value}"] = charts.line(
                per_seed, x="q", y="drop", color="selection",
                title=f"{self.name} ({group} {value}, {fit}): accuracy drop vs MI mass q, "
                      "mean over sites",
                y_title="accuracy drop")
            q_max = part["q"].max()
            by_site = mean_over_draws(part.filter(pl.col("q") == q_max),
                                      ["seed", "site", "depth", "site_kind", "selection"], ["drop"])
            figs[f"drop_by_depth_{value}"] = charts.by_depth(
                by_site, "drop", color="selection",
                title=f"{self.name} ({group} {value}, {fit}): drop by depth at q = {q_max:g}",
                y_title="accuracy drop")
        return figs


def aggregate(frame: pl.DataFrame, keys: list[str], values: list[str]) -> pl.DataFrame:
    from mi_probe.plugin import aggregate_seeds

    return aggregate_seeds(frame, keys, values)
