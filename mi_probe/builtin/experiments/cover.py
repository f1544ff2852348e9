"""Built-in ``cover`` experiment (paper App. D): minimal MI cover vs redundant sets.

At each site the **minimal MI cover** at level q is the mass-q set of per-channel
I(T_c;Y) (the smallest set of top channels holding a fraction q of the site's label
MI). The **redundant MI-matched set** is built from the channels outside the cover:
they are ranked by their largest inter-channel MI to any cover channel (histogram pair
MI of the binned pooled activations, ties: lower channel index first) and added in that
order until the set's label-MI mass reaches the cover's mass, or the channels run out
(``mass_reached`` is then false and ``mass`` records what was achieved). A
size-matched **random** set (drawn from all channels, like the knockout controls) is
the third arm. Each set is knocked out with the registered ``knockout`` intervention
(or ``energy``) and the accuracy drop is recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, cast

import polars as pl
from pydantic import ConfigDict, Field, field_validator

from mi_probe.builtin.experiments._depth import site_columns, with_rel_depth
from mi_probe.plugin import (
    ChannelMassParams, check_mass_levels, hookimpl, mean_over_draws, PairMI, Plan, RunContext,
    seed_units, site_masses, SpecError, TableSchema, TRAINED, unit_seed)

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch

SETS: tuple[Literal["cover", "redundant", "random"], ...] = ("cover", "redundant", "random")
DEFAULT_PAIR_BINS = 20


class CoverParams(ChannelMassParams):
    """Knock out the minimal MI cover, a redundant MI-matched set and a random set."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["cover"] = "cover"
    state: Literal["trained", "random"] = Field(TRAINED, description="model state intervened on")
    q: list[float] = Field([0.1, 0.2, 0.3], min_length=1,
                           description="MI-mass levels of the cover; the redundant set can "
                           "only match a cover mass up to the mass outside it (1 − mass)")
    sets: list[Literal["cover", "redundant", "random"]] = Field(list(SETS), min_length=1)
    random_draws: int = Field(3, ge=1, description="size-matched random sets per (site, q)")
    variant: Literal["plain", "energy"] = Field(
        "plain", description="plain: zero the set; energy: zero and rescale the rest to the "
        "pre-ablation L2 norm")
    pair_bins: int | None = Field(None, ge=2, description="bins of a histogram for "
                                  "inter-channel MI; default: the estimator's own pair_mi "
                                  "(an estimator without one needs pair_bins)")

    _q_range = field_validator("q")(check_mass_levels)


def redundant_set(values: torch.Tensor, cover: torch.Tensor, pair_mi_to_cover: torch.Tensor
                  ) -> tuple[torch.Tensor, float, bool]:
    """The redundant MI-matched set for ``cover``.

    ``values`` are the per-channel I(T_c;Y) (C,); ``pair_mi_to_cover`` is (|cover|, C):
    row i holds I(T_{cover[i]}; T_d) for every channel d. Channels outside the cover are
    ranked by their maximum pair MI to any cover channel (descending; ties: lower index
    first) and taken in that order until their label-MI mass reaches the cover's mass.

    Returns (channels in the order they were added, achieved mass, whether the cover's
    mass was reached). When the channels run out first the set holds every non-cover
    channel and the flag is False.
    """
    import torch

    from mi_probe.functional.concentration import mass
    from mi_probe.functional.selection import MASS_SLACK

    n = values.numel()
    p = mass(values)
    target = float(p[cover].sum())
    outside = torch.ones(n, dtype=torch.bool, device=values.device)
    outside[cover.to(values.device)] = False
    candidates = outside.nonzero().flatten()
    if candidates.numel() == 0:
        return candidates, 0.0, target <= 0
    score = pair_mi_to_cover.to(values.device, torch.float64)[:, candidates].max(dim=0).values
    order = candidates[torch.sort(score, descending=True, stable=True).indices]
    cumulative = p[order].cumsum(0)
    reached = cumulative >= target - MASS_SLACK
    if bool(reached.any()):
        size = int(reached.to(torch.int64).argmax().item()) + 1
        chosen = order[:size]
        return chosen, float(cumulative[size - 1]), True
    return order, float(cumulative[-1]), False


