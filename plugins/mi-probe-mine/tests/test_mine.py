"""Tests of the mi-probe-mine estimator plugin (needs ``pip install -e plugins/mi-probe-mine``).

Budgets are small so the file runs in well under a minute on 2 CPU cores; torch is
pinned to one intra-op thread here (these tensors are tiny, and extra threads only cost
time on a busy machine; results do not depend on the thread count).
"""

from __future__ import annotations

import json

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from pydantic import ValidationError

from mi_probe.errors import EstimatorError, SpecError
from mi_probe.interfaces import Estimator, LayerMI
from mi_probe.testing import (ConformanceProblems, closed_form_label_mi, gaussian_mi,
                              parametrize_with_checks, run_checks, uniform_shift_sample)
from mi_probe_mine import neural
from mi_probe_mine.plugin import InfoNCEEstimator, InfoNCEParams, MineEstimator, MineParams

KINDS = {"mine": (MineEstimator, MineParams), "infonce": (InfoNCEEstimator, InfoNCEParams)}

#: the budget used for the accuracy checks (the defaults, lr 1e-3 / 300 steps, need
#: more steps than a unit test should spend; see README "Training budget")
ACCURATE = dict(steps=600, lr=3e-2)
#: a small budget for the structural checks
SMALL = dict(steps=60, lr=1e-2, batch_size=64)


def make(kind: str, **params):
    est_cls, params_cls = KINDS[kind]
    return est_cls(params_cls(**params))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shift_problem(n=1000, m=5, channels=3, seed=0):
    return uniform_shift_sample(n, m, channels, torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ accuracy


#: the conformance problems: n = 16000 (12000 train / 4000 hold-out), 2 channels per
#: problem, m = 9 classes, seed 0; they memoise each estimator's answers, so the
#: per-check items and test_conformance_suite train each critic once
CONFORMANCE = ConformanceProblems(n=16000, channels=2, tolerance=0.1, independent_tolerance=0.02)
CONFORMING = {kind: make(kind, **ACCURATE) for kind in KINDS}


@parametrize_with_checks(CONFORMING.values(), CONFORMANCE)
def test_conformance(estimator, check):
    check(estimator)


@pytest.mark.parametrize("kind", ["mine", "infonce"])
def test_conformance_suite(kind):
    """mi_probe.testing's conformance checks with n = 16000 (12000 train / 4000 hold-out),
    2 channels per problem, m = 9 classes, seed 0, 600 Adam steps at lr 3e-2. Measured
    (mine / infonce):

    * independent data: max 0.000 / 0.000 nats (bound 0.02);
    * uniform shift, I = 1.5811: 1.519 / 1.521 (lower bounds, short of the truth because
      the true critic is a step function of t; tolerance 0.1, largest error over seeds
      0-2: 0.089 / 0.082);
    * ReLU shift, half the values exactly 0, I = 0.7315: 0.716 / 0.715 (error <= 0.02);
    * Gaussians rho 0.5 / 0.75 / 0.9 (0.1438 / 0.4133 / 0.8304): 0.150 / 0.409 / 0.818 and
      0.140 / 0.394 / 0.832 (errors <= 0.02; over seeds 0-2 up to 0.046), asserted 0.05;
    * ReLU'd Gaussian rho 0.9, I = 0.5544: 0.544 / 0.548.
    """
    report = run_checks(CONFORMING[kind], CONFORMANCE)  # reuses test_conformance's answers
    print(f"\n{kind}: {report}")
    assert report.skipped == {}  # pair_mi exists: nothing was skipped
    assert report.closed_form_truth == pytest.approx(closed_form_label_mi(9))
    assert abs(report.tied_estimate - report.tied_truth) <= 0.05
    assert set(report.gaussian) == {0.5, 0.75, 0.9}
    for rho, (got, truth) in report.gaussian.items():
        assert truth == pytest.approx(gaussian_mi(rho))
        assert abs(got - truth) <= 0.05, f"{kind} rho={rho}: {got:.4f} vs {truth:.4f}"


def test_infonce_scores_every_holdout_sample():
    """Issue 11 item 12. n = 2000 holds out 500 samples; with batch_size 256 the old
    evaluation scored only the first 256 (in hold-out order) and dropped the rest. Here
    those 256 are planted in a label-independent region and the other 244 in a region
    where x determines y (4 classes), so the bound on the whole hold-out set is
    244/500 * ln 4 = 0.677 nats. Measured: 0.670 (MINE, which always used every hold-out
    row: 0.667); the old evaluation gave 0.000."""
    n, k = 2000, 4
    est = make("infonce", steps=300, lr=3e-2)
    plan = neural.make_plan(n, est.config, [1, est.params.hidden, est.params.hidden, k])
    held_out = plan.eval_idx  # the same draw label_mi makes (same n, config and seed)
    assert held_out.numel() == 500 and plan.batch == 256
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (n,), generator=gen)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    informative = torch.rand(n, generator=gen) < 0.5  # training rows: half and half
    informative[held_out[:256]] = False
    informative[held_out[256:]] = True
    x = torch.where(informative, 3.0 * y + u, -5.0 + u).float()[:, None]
    value = est.label_mi(x, y, k).item()
    assert abs(value - 244 / 500 * math.log(k)) < 0.05, value


