"""Tests of the ``ksg`` plugin's joint (multivariate) MI and its subsample intervals.

References: the 1-D kernel ``pair_mi_cc`` (itself equal to scikit-learn's), a brute-force
NumPy transcription of the definition, closed forms for Gaussians, and bmi's
``KSGEnsembleFirstEstimator`` when its environment is present. Tolerances are stated
where they are used; every seed is fixed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.special import digamma

from mi_probe.errors import EstimatorError
from mi_probe.functional.intervals import coverage
from mi_probe.plugin import Interval, Intervals, JointMI, JointMIIntervals
from mi_probe.testing import closed_form_label_mi, label_problems

from mi_probe_ksg import KSGEstimator, KSGParams
from mi_probe_ksg import joint as J

#: same definition, different summation order only
EXACT = 1e-12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small problems: one thread avoids waiting for busy cores (results are exact and do
    not depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def est(**kw) -> KSGEstimator:
    return KSGEstimator(KSGParams(**kw))


def gaussian_block(n: int, dim: int, within: float, cross: float, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """x, y (N, dim) from a normal with Toeplitz within-block covariance within^|i-j| and
    cross-covariance cross * I; the truth ½ ln(det Σx det Σy / det Σ)."""
    i = np.arange(dim)
    sx = within ** np.abs(i[:, None] - i[None, :])
    sigma = np.block([[sx, cross * np.eye(dim)], [cross * np.eye(dim), sx]])
    truth = 0.5 * math.log(np.linalg.det(sx) ** 2 / np.linalg.det(sigma))
    chol = torch.linalg.cholesky(torch.tensor(sigma))
    z = torch.randn(n, 2 * dim, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64) @ chol.T
    return z[:, :dim], z[:, dim:], truth


def brute_joint(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray, float]:
    """The definition, transcribed: k-th joint max-norm distance (self excluded), counts
    within nextafter(d, 0) (self included): strictly inside d, and the exact duplicates
    when d = 0 (sklearn's rule; bmi's ``< d`` would count nothing there), the estimate."""
    dx = np.abs(x[:, None, :] - x[None, :, :]).max(axis=2)
    dy = np.abs(y[:, None, :] - y[None, :, :]).max(axis=2)
    d = np.sort(np.maximum(dx, dy), axis=1)[:, k]
    r = np.nextafter(d, 0.0)[:, None]
    nx, ny = (dx <= r).sum(axis=1), (dy <= r).sum(axis=1)
    n = x.shape[0]
    return d, nx, ny, max(0.0, digamma(n) + digamma(k) - digamma(nx).mean() - digamma(ny).mean())


def awkward(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Data that stress exact counting: ties on a grid, exact duplicates, a large offset
    (float32 candidates lose digits), heavy tails, mixed scales."""
    rng = np.random.default_rng(seed)
    n = 400
    base = rng.standard_normal((n, 3))
    out = [(np.round(base[:, :2] * 4) / 4, np.round(base[:, 2:] * 2) / 2)]  # ties
    dup = base[rng.integers(0, 100, n)]  # every row repeated ~4 times
    out.append((dup[:, :1], dup[:, 1:]))
    out.append((base[:, :2] + 1e7, base[:, 2:] * 1e-3 - 5e4))  # large offsets
    out.append((rng.standard_cauchy((n, 2)), rng.standard_cauchy((n, 1)) * 1e3))
    out.append((base[:, :1] * np.array([1e-6]), np.hstack([base[:, 1:], base[:, :1] * 1e6])))
    return out


# ------------------------------------------------------------------ the definition


@pytest.mark.parametrize("seed", [0, 1])
def test_kdtree_is_the_definition_exactly(seed):
    for x, y in awkward(seed):
        for k in (1, 3, 5):
            d, nx, ny, value = brute_joint(x, y, k)
            got = J.kth_distance(np.hstack([x, y]), k, "kdtree")
            assert np.array_equal(got, d)
            r = np.nextafter(got, 0.0)
            assert np.array_equal(J.count_within(x, r, "kdtree"), nx)
            assert np.array_equal(J.count_within(y, r, "kdtree"), ny)
            assert J.joint_mi_cc(x, y, k, "kdtree") == pytest.approx(value, abs=EXACT)


@pytest.mark.skipif(not J.faiss_available(), reason="faiss-cpu not installed "
                    "(pip install 'mi-probe-ksg[faiss]')")