def mean_pair_mi(pair_mi_to_cover: torch.Tensor, cover: torch.Tensor,
                 channels: torch.Tensor) -> float | None:
    """Mean pair MI over (c in ``channels``, d in ``cover``), c ≠ d; None without pairs."""
    block = pair_mi_to_cover[:, channels.to(pair_mi_to_cover.device)]
    mask = cover.to(block.device)[:, None] != channels.to(block.device)[None, :]
    if not bool(mask.any()):
        return None
    return float(block[mask].mean())


#: The tables a run writes (``interfaces.DeclaresTables``): required columns, then
#: those that appear with some settings.
TABLE_SCHEMAS = {
    "cover": TableSchema(
        ("seed", "state", "site", "depth", "rel_depth", "site_kind", "q", "set"),
        ("draw", "variant", "n_channels", "frac_channels", "cover_size", "mass_kind",
         "mass", "cover_mass", "mass_reached", "mean_pair_mi_to_cover", "accuracy",
         "baseline_accuracy", "drop")),
    "cover_site_masses": TableSchema(
        ("seed", "state", "site", "depth", "rel_depth", "site_kind"),
        ("mass_kind", "signal_channels", "signal_p", "has_signal", "total_mass")),
}


class CoverExperiment:
    name = "cover"
    table_schemas = TABLE_SCHEMAS

    def __init__(self, params: CoverParams):
        self.params = params

    def plan(self, ctx: RunContext) -> Plan:
        return seed_units(ctx)

    def check_spec(self, spec, estimator) -> None:
        if self.params.pair_bins is None and not isinstance(estimator, PairMI):
            raise SpecError(f"cover ranks channels by their pairwise MI to the cover, but "
                            f"estimator {estimator.name!r} has no pair_mi; set "
                            f"experiment.pair_bins (e.g. {DEFAULT_PAIR_BINS}) to count pairs "
                            f"with a histogram of that many bins")

    def _pair_block(self, ctx: RunContext, acts: torch.Tensor, rows: torch.Tensor
                    ) -> torch.Tensor:
        """I(T_r; T_d) for the channels ``rows`` against every channel: the estimator's
        own pair_mi, or a ``pair_bins`` histogram (min/max range) when the spec asks."""
        from mi_probe.functional.histogram import bin_uniform
        from mi_probe.functional.pairwise import pair_mi_from_codes

        if self.params.pair_bins is None:
            # check_spec refused an estimator without pair_mi when pair_bins is None
            return cast(PairMI, ctx.estimator).pair_mi(acts[:, rows.to(acts.device)], acts)
        codes = bin_uniform(acts, self.params.pair_bins)
        return pair_mi_from_codes(codes[:, rows.to(codes.device)], codes, self.params.pair_bins)

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        from mi_probe.functional.concentration import mass
        from mi_probe.functional.selection import mass_set, MASS_SLACK, random_set

        seed = unit_seed(unit)
        state = self.params.state
        model = ctx.model(seed, state)
        cap = ctx.capture(seed, state)
        baseline = cap.accuracy
        masses = site_masses(ctx, cap, self.params, seed, state)
        iv_name = "knockout" if self.params.variant == "plain" else "energy"
        rows, mass_rows = [], []
        for site in cap.sites:
            m = masses[site.name]
            mass_rows.append({**site_columns(seed, state, site), **m.columns(),
                              "total_mass": float(m.values.sum())})
            if not m.usable:
                ctx.progress(f"seed {seed}: no label MI beyond the null at {site.name}; skipped")
                continue
            v = m.values
            p = mass(v)
            covers = {q: mass_set(v, q) for q in self.params.q}
            largest = max(covers.values(), key=lambda c: c.numel())
            if largest.numel() == 0:
                ctx.progress(f"seed {seed}: no label MI at {site.name}; skipped")
                continue
            ctx.progress(f"seed {seed}: covers at {site.name}")
            # Covers are prefixes of one ranking, so the largest holds every smaller one:
            # one (|largest|, C) pair-MI block serves every q.
            block = self._pair_block(ctx, cap.acts[site.name], largest)
            row_of = {int(c): i for i, c in enumerate(largest.tolist())}
            for q, cover in covers.items():
                if cover.numel() == 0:
                    continue
                pmi = block[[row_of[int(c)] for c in cover.tolist()]]
                target = float(p[cover].sum())
                arms: list[tuple[str, int, torch.Tensor, bool]] = []
                if "cover" in self.params.sets:
                    arms.append(("cover", 0, cover, True))
                if "redundant" in self.params.sets:
                    red, _, reached = redundant_set(v, cover, pmi)
                    if red.numel():
                        arms.append(("redundant", 0, red, reached))
                if "random" in self.params.sets:
                    for draw in range(self.params.random_draws):
                        gen = ctx.rng(seed, f"cover/{site.name}/{q}/{draw}")
                        rnd = random_set(v.numel(), cover.numel(), gen).to(v.device)
                        arms.append(("random", draw, rnd,
                                     float(p[rnd].sum()) >= target - MASS_SLACK))
                for set_name, draw, channels, reached in arms:
                    iv = ctx.plugin("interventions", iv_name)
                    result = ctx.evaluate(model, [(site, iv, channels)], generator=ctx.rng(
                        seed, f"cover-apply/{site.name}/{q}/{set_name}/{draw}"))
                    acc = result.accuracy
                    rows.append({**site_columns(seed, state, site), "q": q, "set": set_name,
                                 "draw": draw, "variant": self.params.variant,
                                 "n_channels": int(channels.numel()),
                                 "frac_channels": channels.numel() / site.channels,
                                 "cover_size": int(cover.numel()), "mass_kind": m.kind,
                                 "mass": float(p[channels].sum()), "cover_mass": target,
                                 "mass_reached": bool(reached),
                                 "mean_pair_mi_to_cover": mean_pair_mi(pmi, cover, channels),
                                 "accuracy": acc, "baseline_accuracy": baseline,
                                 "drop": baseline - acc})
        return {"cover": pl.DataFrame(rows, schema_overrides={"mean_pair_mi_to_cover": pl.Float64}),
                "cover_site_masses": pl.DataFrame(mass_rows)}

    KEYS = ["site", "depth", "site_kind", "q", "set"]

    def finalize(self, ctx, tables):
        from mi_probe.plugin import aggregate_seeds

        frame = tables.get("cover")
        if frame is None or frame.height == 0:
            return {}
        values = ["drop", "accuracy", "mass", "mean_pair_mi_to_cover"]
        keys = with_rel_depth(self.KEYS, frame)
        per_seed = mean_over_draws(frame, ["seed", "state", *keys], values + ["n_channels"])
        by_q = mean_over_draws(per_seed, ["seed", "state", "q", "set"], ["drop", "mass"])
        return {"summary_cover": aggregate_seeds(per_seed, ["state", *keys],
                                                 values + ["n_channels"]),
                "summary_cover_by_q": aggregate_seeds(by_q, ["state", "q", "set"],
                                                      ["drop", "mass"])}

    def figures(self, tables):
        from mi_probe.plugin import charts

        frame = tables.get("cover")
        if frame is None or frame.height == 0:
            return {}
        per_seed = mean_over_draws(frame, ["seed", "site", "depth", "site_kind", "q", "set"],
                                   ["drop"])
        figs = {"cover_drop_by_depth": charts.by_depth(
            per_seed, "drop", color="set", facet="q" if frame["q"].n_unique() > 1 else None,
            title="Accuracy drop: minimal MI cover vs redundant MI-matched vs random sets",
            y_title="accuracy drop")}
        by_q = mean_over_draws(frame, ["seed", "q", "set"], ["drop"])
        figs["cover_drop_vs_q"] = charts.line(
            by_q, x="q", y="drop", color="set", title="Accuracy drop vs cover level q "
            "(mean over sites)", y_title="accuracy drop")
        return figs


@hookimpl
def mi_probe_register_experiments(register):
    register("cover", CoverExperiment, CoverParams)