def test_holdout_infonce_scores_each_row_once_per_batching():
    """Every hold-out row contributes exactly one term per batching, against a full
    batch: with per-row terms equal to the row's own value, the result is their mean."""
    values = torch.arange(10, dtype=torch.float64)[None] ** 2  # (1 channel, 10 rows)
    sizes = []

    def terms(idx):
        sizes.append(idx.numel())
        return values[:, idx]

    orders = torch.stack([torch.randperm(10, generator=torch.Generator().manual_seed(s))
                          for s in range(3)])
    got = neural.holdout_infonce(terms, orders, batch=4)
    assert got.item() == pytest.approx(values.mean().item(), rel=1e-12)
    assert sizes == [4] * 9  # 3 batchings x 3 batches, the last one filled up to 4 rows
    sizes.clear()
    assert neural.holdout_infonce(terms, orders, batch=16).item() == pytest.approx(values.mean().item())
    assert sizes == [10]  # the whole hold-out set fits in one batch


def test_infonce_is_capped_by_log_batch_but_mine_is_not():
    """I = log 20 = 3.00 nats (20 separable classes); with batch_size 8 InfoNCE can
    never exceed log 8 = 2.08 nats (measured 1.61, 1.62), MINE can (measured 2.22, 2.36;
    400 steps, n = 2000)."""
    gen = torch.Generator().manual_seed(0)
    n = 2000
    y = torch.randint(0, 20, (n,), generator=gen)
    x = (y[:, None].double() + 0.5 * torch.rand(n, 2, generator=gen, dtype=torch.float64)).float()
    cap = math.log(8)
    infonce = make("infonce", steps=400, lr=3e-2, batch_size=8)
    assert infonce.describe()["cap_nats"] == pytest.approx(cap)
    v_nce = infonce.label_mi(x, y, 20)
    assert (v_nce <= cap + 1e-9).all(), v_nce
    assert (v_nce > 1.3).all(), v_nce
    v_mine = make("mine", steps=400, lr=3e-2, batch_size=8).label_mi(x, y, 20)
    assert (v_mine > cap).all(), v_mine


@pytest.mark.parametrize("kind", ["mine", "infonce"])
def test_independent_channels_and_pairs_are_about_zero(kind):
    """8 channels independent of 10 labels, and 4 independent Gaussian pairs, n = 4000,
    300 steps at lr 3e-2: every estimate <= 0.02 nats (measured max 0.0023 / 0.0016
    mine, 0.0015 / 0.0004 infonce)."""
    gen = torch.Generator().manual_seed(1)
    acts = torch.randn(4000, 8, generator=gen)
    labels = torch.randint(0, 10, (4000,), generator=gen)
    est = make(kind, steps=300, lr=3e-2)
    values = est.label_mi(acts, labels, 10)
    assert (values >= 0).all() and values.max() <= 0.02, values
    pairs = est.pair_mi(torch.randn(4000, 2, generator=gen), torch.randn(4000, 2, generator=gen))
    assert pairs.shape == (2, 2)
    assert (pairs >= 0).all() and pairs.max() <= 0.02, pairs


# --------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", ["mine", "infonce"])
def test_same_seed_same_values_other_seed_other_values(kind):
    acts, labels = shift_problem()
    a, b = acts[:, :2], acts[:, 2:] + acts[:, :1]
    first = make(kind, seed=3, **SMALL)
    again = make(kind, seed=3, **SMALL)
    other = make(kind, seed=4, **SMALL)
    v1 = first.label_mi(acts, labels, 5)
    assert torch.equal(v1, again.label_mi(acts, labels, 5))
    assert not torch.equal(v1, other.label_mi(acts, labels, 5))
    p1 = first.pair_mi(a, b)
    assert torch.equal(p1, again.pair_mi(a, b))
    assert not torch.equal(p1, other.pair_mi(a, b))


