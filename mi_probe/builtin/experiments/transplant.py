"""Built-in ``transplant`` experiment (paper App. C).

Donor and recipient are the trained models of two seeds of the same spec. At each site
the donor's top-MI channels (the mass-q set of the donor's per-channel I(T_c;Y)) are
transplanted into a copy of the recipient: the parameters that write those
out-channels (the adapter's ``producers(model, site)``: conv weight/bias rows and norm
weight/bias/running-mean/running-variance entries) are copied from the donor. The
copy is evaluated without interventions. Controls: size-matched random donor channels
and the donor's bottom-MI channels. The recipient model itself is never modified.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Literal, cast

import polars as pl
from pydantic import ConfigDict, Field, field_validator

from mi_probe.builtin.experiments._depth import site_columns, with_rel_depth
from mi_probe.plugin import (
    ChannelMassParams, check_mass_levels, HasProducers, hookimpl, mean_over_draws, Plan,
    RunContext, RunError, Site, site_masses, SpecError, TableSchema, TRAINED)

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch
    from torch import nn

#: Per-channel tensors copied for each producer role.
ROLE_TENSORS = {"conv": ("weight", "bias"),
                "norm": ("weight", "bias", "running_mean", "running_var")}


class TransplantParams(ChannelMassParams):
    """Copy the donor's top-MI out-channels into a copy of the recipient (App. C)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["transplant"] = "transplant"
    pairs: list[tuple[int, int]] | None = Field(
        None, description="[donor_seed, recipient_seed] pairs, seeds from `seeds`; default: "
        "consecutive seeds (seeds[i] donates to seeds[i+1])")
    q: list[float] = Field([0.1, 0.2, 0.5], min_length=1,
                           description="MI-mass levels of the donor's top set")
    selections: list[Literal["top", "random", "bottom"]] = Field(
        ["top", "random", "bottom"], min_length=1,
        description="top: donor's mass-q set; random / bottom: size-matched controls")
    random_draws: int = Field(3, ge=1, description="size-matched random sets per (site, q)")

    _q_range = field_validator("q")(check_mass_levels)

    @field_validator("pairs")
    @classmethod
    def _distinct(cls, value):
        same = [list(p) for p in value or [] if p[0] == p[1]]
        if same:
            raise ValueError(f"a donor must differ from its recipient, got {same}")
        return value


def producers_adapter(ctx: RunContext, model: nn.Module) -> HasProducers:
    """The run's site adapter for ``model`` (``ctx.adapter``: the spec's, or the first
    that claims it, built-in or third-party), if it can name producers; SpecError else."""
    adapter = ctx.adapter(model)
    if not isinstance(adapter, HasProducers):
        raise SpecError(f"transplant needs a site adapter with producers(model, site); the "
                        f"adapter {adapter.name!r} chosen for {ctx.spec.model.arch} has none "
                        f"(built in: resnet, vgg)")
    return adapter


def transplant_channels(recipient: nn.Module, donor: nn.Module,
                        producers: list[tuple[str, str]], channels: torch.Tensor) -> nn.Module:
    """A deep copy of ``recipient`` whose ``producers`` carry the donor's out-channel
    rows ``channels``; every other parameter and buffer is the recipient's."""
    import torch

    model = copy.deepcopy(recipient)
    with torch.no_grad():
        for path, role in producers:
            if role not in ROLE_TENSORS:
                raise RunError(f"producer {path!r} has role {role!r}; "
                               f"valid: {sorted(ROLE_TENSORS)}")
            dst, src = model.get_submodule(path), donor.get_submodule(path)
            for attr in ROLE_TENSORS[role]:
                d, s = getattr(dst, attr, None), getattr(src, attr, None)
                if d is None or s is None:
                    continue
                if d.shape != s.shape:
                    raise RunError(f"cannot transplant {path}.{attr}: donor shape "
                                   f"{tuple(s.shape)}, recipient {tuple(d.shape)}")
                idx = channels.to(d.device)
                d.index_copy_(0, idx, s.detach().index_select(0, idx.to(s.device)).to(d.device))
    return model


