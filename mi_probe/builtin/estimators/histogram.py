"""Built-in estimator ``histogram``: the 20-bin histogram (plug-in) estimator of the paper,
with equal-count bins as an option, bootstrap intervals, a joint (multivariate) MI and
label diagnostics of its binning."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mi_probe.plugin import EstimatorError, hookimpl, Interval, LayerMI

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch

    from mi_probe.functional import histogram as F
    from mi_probe.functional import streaming as S

_T = TypeVar("_T")


class HistogramParams(BaseModel):
    """Plug-in estimator on binned channels: uniform bins on each channel's own [min, max]
    (or quantile range), or equal-count bins at its quantiles."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["histogram"] = "histogram"
    bins: int = Field(20, gt=1, le=4096, description="uniform bins per channel (B)")
    range: Literal["minmax", "quantile"] = Field(
        "minmax", description="bin range of each channel over the evaluation set: minmax = "
        "its own min and max (the paper's definition; one outlier can squeeze every other "
        "sample into a few bins); quantile = its lower range_quantile and upper "
        "1 - range_quantile sample quantiles, values outside clipped into the first / last "
        "bin (a channel whose quantile range is empty, e.g. mostly zeros, keeps min/max)")
    range_quantile: float = Field(
        0.001, gt=0, lt=0.5, description="tail share cut off at each end by range: quantile "
        "(ignored with minmax); 0.001 clips the 0.1% lowest and 0.1% highest samples")
    binning: Literal["uniform", "equal_count"] = Field(
        "uniform", description="uniform = B equal-width bins over the range (the paper); "
        "equal_count = edges at each channel's empirical k/B quantiles, so each bin holds "
        "about N/B samples (tied values, e.g. a ReLU channel's zeros, share one bin and "
        "leave the bins they span empty). With equal_count, H(binned T) is about log B "
        "by construction, so I(X;T) is uninformative; range does not apply (use minmax)")
    correction: Literal["none", "miller_madow"] = Field(
        "none", description="miller_madow adds (m - 1)/(2N) to every entropy (m occupied "
        "cells), removing the first-order plug-in bias; corrected MI can be slightly negative")
    # = functional.histogram.DEFAULT_CHUNK_CELLS, written out: importing the kernels here
    # would load torch whenever the plugin registers (tests/test_cli.py checks the two agree)
    chunk_cells: int = Field(1 << 25, gt=0,
                             description="max cells per batched chunk (bounds memory)")
    pair_cells: int = Field(1 << 24, gt=0, description="max joint-count cells per block of "
                            "channel pairs in the one-hot (GPU) pair kernel (bounds its memory; "
                            "the CPU counting kernel needs only B² cells per pair)")
    interval_draws: int = Field(200, ge=2, description="bootstrap resamples of the rows "
                                "behind label_mi_interval and joint_mi_interval")
    interval_edges: Literal["resampled", "fixed"] = Field(
        "resampled", description="resampled: each bootstrap resample is binned afresh (its "
        "own min/max or quantiles), so the interval also carries the edges' sampling error "
        "(the sample's extremes fall inside the support and shift the bins); fixed: the "
        "full sample's bins, only the counts resampled (valid for the binned quantity at "
        "those edges). Measured in docs/estimators.md, 'Intervals'")
    joint_bins: int | None = Field(
        None, ge=2, le=4096, description="bins per dimension of joint_mi (each dimension "
        "binned with this estimator's binning); null: the largest b with b^d <= N/10 (d = "
        "dx + dy; on average at least 10 samples per joint cell), clipped to [2, bins]")
    max_joint_dims: int | None = Field(4, ge=2, description="largest dx + dy joint_mi "
                                       "accepts (null: any); the joint cells grow as b^d")

    @model_validator(mode="after")
    def _range_applies(self) -> "HistogramParams":
        if self.binning == "equal_count" and self.range != "minmax":
            raise ValueError(f"binning: equal_count puts each channel's edges at its own "
                             f"quantiles, so a bin range does not apply; expected range: "
                             f"minmax, found range: {self.range}")
        return self

#: A channel counts as near the log B cap when its entropy is at least this share of it.
NEAR_CAP = 0.95

