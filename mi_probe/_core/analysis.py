"""Helpers shared by experiment plugins (built-in and third-party): seed units, site
rows, per-site channel MI and channel masses. Pure functions over the run context; no
engine imports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import polars as pl
from pydantic import BaseModel, Field

from mi_probe.errors import EstimatorError, SpecError
from mi_probe.interfaces import (Captured, Diagnoses, Estimator, Plan, Prepares,
                                 RunContext, Site)

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch

    from mi_probe.functional import masses as M


def seed_units(ctx: RunContext, **settings: Any) -> Plan:
    """The plan of one unit per seed, ``seed=<n>``, with ``settings``."""
    return Plan(tuple(f"seed={seed}" for seed in ctx.spec.seeds), settings)


def unit_seed(unit: str) -> int:
    return int(unit.split("=", 1)[1])


def site_row(seed: int, state: str, site: Site) -> dict[str, Any]:
    """The columns every per-site table row starts with."""
    return {"seed": seed, "state": state, "site": site.name, "depth": site.depth,
            "site_kind": site.kind}


class PreparedSite:
    """One site's (N, C) activations bound to an estimator, for asking them several
    quantities: from one shared state when the estimator ``Prepares`` (the histogram
    bins them once), else from its per-quantity methods, so an estimator without the
    ability works unchanged. The answers are the same either way."""

    def __init__(self, estimator: Estimator, acts: torch.Tensor, *, use_state: bool = True):
        self.estimator, self.acts = estimator, acts
        #: the estimator's prepared state; None: per-quantity methods
        self.state = (estimator.prepare(acts)
                      if use_state and isinstance(estimator, Prepares) else None)

    def label_mi(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Per-channel I(T_c;Y) for ``labels`` (N,); ask as often as needed (nulls)."""
        if self.state is None:
            return self.estimator.label_mi(self.acts, labels, num_classes)
        # a state exists only for an estimator that Prepares
        return cast(Prepares, self.estimator).label_mi_prepared(self.state, labels, num_classes)

    def input_mi(self) -> torch.Tensor | None:
        """Per-channel I(X;T_c), or None when the estimator does not estimate it."""
        if self.state is None:
            return self.estimator.input_mi(self.acts)
        return cast(Prepares, self.estimator).input_mi_prepared(self.state)

    def diagnostics(self) -> dict[str, Any]:
        """The estimator's diagnostics row (``{}`` when it has none)."""
        if self.state is None:
            return (self.estimator.diagnostics(self.acts)
                    if isinstance(self.estimator, Diagnoses) else {})
        return cast(Prepares, self.estimator).diagnostics_prepared(self.state)


def prepare_site(estimator: Estimator, acts: torch.Tensor, *, use_state: bool = True
                 ) -> PreparedSite:
    """``acts`` of one site bound to ``estimator`` (:class:`PreparedSite`); prepared once
    when it ``Prepares`` and ``use_state`` (False: always the per-quantity methods)."""
    return PreparedSite(estimator, acts, use_state=use_state)


def channel_label_mi(ctx: RunContext, cap: Captured) -> dict[str, torch.Tensor]:
    """Per-site I(T_c;Y) vectors (on the capture device) for a captured model."""
    return {site.name: ctx.estimator.label_mi(cap.acts[site.name], cap.labels, ctx.num_classes)
            for site in cap.sites}


def mean_over_draws(frame: pl.DataFrame, keys: list[str], values: list[str]) -> pl.DataFrame:
    """Average random draws within each seed before aggregating over seeds."""
    return frame.group_by(keys, maintain_order=True).agg([pl.col(v).mean() for v in values])


def check_mass_levels(value: list[float]) -> list[float]:
    """Validator for MI-mass levels q: each must lie in (0, 1]."""
    bad = [q for q in value if not 0 < q <= 1]
    if bad:
        raise ValueError(f"MI-mass levels must lie in (0, 1], got {bad}")
    return value


MassKind = Literal["raw", "null_subtracted", "miller_madow"]


