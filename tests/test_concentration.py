"""Concentration kernels (functional/concentration.py), MI-mass selections
(functional/selection.py) and the metric plugins built on them (ARCHITECTURE.md §2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mi_probe.functional.concentration import (gini, mass, normalized_entropy, top_k_count,
                                               top_k_share)
from mi_probe.functional.selection import (bottom_set, descending_order, mass_set, random_set,
                                           select)


def _gini_numpy(x: np.ndarray) -> float:
    """Independent formula: mean absolute difference over all ordered pairs / (2 * mean)."""
    x = np.asarray(x, dtype=np.float64)
    mad = np.abs(x[:, None] - x[None, :]).mean()
    return float(mad / (2 * x.mean()))


# ------------------------------------------------------------------------- gini


@pytest.mark.parametrize("n", [2, 3, 10, 33, 257])
def test_gini_equal_values_is_zero(n):
    for dtype in (torch.float32, torch.float64):
        g = gini(torch.full((n,), 0.37, dtype=dtype))
        assert 0.0 <= g < 1e-12  # 0 up to rounding, and never a negative -1e-18


@pytest.mark.parametrize("n,where", [(2, 0), (5, 3), (16, 15), (100, 42)])
def test_gini_single_nonzero_channel(n, where):
    v = torch.zeros(n)
    v[where] = 2.5
    assert gini(v) == pytest.approx((n - 1) / n, abs=1e-12)


def test_gini_matches_independent_numpy_formula():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 64, 301):
        for draw in range(4):
            x = rng.exponential(size=n) ** (1 + draw)  # from mild to strong concentration
            if draw == 3:
                x[rng.choice(n, size=n // 2, replace=False)] = 0.0  # many exact zeros
            expected = _gini_numpy(x)
            assert gini(torch.from_numpy(x)) == pytest.approx(expected, abs=1e-10), (n, draw)
            assert gini(torch.from_numpy(x).float()) == pytest.approx(expected, abs=1e-5)


def test_gini_is_bounded_and_orders_concentration():
    spread = torch.tensor([1.0, 1.1, 0.9, 1.0])
    peaked = torch.tensor([0.05, 0.05, 3.0, 0.1])
    assert 0 <= gini(spread) < gini(peaked) < 1


# --------------------------------------------------------------- degenerate input


@pytest.mark.parametrize("n", [1, 3, 10, 96])
def test_all_zero_values_are_finite_and_conventional(n):
    zeros = torch.zeros(n, dtype=torch.float64)
    assert gini(zeros) == 0.0
    assert normalized_entropy(zeros) == 1.0
    for k in (0.05, 0.1, 0.5, 1.0):
        share = top_k_share(zeros, k)
        assert math.isfinite(share)
        assert share == pytest.approx(math.ceil(k * n - 1e-9) / n if k * n >= 1 else 1 / n)
        assert share == pytest.approx(top_k_count(n, k) / n)
    p = mass(zeros)
    assert torch.isfinite(p).all() and p.sum().item() == pytest.approx(1.0)


def test_negative_values_are_clipped_not_propagated():
    # estimators clip MI at 0; a slightly negative bias-corrected value must not break p
    v = torch.tensor([-0.01, 0.0, 1.0, 1.0])
    assert torch.equal(mass(v), torch.tensor([0.0, 0.0, 0.5, 0.5], dtype=torch.float64))
    assert normalized_entropy(v) == pytest.approx(math.log(2) / math.log(4))
    assert all(math.isfinite(f(torch.full((4,), -1.0))) for f in (gini, normalized_entropy))


# -------------------------------------------------------------------- top-k


@pytest.mark.parametrize("n,k,expected", [
    (10, 0.1, 1),      # k*C = 1 exactly
    (30, 0.1, 3),
    (100, 0.07, 7),    # 0.07 * 100 = 7.000000000000001 in floating point: still 7
    (20, 0.05, 1),
    (25, 0.1, 3),      # 2.5 -> 3
    (7, 0.5, 4),       # 3.5 -> 4
    (96, 0.2, 20),     # 19.2 -> 20
    (5, 0.01, 1),      # at least one channel
    (8, 1.0, 8),       # all
])
def test_top_k_count_is_ceiling(n, k, expected):
    assert top_k_count(n, k) == expected


def test_top_k_share_sums_largest_masses():
    v = torch.tensor([1.0, 4.0, 0.0, 3.0, 2.0])  # p = [.1, .4, 0, .3, .2]
    assert top_k_share(v, 0.2) == pytest.approx(0.4)     # 1 channel
    assert top_k_share(v, 0.3) == pytest.approx(0.7)     # ceil(1.5) = 2 channels
    assert top_k_share(v, 0.6) == pytest.approx(0.9)     # 3 channels
    assert top_k_share(v, 1.0) == pytest.approx(1.0)


# ------------------------------------------------------------------ entropy


@pytest.mark.parametrize("n", [2, 3, 10, 97])
def test_normalized_entropy_uniform_and_one_hot(n):
    assert normalized_entropy(torch.full((n,), 0.2)) == pytest.approx(1.0, abs=1e-12)
    assert normalized_entropy(torch.full((n,), 0.2)) <= 1.0
    one_hot = torch.zeros(n)
    one_hot[n // 2] = 0.9
    assert normalized_entropy(one_hot) == 0.0


def test_normalized_entropy_against_formula():
    v = torch.tensor([0.5, 0.25, 0.125, 0.125])
    h = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 2 * 0.125 * math.log(0.125))
    assert normalized_entropy(v) == pytest.approx(h / math.log(4), abs=1e-12)


def test_metrics_are_scale_invariant():
    v = torch.rand(40, generator=torch.Generator().manual_seed(3), dtype=torch.float64) ** 3
    for scale in (1e-6, 0.3, 7.0, 1e4):
        w = v * scale
        assert gini(w) == pytest.approx(gini(v), abs=1e-12)
        assert normalized_entropy(w) == pytest.approx(normalized_entropy(v), abs=1e-12)
        for k in (0.05, 0.1, 0.5):
            assert top_k_share(w, k) == pytest.approx(top_k_share(v, k), abs=1e-12)


# ------------------------------------------------------------------ mass sets


@pytest.mark.parametrize("values,q,expected", [
    ([0.5, 0.3, 0.2], 0.5, [0]),           # exact hit at the first channel
    ([0.5, 0.3, 0.2], 0.50001, [0, 1]),
    ([0.5, 0.3, 0.2], 0.8, [0, 1]),        # exact hit at two channels
    ([0.5, 0.3, 0.2], 1.0, [0, 1, 2]),
    ([0.5, 0.3, 0.2], 0.01, [0]),
    ([0.2, 0.3, 0.5], 0.6, [2, 1]),        # sorted by descending mass
    ([5.0, 3.0, 2.0], 0.8, [0, 1]),        # unnormalised values: mass is v / sum
    ([0.1, 0.7, 0.2], 0.9, [1, 2]),        # float32 rounding must not add a channel
    ([0.0, 0.0, 2.0, 2.0], 1.0, [2, 3]),   # zero-mass channels are never needed
    ([1.0, 2.0, 2.0, 1.0, 0.0], 0.4, [1, 2]),  # tie 1 vs 2: lower index first
    ([1.0, 1.0, 1.0, 1.0], 0.5, [0, 1]),   # all tied
    ([1.0, 1.0, 1.0, 1.0], 0.51, [0, 1, 2]),
])
def test_mass_set_smallest_prefix(values, q, expected):
    for dtype in (torch.float32, torch.float64):
        got = mass_set(torch.tensor(values, dtype=dtype), q)
        assert got.tolist() == expected, (values, q, dtype)
        assert got.dtype == torch.int64


def test_mass_set_reaches_q_and_is_minimal_on_random_vectors():
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        v = torch.rand(50, generator=gen, dtype=torch.float64) ** 4
        p = mass(v)
        for q in (0.1, 0.33, 0.5, 0.9, 1.0):
            top = mass_set(v, q)
            assert p[top].sum().item() >= q - 1e-12
            # minimal: dropping its smallest member falls short
            assert p[top[:-1]].sum().item() < q
            # it is a prefix of the descending order
            assert top.tolist() == descending_order(v)[:top.numel()].tolist()


def test_mass_set_all_zero_is_empty():
    for v in (torch.zeros(6), torch.zeros(6, dtype=torch.float64), torch.tensor([-1.0, 0.0])):
        got = mass_set(v, 0.5)
        assert got.numel() == 0 and got.dtype == torch.int64


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5, 1.0000001, float("nan")])
def test_mass_set_rejects_q_out_of_range(q):
    with pytest.raises(ValueError, match=r"q must be in \(0, 1\]"):
        mass_set(torch.ones(4), q)


def test_mass_set_rejects_non_finite_and_non_vector_values():
    with pytest.raises(ValueError, match="NaN or Inf"):
        mass_set(torch.tensor([1.0, float("nan"), 2.0]), 0.5)
    with pytest.raises(ValueError, match="1-D vector"):
        mass_set(torch.ones(2, 3), 0.5)


def test_controls_have_the_top_size():
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(64, generator=gen, dtype=torch.float64) ** 3
    for q in (0.1, 0.5, 0.9):
        top = select(v, q, "top")
        bottom = select(v, q, "bottom")
        rnd = select(v, q, "random", torch.Generator().manual_seed(5))
        assert top.numel() == bottom.numel() == rnd.numel() == mass_set(v, q).numel()
        # bottom holds the smallest values
        assert v[bottom].max() <= v[top].min()
        assert set(bottom.tolist()) == set(torch.argsort(v)[:bottom.numel()].tolist())
    # an explicit size overrides the top size
    assert select(v, 0.1, "random", torch.Generator().manual_seed(1), size=9).numel() == 9
    assert select(v, 0.1, "bottom", size=9).numel() == 9


def test_bottom_set_breaks_ties_by_lower_index():
    assert bottom_set(torch.tensor([1.0, 0.0, 0.0, 2.0, 0.0]), 2).tolist() == [1, 2]


def test_ties_are_broken_by_lower_index_on_long_vectors():
    # an unstable sort reorders long runs of ties; the selections must not
    n = 5000
    flat = torch.ones(n, dtype=torch.float64)
    assert torch.equal(descending_order(flat), torch.arange(n))
    assert torch.equal(mass_set(flat, 0.5), torch.arange(n // 2))
    assert torch.equal(bottom_set(flat, 100), torch.arange(100))
    steps = torch.zeros(3 * n)
    steps[::3] = 1.0
    assert torch.equal(mass_set(steps, 1.0), torch.arange(0, 3 * n, 3))
    assert torch.equal(bottom_set(steps, 10), torch.tensor([1, 2, 4, 5, 7, 8, 10, 11, 13, 14]))


def test_random_set_is_deterministic_distinct_and_seed_dependent():
    a = random_set(100, 30, torch.Generator().manual_seed(7))
    b = random_set(100, 30, torch.Generator().manual_seed(7))
    c = random_set(100, 30, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.unique().numel() == 30 and int(a.min()) >= 0 and int(a.max()) < 100
    assert random_set(5, 5, torch.Generator().manual_seed(0)).tolist() == [0, 1, 2, 3, 4]


def test_select_errors():
    v = torch.rand(10)
    with pytest.raises(ValueError, match="needs a generator"):
        select(v, 0.5, "random")
    with pytest.raises(ValueError, match="unknown selection 'middle'; valid: top, random, bottom"):
        select(v, 0.5, "middle")


# -------------------------------------------------------------------- plugins


def test_metric_plugins_are_registered_and_match_the_kernels(pm):
    entries = pm.registry.entries("metrics")
    assert {"gini", "norm_entropy", "top_k_share"} <= set(entries)
    gen = torch.Generator().manual_seed(2)
    for v in (torch.rand(48, generator=gen, dtype=torch.float64) ** 2, torch.zeros(12)):
        g = entries["gini"].factory(entries["gini"].params_model())(v)
        assert g == {"gini": gini(v)}
        h = entries["norm_entropy"].factory(entries["norm_entropy"].params_model())(v)
        assert h == {"norm_entropy": normalized_entropy(v)}
        top = entries["top_k_share"]
        assert top.factory(top.params_model())(v) == {"top_0.1_share": top_k_share(v, 0.1)}
        assert top.factory(top.params_model(k=0.25))(v) == {
            "top_0.25_share": top_k_share(v, 0.25)}
    # built through the registry from params, as the engine does
    params = entries["top_k_share"].params_model(k=0.5)
    v = torch.tensor([3.0, 1.0, 0.0, 0.0])
    assert pm.registry.build("metrics", params)(v) == {"top_0.5_share": 1.0}


def test_metric_params_are_validated(pm):
    from pydantic import ValidationError

    model = pm.registry.entries("metrics")["top_k_share"].params_model
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        model(k=1.5)
    with pytest.raises(ValidationError, match="greater than 0"):
        model(k=0)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        pm.registry.entries("metrics")["gini"].params_model(bins=3)


# ------------------------------------------------------------------ clipping artefact (issue 21)

def _layer(generalists: int, specialists: int, seed: int = 0):
    """Per-channel raw MI and a shuffled-label null for one synthetic site: ``C`` noise
    channels at the null floor, ``generalists`` with a little label MI each and
    ``specialists`` with much."""
    rng = np.random.default_rng(seed)
    floor, c = 0.02, 64
    null = torch.tensor(floor + 0.002 * rng.standard_normal((16, c)))
    raw = floor + 0.002 * rng.standard_normal(c)
    raw[:generalists] += 0.05 + 0.01 * rng.random(generalists)
    raw[generalists:generalists + specialists] += 0.5
    return torch.tensor(raw), null


def _signal_gini(raw, null):
    from mi_probe.functional.concentration import signal_measures, signal_values
    from mi_probe.functional.masses import null_subtracted, signal_test

    test = signal_test(raw, null)
    measures = signal_measures(signal_values(null_subtracted(raw, null), raw, test.threshold),
                               [0.1])
    return None if measures is None or not test.has_signal else measures["gini"]


def test_clipped_gini_reads_a_noise_floor_layer_as_concentrated_the_signal_measure_does_not():
    from mi_probe.functional.masses import null_subtracted

    raw, null = _layer(generalists=4, specialists=0)
    # four informative channels of 64, the rest at the floor: clipping zeroes 60 channels
    assert gini(null_subtracted(raw, null)) > 0.8
    # over the channels that beat the null, four near-equal channels (and a noise channel
    # that crossed the threshold) are not concentrated
    assert _signal_gini(raw, null) < 0.3


def test_signal_concentration_is_scale_invariant_and_rises_with_planted_specialists():
    raw, null = _layer(generalists=32, specialists=0)
    base = _signal_gini(raw, null)
    # every channel's MI (and so the null) times a constant: the same measure
    for factor in (0.1, 3.0):
        assert _signal_gini(raw * factor, null * factor) == pytest.approx(base, abs=1e-12)
    # a planted subset of specialists among the informative channels raises it
    planted_raw, planted_null = _layer(generalists=28, specialists=4)
    assert _signal_gini(planted_raw, planted_null) > base + 0.3
