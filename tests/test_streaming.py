"""Histogram estimation from row chunks (``interfaces.Streams``, ``functional.streaming``).

A site read as consecutive row chunks (the activation store) must give what the whole
(N, C) matrix gives: label MI (for the labels and for several shuffled-label nulls in
one pass), input MI, their Miller–Madow variants and the diagnostics bit for bit, pair
MI to 1e-12, for every range, binning and correction, any chunking (one row, sizes that
do not divide N, one chunk), on the compiled kernels and on the torch path (the one CUDA
runs); NaN / ±inf are refused as on the matrix; and nothing of N x C size is ever made.
"""

from __future__ import annotations

import math
import struct
import tracemalloc
from typing import Any, Callable, Iterator

import pytest
import torch
from conftest import EDGE_CASES, edge_case_layer
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams
from mi_probe.errors import EstimatorError
from mi_probe.functional import counting
from mi_probe.functional import histogram as F
from mi_probe.functional import streaming as S
from mi_probe.interfaces import PairMI, Prepares, Streams


def est(bins: int = 20, **kw: Any) -> HistogramEstimator:
    return HistogramEstimator(HistogramParams(bins=bins, **kw))


def layer(n: int, c: int, classes: int, seed: int = 0, dtype=torch.float32
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) activations with the awkward columns (constant, dead, ties, one outlier,
    informative, ReLU zeros elsewhere) and labels in [0, classes)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    acts = torch.randn(n, c, generator=g).relu()
    acts[:, 0] = 1.5                                                    # constant
    acts[:, 1 % c] = 0.0                                                # dead
    acts[:, 2 % c] = torch.randint(0, 3, (n,), generator=g).float()     # ties
    acts[:, 3 % c] = torch.randn(n, generator=g)
    acts[0, 3 % c] = 1e6                                                # one outlier
    acts[:, 4 % c] = labels.float() + 0.1 * torch.randn(n, generator=g)  # informative
    return acts.to(dtype), labels


def row_chunks(x: torch.Tensor, sizes: int | list[int]) -> Callable[[], Iterator[torch.Tensor]]:
    """Consecutive row views of ``x``, of ``sizes`` rows (a list: cycled)."""
    cycle = [sizes] if isinstance(sizes, int) else sizes

    def chunks() -> Iterator[torch.Tensor]:
        start, i = 0, 0
        while start < x.shape[0]:
            step = cycle[i % len(cycle)]
            yield x[start:start + step]
            start, i = start + step, i + 1
    return chunks