class ChannelMassParams(BaseModel):
    """Spec fields of every experiment that ranks or weighs channels by I(T_c;Y)."""

    mass: MassKind = Field(
        "null_subtracted", description="per-channel label-MI mass: raw (the paper's plug-in "
        "I(T_c;Y)), null_subtracted (minus the mean of a per-channel shuffled-label null, "
        "clipped at 0) or miller_madow (histogram estimator only, clipped at 0). With the "
        "corrected kinds a site whose channels do not beat the null has no mass: its "
        "concentration is reported as missing and it is not intervened on "
        "(docs/concepts.md, 'Channel masses')")
    mass_null_draws: int = Field(5, ge=2, le=1000, description="label permutations of the "
                                 "shuffled-label null of the corrected masses")

    def check_mass(self, estimator: Any) -> None:
        """Refuse a mass the spec's estimator cannot give (``validation.validate`` calls it for
        every experiment whose params carry a mass)."""
        if self.mass == "miller_madow" and estimator.name != "histogram":
            raise SpecError(f"experiment.mass: miller_madow is a histogram-estimator "
                            f"correction; the spec's estimator is {estimator.name!r}. "
                            f"Use mass: null_subtracted (any estimator) or raw")


@dataclass(frozen=True)
class ChannelMasses:
    """Per-channel masses of one site: ``raw`` I(T_c;Y) and the ``values`` the chosen
    ``kind`` ranks and weighs channels by (≥ 0, float64). ``signal`` is the shuffled-null
    test of the corrected kinds (None for raw, which is never gated)."""

    kind: str
    raw: torch.Tensor
    values: torch.Tensor
    signal: M.SignalTest | None = None

    @property
    def usable(self) -> bool:
        """False when a corrected mass found no label information beyond the null."""
        return self.signal is None or self.signal.has_signal

    def columns(self) -> dict[str, Any]:
        """Row columns that record the mass used and its signal test."""
        s = self.signal
        return {"mass_kind": self.kind,
                "signal_channels": None if s is None else s.signal_channels,
                "signal_p": None if s is None else s.p_value,
                "has_signal": None if s is None else s.has_signal}


def _miller_madow_estimator(ctx: RunContext):
    if ctx.estimator.name != "histogram":
        raise SpecError(f"mass: miller_madow needs the histogram estimator; found "
                        f"{ctx.estimator.name!r}")
    # the histogram estimator keeps its validated params model
    params = cast(Any, ctx.estimator).params.model_dump(exclude={"kind"})
    return ctx.plugin("estimators", "histogram", **{**params, "correction": "miller_madow"})


def channel_masses(ctx: RunContext, acts: torch.Tensor, labels: torch.Tensor,
                   num_classes: int, kind: str, *, seed: int, purpose: str,
                   null_draws: int = 5, raw: torch.Tensor | None = None,
                   prepared: PreparedSite | None = None) -> ChannelMasses:
    """Masses of the channels of ``acts`` (N, C) for ``labels`` (N,) in [0, num_classes).

    ``purpose`` names the site (and class, split...) so that the null's label
    permutations are seeded per site and reproducible. ``raw`` may pass an already
    computed ``ctx.estimator.label_mi`` of the same inputs, ``prepared`` these ``acts``
    already bound to ``ctx.estimator`` (:func:`prepare_site`); else they are prepared
    here when the null asks them several times.
    """
    import torch

    from mi_probe.functional import masses as M

    if kind not in M.MASS_KINDS:
        raise SpecError(f"unknown channel mass {kind!r}; valid: {list(M.MASS_KINDS)}")
    est = ctx.estimator
    if prepared is not None and (prepared.estimator is not est or prepared.acts is not acts):
        raise ValueError("channel_masses: prepared must bind these acts to ctx.estimator")
    if prepared is None and kind != "raw":  # the null asks the same acts null_draws times
        prepared = prepare_site(est, acts)
    if raw is None:
        raw = (prepared.label_mi(labels, num_classes) if prepared is not None
               else est.label_mi(acts, labels, num_classes))
    raw = raw.to(torch.float64)
    if kind == "raw":
        return ChannelMasses(kind, raw, M.clipped(raw))
    assert prepared is not None  # prepared above for every kind but raw
    n = labels.shape[0]
    null = torch.stack([
        prepared.label_mi(labels[torch.randperm(n, generator=ctx.rng(
            seed, f"mass-null/{purpose}/{d}")).to(labels.device)], num_classes)
        for d in range(null_draws)]).to(torch.float64)
    signal = M.signal_test(raw, null)
    if kind == "null_subtracted":
        values = M.null_subtracted(raw, null)
    else:
        values = M.clipped(_miller_madow_estimator(ctx).label_mi(acts, labels, num_classes))
    if not signal.has_signal:
        values = torch.zeros_like(values)
    return ChannelMasses(kind, raw, values, signal)