def default_pairs(seeds: list[int]) -> list[tuple[int, int]]:
    return [(seeds[i], seeds[i + 1]) for i in range(len(seeds) - 1)]


#: The tables a run writes (``interfaces.DeclaresTables``): required columns, then
#: those that appear with some settings.
TABLE_SCHEMAS = {
    "transplant": TableSchema(
        ("seed", "state", "site", "depth", "rel_depth", "site_kind", "donor_seed", "q", "selection",
         "accuracy", "baseline_accuracy", "change"),
        ("draw", "n_channels", "frac_channels", "top_bottom_overlap", "mass_kind", "mass",
         "donor_accuracy", "producers")),
    "transplant_site_masses": TableSchema(
        ("seed", "state", "site", "depth", "rel_depth", "site_kind", "donor_seed"),
        ("mass_kind", "signal_channels", "signal_p", "has_signal", "total_mass")),
}


class Transplant:
    name = "transplant"
    table_schemas = TABLE_SCHEMAS

    def __init__(self, params: TransplantParams):
        self.params = params

    def _pairs(self, ctx: RunContext) -> list[tuple[int, int]]:
        seeds = list(ctx.spec.seeds)
        if self.params.pairs is None:
            if len(seeds) < 2:
                raise SpecError(f"transplant needs two trained models of different seeds, but "
                                f"seeds is {seeds}; list at least two seeds (e.g. seeds: [0, 1]) "
                                "or give experiment.pairs")
            return default_pairs(seeds)
        unknown = sorted({s for p in self.params.pairs for s in p} - set(seeds))
        if unknown:
            raise SpecError(f"experiment.pairs names seeds {unknown} that are not in seeds "
                            f"{seeds}")
        return [cast("tuple[int, int]", tuple(p)) for p in self.params.pairs]

    def plan(self, ctx: RunContext) -> Plan:
        recipients = list(dict.fromkeys(r for _, r in self._pairs(ctx)))
        return Plan(tuple(f"seed={r}" for r in recipients))

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        recipient_seed = int(unit.split("=", 1)[1])
        rows: list[dict] = []
        mass_rows: list[dict] = []
        for donor_seed, r in self._pairs(ctx):
            if r == recipient_seed:
                rows += self._pair(ctx, donor_seed, recipient_seed, mass_rows)
        out = {"transplant_site_masses": pl.DataFrame(mass_rows)}
        if rows:  # none when the donor beats the null nowhere: the site-masses table says so
            out["transplant"] = pl.DataFrame(rows)
        return out

    def _pair(self, ctx: RunContext, donor_seed: int, recipient_seed: int,
              site_masses_rows: list[dict]) -> list[dict]:
        recipient = ctx.model(recipient_seed, TRAINED)
        donor = ctx.model(donor_seed, TRAINED)
        adapter = producers_adapter(ctx, recipient)
        cap = ctx.capture(donor_seed, TRAINED)
        masses = site_masses(ctx, cap, self.params, donor_seed, TRAINED)
        baseline = ctx.evaluate(recipient).accuracy
        donor_accuracy = cap.accuracy
        rows: list[dict] = []
        usable = 0
        for site in cap.sites:
            producers = adapter.producers(recipient, site)
            if not producers:
                ctx.progress(f"transplant: site {site.name} ({site.kind}) has no producer "
                             "modules; skipped")
                continue
            usable += 1
            site_masses_rows.append({**site_columns(recipient_seed, TRAINED, site),
                                     "donor_seed": donor_seed, **masses[site.name].columns(),
                                     "total_mass": float(masses[site.name].values.sum())})
            if not masses[site.name].usable:
                ctx.progress(f"transplant: the donor holds no label MI beyond the null at "
                             f"{site.name}; skipped")
                continue
            rows += self._site(ctx, site, producers, masses[site.name].values, donor, recipient,
                               donor_seed, recipient_seed, baseline, donor_accuracy)
        if not usable:
            raise SpecError(f"transplant: none of the sites {[s.name for s in cap.sites]} has "
                            "producer modules; choose ResNet stem/pre_add/post_add or VGG "
                            "post_act sites")
        return rows

    def _site(self, ctx: RunContext, site: Site, producers, v: torch.Tensor, donor, recipient,
              donor_seed: int, recipient_seed: int, baseline: float,
              donor_accuracy: float) -> list[dict]:
        from mi_probe.functional.concentration import mass
        from mi_probe.functional.masses import set_overlap
        from mi_probe.functional.selection import bottom_set, mass_set, select

        p = mass(v)
        rows = []
        ctx.progress(f"transplant {donor_seed} -> {recipient_seed} at {site.name}")
        for q in self.params.q:
            top = mass_set(v, q)
            if top.numel() == 0:
                continue  # the donor holds no label MI here: nothing to target
            overlap = set_overlap(top, bottom_set(v, top.numel()))
            for selection in self.params.selections:
                draws = range(self.params.random_draws) if selection == "random" else [0]
                for draw in draws:
                    gen = ctx.rng(recipient_seed, f"transplant/{donor_seed}/{site.name}/{q}/{draw}")
                    channels = select(v, q, selection, gen, size=top.numel()).cpu()
                    model = transplant_channels(recipient, donor, producers, channels)
                    acc = ctx.evaluate(model).accuracy
                    del model
                    rows.append({**site_columns(recipient_seed, TRAINED, site),
                                 "donor_seed": donor_seed, "q": q, "selection": selection,
                                 "draw": draw, "n_channels": int(channels.numel()),
                                 "frac_channels": channels.numel() / site.channels,
                                 "top_bottom_overlap": overlap, "mass_kind": self.params.mass,
                                 "mass": float(p[channels.to(p.device)].sum()),
                                 "accuracy": acc, "baseline_accuracy": baseline,
                                 "change": acc - baseline, "donor_accuracy": donor_accuracy,
                                 "producers": ",".join(path for path, _ in producers)})
        return rows

    KEYS = ["site", "depth", "site_kind", "q", "selection"]

    def finalize(self, ctx, tables):
        from mi_probe.plugin import aggregate_seeds

        frame = tables.get("transplant")
        if frame is None or frame.height == 0:
            return {}
        keys = with_rel_depth(self.KEYS, frame)
        per_pair = mean_over_draws(frame, ["seed", "donor_seed", *keys],
                                   ["change", "accuracy", "mass", "n_channels"])
        by_q = mean_over_draws(per_pair, ["seed", "donor_seed", "q", "selection"],
                               ["change", "accuracy"])
        return {"summary_transplant": aggregate_seeds(per_pair, keys,
                                                      ["change", "accuracy", "mass"],
                                                      count_name="n_pairs"),
                "summary_transplant_by_q": aggregate_seeds(by_q, ["q", "selection"],
                                                           ["change", "accuracy"],
                                                           count_name="n_pairs")}

    def figures(self, tables):
        from mi_probe.plugin import charts

        frame = tables.get("transplant")
        if frame is None or frame.height == 0:
            return {}
        frame = frame.with_columns(pair=pl.format("{}->{}", "donor_seed", "seed"))
        per_pair = mean_over_draws(frame, ["pair", "q", "selection"], ["change"])
        figs = {"transplant_change_vs_q": charts.line(
            per_pair, x="q", y="change", color="selection", replicate="pair",
            title="Recipient accuracy change after transplanting donor channels "
                  "(mean over sites; CI over donor→recipient pairs)",
            y_title="accuracy change (transplanted − recipient)")}
        q_max = frame["q"].max()
        by_site = mean_over_draws(frame.filter(pl.col("q") == q_max),
                                  ["pair", "site", "depth", "site_kind", "selection"],
                                  ["change"])
        figs["transplant_change_by_depth"] = charts.by_depth(
            by_site, "change", color="selection", replicate="pair",
            title=f"Accuracy change by depth at q = {q_max:g}", y_title="accuracy change")
        return figs


@hookimpl
def mi_probe_register_experiments(register):
    register("transplant", Transplant, TransplantParams)