@pytest.mark.parametrize("kind", ["mine", "infonce"])
def test_a_channel_does_not_depend_on_the_others(kind):
    """Estimating 6 channels at once (in chunks of 4, or all together) equals estimating
    each channel alone: same initialisation and batches for every channel, per-channel
    losses summed, element-wise Adam, batch-invariant kernels. Tolerance 1e-6 nats
    (measured: bitwise equal on CPU)."""
    acts, labels = shift_problem(channels=6)
    chunked = make(kind, max_channels_batched=4, **SMALL)
    together = make(kind, max_channels_batched=64, **SMALL)
    all_at_once = chunked.label_mi(acts, labels, 5)
    alone = torch.cat([chunked.label_mi(acts[:, c:c + 1], labels, 5) for c in range(6)])
    torch.testing.assert_close(all_at_once, alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(all_at_once, together.label_mi(acts, labels, 5), atol=1e-6, rtol=0)
    # reversing the channel order reverses the values
    torch.testing.assert_close(chunked.label_mi(acts.flip(1), labels, 5), all_at_once.flip(0),
                               atol=1e-6, rtol=0)
    # pairs: a (N, 2) x b (N, 2) at once equals each pair alone
    a, b = acts[:, :2], acts[:, 2:4] + acts[:, :2]
    grid = chunked.pair_mi(a, b)
    single = torch.tensor([[chunked.pair_mi(a[:, i:i + 1], b[:, j:j + 1]).item()
                            for j in range(2)] for i in range(2)], dtype=torch.float64)
    torch.testing.assert_close(grid, single, atol=1e-6, rtol=0)


def test_channels_are_trained_in_parallel_chunks(monkeypatch):
    """No Python loop over channels: 10 channels with max_channels_batched = 4 run three
    training loops (4 + 4 + 2 critics), each for the whole step budget."""
    calls = []
    real_train = neural._train

    def spy(params, cfg, step_loss):
        calls.append((params[0].shape[0], cfg.steps))
        return real_train(params, cfg, step_loss)

    monkeypatch.setattr(neural, "_train", spy)
    acts, labels = shift_problem(n=400, channels=10)
    make("mine", max_channels_batched=4, steps=5).label_mi(acts, labels, 5)
    assert calls == [(4, 5), (4, 5), (2, 5)]


# ----------------------------------------------------------------- interface


@pytest.mark.parametrize("kind", ["mine", "infonce"])
def test_interface(kind):
    est = make(kind, **SMALL)
    assert isinstance(est, Estimator)
    assert est.name == kind
    assert est.reductions == frozenset()
    assert est.bias(1000, 10) == 0.0
    acts, labels = shift_problem()
    values = est.label_mi(acts, labels, 5)
    assert values.shape == (3,) and values.dtype == torch.float64
    assert values.device == acts.device
    assert est.input_mi(acts) is None
    layer = est.layer_mi(acts, labels, 5, "mean")
    assert isinstance(layer, LayerMI) and layer.i_xt is None
    assert layer.i_ty == pytest.approx(values.mean().item())
    pair = est.pair_mi(acts[:, :1], acts[:, 1:2].double())
    assert pair.shape == (1, 1) and pair.dtype == torch.float64
    assert est.pair_mi(acts, acts[:, :2]).shape == (3, 2)
    facts = est.describe()
    assert facts["kind"] == kind and facts["steps"] == SMALL["steps"] and facts["seed"] == 0
    assert "bound" in facts
    if kind == "infonce":
        assert "log(batch_size)" in facts["bound"]
        assert facts["cap_nats"] == pytest.approx(math.log(SMALL["batch_size"]))
        assert facts["eval_batchings"] == neural.EVAL_PERMUTATIONS
    else:
        assert "Donsker-Varadhan" in facts["bound"] and facts["ema"] == 0.01


def test_zero_channels_and_a_constant_channel():
    est = make("mine", **SMALL)
    acts, labels = shift_problem()
    assert est.label_mi(acts[:, :0], labels, 5).shape == (0,)
    constant = torch.ones(1000, 1)
    value = est.label_mi(constant, labels, 5)
    assert torch.isfinite(value).all() and value.item() <= 0.01


# -------------------------------------------------------------------- errors


@pytest.mark.parametrize("kind", ["mine", "infonce"])
def test_errors(kind):
    est = make(kind, **SMALL)
    acts, labels = shift_problem()
    with pytest.raises(EstimatorError, match=r"expects \(N, C\) activations, got shape \(1000,\)"):
        est.label_mi(acts[:, 0], labels, 5)
    with pytest.raises(EstimatorError, match=r"999 labels for 1000 activation rows"):
        est.label_mi(acts, labels[:-1], 5)
    with pytest.raises(EstimatorError, match=r"labels must lie in \[0, 4\)"):
        est.label_mi(acts, labels, 4)
    with pytest.raises(EstimatorError, match=r"expects integer labels, got torch.float32"):
        est.label_mi(acts, labels.float(), 5)
    with pytest.raises(EstimatorError, match=r"expects \(N,\) integer labels"):
        est.label_mi(acts, labels[:, None], 5)
    bad = acts.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(EstimatorError, match="NaN or Inf"):
        est.label_mi(bad, labels, 5)
    with pytest.raises(EstimatorError, match="at least 4 samples"):
        est.label_mi(acts[:3], labels[:3], 5)
    with pytest.raises(EstimatorError, match="floating-point"):
        est.label_mi(labels[:, None], labels, 5)
    with pytest.raises(EstimatorError, match="same number of rows"):
        est.pair_mi(acts[:10], acts[:11])
    with pytest.raises(EstimatorError, match=r"no layer reduction 'joint'; valid: \['mean'\]"):
        est.layer_mi(acts, labels, 5, "joint")


def test_params():
    assert MineParams().model_dump() == {
        "hidden": 64, "steps": 300, "batch_size": 256, "lr": 1e-3, "seed": 0,
        "eval_fraction": 0.25, "max_channels_batched": 64, "joint_steps": 1000,
        "joint_lr": 3e-3, "interval_folds": 10, "kind": "mine", "ema": 0.01}
    assert InfoNCEParams().model_dump() == {
        "hidden": 64, "steps": 300, "batch_size": 256, "lr": 1e-3, "seed": 0,
        "eval_fraction": 0.25, "max_channels_batched": 64, "joint_steps": 600,
        "joint_lr": 1e-3, "interval_folds": 10, "kind": "infonce"}
    with pytest.raises(ValidationError, match="interval_folds"):
        MineParams(interval_folds=1)
    with pytest.raises(ValidationError, match="joint_lr"):
        InfoNCEParams(joint_lr=0)
    with pytest.raises(ValidationError, match="stepz"):
        MineParams(stepz=3)
    with pytest.raises(ValidationError, match="ema"):
        InfoNCEParams(ema=0.1)  # mine only
    with pytest.raises(ValidationError, match="eval_fraction"):
        MineParams(eval_fraction=1.0)
    with pytest.raises(ValidationError, match="steps"):
        InfoNCEParams(steps=0)
    with pytest.raises(ValidationError, match="kind"):
        MineParams(kind="infonce")


# ---------------------------------------------------------------- discovery

SPEC = textwrap.dedent("""\
    name: tiny
    seeds: [0]
    data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 60, image_size: 16, noise: 0.5}
    model:
      arch: test_resnet
      weights: train
      train: {epochs: 2, batch_size: 16, lr: 0.05}
    sites: {include: ["*.post_add"]}
    estimator: ESTIMATOR
    experiment: {kind: layer_mi}
    """)


def test_entry_point_discovery(monkeypatch):
    """The installed distribution registers both estimators through its entry point."""
    from mi_probe._core.plugins import get_plugin_manager
    from mi_probe._core.spec import load_spec_text

    monkeypatch.delenv("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("MI_PROBE_PLUGINS", raising=False)
    pm = get_plugin_manager()
    entries = pm.registry.entries("estimators")
    assert {"mine", "infonce", "histogram"} <= set(entries)
    assert entries["mine"].plugin == "mine" and entries["infonce"].plugin == "mine"
    assert pm.plugin_versions()["mine"] == "0.1.0"

    spec = load_spec_text(SPEC.replace("ESTIMATOR", "{kind: mine, steps: 50}"), "x.yaml", pm=pm)
    assert spec.estimator.kind == "mine" and spec.estimator.steps == 50
    est = pm.registry.build("estimators", spec.estimator)
    assert isinstance(est, MineEstimator) and est.describe()["steps"] == 50
    spec = load_spec_text(SPEC.replace("ESTIMATOR", "{kind: infonce, batch_size: 128}"),
                          "x.yaml", pm=pm)
    assert isinstance(pm.registry.build("estimators", spec.estimator), InfoNCEEstimator)
    with pytest.raises(SpecError, match="x.yaml"):
        load_spec_text(SPEC.replace("ESTIMATOR", "{kind: mine, stepz: 50}"), "x.yaml", pm=pm)
    with pytest.raises(SpecError, match="x.yaml"):
        load_spec_text(SPEC.replace("ESTIMATOR", "{kind: infonce, ema: 0.1}"), "x.yaml", pm=pm)


def test_plugin_imports_no_engine():
    """An outside plugin: importing it loads only mi_probe's public plugin surface."""
    code = ("import json, sys, mi_probe_mine.plugin; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mi_probe.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert loaded <= {"mi_probe.errors", "mi_probe.hookspecs", "mi_probe.interfaces",
                      "mi_probe.plugin"}, loaded


def test_registering_the_plugin_imports_no_torch():
    """``mi-probe plugins`` and ``schema`` import every installed plugin: the critics and
    torch load only when an estimate runs."""
    from mi_probe.testing import modules_loaded_by_registering

    loaded = modules_loaded_by_registering("mi_probe_mine.plugin", "mi_probe_register_estimators")
    assert "torch" not in loaded and "mi_probe_mine" in loaded