def nulls(labels: torch.Tensor, draws: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [labels[torch.randperm(labels.shape[0], generator=g)] for _ in range(draws)]


def same_float(a: Any, b: Any) -> bool:
    """Equal bits (NaN equal to NaN: a site with no channels)."""
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and (struct.pack("<d", a) == struct.pack("<d", b)
                                   if isinstance(a, float) else a == b)


def assert_streamed_equals_whole(e: HistogramEstimator, x: torch.Tensor, labels: torch.Tensor,
                                 classes: int, sizes: int | list[int],
                                 order: str = "labels_first") -> None:
    """Every streamed answer equals the estimator's answer on the whole matrix, bit for
    bit (pair MI to 1e-12)."""
    state = e.prepare_stream(row_chunks(x, sizes), x.shape[0], x.shape[1])
    vectors = [labels] + nulls(labels)
    asks = {"labels": lambda: e.label_mi_streamed(state, vectors, classes),
            "input": lambda: e.input_mi_prepared(state),
            "diag": lambda: e.diagnostics_prepared(state)}
    sequence = ("labels", "input", "diag") if order == "labels_first" else \
        ("diag", "input", "labels")
    got = {name: asks[name]() for name in sequence}
    for streamed, y in zip(got["labels"], vectors, strict=True):
        want = e.label_mi(x, y, classes)
        assert streamed.dtype == torch.float64 and torch.equal(streamed, want), (streamed, want)
    assert torch.equal(e.label_mi_prepared(state, labels, classes), e.label_mi(x, labels, classes))
    assert torch.equal(got["input"], e.input_mi(x))
    diag, want_diag = got["diag"], e.diagnostics(x)
    assert diag.keys() == want_diag.keys()
    assert all(same_float(diag[k], want_diag[k]) for k in diag), (diag, want_diag)
    torch.testing.assert_close(e.pair_mi_streamed(state, state), e.pair_mi(x, x),
                               atol=1e-12, rtol=0)


SETTINGS = [dict(bins=10), dict(bins=30), dict(bins=10, correction="miller_madow"),
            dict(bins=30, correction="miller_madow"),
            dict(bins=10, range="quantile", range_quantile=0.05),
            dict(bins=30, range="quantile", correction="miller_madow"),  # q = 0.001
            dict(bins=10, binning="equal_count"),
            dict(bins=30, binning="equal_count", correction="miller_madow")]
CHUNKS = [1, 10, 64, [7, 1, 100], 257]  # N = 257: one row, sizes not dividing N, one chunk


def ids(p: dict) -> str:
    return "-".join(map(str, p.values()))


# ---------------------------------------------------------------------------------------
# 1. the streamed answers are the whole matrix's
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", SETTINGS, ids=ids)
@pytest.mark.parametrize("classes", [3, 10])
@pytest.mark.parametrize("sizes", CHUNKS, ids=str)
def test_streamed_answers_equal_the_whole_matrix(settings, classes, sizes):
    e = est(**settings)
    assert isinstance(e, Streams) and isinstance(e, Prepares) and isinstance(e, PairMI)
    assert e.cannot_stream() is None
    x, labels = layer(257, 9, classes, seed=classes)
    assert_streamed_equals_whole(e, x, labels, classes, sizes)


@pytest.mark.parametrize("settings", [dict(bins=10), dict(bins=30, range="quantile"),
                                      dict(bins=10, binning="equal_count",
                                           correction="miller_madow")], ids=ids)
def test_the_order_of_questions_does_not_matter(settings):
    x, labels = layer(300, 7, 3, seed=4)
    assert_streamed_equals_whole(est(**settings), x, labels, 3, 33, order="diag_first")


@pytest.mark.parametrize("settings", [dict(bins=10), dict(bins=30, range="quantile",
                                                          correction="miller_madow"),
                                      dict(bins=10, binning="equal_count")], ids=ids)
def test_the_torch_path_is_bit_identical_too(settings, monkeypatch):
    """Without numba (and on CUDA) codes are int64 tensors and counts bincounts: the
    streamed answers still equal the whole matrix's on that path."""
    monkeypatch.setattr(counting, "available", lambda: False)
    x, labels = layer(257, 9, 10, seed=3)
    e = est(**settings)
    assert not e.prepare_stream(row_chunks(x, 10), 257, 9).on_kernels
    for sizes in (1, [7, 1, 100]):
        assert_streamed_equals_whole(e, x, labels, 10, sizes)
    assert_streamed_equals_whole(est(**settings, chunk_cells=50), x, labels, 10, 64)


@pytest.mark.parametrize("case", EDGE_CASES)
@pytest.mark.parametrize("settings", [dict(bins=10), dict(bins=10, range="quantile",
                                                          range_quantile=0.05),
                                      dict(bins=30, binning="equal_count",
                                           correction="miller_madow")], ids=ids)
def test_edge_cases_are_bit_identical(case, settings):
    x, labels = edge_case_layer(case, 3)
    n = x.shape[0]
    if case == "float64":  # 64-bit order-statistic keys: 8 passes
        x = x * 1e-3
    e = est(**settings)
    if x.shape[1] == 0:  # no channels: no pairs; the rest as on the matrix
        state = e.prepare_stream(row_chunks(x, 33), n, 0)
        assert e.pair_mi_streamed(state, state).shape == (0, 0)
        assert e.label_mi_streamed(state, [labels], 3)[0].shape == (0,)
        assert torch.equal(e.input_mi_prepared(state), e.input_mi(x))
        diag, want = e.diagnostics_prepared(state), e.diagnostics(x)
        assert all(same_float(diag[k], want[k]) for k in want), (diag, want)
        return
    assert_streamed_equals_whole(e, x, labels, 3, 33 if x.shape[0] > 1 else 1)


def test_several_label_vectors_are_counted_in_one_pass():
    x, labels = layer(500, 12, 10, seed=5)
    chunks = row_chunks(x, 64)
    passes = []

    def counted() -> Iterator[torch.Tensor]:
        passes.append(1)
        return chunks()
    for settings, prepare_passes in [(dict(bins=30), 1),
                                     (dict(bins=10, range="quantile"), 1 + 4),  # float32
                                     (dict(bins=10, binning="equal_count"), 1 + 4)]:
        e = est(**settings)
        passes.clear()
        state = e.prepare_stream(counted, 500, 12)
        assert len(passes) == prepare_passes
        vectors = [labels] + nulls(labels, 5)
        got = e.label_mi_streamed(state, vectors, 10)
        assert len(passes) == prepare_passes + 1  # six label vectors, one pass
        assert all(torch.equal(a, e.label_mi(x, y, 10)) for a, y in zip(got, vectors))
        stacked = e.label_mi_streamed(state, torch.stack(vectors), 10)  # (L, N) rows
        assert all(torch.equal(a, b) for a, b in zip(stacked, got, strict=True))
        assert len(passes) == prepare_passes + 2
        e.input_mi_prepared(state), e.diagnostics_prepared(state)  # from the first counts
        assert len(passes) == prepare_passes + 2
    e = est(bins=10)
    passes.clear()
    state = e.prepare_stream(counted, 500, 12)
    assert torch.equal(e.input_mi_prepared(state), e.input_mi(x))  # input first: one pass
    e.diagnostics_prepared(state)
    assert len(passes) == 2


# ---------------------------------------------------------------------------------------
# 2. ranges, codes and order statistics
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_order_statistics_are_exact(dtype):
    g = torch.Generator().manual_seed(2)
    n = 301
    x = torch.randn(n, 6, generator=g).to(dtype)
    x[:, 1] = torch.randint(-2, 3, (n,), generator=g).to(dtype)                  # ties
    x[:, 2] = torch.where(torch.arange(n) % 3 == 0, -0.0, 0.0).to(dtype)        # ±0 only
    x[:, 3] = torch.where(x[:, 3] > 0, x[:, 3], torch.tensor(-0.0, dtype=dtype))
    x[:, 4] = torch.randn(n, generator=g).to(dtype) * 1e-30                     # tiny
    x[0, 5], x[1, 5] = -3e38, 3e38                                              # extremes
    facts = S.column_range(row_chunks(x, 37), 6, n)
    assert facts.key_bits == (32 if dtype == torch.float32 else 64)
    ranks = [1, 2, 150, 151, 300, n, 7, 7]
    got = S.order_statistics(row_chunks(x, 37), ranks, facts, max_cells=6 * 256)
    want = x.to(torch.float64).sort(dim=0).values[[k - 1 for k in ranks]].T
    assert torch.equal(got, want)  # == as values: -0.0 equals 0.0


@pytest.mark.parametrize("n", [1, 2, 3, 10, 999, 1000, 1001, 2048])
@pytest.mark.parametrize("q", [0.001, 0.01, 0.05, 0.25, 0.4999])
def test_quantile_ranges_equal_bin_range(n, q):
    x, _ = layer(n, 5, 3, seed=n)
    site = S.stream_site(row_chunks(x, 97), n, 5, 10, q)
    lo, hi = F.bin_range(x, q)
    assert torch.equal(site.lo, lo) and torch.equal(site.hi, hi)
    assert torch.equal(site.col_min, x.double().min(dim=0).values)


@pytest.mark.parametrize("settings", [dict(bins=30), dict(bins=10, range="quantile"),
                                      dict(bins=300, binning="equal_count")], ids=ids)
def test_chunk_codes_are_the_whole_matrix_codes(settings):
    x, _ = layer(400, 8, 3, seed=6)
    e = est(**settings)
    state = e.prepare_stream(row_chunks(x, 7), 400, 8)
    codes = torch.cat([S.chunk_codes(state, chunk) for chunk in row_chunks(x, 7)()])
    assert torch.equal(codes, F.bin_channels(x, e.bins, e.quantile, e.binning))


# ---------------------------------------------------------------------------------------
# 3. pair MI
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [dict(bins=10), dict(bins=30, range="quantile"),
                                      dict(bins=10, binning="equal_count")], ids=ids)
