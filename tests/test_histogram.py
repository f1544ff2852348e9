"""Tests of the histogram (plug-in) MI kernels and the built-in ``histogram`` estimator.

Definitions under test (ARCHITECTURE.md section 2): each channel is cut into B uniform
bins between its own min and max; I(T_c;Y) is the plug-in MI of the binned channel and
the label, in nats; I(X;T_c) = H(binned T_c); layer ``mean`` = mean of the channel
values, ``joint`` = the binned channel vector as one symbol; a constant channel has MI 0,
never NaN.

Every random draw uses a fixed seed (``torch.manual_seed`` / ``np.random.default_rng``),
so each statistical tolerance below is a fixed, reproducible check; each one is stated
beside its test together with the sample size and the standard error it allows for.
The whole file runs in a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import scipy.stats
import torch
from pydantic import ValidationError
from sklearn.metrics import mutual_info_score

from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams
from mi_probe.errors import EstimatorError, MiProbeError
from mi_probe.functional import histogram as F
from mi_probe.interfaces import Estimator, LayerMI

#: tolerance for values that must agree up to float64 summation order
EXACT = 1e-9


def est(bins: int = 20, **kw) -> HistogramEstimator:
    return HistogramEstimator(HistogramParams(bins=bins, **kw))


def np_bin_uniform(x: np.ndarray, bins: int) -> np.ndarray:
    """Independent reference of the binning definition, one column at a time:
    floor((x - min) / (max - min) * B) clipped to B - 1; a constant column -> bin 0."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros(x.shape, dtype=np.int64)
    for c in range(x.shape[1]):
        col = x[:, c]
        lo, hi = col.min(), col.max()
        if hi > lo:
            out[:, c] = np.clip(np.floor((col - lo) / (hi - lo) * bins), 0, bins - 1)
    return out


def np_joint_entropy_rows(codes: np.ndarray) -> float:
    """Plug-in entropy of the rows of ``codes`` treated as symbols (pure Python)."""
    counts = np.array(list(Counter(map(tuple, codes.tolist())).values()), dtype=np.float64)
    return float(scipy.stats.entropy(counts))


# ---------------------------------------------------------------------------------------
# 1. exact agreement with independent implementations (sklearn, scipy, numpy)
# ---------------------------------------------------------------------------------------

# (N, C, bins, classes): small and large, bins below / above the class count, N not a
# multiple of anything, one case with more bins than samples (many empty bins)
SHAPES = [(50, 3, 2, 2), (257, 7, 20, 10), (1001, 5, 2, 17), (1000, 4, 64, 3),
          (30, 6, 40, 5), (3000, 2, 20, 100)]


