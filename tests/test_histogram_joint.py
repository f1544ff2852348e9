"""``joint_mi`` of the built-in ``histogram`` estimator (``interfaces.JointMI``): I(X;Y)
of continuous multivariate x (N, dx) and y (N, dy) from product bins.

Each dimension is binned with the estimator's binning into b bins (``joint_bins``, else
the largest b with b^(dx+dy) <= N/10, clipped to [2, bins]); the rows of x's codes, of
y's codes and of both are symbols, and the plug-in MI of the symbols (with the
estimator's correction) is returned. Fixed seeds throughout.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams
from mi_probe.errors import EstimatorError
from mi_probe.functional import histogram as F
from mi_probe.testing import gaussian_mi
from mi_probe.testing.estimators import gaussian_pair_sample


def est(**kw) -> HistogramEstimator:
    return HistogramEstimator(HistogramParams(**kw))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("binning", ["uniform", "equal_count"])
@pytest.mark.parametrize("rho", [0.5, 0.75, 0.9])
def test_bivariate_gaussian_closed_form(binning, rho):
    """N = 200 000, 50 bins per dimension: within 0.02 nats of −½ ln(1 − ρ²). Measured
    errors for ρ = 0.5, 0.75, 0.9: uniform +0.003, −0.001, −0.012; equal-count +0.005,
    −0.000, −0.011."""
    a, b = gaussian_pair_sample(200_000, rho, gen(0))
    got = est(bins=50, binning=binning).joint_mi(a, b)
    assert abs(got - gaussian_mi(rho)) < 0.02, (got, gaussian_mi(rho))


def test_default_bins_lose_information_at_high_correlation():
    """Defaults (20 bins per dimension at N = 200 000): the discretisation loss grows
    with ρ (measured −0.005, −0.021, −0.071 for ρ = 0.5, 0.75, 0.9), within the
    conformance tolerance of 0.1."""
    errors = []
    for rho in (0.5, 0.75, 0.9):
        a, b = gaussian_pair_sample(200_000, rho, gen(0))
        e = est()
        assert e.joint_bins(200_000, 2) == 20
        errors.append(e.joint_mi(a, b) - gaussian_mi(rho))
    assert errors[0] > errors[1] > errors[2] > -0.1, errors


def test_two_independent_gaussian_pairs_add():
    """dx = dy = 2 (two independent pairs with ρ = 0.75, I = 2 · 0.2616): N = 200 000
    gives 11 bins per dimension by the rule; equal-count bins are within 0.06 (measured
    −0.040); uniform bins lose more on the Gaussian tails (measured −0.124)."""
    g = gen(1)
    a1, b1 = gaussian_pair_sample(200_000, 0.75, g)
    a2, b2 = gaussian_pair_sample(200_000, 0.75, g)
    x, y = torch.cat([a1, a2], dim=1), torch.cat([b1, b2], dim=1)
    e = est(binning="equal_count")
    assert e.joint_bins(200_000, 4) == 11
    assert abs(e.joint_mi(x, y) - 2 * gaussian_mi(0.75)) < 0.06


@pytest.mark.parametrize("params", [dict(bins=20), dict(bins=8, binning="equal_count"),
                                    dict(bins=12, correction="miller_madow"),
                                    dict(bins=10, range="quantile")])
def test_a_discrete_y_column_gives_label_mi(params):
    """y = the labels as a float column, binned injectively (joint_bins = bins >= K): the
    joint MI of one channel and y is that channel's label MI."""
    g = gen(2)
    labels = torch.randint(0, 6, (3000,), generator=g)
    x = labels[:, None] + 1.5 * torch.randn(3000, 3, generator=g)
    e = est(joint_bins=params["bins"], **params)
    for c in range(3):
        got = e.joint_mi(x[:, c:c + 1], labels[:, None].float())
        assert got == pytest.approx(e.label_mi(x, labels, 6)[c].item(), abs=1e-12)