def streams(estimator: Any) -> bool:
    """True when ``estimator`` has the ``Streams`` ability and its settings stream."""
    from mi_probe.interfaces import Streams

    return isinstance(estimator, Streams) and estimator.cannot_stream() is None


def streamed_capture(ctx: RunContext, seed: int, state: str) -> Any:
    """The capture of ``state`` kept in the activation store and read back chunk by
    chunk (a ``StreamedCapture``: ``labels``, ``sites``, ``n``, ``channels(site)``,
    ``chunks(site)``), when its pooled activations are larger than ``eval.stream_mb``
    (0: always) and the run has a store; else None, and the caller holds the capture in
    memory as always. The caller decides first whether what it computes can stream."""
    stream = getattr(ctx, "stream_capture", None)
    if stream is None:
        return None
    model = ctx.model(seed, state)
    rows = len(getattr(ctx, "eval_set", ()))
    pooled = rows * sum(site.channels for site in ctx.sites(model)) * 4
    limit = ctx.spec.eval.stream_mb
    if pooled <= limit * 2**20 and limit > 0:
        return None
    found = stream(seed, state)
    if found is None:
        ctx.progress(f"seed {seed}: {state} activations ({pooled / 2**20:,.0f} MB pooled) "
                     "held in memory: no activation store to stream them from")
    return found


def channel_masses_streamed(ctx: RunContext, chunks: Any, n_channels: int,
                            labels: torch.Tensor, num_classes: int, kind: str, *, seed: int,
                            purpose: str, null_draws: int = 5) -> ChannelMasses:
    """:func:`channel_masses` of a site read as row chunks (``chunks``: a zero-argument
    callable of fresh (n_i, C) block iterators, the ``Streams`` contract): the labels and
    every null draw counted in one pass, never the (N, C) matrix. The null's label
    permutations are drawn exactly as in :func:`channel_masses`, so a streaming
    estimator gives the same masses. ``ctx.estimator`` must stream (:func:`streams`)."""
    import torch

    from mi_probe.functional import masses as M
    from mi_probe.interfaces import Streams

    if kind not in M.MASS_KINDS:
        raise SpecError(f"unknown channel mass {kind!r}; valid: {list(M.MASS_KINDS)}")
    est = cast(Streams, ctx.estimator)
    if not streams(est):
        raise EstimatorError(f"channel_masses_streamed: estimator {ctx.estimator.name!r} "
                             f"does not stream with these settings; use channel_masses on "
                             f"the whole matrix")
    n = int(labels.shape[0])
    draws = [] if kind == "raw" else [
        labels[torch.randperm(n, generator=ctx.rng(seed, f"mass-null/{purpose}/{d}"))
               .to(labels.device)] for d in range(null_draws)]
    state = est.prepare_stream(chunks, n, n_channels)
    found = est.label_mi_streamed(state, [labels, *draws], num_classes)
    raw = found[0].to(torch.float64)
    if kind == "raw":
        return ChannelMasses(kind, raw, M.clipped(raw))
    null = torch.stack(found[1:]).to(torch.float64)
    signal = M.signal_test(raw, null)
    if kind == "null_subtracted":
        values = M.null_subtracted(raw, null)
    else:
        corrected = _miller_madow_estimator(ctx)
        corrected_state = corrected.prepare_stream(chunks, n, n_channels)
        values = M.clipped(corrected.label_mi_streamed(corrected_state, [labels],
                                                       num_classes)[0])
    if not signal.has_signal:
        values = torch.zeros_like(values)
    return ChannelMasses(kind, raw, values, signal)


def site_masses(ctx: RunContext, cap: Captured, params: ChannelMassParams, seed: int,
                state: str) -> dict[str, ChannelMasses]:
    """Per-site label masses of a captured model under the spec's mass choice."""
    return {site.name: channel_masses(ctx, cap.acts[site.name], cap.labels, ctx.num_classes,
                                      params.mass, seed=seed, purpose=f"{state}/{site.name}",
                                      null_draws=params.mass_null_draws)
            for site in cap.sites}


def split_halves(labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint, class-stratified halves of the sample indices (CPU int64, sorted),
    for cross-fitting: select channels on one half, score on the other."""
    import torch

    labels = labels.cpu()
    first, second = [], []
    for k in torch.unique(labels).tolist():
        idx = (labels == k).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        half = idx.numel() // 2
        first.append(idx[:half])
        second.append(idx[half:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values