@pytest.mark.parametrize("n,c,bins,k", SHAPES)
def test_label_mi_from_codes_matches_sklearn(n, c, bins, k):
    """label_mi_from_codes == sklearn.metrics.mutual_info_score for every column, to
    1e-9 nats, on random integer codes (including codes that leave bins empty)."""
    g = torch.Generator().manual_seed(n * 1000 + c)
    codes = torch.randint(0, bins, (n, c), generator=g)
    # make the codes of one column depend on the label so MI is not only bias
    labels = torch.randint(0, k, (n,), generator=g)
    codes[:, 0] = (labels * bins // k + torch.randint(0, 2, (n,), generator=g)).clamp(max=bins - 1)
    mi = F.label_mi_from_codes(codes, labels, bins, k)
    assert mi.shape == (c,) and mi.dtype == torch.float64
    y = labels.numpy()
    for j in range(c):
        ref = mutual_info_score(y, codes[:, j].numpy())
        assert mi[j].item() == pytest.approx(ref, abs=EXACT), (j, mi[j].item(), ref)
    assert mi[0] > 0.1  # the dependent column carries real information


@pytest.mark.parametrize("n,c,bins,k", SHAPES)
def test_estimator_label_mi_matches_sklearn_on_raw_activations(n, c, bins, k):
    """HistogramEstimator.label_mi on continuous activations == sklearn MI of the labels
    and bin_uniform codes (1e-9), and the codes == the numpy reference (exact)."""
    torch.manual_seed(n + 7 * c)
    labels = torch.randint(0, k, (n,))
    acts = torch.randn(n, c) * torch.rand(c) * 10 + torch.randn(c)
    acts[:, 0] += labels.float()  # an informative channel
    codes = F.bin_uniform(acts, bins)
    assert np.array_equal(codes.numpy(), np_bin_uniform(acts.numpy(), bins))
    mi = est(bins).label_mi(acts, labels, k)
    for j in range(c):
        ref = mutual_info_score(labels.numpy(), codes[:, j].numpy())
        assert mi[j].item() == pytest.approx(ref, abs=EXACT)


@pytest.mark.parametrize("bins", [2, 3, 7, 20, 256])
def test_bin_uniform_matches_numpy_reference(bins):
    """bin_uniform == the numpy implementation of the definition, exactly, on columns
    with negative values, heavy ties, a huge range, a constant column and float32 input;
    codes are int64 in [0, B), the minimum is in bin 0 and the maximum in bin B-1."""
    rng = np.random.default_rng(bins)
    n = 500
    x = np.stack([
        rng.normal(size=n),
        rng.integers(-3, 4, size=n).astype(np.float64),  # ties on bin edges
        rng.exponential(size=n) * 1e6,
        np.full(n, -2.5),  # constant
        rng.uniform(-1, 1, size=n).astype(np.float32).astype(np.float64),
    ], axis=1)
    for dtype in (torch.float64, torch.float32):
        acts = torch.from_numpy(x).to(dtype)
        codes = F.bin_uniform(acts, bins)
        assert codes.dtype == torch.int64 and codes.shape == acts.shape
        assert np.array_equal(codes.numpy(), np_bin_uniform(acts.double().numpy(), bins))
        assert codes.min() >= 0 and codes.max() <= bins - 1
        for j in (0, 1, 2, 4):
            col = acts[:, j]
            assert codes[col.argmin(), j] == 0 and codes[col.argmax(), j] == bins - 1
        assert (codes[:, 3] == 0).all()


def test_entropy_matches_scipy():
    """entropy_from_codes == scipy.stats.entropy of the per-column counts (1e-9), and
    input_mi == that of the bin_uniform codes."""
    torch.manual_seed(1)
    for n, c, bins in [(100, 4, 20), (999, 3, 7), (20, 5, 64)]:
        codes = torch.randint(0, bins, (n, c))
        codes[:, 0] = codes[:, 0] % 3  # a skewed column
        h = F.entropy_from_codes(codes, bins)
        for j in range(c):
            counts = np.bincount(codes[:, j].numpy(), minlength=bins)
            assert h[j].item() == pytest.approx(scipy.stats.entropy(counts), abs=EXACT)
        acts = torch.randn(n, c).exp()
        h_est = est(bins).input_mi(acts)
        ref_codes = np_bin_uniform(acts.numpy(), bins)
        for j in range(c):
            counts = np.bincount(ref_codes[:, j], minlength=bins)
            assert h_est[j].item() == pytest.approx(scipy.stats.entropy(counts), abs=EXACT)


# ---------------------------------------------------------------------------------------
# 2. closed forms
# ---------------------------------------------------------------------------------------

M = 10
TRUE_UNIFORM_MI = math.log(M) - (M - 1) * math.log(2) / M  # 1.678753...


def test_closed_form_value():
    assert TRUE_UNIFORM_MI == pytest.approx(1.6788, abs=1e-4)


@pytest.mark.parametrize("bins", [11, 22])
def test_closed_form_uniform_shift(bins):
    """Y uniform on m = 10 classes, T | Y ~ U(Y, Y + 2): I(T;Y) = ln m - (m-1) ln 2 / m
    = 1.67875 nats. T lies in [0, 11]; with B = 11 (or 22) bins the bin edges fall on the
    integer grid (the sample min / max are within 1e-3 of 0 / 11, checked), p(y | t) is
    constant within each bin, so the binned MI equals the continuous MI. N = 200000:
    plug-in bias (B-1)(K-1)/2N <= 4.7e-4 nats, sampling sd ~ 5e-4 nats; tolerance 0.01."""
    torch.manual_seed(2024)
    n = 200_000
    y = torch.randint(0, M, (n,))
    t = (y.double() + 2 * torch.rand(n, dtype=torch.float64))[:, None]
    assert t.min().item() < 1e-3 and t.max().item() > M + 1 - 1e-3
    mi = est(bins).label_mi(t, y, M).item()
    assert abs(mi - TRUE_UNIFORM_MI) < 0.01, (mi, TRUE_UNIFORM_MI)


def test_closed_form_deterministic():
    """T = Y + U(-0.05, 0.05): each class sits well inside its own bin (B = K = 10, bin
    width 0.91), so I(T;Y) = H(Y) = ln m exactly for balanced labels (N = 10000, 1e-9),
    and H(binned T) = ln m as well."""
    torch.manual_seed(3)
    n = 10_000
    y = torch.arange(n) % M
    t = (y.double() + (torch.rand(n, dtype=torch.float64) - 0.5) * 0.1)[:, None]
    e = est(M)
    assert torch.equal(F.bin_uniform(t, M)[:, 0], y)
    assert e.label_mi(t, y, M).item() == pytest.approx(math.log(M), abs=EXACT)
    assert e.input_mi(t).item() == pytest.approx(math.log(M), abs=EXACT)


# ---------------------------------------------------------------------------------------
# 3. independence and the plug-in bias
# ---------------------------------------------------------------------------------------

def test_plugin_bias_formula():
    """(B-1)(K-1)/(2N): 19 * 9 / 1200 = 0.1425 nats for B = 20, K = 10, N = 600."""
    assert F.plugin_bias(20, 10, 600) == pytest.approx(0.1425, abs=1e-12)
    assert F.plugin_bias(20, 10, 20_000) == pytest.approx(0.004275, abs=1e-12)
    assert F.plugin_bias(2, 2, 1) == pytest.approx(0.5)
    assert est(20).bias(600, 10) == F.plugin_bias(20, 10, 600)
    occupied = torch.tensor([1, 5, 20])
    assert torch.allclose(F.miller_madow_bias(occupied, 100),
                          torch.tensor([0.0, 0.02, 0.095], dtype=torch.float64))


def test_independent_channels_give_the_plugin_bias():
    """T ~ U(0, 1) independent of Y; N = 20000, B = 20, K = 10, C = 64 channels (every
    cell expects 100 samples, so 2N*I ~ chi2 with 171 df). Expected value = the plug-in
    bias 171/40000 = 0.004275 nats; the sd of one channel is ~4.6e-4, of the 64-channel
    mean ~5.8e-5. Checks: channel mean within 10 % (4.3e-4, ~7 sd) of the bias, every
    channel in [0, 0.01) nats."""
    torch.manual_seed(4)
    n, bins, k, c = 20_000, 20, 10, 64
    y = torch.randint(0, k, (n,))
    acts = torch.rand(n, c, dtype=torch.float64)
    mi = est(bins).label_mi(acts, y, k)
    bias = F.plugin_bias(bins, k, n)
    assert abs(mi.mean().item() - bias) < 0.1 * bias, (mi.mean().item(), bias)
    assert (mi >= 0).all() and (mi < 0.01).all()


# ---------------------------------------------------------------------------------------
# 4. bounds
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,bins,k", [(40, 20, 10), (500, 4, 30), (2000, 20, 2), (300, 64, 64)])
def test_bounds(n, bins, k):
    """0 <= I(T_c;Y) <= min(log B, log K, H(T_c)); 0 <= H(binned T_c) <= log B (slack
    1e-12), on data ranging from independent to a copy of the label."""
    torch.manual_seed(n + bins)
    y = torch.randint(0, k, (n,))
    acts = torch.cat([torch.randn(n, 4), y[:, None].float() + 0.01 * torch.randn(n, 2),
                      torch.randn(n, 1).exp() ** 3], dim=1)
    e = est(bins)
    mi, h = e.label_mi(acts, y, k), e.input_mi(acts)
    assert (mi >= 0).all() and (h >= 0).all()
    assert (mi <= min(math.log(bins), math.log(k)) + 1e-12).all()
    assert (mi <= h + 1e-12).all()
    assert (h <= F.log_cap(bins) + 1e-12).all()
    assert F.log_cap(bins) == math.log(bins)


@pytest.mark.parametrize("bins,per_bin", [(2, 1), (7, 3), (20, 50), (64, 10)])
def test_entropy_is_log_b_for_exactly_uniform_fill(bins, per_bin):
    """x = 0, 1, ..., B*k - 1 (shuffled differently per channel) puts exactly k samples
    in every bin, so H(binned T) = log B within 1e-9."""
    n = bins * per_bin
    g = torch.Generator().manual_seed(bins)
    acts = torch.stack([torch.randperm(n, generator=g).double() for _ in range(3)], dim=1)
    codes = F.bin_uniform(acts, bins)
    for j in range(3):
        assert (torch.bincount(codes[:, j], minlength=bins) == per_bin).all()
    h = est(bins).input_mi(acts)
    assert torch.allclose(h, torch.full((3,), math.log(bins), dtype=torch.float64),
                          atol=EXACT, rtol=0)


def test_binning_keeps_float64_resolution():
    """float64 channels are binned in float64: 1 + i * 1e-12 (i < 200, a range below
    float32 resolution at 1.0) still fills 20 bins exactly uniformly (H = log 20)."""
    x = (1.0 + torch.arange(200, dtype=torch.float64) * 1e-12)[:, None]
    assert torch.equal(torch.bincount(F.bin_uniform(x, 20)[:, 0], minlength=20),
                       torch.full((20,), 10))
    assert est(20).input_mi(x).item() == pytest.approx(math.log(20), abs=EXACT)


def test_joint_input_mi_capped_by_log_n():
    """reduce: joint treats the binned channel vector as one symbol: I(X;T) <= log N, with
    equality when every sample gets its own symbol (64 continuous channels, N = 300);
    then I(T;Y) = H(Y) too. Few coarse channels stay well below the cap."""
    torch.manual_seed(5)
    n, k = 300, 10
    y = torch.randint(0, k, (n,))
    h_y = float(scipy.stats.entropy(np.bincount(y.numpy(), minlength=k)))
    many = est(20).layer_mi(torch.randn(n, 64), y, k, "joint")
    assert many.i_xt == pytest.approx(math.log(n), abs=EXACT)
    assert many.i_ty == pytest.approx(h_y, abs=EXACT)
    few = est(2).layer_mi(torch.randn(n, 3), y, k, "joint")
    assert 0 < few.i_xt <= math.log(8) + 1e-12 < math.log(n)
    assert few.i_ty <= min(few.i_xt, h_y) + 1e-12


# ---------------------------------------------------------------------------------------
# 5. invariance
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("a,b", [(2.0, 0.0), (0.25, 0.0), (2.5, -3.0), (0.37, 11.1),
                                 (1e3, 1e-3), (7.0, -1e4)])
def test_affine_invariance(a, b):
    """Binning uses each channel's own min/max, so a -> a*x + b with a > 0 leaves the
    codes, hence MI and entropy, unchanged; asserted exactly (torch.equal). For a power
    of two with b = 0 this is exact in floating point; for other (a, b) a code could flip
    only if a value lands within ~1e-15 of a bin edge, which has probability ~0 for
    continuous data (N = 2000, C = 8, float64)."""
    torch.manual_seed(6)
    n, k = 2000, 10
    y = torch.randint(0, k, (n,))
    x = torch.randn(n, 8, dtype=torch.float64) + y[:, None].double() * torch.rand(8, dtype=torch.float64)
    e = est(20)
    z = a * x + b
    assert torch.equal(F.bin_uniform(z, 20), F.bin_uniform(x, 20))
    assert torch.equal(e.label_mi(z, y, k), e.label_mi(x, y, k))
    assert torch.equal(e.input_mi(z), e.input_mi(x))
    # per-channel transforms with different (a_c, b_c) too
    ac = torch.rand(8, dtype=torch.float64) * 5 + 0.1
    bc = torch.randn(8, dtype=torch.float64) * 3
    assert torch.equal(e.label_mi(ac * x + bc, y, k), e.label_mi(x, y, k))


def test_monotone_nonlinear_transform_is_not_invariant_but_keeps_order():
    """Bins are uniform on the raw values, so a non-affine increasing map (exp) changes the
    histogram: 0..19 in 20 bins has H = log 20, exp of it crowds 17 values into bin 0.
    What does hold for any increasing map: codes are non-decreasing in the value, and the
    min / max stay in the first / last bin."""
    x = torch.arange(20, dtype=torch.float64)[:, None]
    e = est(20)
    assert e.input_mi(x).item() == pytest.approx(math.log(20), abs=EXACT)
    assert e.input_mi(x.exp()).item() < math.log(20) - 1.0
    torch.manual_seed(7)
    v = torch.randn(1000, 3, dtype=torch.float64)
    for z in (v, v.exp(), torch.sigmoid(v), v ** 3):
        codes = F.bin_uniform(z, 20)
        for j in range(3):
            order = z[:, j].argsort()
            sorted_codes = codes[order, j]
            assert (sorted_codes.diff() >= 0).all()
            assert sorted_codes[0] == 0 and sorted_codes[-1] == 19


# ---------------------------------------------------------------------------------------
# 6. constant channels
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,k,bins", [(7, 2, 2), (100, 10, 20), (1001, 17, 2), (1001, 17, 20),
                                      (5000, 3, 64), (333, 100, 7)])