def test_product_bins_equal_sklearn_on_the_row_symbols():
    """dx = 2, dy = 1, uniform bins: sklearn's MI of the symbols code0 · b + code1 and
    of y's codes."""
    g = gen(3)
    x = torch.randn(5000, 2, generator=g, dtype=torch.float64)
    y = x.sum(dim=1, keepdim=True) + torch.randn(5000, 1, generator=g, dtype=torch.float64)
    e = est()
    b = e.joint_bins(5000, 3)
    assert b == 7  # 7^3 = 343 <= 500 < 8^3
    cx, cy = F.bin_uniform(x, b).numpy(), F.bin_uniform(y, b).numpy()
    assert e.joint_mi(x, y) == pytest.approx(
        mutual_info_score(cx[:, 0] * b + cx[:, 1], cy[:, 0]), abs=1e-12)
    mm = est(correction="miller_madow").joint_mi(x, y)
    sx, sy = cx[:, 0] * b + cx[:, 1], cy[:, 0]
    m_x, m_y, m_xy = (len(np.unique(v)) for v in (sx, sy, sx * b + sy))
    assert mm == pytest.approx(mutual_info_score(sx, sy) + (m_x + m_y - m_xy - 1) / 10_000,
                               abs=1e-12)


def test_independent_samples_give_only_the_bias():
    """Independent x (2 dims) and y (1 dim), N = 20 000 (12 bins per dimension by the
    rule): the plug-in value is bias only, measured 0.021 (below the first-order
    (b²−1)(b−1)/2N = 0.039, as the Gaussian tails leave cells empty); Miller–Madow
    removes two thirds of it (measured 0.007)."""
    g = gen(4)
    x = torch.randn(20_000, 2, generator=g)
    y = torch.randn(20_000, 1, generator=g)
    assert est().joint_bins(20_000, 3) == 12
    plugin = est().joint_mi(x, y)
    assert 0 < plugin < (144 - 1) * (12 - 1) / (2 * 20_000)
    corrected = est(correction="miller_madow").joint_mi(x, y)
    assert abs(corrected) < plugin / 2 and abs(corrected) < 0.015


def test_the_bin_rule():
    assert F.joint_bins(4000, 2, 20) == 20      # sqrt(400) = 20
    assert F.joint_bins(4000, 4, 20) == 4       # 400^(1/4) = 4.47
    assert F.joint_bins(10_000, 3, 20) == 10    # 10^3 = 1000 exactly: the boundary counts
    assert F.joint_bins(200_000, 2, 20) == 20   # 141 clipped to bins
    assert F.joint_bins(30, 2, 20) == 2         # fewer samples than the rule needs: 2
    assert est(joint_bins=9).joint_bins(30, 4) == 9  # a fixed count overrides the rule


def test_too_many_dimensions_are_refused_naming_the_limit():
    x, y = torch.randn(100, 3), torch.randn(100, 2)
    with pytest.raises(EstimatorError, match=r"at most max_joint_dims=4 dimensions "
                                             r"\(dx \+ dy\); found dx=3 \+ dy=2 = 5"):
        est().joint_mi(x, y)
    with pytest.raises(EstimatorError, match="max_joint_dims=4"):
        est().joint_mi_interval(x, y, 0.9, seed=0)
    assert math.isfinite(est(max_joint_dims=None).joint_mi(x, y))
    assert est().max_joint_dims == 4 and est(max_joint_dims=None).max_joint_dims is None


def test_bad_inputs_are_typed_errors():
    with pytest.raises(EstimatorError, match=r"same N, got shapes \(10, 1\) and \(9, 1\)"):
        est().joint_mi(torch.randn(10, 1), torch.randn(9, 1))
    with pytest.raises(EstimatorError, match="at least one dimension on each side"):
        est().joint_mi(torch.randn(10, 0), torch.randn(10, 1))
    bad = torch.randn(10, 1)
    bad[3] = math.inf
    with pytest.raises(EstimatorError, match=r"1 \+inf"):
        est().joint_mi(bad, torch.randn(10, 1))
    # (N,) vectors are one dimension each
    a, b = gaussian_pair_sample(1000, 0.5, gen(5))
    assert est().joint_mi(a[:, 0], b[:, 0]) == est().joint_mi(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_joint_mi_matches_the_cpu():
    a, b = gaussian_pair_sample(50_000, 0.75, gen(6))
    for params in (dict(), dict(binning="equal_count", correction="miller_madow")):
        e = est(**params)
        assert e.joint_mi(a.cuda(), b.cuda()) == pytest.approx(e.joint_mi(a, b), abs=1e-12)
        iv = e.joint_mi_interval(a.cuda(), b.cuda(), 0.9, seed=1)
        ref = e.joint_mi_interval(a, b, 0.9, seed=1)
        assert float(iv.low) == pytest.approx(float(ref.low), abs=1e-12)