@pytest.mark.parametrize("seed", [0, 1])
def test_faiss_backend_gives_the_kdtree_numbers(seed, monkeypatch):
    """The float32 candidates are certified in float64: distances and counts are equal
    integers / floats, not merely close, even where float32 cannot tell points apart
    (there the uncertified points go to the KD tree: the mixed-scale case sends some)."""
    fallback: list[int] = []
    kdtree_kth = J._kdtree_kth

    def spy(z, k, workers, rows=None):
        fallback.append(0 if rows is None else len(rows))
        return kdtree_kth(z, k, workers, rows)

    monkeypatch.setattr(J, "_kdtree_kth", spy)
    for x, y in awkward(seed):
        z = np.hstack([x, y])
        for k in (1, 3):
            d = J.kth_distance(z, k, "kdtree")
            assert np.array_equal(J.kth_distance(z, k, "faiss", workers=2), d)
            r = np.nextafter(d, 0.0)
            for part in (x, y):
                assert np.array_equal(J.count_within(part, r, "faiss"),
                                      J.count_within(part, r, "kdtree"))
            assert J.joint_mi_cc(x, y, k, "faiss") == J.joint_mi_cc(x, y, k, "kdtree")
    assert max(fallback) > 0


def test_threads_do_not_change_results():
    x, y, _ = gaussian_block(6000, 2, 0.3, 0.5, seed=3)
    a, b = x.numpy(), y.numpy()
    assert J.joint_mi_cc(a, b, 3, workers=1) == J.joint_mi_cc(a, b, 3, workers=3)