def test_constant_channels_are_exactly_zero(n, k, bins):
    """A constant channel falls in bin 0: I(T_c;Y) == 0 and H == 0 exactly (not ~1e-16,
    never NaN), whatever the constant, N, K and B, also next to varying channels; 30
    label draws per (N, K, B)."""
    e = est(bins)
    for seed in range(30):  # H(Y) - H(T,Y) rounding used to leave ~4e-16 for a few % of draws
        torch.manual_seed(seed)
        y = torch.randint(0, k, (n,))
        acts = torch.randn(n, 6, dtype=torch.float64)
        for j, value in enumerate([0.0, 3.3, -1e6, 1e-30]):
            acts[:, j] = value
        mi, h = e.label_mi(acts, y, k), e.input_mi(acts)
        assert not mi.isnan().any() and not h.isnan().any()
        assert (mi[:4] == 0).all(), (seed, mi[:4].tolist())
        assert (h[:4] == 0).all(), (seed, h[:4].tolist())
        assert not torch.signbit(mi[:4]).any() and not torch.signbit(h[:4]).any()  # no -0.0
        assert (mi[4:] >= 0).all() and (h[4:] > 0).all()  # varying channels: not zeroed


def test_channel_constant_except_one_sample():
    """All zeros but one sample at 1: counts are [N-1, 0, ..., 0, 1] (the single sample
    in the last bin); H = -( (N-1)/N ln((N-1)/N) + 1/N ln(1/N) ) and MI == sklearn."""
    n, bins, k = 500, 20, 5
    torch.manual_seed(8)
    y = torch.randint(0, k, (n,))
    acts = torch.zeros(n, 1)
    acts[123, 0] = 1.0
    codes = F.bin_uniform(acts, bins)
    expected_counts = torch.zeros(bins, dtype=torch.int64)
    expected_counts[0], expected_counts[-1] = n - 1, 1
    assert torch.equal(torch.bincount(codes[:, 0], minlength=bins), expected_counts)
    assert codes[123, 0] == bins - 1
    p = (n - 1) / n
    h_ref = -(p * math.log(p) + (1 / n) * math.log(1 / n))
    e = est(bins)
    assert e.input_mi(acts).item() == pytest.approx(h_ref, abs=EXACT)
    mi = e.label_mi(acts, y, k).item()
    assert mi == pytest.approx(mutual_info_score(y.numpy(), codes[:, 0].numpy()), abs=EXACT)
    assert 0 < mi <= h_ref + 1e-12


