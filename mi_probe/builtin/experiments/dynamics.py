"""Built-in experiment ``dynamics`` (paper Figs. 7–8): MI trajectories while training.

For every activation in ``acts`` and every seed, the spec's model is trained with that
activation swapped in (``model.act``), and at initialisation (epoch 0) and after every
epoch the pooled evaluation-set activations of the spec's sites are captured, turned
into per-site I(X;T) and I(T;Y) (means over channels, and per-channel values with
``channel_values``) and the edge-bin fraction (share of samples in a channel's first or
last bin, averaged over channels, from the estimator's ``diagnostics`` when it has them:
high values mean the bin range is set by a few extreme samples, so I(X;T) may follow
the tails), and discarded: only the numbers are kept (in the training history,
so a resumed training keeps them), never the activations. The capture runs in eval
mode without gradients and the training loop reseeds its RNG every epoch, so tracking
does not change training (same seed → bit-identical weights, tested).

Derived per (seed, act), over the **final sites** = the last ⌈final_fraction · S⌉ of the
S sites in depth order (the final third by default):

* ΔI(X;T) = I(X;T) at the best-validation-accuracy epoch − at epoch 0, averaged over
  the final sites (negative = net compression);
* the **I(T;Y) plateau** epoch p: with m_e the mean I(T;Y) over the final sites at
  epoch e and R = max_e m_e − m_0 its total rise, p is the first epoch with
  m_p − m_0 ≥ ``plateau_min_progress`` · R after which the per-epoch increase
  m_e − m_{e−1} stays below a tolerance for ``plateau_window`` consecutive epochs
  (e = p+1 … p+window). The tolerance is ``plateau_tol`` × R per epoch (``plateau_mode:
  relative``, default: scale-free across bins, classes and sample sizes) or
  ``plateau_tol`` nats/epoch (``absolute``). R ≤ 0 (no rise) gives p = 0; no qualifying
  epoch within the trained epochs gives p = null (and null slopes);
* post-plateau slopes: least-squares slope of I(X;T_l) (and I(T;Y_l)) against epoch
  over epochs p … last trained epoch, in nats/epoch, per site and averaged over the
  final sites.

Cheaper tracking (``track_samples: n``): every epoch is measured on the same fixed,
seeded, class-stratified subsample of n evaluation samples (:func:`stratified_subsample`)
instead of the whole evaluation set, which cuts the per-epoch capture and estimator
cost roughly by n / N. The plug-in bias of I(T;Y) grows from (B−1)(K−1)/(2N) to
(B−1)(K−1)/(2n) (column ``i_ty_bias``) and the values get noisier; see docs/dynamics.md
for the measured error. Default (None): the whole evaluation set, as before.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import TYPE_CHECKING, Any, Literal, cast

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mi_probe.builtin.experiments._depth import with_rel_depth
from mi_probe.plugin import (aggregate_seeds, hookimpl, Plan, prepare_site, RunContext,
                             RunError, Site, SpecError, TableSchema, TrainingRequest)

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch

#: Version of what the tracker records (part of the model cache key). 2: frac_edge_bins.
TRACK_VERSION = 2


class DynamicsParams(BaseModel):
    """Per-epoch I(X;T), I(T;Y) while training, for each activation and seed (Figs. 7–8)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["dynamics"] = "dynamics"
    acts: list[Literal["relu", "tanh"]] = Field(
        ["relu", "tanh"], min_length=1,
        description="activations swapped into the model (model.act), one training each")
    final_fraction: float = Field(
        1 / 3, gt=0, le=1, description="ΔI and slopes average over the last "
        "ceil(final_fraction × number of sites) sites in depth order")
    plateau_tol: float = Field(
        0.1, gt=0, description="I(T;Y) plateau tolerance on the per-epoch increase of the "
        "final sites' mean I(T;Y): nats/epoch (absolute) or a fraction of its total rise "
        "(relative)")
    plateau_mode: Literal["relative", "absolute"] = Field(
        "relative", description="how plateau_tol is read")
    plateau_window: int = Field(2, ge=1, description="consecutive epochs the increase must "
                                "stay below the tolerance")
    plateau_min_progress: float = Field(
        0.5, ge=0, le=1, description="the plateau cannot start before the final sites' mean "
        "I(T;Y) has covered this fraction of its total rise (so a flat start before learning "
        "begins is not a plateau)")
    channel_values: bool = Field(False, description="also record per-channel values "
                                 "(tables/dynamics_channels.parquet)")
    track_samples: int | None = Field(
        None, ge=2, description="track MI every epoch on a fixed, seeded, class-stratified "
        "subsample of this many evaluation samples (the same rows every epoch, activation "
        "and seed) instead of the whole evaluation set: per-epoch tracking costs about "
        "n/N of the full set's, the plug-in bias of I(T;Y) grows to (B-1)(K-1)/(2n) "
        "(column i_ty_bias) and values get noisier (docs/dynamics.md). Must lie between "
        "the number of classes and the evaluation-set size. None: the whole evaluation set")
    track_seed: int = Field(0, ge=0, description="seed of the track_samples subsample")

    @field_validator("acts")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"acts must be distinct, got {value}")
        return value