@pytest.mark.parametrize("seed", range(3))
def test_one_by_one_is_pair_mi(seed):
    """dx = dy = 1: the same estimator as the 1-D kernel (itself equal to sklearn's
    _compute_mi_cc), with the same preparation (noise, standardize, max_samples)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(1500, 1, generator=g, dtype=torch.float64) * 3 + 1
    b = 0.7 * a + torch.randn(1500, 1, generator=g, dtype=torch.float64)
    tied = (a.clamp_min(0.5) * 8).round() / 8  # ReLU-like atom and a grid: the noise matters
    for params in ({}, {"standardize": True}, {"max_samples": 700, "seed": 5}, {"k": 1},
                   {"jitter": False}):
        e = est(**params)
        for u, v in ((a, b), (tied, b), (a, tied)):
            assert e.joint_mi(u, v) == pytest.approx(float(e.pair_mi(u, v)[0, 0]), abs=EXACT)
    assert est().joint_mi(a[:, 0], b[:, 0]) == est().joint_mi(a, b)  # 1-D = one column


def test_symmetric_and_scale_free_per_variable_on_tie_free_data():
    x, y, _ = gaussian_block(2000, 2, 0.3, 0.5, seed=0)
    e = est()
    assert e.joint_mi(x, y) == pytest.approx(e.joint_mi(y, x), abs=EXACT)
    # the max-norm depends on relative scales: standardize undoes a rescaled column
    scaled = x * torch.tensor([10.0, 0.1], dtype=torch.float64)
    assert (est(standardize=True).joint_mi(scaled, y)
            == pytest.approx(est(standardize=True).joint_mi(x, y), abs=1e-9))
    assert abs(e.joint_mi(scaled, y) - e.joint_mi(x, y)) > 0.05


# ------------------------------------------------------------------ closed forms


def test_gaussian_2v2_closed_form():
    """Σ: Toeplitz 0.3^|i-j| blocks, cross-covariance 0.5 I; I = 0.4369 nats. Seeds 0-4
    at N = 5000 gave 0.424-0.457 (mean error +0.004); seed 0: 0.453."""
    x, y, truth = gaussian_block(5000, 2, 0.3, 0.5, seed=0)
    assert truth == pytest.approx(0.4369, abs=1e-4)
    assert abs(est().joint_mi(x, y) - truth) < 0.05


def test_gaussian_5v5_closed_form():
    """Σ: Toeplitz 0.3^|i-j| blocks, cross-covariance 0.25 I; I = 0.2553 nats. KSG is
    biased down in 10 dimensions: seeds 0-4 at N = 5000 gave 0.173-0.201 (mean error
    -0.072), so the bound is one-sided with margin on both ends."""
    x, y, truth = gaussian_block(5000, 5, 0.3, 0.25, seed=0)
    assert truth == pytest.approx(0.2553, abs=1e-4)
    value = est().joint_mi(x, y)
    assert truth - 0.15 < value < truth - 0.02


def test_independent_variables_give_about_zero():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3000, 3, generator=g, dtype=torch.float64)
    y = torch.randn(3000, 3, generator=g, dtype=torch.float64)
    assert est().joint_mi(x, y) < 0.03  # measured 0.000 (clipped)


# ------------------------------------------------------------------ bmi

BMI_SCRIPT = Path(__file__).with_name("bmi_ksg_ref.py")


def _bmi_python() -> str | None:
    path = os.environ.get("MI_PROBE_BMI_PYTHON") or "/tmp/bmitest/bin/python"
    return path if Path(path).is_file() else None


@pytest.mark.skipif(_bmi_python() is None, reason="bmi's environment not found: set "
                    "MI_PROBE_BMI_PYTHON to a python with bmi (benchmark-mi 0.1.3) installed, "
                    "or create /tmp/bmitest")
def test_equals_bmi_ksg(tmp_path):
    """bmi's KSGEnsembleFirstEstimator(neighborhoods=(k,), metric chebyshev) on the same
    float64 data: the same definition, so equal up to summation order (measured
    <= 1.8e-15), also with ties (jitter off on both sides)."""
    rng = np.random.default_rng(7)
    cases, ours = [], []
    for i, (dx, dy, k, tied) in enumerate([(1, 1, 3, False), (2, 3, 3, False),
                                           (5, 5, 2, False), (2, 2, 4, True)]):
        x = rng.standard_normal((800, dx)) * rng.uniform(0.1, 10, dx)
        y = 0.6 * x[:, :1] + rng.standard_normal((800, dy))
        if tied:
            x, y = np.round(x * 4) / 4, np.round(y * 2) / 2
        np.save(tmp_path / f"x{i}.npy", x)
        np.save(tmp_path / f"y{i}.npy", y)
        cases.append({"x": str(tmp_path / f"x{i}.npy"), "y": str(tmp_path / f"y{i}.npy"),
                      "k": k, "standardize": False})
        ours.append(est(k=k, jitter=False).joint_mi(torch.tensor(x), torch.tensor(y)))
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run([str(_bmi_python()), str(BMI_SCRIPT), str(tmp_path / "cases.json")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = [r["value"] for r in json.loads(done.stdout.strip().splitlines()[-1])]
    assert ours == pytest.approx(theirs, abs=1e-12)


# ------------------------------------------------------------------ intervals


def test_abilities_and_params():
    e = est()
    assert isinstance(e, JointMI) and isinstance(e, JointMIIntervals)
    assert isinstance(e, Intervals)
    assert e.max_joint_dims is None and e.interval_method == "subsample"
    assert KSGParams().interval_folds == 10 and KSGParams().neighbors == "auto"
    with pytest.raises(ValidationError, match="interval_folds"):
        KSGParams(interval_folds=1)
    with pytest.raises(ValidationError, match="neighbors"):
        KSGParams(neighbors="balltree")
    assert e.describe()["interval"] == "subsample, 10 disjoint folds"


def test_label_interval_estimates_are_label_mi():
    acts, labels = label_problems(1200, 5, 3, torch.Generator().manual_seed(0))
    e = est()
    per, mean = e.label_mi_interval(acts, labels, 5, 0.9, seed=1)
    values = e.label_mi(acts, labels, 5)
    assert isinstance(per, Interval) and per.method == "subsample" and per.level == 0.9
    assert torch.equal(per.estimate, values) and per.estimate.dtype == torch.float64
    assert per.low.shape == per.high.shape == (9,) and mean.estimate.shape == ()
    assert float(mean.estimate) == pytest.approx(float(values.mean()), abs=EXACT)
    assert bool((per.low <= per.estimate).all() and (per.estimate <= per.high).all())
    # the dead (constant) channel is 0 on every subsample: a zero-width interval at 0
    dead = 2 * 3 + 2
    assert float(per.low[dead]) == float(per.high[dead]) == 0.0
    # deterministic in the seed; another seed draws other subsamples
    again, _ = e.label_mi_interval(acts, labels, 5, 0.9, seed=1)
    other, _ = e.label_mi_interval(acts, labels, 5, 0.9, seed=2)
    assert torch.equal(again.low, per.low) and not torch.equal(other.low, per.low)
    assert torch.equal(other.estimate, per.estimate)


def test_joint_interval_estimate_is_joint_mi():
    x, y, _ = gaussian_block(1000, 2, 0.3, 0.5, seed=1)
    e = est(interval_folds=5)
    iv = e.joint_mi_interval(x, y, 0.95, seed=0)
    assert iv.estimate.shape == () and float(iv.estimate) == e.joint_mi(x, y)
    assert float(iv.low) < float(iv.estimate) < float(iv.high)
    assert iv.method == "subsample"


def test_joint_interval_coverage_on_a_closed_form():
    """Nominal 95% intervals of I for a bivariate normal, rho = 0.5 (0.1438 nats), N =
    1000, 10 folds of 100, seeds 0-49: measured coverage 0.98."""
    rho, n = 0.5, 1000
    truth = -0.5 * math.log(1 - rho * rho)
    e = est()
    lows, highs = [], []
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 1, generator=g, dtype=torch.float64)
        y = rho * x + math.sqrt(1 - rho * rho) * torch.randn(n, 1, generator=g,
                                                            dtype=torch.float64)
        iv = e.joint_mi_interval(x, y, 0.95, seed)
        lows.append(iv.low)
        highs.append(iv.high)
    assert coverage(torch.stack(lows), torch.stack(highs), truth) >= 0.9


def test_label_interval_coverage_on_the_uniform_shift():
    """Channels T | Y ~ U(Y, Y + 2), 9 classes (1.5811 nats), N = 1000, 4 channels, seeds
    0-49: measured coverage 0.965."""
    lows, highs = [], []
    for seed in range(50):
        acts, labels = label_problems(1000, 9, 4, torch.Generator().manual_seed(seed))
        per, _ = est().label_mi_interval(acts[:, :4], labels, 9, 0.95, seed)
        lows.append(per.low)
        highs.append(per.high)
    assert coverage(torch.stack(lows), torch.stack(highs), closed_form_label_mi(9)) >= 0.9


# ------------------------------------------------------------------ errors


def test_typed_errors():
    x = torch.randn(50, 2, dtype=torch.float64)
    e = est()
    with pytest.raises(EstimatorError, match="joint_mi needs the same rows in x and y, got 50 "
                                             "and 40"):
        e.joint_mi(x, x[:40])
    with pytest.raises(EstimatorError, match=r"joint_mi needs more than k=3 samples, got 3"):
        e.joint_mi(x[:3], x[:3])
    with pytest.raises(EstimatorError, match=r"needs dx >= 1 and dy >= 1 columns, got dx=2, "
                                             r"dy=0"):
        e.joint_mi(x, x[:, :0])
    with pytest.raises(EstimatorError, match="expects \\(N, C\\) y, got shape \\(50, 2, 1\\)"):
        e.joint_mi(x, x[:, :, None])
    with pytest.raises(EstimatorError, match="x holds NaN or Inf"):
        e.joint_mi(x.clone().fill_(math.nan), x)
    with pytest.raises(EstimatorError, match=r"N // interval_folds = 30 // 10 = 3 rows; KSG "
                                             r"needs more than k=3 \(expected N > 39\)"):
        e.joint_mi_interval(x[:30], x[:30], 0.95, 0)
    with pytest.raises(EstimatorError, match=r"interval level must be in \(0, 1\); got 1.5"):
        e.joint_mi_interval(x, x, 1.5, 0)
    acts, labels = label_problems(200, 3, 1, torch.Generator().manual_seed(0))
    with pytest.raises(EstimatorError, match=r"interval level must be in \(0, 1\); got 0"):
        e.label_mi_interval(acts, labels, 3, 0.0, 0)


def test_missing_faiss_is_a_typed_error(monkeypatch):
    monkeypatch.setattr(J, "faiss_available", lambda: False)
    x = torch.randn(50, 2, dtype=torch.float64)
    with pytest.raises(EstimatorError, match=r"neighbors: faiss needs the faiss-cpu package"):
        est(neighbors="faiss").joint_mi(x, x)


def test_unknown_backend_in_the_kernel():
    with pytest.raises(ValueError, match=r"unknown neighbour backend 'ball'; valid: "
                                         r"\['auto', 'kdtree', 'faiss'\]"):
        J.joint_mi_cc(np.zeros((10, 1)), np.zeros((10, 1)), 3, "ball")