@pytest.mark.parametrize("reduce", ["mean", "joint"])
def test_all_zero_layer(reduce):
    """A dead layer (every channel 0) reports I(X;T) = I(T;Y) = 0.0 for both reductions."""
    y = torch.arange(64) % 4
    out = est(20).layer_mi(torch.zeros(64, 16), y, 4, reduce)
    assert isinstance(out, LayerMI)
    assert out.i_xt == 0.0 and out.i_ty == 0.0
    assert math.copysign(1, out.i_xt) == 1 and math.copysign(1, out.i_ty) == 1  # not -0.0


def test_layer_mean_is_mean_of_channels_including_dead_ones():
    """reduce: mean = mean of the per-channel values; dead channels count as 0."""
    torch.manual_seed(9)
    n, k = 400, 5
    y = torch.randint(0, k, (n,))
    acts = torch.randn(n, 6) + y[:, None].float()
    acts[:, 2:4] = 0.0
    e = est(20)
    out = e.layer_mi(acts, y, k, "mean")
    assert out.i_xt == pytest.approx(e.input_mi(acts).mean().item(), abs=1e-12)
    assert out.i_ty == pytest.approx(e.label_mi(acts, y, k).mean().item(), abs=1e-12)
    assert out.i_ty == pytest.approx(e.label_mi(acts[:, [0, 1, 4, 5]], y, k).sum().item() / 6,
                                     abs=1e-12)