# --------------------------------------------------------------------------- analysis


def final_sites(depths: list[int], fraction: float) -> list[int]:
    """The last ⌈fraction · S⌉ depths (at least one)."""
    ordered = sorted(set(depths))
    count = max(1, math.ceil(fraction * len(ordered) - 1e-9))
    return ordered[-count:]


def plateau_epoch(epochs: list[int], values: list[float], tol: float, window: int,
                  mode: str = "relative", min_progress: float = 0.0) -> tuple[int | None, float]:
    """The I(T;Y) plateau epoch of a series (see the module docstring) and the tolerance
    in nats/epoch that was applied."""
    if len(values) < 2:
        return None, float("nan")
    rise = max(values) - values[0]
    tol_abs = tol if mode == "absolute" else tol * max(rise, 0.0)
    if rise <= 0:
        return epochs[0], tol_abs
    for start in range(0, len(values) - window):
        if values[start] - values[0] < min_progress * rise - 1e-12:
            continue
        increases = [values[i] - values[i - 1] for i in range(start + 1, start + window + 1)]
        if all(d < tol_abs for d in increases):
            return epochs[start], tol_abs
    return None, tol_abs


def ls_slope(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of y on x (None with fewer than two points)."""
    pairs = [(a, b) for a, b in zip(x, y) if b is not None and math.isfinite(b)]
    if len(pairs) < 2:
        return None
    mx = sum(a for a, _ in pairs) / len(pairs)
    my = sum(b for _, b in pairs) / len(pairs)
    sxx = sum((a - mx) ** 2 for a, _ in pairs)
    if sxx == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in pairs) / sxx


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def summarise(frame: pl.DataFrame, params: DynamicsParams) -> tuple[dict[str, Any], list[dict]]:
    """Per-(seed, act) summary and per-site slopes from one training's dynamics rows."""
    final = set(final_sites(frame["depth"].to_list(), params.final_fraction))
    per_epoch = (frame.filter(pl.col("depth").is_in(sorted(final)))
                 .group_by("epoch").agg(pl.col("i_ty").mean(), pl.col("i_xt").mean(),
                                        pl.col("val_acc").first())
                 .sort("epoch"))
    epochs = per_epoch["epoch"].to_list()
    accs = per_epoch["val_acc"].to_list()
    best_i = max(range(len(epochs)), key=lambda i: (accs[i], -epochs[i]))
    best_epoch = epochs[best_i]
    ity_series = per_epoch["i_ty"].to_list()
    if any(v is None or not math.isfinite(v) for v in ity_series):
        p, tol_abs = None, float("nan")  # a non-finite epoch: no plateau is claimed
    else:
        p, tol_abs = plateau_epoch(epochs, ity_series, params.plateau_tol,
                                   params.plateau_window, params.plateau_mode,
                                   params.plateau_min_progress)
    slopes = []
    keys = with_rel_depth(["site", "depth", "site_kind"], frame)
    for group, part in frame.sort("epoch").group_by(keys, maintain_order=True):
        after = part.filter(pl.col("epoch") >= p) if p is not None else part.head(0)
        depth = group[1]
        slopes.append({**dict(zip(keys, group)),
                       "final_site": depth in final,
                       "slope_i_xt": ls_slope(after["epoch"].to_list(), after["i_xt"].to_list()),
                       "slope_i_ty": ls_slope(after["epoch"].to_list(), after["i_ty"].to_list())})
    i_xt = per_epoch["i_xt"].to_list()
    i_ty = per_epoch["i_ty"].to_list()
    summary = {
        "best_epoch": best_epoch, "best_val_acc": accs[best_i],
        "epochs_trained": max(epochs), "n_final_sites": len(final),
        "i_xt_init": i_xt[0], "i_xt_best": i_xt[best_i],
        "delta_i_xt": (i_xt[best_i] - i_xt[0]) if None not in (i_xt[0], i_xt[best_i]) else None,
        "i_ty_init": i_ty[0], "i_ty_best": i_ty[best_i],
        "delta_i_ty": (i_ty[best_i] - i_ty[0]) if None not in (i_ty[0], i_ty[best_i]) else None,
        "plateau_epoch": p, "plateau_tol_nats": tol_abs,
        "post_plateau_slope_i_xt": _mean([s["slope_i_xt"] for s in slopes if s["final_site"]]),
        "post_plateau_slope_i_ty": _mean([s["slope_i_ty"] for s in slopes if s["final_site"]]),
    }
    return summary, slopes


# --------------------------------------------------------------------------- subsample


def stratified_subsample(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` sorted row indices of ``labels``, class-stratified: class k gets its
    proportional share n·N_k/N rounded by largest remainder (ties: lower class index),
    at least one row per class present, drawn without replacement by a generator seeded
    from ``seed`` alone. The same (labels, n, seed) always gives the same rows."""
    import torch

    from mi_probe.plugin import derive_seed

    labels = torch.as_tensor(labels).cpu().long().flatten()
    total = labels.numel()
    classes, counts = torch.unique(labels, return_counts=True)
    counts_l = counts.tolist()
    if not len(counts_l) <= n <= total:
        raise ValueError(f"need {len(counts_l)} <= n <= {total}, got {n}")
    quota = [n * c / total for c in counts_l]
    take = [min(c, max(1, math.floor(q))) for c, q in zip(counts_l, quota)]
    while sum(take) > n:  # the at-least-one rule over-allocated: trim the most over quota
        i = max((i for i in range(len(take)) if take[i] > 1),
                key=lambda i: (take[i] - quota[i], -i))
        take[i] -= 1
    while sum(take) < n:  # largest remainder among classes with rows left
        i = max((i for i in range(len(take)) if take[i] < counts_l[i]),
                key=lambda i: (quota[i] - take[i], -i))
        take[i] += 1
    gen = torch.Generator().manual_seed(derive_seed("dynamics.track_samples", seed))
    chosen = []
    for k, m in zip(classes.tolist(), take):
        rows = (labels == k).nonzero().flatten()
        chosen.append(rows[torch.randperm(rows.numel(), generator=gen)[:m]])
    return torch.cat(chosen).sort().values


def eval_labels(dataset: Any) -> torch.Tensor:
    """Labels of an evaluation dataset in order, without decoding images where the
    dataset exposes them (``labels``, ``samples``, ``Subset``); else by iterating it."""
    import torch

    if isinstance(dataset, torch.utils.data.Subset):
        return eval_labels(dataset.dataset)[torch.as_tensor(list(dataset.indices),
                                                            dtype=torch.long)]
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.numel() == len(dataset):
        return labels.long().cpu()
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and len(samples) == len(dataset):
        return torch.tensor([int(label) for _, label in samples], dtype=torch.long)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


# --------------------------------------------------------------------------- experiment


def _finite(value: torch.Tensor) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


#: The tables a run writes (``interfaces.DeclaresTables``): required columns, then
#: those that appear with some settings.
TABLE_SCHEMAS = {
    "dynamics": TableSchema(
        ("seed", "epoch", "act", "site", "depth", "rel_depth", "i_xt", "i_ty", "val_acc"),
        ("arch", "state", "site_kind", "frac_edge_bins", "eval_acc", "n_samples",
         "i_ty_bias", "final_site")),
    "dynamics_slopes": TableSchema(
        ("seed", "act", "site", "depth", "rel_depth"),
        ("site_kind", "final_site", "slope_i_xt", "slope_i_ty")),
    "dynamics_summary": TableSchema(
        ("seed", "act"),
        ("arch", "best_epoch", "best_val_acc", "epochs_trained", "n_final_sites",
         "i_xt_init", "i_xt_best", "delta_i_xt", "i_ty_init", "i_ty_best", "delta_i_ty",
         "plateau_epoch", "plateau_tol_nats", "post_plateau_slope_i_xt",
         "post_plateau_slope_i_ty")),
}


class Dynamics:
    name = "dynamics"
    table_schemas = TABLE_SCHEMAS

    def __init__(self, params: DynamicsParams):
        self.params = params

    def plan(self, ctx: RunContext) -> Plan:
        if not hasattr(ctx, "train"):
            raise SpecError("dynamics needs a run context that can train models (ctx.train)")
        if ctx.spec.model.weights != "train":
            raise SpecError(f"dynamics trains its own models (one per activation and seed); "
                            f"model.weights must be 'train', got {ctx.spec.model.weights!r}")
        if hasattr(ctx, "eval_set"):
            self.track_subset(ctx)  # refuse an impossible track_samples before training
        return Plan(tuple(f"act={act},seed={seed}" for act in self.params.acts
                          for seed in ctx.spec.seeds))

    def trainings(self, ctx: RunContext) -> list[TrainingRequest]:
        """One tracked training per (activation, seed); the units read their histories."""
        return [TrainingRequest(seed, {"act": act}, track=self.tracker(ctx),
                                track_key=self.track_key(ctx))
                for act in self.params.acts for seed in ctx.spec.seeds]

    def track_subset(self, ctx: RunContext, labels: torch.Tensor | None = None
                     ) -> torch.Tensor | None:
        """The evaluation rows tracked every epoch (None: all of them). ``labels``: the
        evaluation labels in order, read from ``ctx.eval_set`` when not given (the engine
        has it; a context without it passes the labels of a capture)."""
        n = self.params.track_samples
        if n is None:
            return None
        if labels is None:
            # the engine's evaluation set, outside the RunContext protocol (plan asks
            # hasattr first)
            labels = eval_labels(cast(Any, ctx).eval_set)
        total, k = int(labels.numel()), ctx.num_classes
        if n > total:
            raise SpecError(f"experiment.track_samples: {n} is larger than the evaluation "
                            f"set ({total} samples); use at most {total}, or null to track "
                            "on the whole evaluation set")
        if n < k:
            raise SpecError(f"experiment.track_samples: {n} is smaller than the number of "
                            f"classes ({k}); a class-stratified subsample needs at least "
                            f"one sample per class, so use at least {k}")
        return stratified_subsample(labels, n, self.params.track_seed)

    def track_key(self, ctx: RunContext) -> str:
        """What is tracked: part of the trained-model cache key."""
        spec = ctx.spec
        what = {"v": TRACK_VERSION, "estimator": spec.estimator.model_dump(mode="json"),
                "sites": spec.sites.model_dump(mode="json"),
                "eval_max_samples": spec.eval.max_samples,
                "channel_values": self.params.channel_values}
        if self.params.track_samples is not None:  # absent by default: old keys unchanged
            what["track_samples"] = self.params.track_samples
            what["track_seed"] = self.params.track_seed
        blob = json.dumps(what, sort_keys=True)
        return f"dynamics:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def tracker(self, ctx: RunContext):
        """``track(model, epoch) -> dict``: per-site layer (and channel) MI of the evaluation
        set; activations are reduced to numbers inside the call and then dropped."""
        import torch

        est = ctx.estimator
        channel_values = self.params.channel_values
        subset: list[torch.Tensor | None] = []  # computed once, at the first call

        def track(model: torch.nn.Module, epoch: int) -> dict[str, Any]:
            sites = ctx.sites(model)
            if self.params.track_samples is None:
                cap = ctx.evaluate(model, sites=sites)
            else:
                if not subset:
                    labels = None if hasattr(ctx, "eval_set") else ctx.evaluate(model).labels
                    subset.append(self.track_subset(ctx, labels))
                cap = ctx.evaluate(model, sites=sites, subset=subset[0])
            out: dict[str, Any] = {"eval_acc": cap.accuracy, "sites": {},
                                   "n_samples": int(cap.labels.numel())}
            for site in sites:
                acts = cap.acts.pop(site.name)
                if not bool(torch.isfinite(acts).all()):
                    out["sites"][site.name] = {"i_xt": None, "i_ty": None,
                                               "frac_edge_bins": None, "nonfinite": True}
                    continue
                prepared = prepare_site(est, acts)  # one binning for all three
                i_ty_c = prepared.label_mi(cap.labels, ctx.num_classes)
                i_xt_c = prepared.input_mi()
                diag = prepared.diagnostics()
                entry = {"i_ty": _finite(i_ty_c.mean()),
                         "i_xt": _finite(i_xt_c.mean()) if i_xt_c is not None else None,
                         "frac_edge_bins": diag.get("frac_edge_bins")}
                if channel_values:
                    entry["i_ty_c"] = [float(v) for v in i_ty_c.cpu().tolist()]
                    entry["i_xt_c"] = ([float(v) for v in i_xt_c.cpu().tolist()]
                                       if i_xt_c is not None else None)
                out["sites"][site.name] = entry
            del cap
            return out

        return track

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        fields = dict(part.split("=", 1) for part in unit.split(","))
        act, seed = fields["act"], int(fields["seed"])
        ctx.progress(f"seed {seed}: training with act={act}, tracking MI every epoch")
        model, history = ctx.train(seed, model_overrides={"act": act}, track=self.tracker(ctx),
                                   track_key=self.track_key(ctx))
        sites: list[Site] = ctx.sites(model)
        arch = ctx.spec.model.arch
        rows, channel_rows, warned = [], [], set()
        for record in history:
            tracked = record.get("tracked")
            if tracked is None:
                raise RunError(f"dynamics: training history of seed {seed}, act {act} has no "
                               f"tracked values at epoch {record['epoch']} (a cached model "
                               "trained without tracking?); delete its cache folder")
            epoch = int(record["epoch"])
            n_tracked = tracked.get("n_samples")
            bias = (ctx.estimator.bias(n_tracked, ctx.num_classes)
                    if n_tracked is not None else None)
            for site in sites:
                entry = tracked["sites"].get(site.name)
                if entry is None:
                    raise RunError(f"dynamics: no tracked values for site {site.name!r} at "
                                   f"epoch {epoch} (seed {seed}, act {act})")
                if entry.get("nonfinite") and site.name not in warned:
                    warned.add(site.name)
                    ctx.progress(f"warning: site {site.name} has non-finite activations "
                                 f"(seed {seed}, act {act}, epoch {epoch}); MI left null")
                rows.append({"seed": seed, "act": act, "arch": arch, "epoch": epoch,
                             "state": f"epoch_{epoch}", "site": site.name, "depth": site.depth,
                             "rel_depth": site.rel_depth, "site_kind": site.kind,
                             "i_xt": entry["i_xt"],
                             "i_ty": entry["i_ty"],
                             "frac_edge_bins": entry.get("frac_edge_bins"),
                             "val_acc": record["val_acc"], "eval_acc": tracked.get("eval_acc"),
                             "n_samples": n_tracked, "i_ty_bias": bias})
                if self.params.channel_values and entry.get("i_ty_c") is not None:
                    i_xt_c = entry.get("i_xt_c") or [None] * len(entry["i_ty_c"])
                    channel_rows.append(pl.DataFrame({
                        "seed": seed, "act": act, "epoch": epoch, "site": site.name,
                        "depth": site.depth, "rel_depth": site.rel_depth,
                        "channel": list(range(len(entry["i_ty_c"]))),
                        "i_xt": i_xt_c, "i_ty": entry["i_ty_c"]},
                        schema_overrides={"i_xt": pl.Float64, "i_ty": pl.Float64}))
        floats = {c: pl.Float64 for c in ("i_xt", "i_ty", "frac_edge_bins", "val_acc",
                                          "eval_acc", "i_ty_bias")}
        frame = pl.DataFrame(rows, schema_overrides=floats | {"n_samples": pl.Int64})
        final = set(final_sites(frame["depth"].to_list(), self.params.final_fraction))
        frame = frame.with_columns(final_site=pl.col("depth").is_in(sorted(final)))
        summary, slopes = summarise(frame, self.params)
        tables = {
            "dynamics": frame,
            "dynamics_summary": pl.DataFrame(
                [{"seed": seed, "act": act, "arch": arch, **summary}],
                schema_overrides={c: pl.Float64 for c in (
                    "i_xt_init", "i_xt_best", "delta_i_xt", "i_ty_init", "i_ty_best",
                    "delta_i_ty", "plateau_tol_nats", "post_plateau_slope_i_xt",
                    "post_plateau_slope_i_ty")} | {"plateau_epoch": pl.Int64}),
            "dynamics_slopes": pl.DataFrame(
                [{"seed": seed, "act": act, **s} for s in slopes],
                schema_overrides={"slope_i_xt": pl.Float64, "slope_i_ty": pl.Float64}),
        }
        if channel_rows:
            tables["dynamics_channels"] = pl.concat(channel_rows)
        return tables

    def finalize(self, ctx: RunContext | None, tables: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
        out = {}
        summary = tables.get("dynamics_summary")
        if summary is not None and summary.height:
            out["summary_dynamics"] = aggregate_seeds(
                summary, ["arch", "act"],
                ["delta_i_xt", "delta_i_ty", "best_val_acc", "best_epoch", "plateau_epoch",
                 "post_plateau_slope_i_xt", "post_plateau_slope_i_ty"])
        frame = tables.get("dynamics")
        if frame is not None and frame.height:
            values = ["i_xt", "i_ty", "val_acc"] + (
                ["frac_edge_bins"] if "frac_edge_bins" in frame.columns else [])
            out["summary_dynamics_sites"] = aggregate_seeds(
                frame, with_rel_depth(["act", "site", "depth", "site_kind", "epoch"], frame),
                values)
        return out

    def figures(self, tables: dict[str, pl.DataFrame]) -> dict[str, Any]:
        from mi_probe.plugin import charts

        figs: dict[str, Any] = {}
        summary = tables.get("dynamics_summary")
        if summary is not None and summary.height:
            points = summary.with_columns(model=pl.col("arch") + " / " + pl.col("act"))
            figs["accuracy_vs_delta_i_xt"] = charts.scatter(
                points.drop_nulls("delta_i_xt"), x="delta_i_xt", y="best_val_acc",
                color="model", tooltip=("seed", "act", "arch", "best_epoch"),
                title="Best validation accuracy vs ΔI(X;T) (init → best epoch, final sites)",
                x_title="ΔI(X;T) [nats] (negative = compression)",
                y_title="best validation accuracy")
        frame = tables.get("dynamics")
        if frame is None or frame.height == 0:
            return figs
        final = frame.filter(pl.col("final_site")) if "final_site" in frame.columns else frame
        edge = [pl.col("frac_edge_bins").mean()] if "frac_edge_bins" in final.columns else []
        per_seed = final.group_by(["seed", "act", "epoch"]).agg(
            pl.col("i_xt").mean(), pl.col("i_ty").mean(), pl.col("val_acc").first(), *edge)
        figs["i_xt_vs_epoch"] = charts.line(
            per_seed.drop_nulls("i_xt"), x="epoch", y="i_xt", color="act",
            title="I(X;T) = H(binned T) while training, mean over the final sites",
            y_title="I(X;T) [nats]")
        figs["i_ty_vs_epoch"] = charts.line(
            per_seed.drop_nulls("i_ty"), x="epoch", y="i_ty", color="act",
            title="I(T;Y) while training, mean over the final sites", y_title="I(T;Y) [nats]")
        figs["val_acc_vs_epoch"] = charts.line(per_seed, x="epoch", y="val_acc", color="act",
                                               title="Validation accuracy while training",
                                               y_title="validation accuracy")
        if edge and per_seed["frac_edge_bins"].drop_nulls().len():
            figs["frac_edge_bins_vs_epoch"] = charts.line(
                per_seed.drop_nulls("frac_edge_bins"), x="epoch", y="frac_edge_bins",
                color="act", y_title="share of samples in a first or last bin",
                title="Edge-bin share while training, mean over the final sites (high: the "
                      "bin range follows a few extreme samples)")
        figs["information_plane"] = _information_plane(frame)
        slopes = tables.get("dynamics_slopes")
        if slopes is not None and slopes.height and slopes["slope_i_xt"].drop_nulls().len():
            figs["post_plateau_slope_by_depth"] = charts.by_depth(
                slopes.drop_nulls("slope_i_xt"), "slope_i_xt", color="act",
                title="Post-plateau slope of I(X;T) by depth",
                y_title="dI(X;T)/d epoch [nats/epoch]")
        return figs


def _information_plane(frame: pl.DataFrame):
    """I(X;T) vs I(T;Y) per site over epochs (mean over seeds), colour = epoch, one
    panel per site, one trajectory per activation."""
    import altair as alt

    agg = (frame.drop_nulls(["i_xt", "i_ty"])
           .group_by(["act", "site", "depth", "epoch"])
           .agg(pl.col("i_xt").mean(), pl.col("i_ty").mean(), pl.len().alias("n_seeds"))
           .sort(["depth", "act", "epoch"]))
    order = agg.select("site", "depth").unique().sort("depth")["site"].to_list()
    data = alt.InlineData(values=agg.to_dicts())
    x = alt.X("i_xt", type="quantitative", title="I(X;T) [nats]", scale=alt.Scale(zero=False))
    y = alt.Y("i_ty", type="quantitative", title="I(T;Y) [nats]", scale=alt.Scale(zero=False))
    path = alt.Chart().mark_line(opacity=0.5, color="gray").encode(
        x=x, y=y, detail=alt.Detail("act", type="nominal"),
        strokeDash=alt.StrokeDash("act", type="nominal", title="activation"),
        order=alt.Order("epoch", type="quantitative"))
    dots = alt.Chart().mark_point(filled=True, size=45).encode(
        x=x, y=y, color=alt.Color("epoch", type="quantitative", scale=alt.Scale(scheme="viridis")),
        shape=alt.Shape("act", type="nominal", title="activation"),
        tooltip=[alt.Tooltip("site", type="nominal"), alt.Tooltip("act", type="nominal"),
                 alt.Tooltip("epoch", type="quantitative"),
                 alt.Tooltip("i_xt", type="quantitative", format=".4g"),
                 alt.Tooltip("i_ty", type="quantitative", format=".4g"),
                 alt.Tooltip("n_seeds", type="quantitative")])
    layered = alt.layer(path, dots, data=data).properties(width=220, height=180)
    return layered.facet(facet=alt.Facet("site", type="nominal", sort=order, title="site"),
                         columns=4).properties(
        title="Information plane while training (mean over seeds; colour = epoch)")


@hookimpl
def mi_probe_register_experiments(register):
    register("dynamics", Dynamics, DynamicsParams)