#: What equal-count bins do to I(X;T) = H(binned T) (describe() and the report's notes).
EQUAL_COUNT_I_XT = ("each channel's bins hold about N/B samples, so H(binned T) is about "
                    "log B by construction (less only where tied values fill several "
                    "bins' share) and I(X;T) does not measure the network")


class HistogramEstimator:
    """I(T_c;Y) by plug-in MI of binned channels; I(X;T_c) = H(binned T_c), the
    information-plane convention for a deterministic network and distinct inputs
    (capped by log B per channel, log N for ``reduce: joint``)."""

    name = "histogram"
    reductions = frozenset({"mean", "joint"})
    #: how label_mi_interval / joint_mi_interval are made (``interfaces.Intervals``)
    interval_method = "bootstrap"

    def __init__(self, params: HistogramParams):
        self.params = params
        self.bins = params.bins
        #: ``uniform`` or ``equal_count``
        self.binning = params.binning
        #: None = min/max range (and every equal-count binning); else the tail share
        #: clipped at each end of a channel
        self.quantile = params.range_quantile if params.range == "quantile" else None
        self.max_joint_dims = params.max_joint_dims

    def _checked(self, acts: torch.Tensor, compute: Callable[[], _T]) -> _T:
        """``compute()`` on (N, C) ``acts``, with the estimator's typed errors."""
        if acts.ndim != 2:
            raise EstimatorError(f"histogram estimator expects (N, C) activations, "
                                 f"got shape {tuple(acts.shape)}")
        try:
            return compute()
        except ValueError as exc:  # NaN / ±inf / no samples / bad labels: typed error
            raise EstimatorError(f"histogram estimator: {exc}") from exc

    def _codes(self, acts: torch.Tensor) -> torch.Tensor:
        from mi_probe.functional import histogram as F

        return self._checked(acts, lambda: F.bin_channels(
            acts, self.bins, self.quantile, self.binning, self.params.chunk_cells))

    def _binning_facts(self) -> dict[str, Any]:
        """``binning`` for equal-count estimators (uniform rows keep their old columns)."""
        return {"binning": self.binning} if self.binning != "uniform" else {}

    def _label_mi(self, codes: torch.Tensor, labels: torch.Tensor, n_symbols: int,
                  num_classes: int) -> torch.Tensor:
        from mi_probe.functional import histogram as F

        try:
            return F.label_mi_from_codes(codes, labels, n_symbols, num_classes,
                                         self.params.chunk_cells)
        except ValueError as exc:  # wrong label shape / range: the estimator's typed error
            raise EstimatorError(f"histogram estimator: {exc}") from exc

    def _statistics(self, acts: torch.Tensor, labels: torch.Tensor | None,
                    num_classes: int = 1) -> F.ChannelStatistics:
        """Every per-channel plug-in quantity from one joint (bin, label) count."""
        from mi_probe.functional import histogram as F

        if acts.ndim != 2:
            raise EstimatorError(f"histogram estimator expects (N, C) activations, "
                                 f"got shape {tuple(acts.shape)}")
        try:
            return F.channel_statistics(acts, labels, self.bins, num_classes, self.quantile,
                                        self.params.chunk_cells, self.binning)
        except ValueError as exc:  # NaN / ±inf, no samples, bad labels: typed error
            raise EstimatorError(f"histogram estimator: {exc}") from exc

    @property
    def corrected(self) -> bool:
        return self.params.correction == "miller_madow"

    def _label_mi_of(self, stats: F.ChannelStatistics) -> torch.Tensor:
        return stats.label_mi + stats.label_mi_mm if self.corrected else stats.label_mi

    def _input_mi_of(self, stats: F.ChannelStatistics, n_samples: int) -> torch.Tensor:
        from mi_probe.functional import histogram as F

        if self.corrected:
            return stats.entropy + F.miller_madow_bias(stats.occupied, n_samples)
        return stats.entropy

    def label_mi(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        return self._label_mi_of(self._statistics(acts, labels, num_classes))

    def input_mi(self, acts: torch.Tensor) -> torch.Tensor:
        return self._input_mi_of(self._statistics(acts, None), acts.shape[0])

    def pair_mi(self, acts_a: torch.Tensor, acts_b: torch.Tensor) -> torch.Tensor:
        """I(A_c;B_d) for every channel pair of two (N, C) matrices: (C1, C2) float64
        (plug-in, each channel binned on its own range or quantiles; no correction
        applied)."""
        from mi_probe.functional.pairwise import pair_mi, pair_mi_from_codes

        for acts in (acts_a, acts_b):
            if acts.ndim != 2:
                raise EstimatorError(f"histogram estimator expects (N, C) activations, "
                                     f"got shape {tuple(acts.shape)}")
        try:
            if self.binning == "uniform":
                return pair_mi(acts_a, acts_b, self.bins, self.quantile, self.params.pair_cells)
            codes_a = self._codes(acts_a)
            # the same tensor twice: the same codes, so only the pairs i <= j are counted
            codes_b = codes_a if acts_b is acts_a else self._codes(acts_b)
            return pair_mi_from_codes(codes_a, codes_b, self.bins, self.params.pair_cells)
        except ValueError as exc:
            raise EstimatorError(f"histogram estimator: {exc}") from exc

    def diagnostics(self, acts: torch.Tensor) -> dict[str, Any]:
        """Facts about one site's binned activations that qualify its MI values:
        constant channels, the share of samples in a channel's first or last bin, channels
        near the log B cap, the bin range used and the share of samples it clipped."""
        import torch

        from mi_probe.functional import histogram as F

        codes = self._codes(acts)
        constant = (acts.max(dim=0).values == acts.min(dim=0).values)
        h = self._statistics(acts, None).entropy
        cap = math.log(self.bins)
        if self.quantile is None:
            clipped = 0.0
        else:
            lo, hi = F.bin_range(acts, self.quantile)
            x = acts.to(torch.float64)
            clipped = float(((x < lo) | (x > hi)).double().mean().item())
        return {"n_constant": int(constant.sum().item()),
                "frac_edge_bins": float(F.edge_fraction(codes, self.bins).mean().item()),
                "frac_near_cap": float((h >= NEAR_CAP * cap).double().mean().item()),
                "i_xt_cap": cap, "bin_range": self.params.range, "frac_clipped": clipped,
                **self._binning_facts()}

    # -- interfaces.Prepares: bin a site once, answer every quantity from its codes --

    def prepare(self, acts: torch.Tensor) -> F.BinnedSite:
        """One site's activations binned once (ranges, codes): the state the
        ``*_prepared`` methods answer from, each equal bit for bit to its per-quantity
        method on ``acts``. Valid until ``acts`` changes."""
        from mi_probe.functional import histogram as F

        return self._checked(acts, lambda: F.bin_site(
            acts, self.bins, self.quantile, self.binning, self.params.chunk_cells))

    def _check_state(self, state: F.BinnedSite | S.StreamedSite) -> None:
        if (state.bins, state.quantile, state.binning) != (self.bins, self.quantile,
                                                           self.binning):
            raise EstimatorError(f"histogram estimator: state prepared with bins="
                                 f"{state.bins}, quantile={state.quantile}, binning="
                                 f"{state.binning}; this estimator has bins={self.bins}, "
                                 f"quantile={self.quantile}, binning={self.binning}")

    def _prepared_statistics(self, state: F.BinnedSite | S.StreamedSite,
                             labels: torch.Tensor | None, num_classes: int = 1
                             ) -> F.ChannelStatistics:
        from mi_probe.functional import histogram as F
        from mi_probe.functional import streaming as S

        self._check_state(state)
        try:
            if isinstance(state, S.StreamedSite):
                return (S.streamed_entropies(state) if labels is None else
                        S.streamed_statistics(state, [labels], num_classes)[0])
            return F.binned_statistics(state, labels, num_classes, self.params.chunk_cells)
        except ValueError as exc:  # wrong label shape / range: the estimator's typed error
            raise EstimatorError(f"histogram estimator: {exc}") from exc

    @staticmethod
    def _n_rows(state: F.BinnedSite | S.StreamedSite) -> int:
        from mi_probe.functional import streaming as S

        return state.n_rows if isinstance(state, S.StreamedSite) else state.acts.shape[0]

    def label_mi_prepared(self, state: F.BinnedSite | S.StreamedSite, labels: torch.Tensor,
                          num_classes: int) -> torch.Tensor:
        """``label_mi(state.acts, labels, num_classes)``, counted from the prepared codes
        (a streamed state: one pass over its chunks)."""
        return self._label_mi_of(self._prepared_statistics(state, labels, num_classes))

    def input_mi_prepared(self, state: F.BinnedSite | S.StreamedSite) -> torch.Tensor:
        """``input_mi(state.acts)``, from the prepared codes (counted once per state)."""
        return self._input_mi_of(self._prepared_statistics(state, None), self._n_rows(state))

    def diagnostics_prepared(self, state: F.BinnedSite | S.StreamedSite) -> dict[str, Any]:
        """``diagnostics(state.acts)``, from the prepared ranges and bin counts."""
        from mi_probe.functional import histogram as F
        from mi_probe.functional import streaming as S

        h = self._prepared_statistics(state, None).entropy
        cap = math.log(self.bins)
        if isinstance(state, S.StreamedSite):  # bin counts and clipped values: counted
            edges, clipped = S.edge_fraction(state), S.clipped_fraction(state)
        else:
            edges = F.binned_edge_fraction(state)
            clipped = (0.0 if self.quantile is None
                       else F.clipped_fraction(state.acts, state.lo, state.hi))
        return {"n_constant": int((state.col_max == state.col_min).sum().item()),
                "frac_edge_bins": float(edges.mean().item()),
                "frac_near_cap": float((h >= NEAR_CAP * cap).double().mean().item()),
                "i_xt_cap": cap, "bin_range": self.params.range, "frac_clipped": clipped,
                **self._binning_facts()}

    # -- interfaces.Streams: one site's quantities from its row chunks (the store) --

    def cannot_stream(self) -> str | None:
        """None: every setting streams (min/max and quantile ranges by exact order
        statistics, uniform and equal-count bins, either correction)."""
        return None

    def prepare_stream(self, chunks: Callable[[], Iterable[torch.Tensor]], n_rows: int,
                       n_channels: int) -> S.StreamedSite:
        """The state of one site read as consecutive (n_i, ``n_channels``) row chunks,
        ``n_rows`` in all: its ranges (one pass; a quantile range or equal-count bins 4
        more passes for float32 data, 8 for float64), never the (N, C) matrix. The
        ``*_prepared`` methods answer from it as from :meth:`prepare` of the whole
        matrix, bit for bit, each count one pass over the chunks."""
        from mi_probe.functional import streaming as S

        try:
            return S.stream_site(chunks, n_rows, n_channels, self.bins, self.quantile,
                                 self.binning, self.params.chunk_cells)
        except ValueError as exc:  # NaN / ±inf, no rows, chunks that do not add up
            raise EstimatorError(f"histogram estimator: {exc}") from exc

    def label_mi_streamed(self, state: F.BinnedSite | S.StreamedSite,
                          labels: Sequence[torch.Tensor], num_classes: int
                          ) -> list[torch.Tensor]:
        """``label_mi_prepared`` for each label vector (e.g. the labels and their
        shuffled-label nulls), a streamed state counting them all in one pass."""
        from mi_probe.functional import streaming as S

        if not isinstance(state, S.StreamedSite):
            return [self.label_mi_prepared(state, y, num_classes) for y in labels]
        self._check_state(state)
        try:
            stats = S.streamed_statistics(state, list(labels), num_classes)
        except ValueError as exc:  # wrong label shape / range: the estimator's typed error
            raise EstimatorError(f"histogram estimator: {exc}") from exc
        return [self._label_mi_of(s) for s in stats]

    def pair_mi_streamed(self, state_a: S.StreamedSite, state_b: S.StreamedSite
                         ) -> torch.Tensor:
        """``pair_mi`` of two streamed sites' matrices (the same state twice: a site
        with itself, only pairs c <= d counted), one pass per block of channel pairs
        whose joint counts fit ``pair_cells``; equal to it to float64 rounding."""
        from mi_probe.functional import streaming as S

        for state in (state_a, state_b):
            if not isinstance(state, S.StreamedSite):
                raise EstimatorError(f"histogram estimator: pair_mi_streamed expects states "
                                     f"of prepare_stream, got {type(state).__name__}")
            self._check_state(state)
        try:
            return S.streamed_pair_mi(state_a, state_b, self.params.pair_cells)
        except ValueError as exc:
            raise EstimatorError(f"histogram estimator: {exc}") from exc

    def layer_mi(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 reduce: str) -> LayerMI:
        from mi_probe.functional import histogram as F

        if reduce == "mean":  # one count gives both planes' coordinates
            stats = self._statistics(acts, labels, num_classes)
            return LayerMI(i_xt=self._input_mi_of(stats, acts.shape[0]).mean().item(),
                           i_ty=self._label_mi_of(stats).mean().item())
        if reduce == "joint":
            symbols, n_symbols = F.joint_codes(self._codes(acts))
            i_xt = F.entropy_from_codes(symbols, n_symbols, self.params.chunk_cells)[0].item()
            i_ty = self._label_mi(symbols, labels, n_symbols, num_classes)[0].item()
            return LayerMI(i_xt=i_xt, i_ty=i_ty)
        raise EstimatorError(f"histogram estimator has no layer reduction {reduce!r}; "
                             f"valid: {sorted(self.reductions)}")

    # -- interfaces.DiagnosesLabels: how the binning relates to the labels --

    def label_diagnostics(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int
                          ) -> dict[str, Any]:
        """Shares of the plug-in label entropy Ĥ(Y) that the binned channels and the
        binned layer explain: ``h_y`` (nats); ``frac_h_y_channel_max`` / ``_mean``
        (plug-in I(T_c;Y)/Ĥ(Y), uncorrected, over channels); ``frac_h_y_layer``
        (I(P;Y)/Ĥ(Y), P = each row's pattern of C codes as one symbol); and
        ``frac_unique_patterns`` (distinct patterns / N). A layer near 1 on both of the
        last two has bins that tell the images apart, so its binned MI is saturated
        (the binning artefact of the information-bottleneck debate). Fractions are NaN
        when Ĥ(Y) = 0 (one class); the channel ones also with no channels."""
        import torch

        from mi_probe.functional import histogram as F

        state = self.prepare(acts)
        stats = self._prepared_statistics(state, labels, num_classes)  # checks labels
        n = acts.shape[0]
        y = labels.to(device=acts.device, dtype=torch.int64)

        def compute() -> dict[str, Any]:
            h_y = F.label_entropy(y, num_classes)
            patterns, count = F.pattern_symbols(state.codes, self.bins)
            i_py = float(F.symbol_mi(patterns, y.to(patterns.device))[0].item())

            def share(value: float) -> float:
                return value / h_y if h_y > 0 else math.nan

            channels = stats.label_mi
            return {"h_y": h_y,
                    "frac_h_y_channel_max": (share(float(channels.max().item()))
                                             if channels.numel() else math.nan),
                    "frac_h_y_channel_mean": (share(float(channels.mean().item()))
                                              if channels.numel() else math.nan),
                    "frac_h_y_layer": share(i_py), "frac_unique_patterns": count / n}
        return self._checked(acts, compute)

    # -- interfaces.Intervals / JointMIIntervals: the basic bootstrap --

    def _generator(self, seed: int) -> torch.Generator:
        import torch

        return torch.Generator().manual_seed(seed)  # CPU: the same draws on every device

    def _resamples(self, n: int, seed: int) -> torch.Tensor:
        from mi_probe.functional.intervals import resample_rows

        try:
            return resample_rows(n, self.params.interval_draws, self._generator(seed))
        except ValueError as exc:
            raise EstimatorError(f"histogram estimator: {exc}") from exc

    def _bootstrap(self, estimate: torch.Tensor, replicates: torch.Tensor, level: float
                   ) -> Interval:
        from mi_probe.functional.intervals import basic_bootstrap

        try:
            low, high = basic_bootstrap(estimate, replicates, level)
        except ValueError as exc:  # a level outside (0, 1)
            raise EstimatorError(f"histogram estimator: {exc}") from exc
        return Interval(estimate=estimate, low=low, high=high, level=level,
                        method=self.interval_method)

    def label_mi_interval(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int,
                          level: float, seed: int) -> tuple[Interval, Interval]:
        """Basic-bootstrap intervals of I(T_c;Y) per channel and of their mean: the rows
        are resampled ``interval_draws`` times with a CPU generator seeded by ``seed``;
        each resample is binned afresh (``interval_edges: resampled``) or counted on the
        full sample's bins (``fixed``), and every channel's label MI (with the
        estimator's correction) estimated again. The estimates
        are ``label_mi``'s values and their mean."""
        import torch

        from mi_probe.functional import histogram as F

        state = self.prepare(acts)
        estimate = self.label_mi_prepared(state, labels, num_classes)
        rows = self._resamples(acts.shape[0], seed)
        if self.params.interval_edges == "resampled":  # the whole estimator per resample
            on = rows.to(acts.device)
            replicates = torch.stack([self.label_mi(acts[r], labels[r], num_classes)
                                      for r in on])
        else:  # labels were checked by label_mi_prepared; one batched count per resample
            replicates = torch.stack([self._label_mi_of(F.resampled_statistics(
                state, r, labels, num_classes, self.params.chunk_cells)) for r in rows])
        return (self._bootstrap(estimate, replicates, level),
                self._bootstrap(estimate.mean(), replicates.mean(dim=1), level))

    # -- interfaces.JointMI: product bins of continuous multivariate x and y --

    def joint_bins(self, n_samples: int, dims: int) -> int:
        """Bins per dimension of ``joint_mi`` with ``dims`` = dx + dy (``joint_bins``,
        else the rule of :func:`mi_probe.functional.histogram.joint_bins`)."""
        from mi_probe.functional import histogram as F

        return self.params.joint_bins or F.joint_bins(n_samples, dims, self.bins)

    def _joint_symbols(self, x: torch.Tensor, y: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """x's and y's rows as symbols of their product bins (each dimension binned with
        this estimator's binning into ``joint_bins`` bins)."""
        from mi_probe.functional import histogram as F

        x, y = (v.reshape(-1, 1) if v.ndim == 1 else v for v in (x, y))
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise EstimatorError(f"histogram joint_mi expects (N, dx) and (N, dy) samples "
                                 f"with the same N, got shapes {tuple(x.shape)} and "
                                 f"{tuple(y.shape)}")
        dims = x.shape[1] + y.shape[1]
        if self.max_joint_dims is not None and dims > self.max_joint_dims:
            raise EstimatorError(f"histogram joint_mi accepts at most max_joint_dims="
                                 f"{self.max_joint_dims} dimensions (dx + dy); found dx="
                                 f"{x.shape[1]} + dy={y.shape[1]} = {dims}")
        if x.shape[1] == 0 or y.shape[1] == 0:
            raise EstimatorError(f"histogram joint_mi needs at least one dimension on each "
                                 f"side, got dx={x.shape[1]}, dy={y.shape[1]}")
        bins = self.joint_bins(x.shape[0], dims)

        def symbols(v: torch.Tensor) -> torch.Tensor:
            codes = F.bin_channels(v, bins, self.quantile, self.binning,
                                   self.params.chunk_cells)
            return F.pattern_symbols(codes, bins)[0]
        return self._checked(x, lambda: (symbols(x), symbols(y).to(x.device)))

    def _symbol_mi(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from mi_probe.functional import histogram as F

        mi, mm = F.symbol_mi(a, b)
        return mi + mm if self.corrected else mi

    def joint_mi(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Plug-in I(X;Y) in nats (with the estimator's correction) of the product bins
        of (N, dx) and (N, dy) samples, dx + dy <= ``max_joint_dims``."""
        return float(self._symbol_mi(*self._joint_symbols(x, y)).item())

    def joint_mi_interval(self, x: torch.Tensor, y: torch.Tensor, level: float, seed: int
                          ) -> Interval:
        """Basic-bootstrap interval of ``joint_mi`` (rows resampled, and binned, as in
        :meth:`label_mi_interval`); 0-d tensors."""
        import torch

        a, b = self._joint_symbols(x, y)
        estimate = self._symbol_mi(a, b)
        rows = self._resamples(a.shape[0], seed).to(a.device)
        if self.params.interval_edges == "resampled":
            xs, ys = (v.reshape(-1, 1) if v.ndim == 1 else v for v in (x, y))
            rx, ry = rows.to(xs.device), rows.to(ys.device)
            replicates = torch.stack([self._symbol_mi(*self._joint_symbols(xs[i], ys[j]))
                                      for i, j in zip(rx, ry)])
        else:
            replicates = torch.stack([self._symbol_mi(a[r], b[r]) for r in rows])
        return self._bootstrap(estimate, replicates, level)

    def bias(self, n_samples: int, num_classes: int) -> float:
        from mi_probe.functional import histogram as F

        if self.corrected:
            return 0.0  # the first-order term is what Miller–Madow removes
        return F.plugin_bias(self.bins, num_classes, n_samples)

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"estimator": "histogram", "bins": self.bins,
                                 "range": self.params.range}
        if self.quantile is not None:
            facts["range_quantile"] = self.quantile
        facts.update(self._binning_facts())
        facts = {**facts, "correction": self.params.correction,
                 "i_xt_convention": "H(binned T): deterministic network, distinct inputs",
                 "i_xt_cap_per_channel_nats": math.log(self.bins)}
        if self.binning == "equal_count":
            facts["i_xt_note"] = EQUAL_COUNT_I_XT
        return facts

    def notes(self, n_samples: int, num_classes: int, tables: Mapping[str, Any]) -> list[str]:
        """What qualifies histogram values in this run (``interfaces.ExplainsEstimates``):
        the plug-in bias at this N and K, saturation at the log B cap, constant channels,
        and samples piled in the edge bins (from ``diagnostics``, when written)."""
        notes = []
        bias = self.bias(n_samples, num_classes)
        if bias:
            notes.append(f"Plug-in bias: a per-channel I(T;Y) of an independent channel is "
                         f"about {bias:.4f} nats here (N = {n_samples} evaluation samples, "
                         f"K = {num_classes} classes); values near it are indistinguishable "
                         "from zero (column i_ty_bias).")
        diag = tables.get("diagnostics")
        if diag is not None and diag.height:
            import polars as pl

            near = diag.filter(pl.col("frac_near_cap") > 0.5) \
                if "frac_near_cap" in diag.columns else diag.head(0)
            if near.height:
                notes.append(f"{near.height} of {diag.height} (site, state, seed) rows have "
                             "most channels within 5% of the log B cap on I(X;T): there "
                             "H(binned T) saturates and I(X;T) differences are not "
                             "informative (tables/diagnostics.parquet).")
            if "n_constant" in diag.columns and diag["n_constant"].sum():
                worst = diag.sort("n_constant", descending=True).row(0, named=True)
                notes.append(f"Constant channels (MI exactly 0) occur: "
                             f"{int(diag['n_constant'].sum())} in total, most at "
                             f"{worst['site']} ({worst['state']}, seed {worst['seed']}: "
                             f"{worst['n_constant']} of {worst['channels']}).")
            if "frac_edge_bins" in diag.columns:
                notes.append(f"On average {diag['frac_edge_bins'].mean():.1%} of samples fall "
                             "in a channel's first or last bin (high values: saturated or "
                             "sparse channels, where uniform bins waste resolution).")
        notes.append(f"I(X;T) is H(binned T): at most log B = {math.log(self.bins):.3f} nats "
                     f"per channel, and at most log N = {math.log(n_samples):.3f} nats for a "
                     "joint layer symbol.")
        if self.binning == "equal_count":
            notes.append(f"Equal-count bins: {EQUAL_COUNT_I_XT}.")
        return notes


@hookimpl
def mi_probe_register_estimators(register):
    register("histogram", HistogramEstimator, HistogramParams)