@pytest.mark.parametrize("pair_cells", [1, 450, 1 << 24])  # one pair a block .. one block
def test_pair_mi_equals_the_whole_matrices(settings, pair_cells):
    a, _ = layer(257, 9, 3, seed=8)
    b, _ = layer(257, 5, 3, seed=9)
    e = est(**settings, pair_cells=pair_cells)
    state_a = e.prepare_stream(row_chunks(a, [7, 1, 100]), 257, 9)
    state_b = e.prepare_stream(row_chunks(b, 64), 257, 5)  # chunked differently
    torch.testing.assert_close(e.pair_mi_streamed(state_a, state_b), e.pair_mi(a, b),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(e.pair_mi_streamed(state_b, state_a), e.pair_mi(b, a),
                               atol=1e-12, rtol=0)
    same = e.pair_mi_streamed(state_a, state_a)
    torch.testing.assert_close(same, e.pair_mi(a, a), atol=1e-12, rtol=0)
    assert torch.equal(same, same.T)


def test_pair_mi_on_the_torch_path(monkeypatch):
    monkeypatch.setattr(counting, "available", lambda: False)
    a, _ = layer(300, 6, 3, seed=10)
    e = est(20, pair_cells=2000)
    state = e.prepare_stream(row_chunks(a, 41), 300, 6)
    torch.testing.assert_close(e.pair_mi_streamed(state, state), e.pair_mi(a, a),
                               atol=1e-12, rtol=0)


def test_pair_mi_refuses_sites_with_other_rows():
    e = est(10)
    a, _ = layer(100, 3, 3)
    state_a = e.prepare_stream(row_chunks(a, 10), 100, 3)
    state_b = e.prepare_stream(row_chunks(a[:90], 10), 90, 3)
    with pytest.raises(EstimatorError, match="same samples, got 100 and 90"):
        e.pair_mi_streamed(state_a, state_b)
    with pytest.raises(EstimatorError, match="expects states of prepare_stream"):
        e.pair_mi_streamed(e.prepare(a), state_a)


# ---------------------------------------------------------------------------------------
# 4. refusals
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [dict(bins=10), dict(bins=10, range="quantile")], ids=ids)
@pytest.mark.parametrize("kernels", [True, False])
def test_nan_and_inf_in_a_later_chunk_are_refused_as_on_the_matrix(settings, kernels,
                                                                   monkeypatch):
    if not kernels:
        monkeypatch.setattr(counting, "available", lambda: False)
    x, _ = layer(300, 6, 3)
    x[250, 4] = math.nan
    x[299, 2] = -math.inf
    x[260, 4] = math.inf
    e = est(**settings)
    with pytest.raises(EstimatorError) as whole:
        e.prepare(x)
    with pytest.raises(EstimatorError, match=r"found 1 NaN, 1 \+inf and 1 -inf values in "
                                             r"2 of 6 channels \(first: channel 2\)") as streamed:
        e.prepare_stream(row_chunks(x, 64), 300, 6)
    assert str(streamed.value) == str(whole.value)


