"""Built-in estimator ``histogram``: the 20-bin histogram (plug-in) estimator of the paper."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, Mapping, cast

from pydantic import BaseModel, ConfigDict, Field

from mi_probe.plugin import EstimatorError, hookimpl, LayerMI

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch

    from mi_probe.functional import histogram as F


class HistogramParams(BaseModel):
    """Uniform-bin plug-in estimator on each channel's own [min, max] (or quantile range)."""

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

#: A channel counts as near the log B cap when its entropy is at least this share of it.
NEAR_CAP = 0.95


class HistogramEstimator:
    """I(T_c;Y) by plug-in MI of binned channels; I(X;T_c) = H(binned T_c), the
    information-plane convention for a deterministic network and distinct inputs
    (capped by log B per channel, log N for ``reduce: joint``)."""

    name = "histogram"
    reductions = frozenset({"mean", "joint"})

    def __init__(self, params: HistogramParams):
        self.params = params
        self.bins = params.bins
        #: None = min/max range; else the tail share clipped at each end of a channel
        self.quantile = params.range_quantile if params.range == "quantile" else None

    def _binned(self, binner: Any, acts: torch.Tensor) -> Any:
        """``binner(acts, bins, quantile)`` with the estimator's typed errors."""
        if acts.ndim != 2:
            raise EstimatorError(f"histogram estimator expects (N, C) activations, "
                                 f"got shape {tuple(acts.shape)}")
        try:
            return binner(acts, self.bins, self.quantile)
        except ValueError as exc:  # NaN / ±inf / no samples: the estimator's typed error
            raise EstimatorError(f"histogram estimator: {exc}") from exc

    def _codes(self, acts: torch.Tensor) -> torch.Tensor:
        import torch

        from mi_probe.functional import histogram as F

        return cast(torch.Tensor, self._binned(F.bin_uniform, acts))

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
                                        self.params.chunk_cells)
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
        (plug-in, each channel binned on its own range; no correction applied)."""
        from mi_probe.functional.pairwise import pair_mi

        for acts in (acts_a, acts_b):
            if acts.ndim != 2:
                raise EstimatorError(f"histogram estimator expects (N, C) activations, "
                                     f"got shape {tuple(acts.shape)}")
        try:
            return pair_mi(acts_a, acts_b, self.bins, self.quantile, self.params.pair_cells)
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
                "i_xt_cap": cap, "bin_range": self.params.range, "frac_clipped": clipped}

    # -- interfaces.Prepares: bin a site once, answer every quantity from its codes --

    def prepare(self, acts: torch.Tensor) -> F.BinnedSite:
        """One site's activations binned once (ranges, codes): the state the
        ``*_prepared`` methods answer from, each equal bit for bit to its per-quantity
        method on ``acts``. Valid until ``acts`` changes."""
        from mi_probe.functional import histogram as F

        return cast(F.BinnedSite, self._binned(F.bin_site, acts))

    def _prepared_statistics(self, state: F.BinnedSite, labels: torch.Tensor | None,
                             num_classes: int = 1) -> F.ChannelStatistics:
        from mi_probe.functional import histogram as F

        if state.bins != self.bins or state.quantile != self.quantile:
            raise EstimatorError(f"histogram estimator: state prepared with bins="
                                 f"{state.bins}, quantile={state.quantile}; this estimator "
                                 f"has bins={self.bins}, quantile={self.quantile}")
        try:
            return F.binned_statistics(state, labels, num_classes, self.params.chunk_cells)
        except ValueError as exc:  # wrong label shape / range: the estimator's typed error
            raise EstimatorError(f"histogram estimator: {exc}") from exc

    def label_mi_prepared(self, state: F.BinnedSite, labels: torch.Tensor,
                          num_classes: int) -> torch.Tensor:
        """``label_mi(state.acts, labels, num_classes)``, counted from the prepared codes."""
        return self._label_mi_of(self._prepared_statistics(state, labels, num_classes))

    def input_mi_prepared(self, state: F.BinnedSite) -> torch.Tensor:
        """``input_mi(state.acts)``, from the prepared codes (counted once per state)."""
        return self._input_mi_of(self._prepared_statistics(state, None), state.acts.shape[0])

    def diagnostics_prepared(self, state: F.BinnedSite) -> dict[str, Any]:
        """``diagnostics(state.acts)``, from the prepared ranges and bin counts."""
        from mi_probe.functional import histogram as F

        h = self._prepared_statistics(state, None).entropy
        cap = math.log(self.bins)
        clipped = (0.0 if self.quantile is None
                   else F.clipped_fraction(state.acts, state.lo, state.hi))
        return {"n_constant": int((state.col_max == state.col_min).sum().item()),
                "frac_edge_bins": float(F.binned_edge_fraction(state).mean().item()),
                "frac_near_cap": float((h >= NEAR_CAP * cap).double().mean().item()),
                "i_xt_cap": cap, "bin_range": self.params.range, "frac_clipped": clipped}

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

    def bias(self, n_samples: int, num_classes: int) -> float:
        from mi_probe.functional import histogram as F

        if self.corrected:
            return 0.0  # the first-order term is what Miller–Madow removes
        return F.plugin_bias(self.bins, num_classes, n_samples)

    def describe(self) -> dict[str, Any]:
        facts = {"estimator": "histogram", "bins": self.bins, "range": self.params.range}
        if self.quantile is not None:
            facts["range_quantile"] = self.quantile
        return {**facts, "correction": self.params.correction,
                "i_xt_convention": "H(binned T): deterministic network, distinct inputs",
                "i_xt_cap_per_channel_nats": math.log(self.bins)}

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
        return notes


@hookimpl
def mi_probe_register_estimators(register):
    register("histogram", HistogramEstimator, HistogramParams)