# ---------------------------------------------------------------------------------------
# 7. chunking
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_cells", [1, 500, 5000])
def test_chunking_gives_identical_results(max_cells, monkeypatch):
    """A tiny max_cells (one channel per chunk, or uneven chunks of a few channels with a
    short tail) gives bit-identical results to the default single chunk; the number of
    _counts calls proves the chunks really happened (one joint count per chunk). N = 300, C = 37, B = 20, K = 7."""
    torch.manual_seed(10)
    n, c, bins, k = 300, 37, 20, 7
    y = torch.randint(0, k, (n,))
    acts = torch.randn(n, c) + y[:, None].float() * torch.rand(c)
    acts[:, 5] = 1.0
    codes = F.bin_uniform(acts, bins)
    ref_mi = F.label_mi_from_codes(codes, y, bins, k)
    ref_h = F.entropy_from_codes(codes, bins)

    calls = []
    real_counts = F._counts
    monkeypatch.setattr(F, "_counts", lambda cd, s: calls.append(cd.shape[1]) or real_counts(cd, s))
    mi = F.label_mi_from_codes(codes, y, bins, k, max_cells=max_cells)
    h = F.entropy_from_codes(codes, bins, max_cells=max_cells)
    assert torch.equal(mi, ref_mi) and torch.equal(h, ref_h)
    step_mi = max(1, max_cells // (n + bins * k))
    step_h = max(1, max_cells // (n + bins))
    # one joint (bin, label) count per chunk gives H(T), H(Y) and H(T, Y)
    assert len(calls) == math.ceil(c / step_mi) + math.ceil(c / step_h) > 3
    assert sum(calls) == 2 * c  # every channel counted once per histogram

    small, default = est(bins, chunk_cells=max_cells), est(bins)
    assert torch.equal(small.label_mi(acts, y, k), default.label_mi(acts, y, k))
    assert torch.equal(small.input_mi(acts), default.input_mi(acts))


# ---------------------------------------------------------------------------------------
# 8. joint reduction
# ---------------------------------------------------------------------------------------

def test_joint_with_one_channel_equals_single_channel():
    """C = 1: the joint symbol is a relabelling of the channel's bin, so the joint values
    equal the per-channel ones (1e-12)."""
    torch.manual_seed(11)
    n, k = 700, 6
    y = torch.randint(0, k, (n,))
    x = (torch.randn(n, 1) + y[:, None].float()).exp()
    e = est(20)
    joint = e.layer_mi(x, y, k, "joint")
    assert joint.i_xt == pytest.approx(e.input_mi(x).item(), abs=1e-12)
    assert joint.i_ty == pytest.approx(e.label_mi(x, y, k).item(), abs=1e-12)


def test_joint_of_copies_equals_single():
    """[x, x] and [x, 3x + 1] (same binned values) carry no more than x alone."""
    torch.manual_seed(12)
    n, k = 700, 6
    y = torch.randint(0, k, (n,))
    x = torch.randn(n, 1, dtype=torch.float64) + y[:, None].double()
    e = est(20)
    single = e.layer_mi(x, y, k, "joint")
    for pair in (torch.cat([x, x], 1), torch.cat([x, 2.0 * x + 1.0, x], 1)):
        joint = e.layer_mi(pair, y, k, "joint")
        assert joint.i_xt == pytest.approx(single.i_xt, abs=1e-12)
        assert joint.i_ty == pytest.approx(single.i_ty, abs=1e-12)


def test_joint_codes_with_duplicated_rows():
    """joint_codes on rows drawn with repetition from 13 distinct rows: the symbol count
    is the number of distinct rows present, equal rows <-> equal symbols, and the joint
    entropy / MI equal a Counter-of-tuples reference and sklearn."""
    g = torch.Generator().manual_seed(13)
    base = torch.randint(0, 4, (13, 5), generator=g)
    base = torch.unique(base, dim=0)
    idx = torch.randint(0, base.shape[0], (400,), generator=g)
    idx[: base.shape[0]] = torch.arange(base.shape[0])  # every base row occurs
    codes = base[idx]
    symbols, n_symbols = F.joint_codes(codes)
    assert symbols.shape == (400, 1) and symbols.dtype == torch.int64
    assert n_symbols == base.shape[0] == len({tuple(r) for r in codes.tolist()})
    assert symbols.min() == 0 and symbols.max() == n_symbols - 1
    s = symbols[:, 0]
    same_rows = (codes[:, None, :] == codes[None, :, :]).all(-1)
    assert torch.equal(same_rows, s[:, None] == s[None, :])
    h = F.entropy_from_codes(symbols, n_symbols)[0].item()
    assert h == pytest.approx(np_joint_entropy_rows(codes.numpy()), abs=EXACT)
    y = (codes[:, 0] + torch.randint(0, 2, (400,), generator=g)) % 3
    mi = F.label_mi_from_codes(symbols, y, n_symbols, 3)[0].item()
    assert mi == pytest.approx(mutual_info_score(y.numpy(), s.numpy()), abs=EXACT)


def test_joint_layer_matches_row_reference():
    """Estimator joint values == Counter / sklearn on the rows of the numpy-binned layer;
    all-identical samples give one symbol and zeros."""
    torch.manual_seed(14)
    n, k, bins = 500, 4, 3
    y = torch.randint(0, k, (n,))
    acts = torch.randn(n, 3) + y[:, None].float()
    ref_codes = np_bin_uniform(acts.numpy(), bins)
    out = est(bins).layer_mi(acts, y, k, "joint")
    assert out.i_xt == pytest.approx(np_joint_entropy_rows(ref_codes), abs=EXACT)
    row_ids = np.unique(ref_codes, axis=0, return_inverse=True)[1].reshape(-1)
    assert out.i_ty == pytest.approx(mutual_info_score(y.numpy(), row_ids), abs=EXACT)
    symbols, n_symbols = F.joint_codes(torch.zeros(9, 4, dtype=torch.int64))
    assert n_symbols == 1 and (symbols == 0).all()


# ---------------------------------------------------------------------------------------
# 9. errors
# ---------------------------------------------------------------------------------------

def test_kernel_errors():
    codes = torch.zeros(10, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"labels must have shape \(10,\), got \(9,\)"):
        F.label_mi_from_codes(codes, torch.zeros(9, dtype=torch.int64), 2, 2)
    with pytest.raises(ValueError, match=r"labels must have shape \(10,\), got \(10, 1\)"):
        F.label_mi_from_codes(codes, torch.zeros(10, 1, dtype=torch.int64), 2, 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); found \[0, 3\]"):
        F.label_mi_from_codes(codes, torch.tensor([0] * 9 + [3]), 2, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); found \[-1, 0\]"):
        F.label_mi_from_codes(codes, torch.tensor([0] * 9 + [-1]), 2, 3)
    for bins in (1, 0, -4):
        with pytest.raises(ValueError, match=f"bins must be >= 2, got {bins}"):
            F.bin_uniform(torch.randn(10, 2), bins)
    for shape in ((10,), (4, 3, 2), ()):
        with pytest.raises(ValueError, match=r"expected an \(N, C\) matrix"):
            F.bin_uniform(torch.randn(shape), 20)


def test_estimator_errors():
    """Estimator-level mistakes are EstimatorError (a MiProbeError, so the CLI prints the
    message): non-2-D activations, bad label shape / range, unknown reduction; bins < 2
    is rejected by the params model (pydantic ValidationError, a ValueError)."""
    e = est(20)
    acts, y = torch.randn(10, 3), torch.zeros(10, dtype=torch.int64)
    bad = torch.randn(10, 3, 4)
    for call in (lambda: e.label_mi(bad, y, 2), lambda: e.input_mi(bad),
                 lambda: e.layer_mi(bad, y, 2, "mean"), lambda: e.layer_mi(bad, y, 2, "joint")):
        with pytest.raises(EstimatorError, match=r"expects \(N, C\) activations, got shape \(10, 3, 4\)"):
            call()
    for reduce in ("mean", "joint"):
        with pytest.raises(EstimatorError, match=r"labels must have shape \(10,\)"):
            e.layer_mi(acts, y[:9], 2, reduce)
        with pytest.raises(EstimatorError, match=r"labels must lie in \[0, 2\)"):
            e.layer_mi(acts, y + 2, 2, reduce)
    with pytest.raises(EstimatorError, match=r"labels must have shape"):
        e.label_mi(acts, y[:, None], 2)
    with pytest.raises(EstimatorError, match=r"labels must lie in \[0, 2\)"):
        e.label_mi(acts, y - 1, 2)
    with pytest.raises(EstimatorError, match=r"no layer reduction 'max'; valid: \['joint', 'mean'\]"):
        e.layer_mi(acts, y, 2, "max")
    assert issubclass(EstimatorError, MiProbeError)
    for bins in (1, 0):
        with pytest.raises(ValidationError, match="bins"):
            HistogramParams(bins=bins)
    with pytest.raises(ValidationError, match="extra"):
        HistogramParams(bins=20, bogus=1)


# ---------------------------------------------------------------------------------------
# 10. dtypes, devices, protocol
# ---------------------------------------------------------------------------------------

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_and_device(dtype, device):
    """Any float dtype works; results are float64 on the input's device, identical to
    the float64 computation on the same (already rounded) values. Labels may be int32."""
    torch.manual_seed(15)
    n, c, k = 300, 4, 5
    y = torch.randint(0, k, (n,))
    acts = (torch.randn(n, c) + y[:, None].float()).to(dtype)
    acts[:, 3] = 1.0
    ref = est(20)
    ref_mi = ref.label_mi(acts.double(), y, k)
    ref_h = ref.input_mi(acts.double())
    a, yy = acts.to(device), y.to(device, torch.int32)
    e = est(20)
    mi, h = e.label_mi(a, yy, k), e.input_mi(a)
    for out in (mi, h):
        assert out.dtype == torch.float64 and out.device == a.device and out.shape == (c,)
    assert torch.allclose(mi.cpu(), ref_mi, atol=1e-12, rtol=0)
    assert torch.allclose(h.cpu(), ref_h, atol=1e-12, rtol=0)
    assert mi[3] == 0 and h[3] == 0
    for reduce in ("mean", "joint"):
        out = e.layer_mi(a, yy, k, reduce)
        assert isinstance(out.i_xt, float) and isinstance(out.i_ty, float)
        assert math.isfinite(out.i_xt) and math.isfinite(out.i_ty)


def test_estimator_protocol_and_describe():
    e = est(16)
    assert isinstance(e, Estimator)
    assert e.name == "histogram" and e.reductions == frozenset({"mean", "joint"})
    d = e.describe()
    assert d["bins"] == 16 and d["i_xt_cap_per_channel_nats"] == pytest.approx(math.log(16))


# ---------------------------------------------------------------------------------------
# 11. bin ranges: beyond the largest double, non-finite values, the quantile range
# ---------------------------------------------------------------------------------------

def test_bin_uniform_handles_ranges_beyond_the_largest_double():
    """Columns spanning ±1e308 (max − min = inf in float64) used to give NaN / INT64_MIN
    codes and a bare RuntimeError from bincount. Halving is exact, so their codes must
    equal those of x / 2 (whose range is finite and which the numpy reference bins
    directly); an ordinary column next to them keeps exactly its old codes; the minimum
    is in bin 0, the maximum in bin B − 1; entropies, label MI and pair MI are finite
    and equal those of x / 2."""
    big = np.finfo(np.float64).max
    rng = np.random.default_rng(11)
    n = 400
    x = np.stack([rng.uniform(-1, 1, size=n) * 1e308, rng.uniform(-1, 1, size=n) * big,
                  rng.normal(size=n)], axis=1)
    x[0, 0], x[1, 0] = -1e308, 1e308
    x[0, 1], x[1, 1] = -big, big  # the widest possible range
    acts = torch.from_numpy(x)
    half = acts / 2
    assert torch.isinf(acts[:, :2].amax(0) - acts[:, :2].amin(0)).all()  # the overflow case
    for bins in (2, 20, 256):
        codes = F.bin_uniform(acts, bins)
        assert torch.equal(codes, F.bin_uniform(half, bins))
        assert np.array_equal(codes.numpy(), np_bin_uniform(half.numpy(), bins))
        assert np.array_equal(codes[:, 2].numpy(), np_bin_uniform(x[:, 2:], bins)[:, 0])
        assert (codes[0, :2] == 0).all() and (codes[1, :2] == bins - 1).all()
    y = torch.from_numpy(rng.integers(0, 4, size=n))
    e = est(20)
    assert torch.equal(e.input_mi(acts), e.input_mi(half))
    assert torch.equal(e.label_mi(acts, y, 4), e.label_mi(half, y, 4))
    assert torch.equal(e.pair_mi(acts, acts), e.pair_mi(half, half))
    assert e.input_mi(acts)[:2].gt(2.5).all()  # uniform over the range: near log 20


def test_non_finite_activations_are_refused_with_a_typed_error():
    """NaN and ±inf cannot be binned: every estimator entry point raises EstimatorError
    counting what was found and naming the first bad channel (the kernel: ValueError);
    no bare RuntimeError, no silent codes."""
    acts = torch.randn(50, 4, dtype=torch.float64)
    acts[3, 1], acts[7, 1], acts[9, 3] = math.nan, math.inf, -math.inf
    y = torch.arange(50) % 3
    e = est(20)
    found = r"found 1 NaN, 1 \+inf and 1 -inf values in 2 of 4 channels \(first: channel 1\)"
    with pytest.raises(ValueError, match=found):
        F.bin_uniform(acts, 20)
    with pytest.raises(ValueError, match=found):
        F.bin_range(acts, 0.01)
    calls = [lambda: e.label_mi(acts, y, 3), lambda: e.input_mi(acts),
             lambda: e.layer_mi(acts, y, 3, "mean"), lambda: e.layer_mi(acts, y, 3, "joint"),
             lambda: e.pair_mi(acts, acts), lambda: e.diagnostics(acts),
             lambda: est(20, range="quantile").input_mi(acts)]
    for call in calls:
        with pytest.raises(EstimatorError, match="histogram estimator: expected finite "
                                                 "activations, " + found):
            call()
    one_nan = torch.ones(5, 2)
    one_nan[2, 0] = math.nan
    with pytest.raises(EstimatorError, match=r"found 1 NaN, 0 \+inf and 0 -inf values in "
                                             r"1 of 2 channels \(first: channel 0\)"):
        e.input_mi(one_nan)
    with pytest.raises(EstimatorError, match=r"expected at least one sample, got shape \(0, 3\)"):
        e.input_mi(torch.zeros(0, 3))


@pytest.mark.parametrize("n", [2, 7, 1000, 3925])
@pytest.mark.parametrize("q", [0.001, 0.01, 0.1, 0.25, 0.49])
def test_quantile_range_matches_numpy(n, q):
    """bin_range(q) == numpy's lower q quantile (method="lower") and upper 1 − q quantile
    (method="higher") of each column, exactly; bin_uniform(q) == floor((x − lo) / (hi −
    lo) · B) clipped to [0, B − 1], exactly (values outside the range land in the edge
    bins)."""
    rng = np.random.default_rng(n)
    x = np.stack([rng.normal(size=n), rng.exponential(size=n) ** 3,
                  rng.integers(-2, 3, size=n).astype(np.float64)], axis=1)
    lo, hi = F.bin_range(torch.from_numpy(x), q)
    ref_lo = np.quantile(x, q, axis=0, method="lower")
    ref_hi = np.quantile(x, 1 - q, axis=0, method="higher")
    ref_min, ref_max = x.min(0), x.max(0)
    empty = ref_hi <= ref_lo
    assert np.array_equal(lo.numpy(), np.where(empty, ref_min, ref_lo))
    assert np.array_equal(hi.numpy(), np.where(empty, ref_max, ref_hi))
    codes = F.bin_uniform(torch.from_numpy(x), 20, quantile=q)
    width = np.where(hi.numpy() > lo.numpy(), hi.numpy() - lo.numpy(), 1.0)
    ref = np.clip(np.floor((x - lo.numpy()) / width * 20), 0, 19).astype(np.int64)
    ref[:, hi.numpy() <= lo.numpy()] = 0
    assert np.array_equal(codes.numpy(), ref)


def test_one_outlier_collapses_the_min_max_entropy_but_not_the_quantile_one():
    """Issue 11.8: one outlier among 3925 samples. A N(0, 1) channel has H(binned T) =
    2.499 nats with the min/max range (B = 20); one sample at 40 stretches the range
    ~6-fold, most samples fall into 3 bins and H drops to 0.793. The quantile range
    (q = 0.001) gives 2.596 without and 2.591 with the outlier (it sits in the last bin)."""
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(3925, 1, generator=g, dtype=torch.float64)
    spiked = clean.clone()
    spiked[17, 0] = 40.0
    minmax, quantile = est(20), est(20, range="quantile", range_quantile=0.001)
    h = {(name, which): e.input_mi(x).item() for name, e in (("minmax", minmax),
                                                               ("quantile", quantile))
         for which, x in (("clean", clean), ("spiked", spiked))}
    assert h["minmax", "clean"] == pytest.approx(2.4995, abs=1e-4)
    assert h["minmax", "spiked"] == pytest.approx(0.7932, abs=1e-4)
    assert h["quantile", "clean"] == pytest.approx(2.5955, abs=1e-4)
    assert h["quantile", "spiked"] == pytest.approx(2.5915, abs=1e-4)
    assert F.bin_uniform(spiked, 20, quantile=0.001)[17, 0] == 19
    # the edge-bin share shows the collapse: 8.8% of samples in an edge bin vs 0.6%
    assert minmax.diagnostics(spiked)["frac_edge_bins"] == pytest.approx(345 / 3925)
    assert quantile.diagnostics(spiked)["frac_edge_bins"] == pytest.approx(24 / 3925)


def test_quantile_range_keeps_sparse_and_constant_channels_apart():
    """A channel that is zero except for 2 of 3925 samples has an empty 0.1%-quantile
    range; it keeps its min/max (codes equal the min/max codes, H > 0) instead of being
    binned as a constant. A constant channel stays in bin 0 with H = 0."""
    n = 3925
    acts = torch.zeros(n, 3, dtype=torch.float64)
    acts[5, 0], acts[9, 0] = 1.0, 3.0
    acts[:, 1] = 2.5
    acts[:, 2] = torch.linspace(-1, 1, n, dtype=torch.float64)
    codes_q = F.bin_uniform(acts, 20, quantile=0.001)
    codes_m = F.bin_uniform(acts, 20)
    assert torch.equal(codes_q[:, :2], codes_m[:, :2])
    assert (codes_q[:, 1] == 0).all()
    h = est(20, range="quantile").input_mi(acts)
    assert h[0] > 0 and h[1] == 0
    assert not torch.equal(codes_q[:, 2], codes_m[:, 2])  # a spread channel is clipped


def test_range_is_a_documented_choice_reported_by_describe_and_diagnostics():
    """Default: min/max, as in the paper (identical codes to bin_uniform without a
    quantile). describe() and diagnostics() say which range was used; diagnostics give
    the share of samples clipped (0 for min/max; 6 of 3925 for q = 0.001: 3 below, 3
    above). Bad range settings are rejected by the params model."""
    torch.manual_seed(16)
    acts = torch.randn(3925, 4, dtype=torch.float64)
    default = est(20)
    assert default.params.range == "minmax" and default.quantile is None
    assert torch.equal(default._codes(acts), F.bin_uniform(acts, 20))
    assert default.describe()["range"] == "minmax" and "range_quantile" not in default.describe()
    diag = default.diagnostics(acts)
    assert diag["bin_range"] == "minmax" and diag["frac_clipped"] == 0.0
    q = est(20, range="quantile", range_quantile=0.001)
    assert q.describe()["range"] == "quantile" and q.describe()["range_quantile"] == 0.001
    diag = q.diagnostics(acts)
    assert diag["bin_range"] == "quantile"
    assert diag["frac_clipped"] == pytest.approx(6 / 3925)
    assert torch.equal(q._codes(acts), F.bin_uniform(acts, 20, quantile=0.001))
    for value in (0.0, 0.5, -0.1):
        with pytest.raises(ValidationError, match="range_quantile"):
            HistogramParams(range="quantile", range_quantile=value)
    with pytest.raises(ValidationError, match="range"):
        HistogramParams(range="iqr")
    with pytest.raises(ValueError, match=r"quantile must lie in \(0, 0.5\), got 0.5"):
        F.bin_range(acts, 0.5)


@pytest.mark.parametrize("a,b", [(2.0, 0.0), (0.25, 0.0), (1024.0, 0.0)])
def test_quantile_range_is_affine_invariant(a, b):
    """The quantile range moves with the data: a·x + b (a a power of two, so exact in
    floating point) gives the same codes."""
    torch.manual_seed(17)
    x = torch.randn(1000, 5, dtype=torch.float64) ** 3
    assert torch.equal(F.bin_uniform(a * x + b, 20, quantile=0.01),
                       F.bin_uniform(x, 20, quantile=0.01))


def test_quantile_range_passes_the_estimator_conformance_suite():
    """range: quantile is still a conforming estimator (mi_probe.testing: contracts,
    near-zero on independent data, closed forms and Gaussian pair MI within 0.1 nats;
    measured errors 0.016–0.044 nats, the min/max range 0.018–0.044)."""
    from mi_probe.testing.estimators import check_estimator

    report = check_estimator(est(20, range="quantile"))
    assert "uniform_shift" in report.checked and "gaussian" in report.checked