def test_chunks_that_do_not_add_up_are_refused():
    e = est(10)
    x, labels = layer(100, 4, 3)
    with pytest.raises(EstimatorError, match="n_rows=120 rows, found 100"):
        e.prepare_stream(row_chunks(x, 30), 120, 4)
    with pytest.raises(EstimatorError, match=r"shape \(n, 5\), got \(30, 4\)"):
        e.prepare_stream(row_chunks(x, 30), 100, 5)
    with pytest.raises(EstimatorError, match=r"at least one sample, got shape \(0, 4\)"):
        e.prepare_stream(row_chunks(x[:0], 30), 0, 4)
    reads = []

    def shrinking() -> Iterator[torch.Tensor]:  # a store that lost rows between passes
        reads.append(1)
        return row_chunks(x if len(reads) == 1 else x[:90], 30)()
    state = e.prepare_stream(shrinking, 100, 4)
    with pytest.raises(EstimatorError, match="100 rows on their first pass and 90 on a later"):
        e.label_mi_prepared(state, labels, 3)
    state = e.prepare_stream(row_chunks(x, 30), 100, 4)
    with pytest.raises(EstimatorError, match=r"labels must have shape \(100,\)"):
        e.label_mi_streamed(state, [labels, labels[:50]], 3)
    with pytest.raises(EstimatorError, match=r"labels must lie in \[0, 2\)"):
        e.label_mi_prepared(state, labels, 2)


def test_a_state_of_other_settings_is_refused():
    x, labels = layer(100, 3, 3)
    state = est(20).prepare_stream(row_chunks(x, 30), 100, 3)
    with pytest.raises(EstimatorError, match="bins=20, quantile=None, binning=uniform; "
                                             "this estimator has bins=10"):
        est(10).label_mi_streamed(state, [labels], 3)


def test_every_setting_streams_and_the_ability_is_exported():
    from mi_probe.plugin import Streams as Exported

    assert Exported is Streams
    for settings in SETTINGS:
        assert est(**settings).cannot_stream() is None


# ---------------------------------------------------------------------------------------
# 5. memory: nothing of N x C size is made
# ---------------------------------------------------------------------------------------

class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor a torch op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.largest = max([self.largest, *sizes])
        return out


def largest_tensor(run: Callable[[], Any]) -> int:
    """Elements of the largest tensor a torch op returns while ``run`` runs."""
    with LargestTensor() as probe:
        run()
    return probe.largest


def peak_traced_bytes(run: Callable[[], Any]) -> int:
    """Peak bytes of traced allocations (numpy's, e.g. the kernels' codes and counts;
    not torch's) while ``run`` runs."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("settings", [dict(bins=10, correction="miller_madow"),
                                      dict(bins=10, range="quantile"),
                                      dict(bins=10, binning="equal_count")], ids=ids)
def test_streaming_never_makes_an_n_by_c_array(settings, kernels, monkeypatch):
    """Deterministic sizes, no timing: while streaming, the largest torch result stays
    below N x C / 8 and the peak numpy allocation below N x C / 2 bytes (a chunk is
    200 x 256; N-vectors such as the labels or the kernels' p·log p table, and counts
    within their cell budget, are allowed), while the in-memory path on the same data
    reaches N x C (the probes see what they must)."""
    if not kernels:
        monkeypatch.setattr(counting, "available", lambda: False)
    n, c, classes = 4000, 256, 3
    x, labels = layer(n, c, classes, seed=12)
    vectors = [labels] + nulls(labels, 2)
    e = est(**settings, chunk_cells=1 << 16)  # order statistics in several channel blocks

    def streamed(acts: torch.Tensor = x, ys: list[torch.Tensor] = vectors) -> None:
        state = e.prepare_stream(row_chunks(acts, 200), acts.shape[0], c)
        e.label_mi_streamed(state, ys, classes)
        e.input_mi_prepared(state), e.diagnostics_prepared(state)

    def whole() -> None:
        e.label_mi_prepared(e.prepare(x), labels, classes)
    # compiles (or loads) the kernels first: numba's allocations are traced too
    streamed(x[:400], [y[:400] for y in vectors])
    assert 200 * c <= largest_tensor(streamed) < n * c // 8
    assert peak_traced_bytes(streamed) < n * c // 2
    assert max(largest_tensor(whole), peak_traced_bytes(whole)) >= n * c


@pytest.mark.parametrize("kernels", [True, False])
def test_streamed_pair_mi_never_makes_an_n_by_c_array(kernels, monkeypatch):
    """As above for pair MI: its joint counts stay within ``pair_cells`` (here 81 pairs
    of 10 x 10 bins a block, 21 blocks), nothing else grows past a chunk (200 x 48)."""
    if not kernels:
        monkeypatch.setattr(counting, "available", lambda: False)
    n, c = 4000, 48
    x, _ = layer(n, c, 3, seed=13)
    e = est(10, pair_cells=1 << 13)

    def streamed(acts: torch.Tensor = x) -> None:
        state = e.prepare_stream(row_chunks(acts, 200), acts.shape[0], c)
        e.pair_mi_streamed(state, state)
    streamed(x[:400])  # compiles (or loads) the kernels first
    assert 200 * c <= largest_tensor(streamed) < n * c // 4
    assert peak_traced_bytes(streamed) < n * c
    assert max(largest_tensor(lambda: e.pair_mi(x, x)),
               peak_traced_bytes(lambda: e.pair_mi(x, x))) >= n * c
