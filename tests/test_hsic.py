"""HSIC kernels against an explicit float64 NumPy reference, the ``hsic`` / ``nhsic``
regularisers (sign, weights, gradient flow, spec use) and the ``hsic_compare``
experiment end to end."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from scipy.spatial.distance import pdist, squareform

from mi_probe import cli
from mi_probe.builtin.adapters.resnet import ResNetAdapter
from mi_probe.builtin.datasets.synthetic import SyntheticParams, SyntheticSource
from mi_probe.builtin.experiments.hsic_compare import HSICCompareParams
from mi_probe.builtin.regularizers.hsic import HSICParams, HSICRegularizer
from mi_probe.builtin.regularizers.nhsic import NHSICParams
from mi_probe.functional.hsic import (center, delta_kernel, hsic, median_bandwidth, nhsic,
                                      pairwise_sq_dists, rbf_kernel, rbf_kernel_minus_one)
from mi_probe._core.models import build_model
from mi_probe._core.sites import resolve_sites
from mi_probe._core.spec import TrainSpecBase
from mi_probe._core.tables import CORE_SCHEMAS
from mi_probe._core.train import train_model

CPU = torch.device("cpu")


def _np_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """tr(K H L H) / (n-1)^2 with the explicit centering matrix H = I - 11^T/n."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)


def _np_rbf(x: np.ndarray) -> tuple[np.ndarray, float]:
    dist = pdist(x)  # Euclidean distances over pairs i < j
    sigma = float(np.median(dist))
    return np.exp(-squareform(dist) ** 2 / (2 * sigma ** 2)), sigma


def _dependent(n=120, d=6, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d))
    x[:, :2] += 1.5 * np.stack([np.cos(y), np.sin(y)], 1)
    return x, y


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# --------------------------------------------------------------------------- kernels


def test_hsic_matches_explicit_centering_reference():
    x, y = _dependent()
    k_ref, sigma_ref = _np_rbf(x)
    l_ref = (y[:, None] == y[None, :]).astype(np.float64)
    xt, yt = torch.tensor(x), torch.tensor(y)
    sigma = median_bandwidth(pairwise_sq_dists(xt))
    assert rel(float(sigma), sigma_ref) <= 1e-12  # median of distances, not squared
    k = rbf_kernel(xt)
    assert np.abs(k.numpy() - k_ref).max() <= 1e-12
    l = delta_kernel(yt, torch.float64)
    assert np.array_equal(l.numpy(), l_ref)
    value = float(hsic(k, l))
    assert rel(value, _np_hsic(k_ref, l_ref)) <= 1e-6
    # any pair of kernels, and the centred form
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 30)), rng.normal(size=(30, 30))
    a, b = a @ a.T, b @ b.T
    assert rel(float(hsic(torch.tensor(a), torch.tensor(b))), _np_hsic(a, b)) <= 1e-6
    h = np.eye(30) - 1 / 30
    assert np.allclose(center(torch.tensor(a)).numpy(), h @ a @ h, rtol=0, atol=1e-9)
    # float32 on the features (as in training) stays close to the float64 reference
    k32 = rbf_kernel(xt.float())
    assert rel(float(hsic(k32, l.float())), _np_hsic(k_ref, l_ref)) <= 1e-4


def test_batched_and_fixed_bandwidth():
    rng = np.random.default_rng(2)
    xs = torch.tensor(rng.normal(size=(3, 25, 5)))
    ys = torch.tensor(rng.integers(0, 3, (3, 25)))
    batched = hsic(rbf_kernel(xs), delta_kernel(ys, torch.float64))
    single = torch.stack([hsic(rbf_kernel(xs[i]), delta_kernel(ys[i], torch.float64))
                          for i in range(3)])
    assert torch.allclose(batched, single, rtol=1e-12, atol=0)
    x = xs[0].numpy()
    k_fixed = np.exp(-squareform(pdist(x)) ** 2 / (2 * 2.0 ** 2))
    assert np.abs(rbf_kernel(xs[0], 2.0).numpy() - k_fixed).max() <= 1e-12
    with pytest.raises(ValueError, match="must be positive"):
        rbf_kernel(xs[0], 0.0)


def test_permuted_labels_give_near_zero():
    x, y = _dependent(n=400, seed=3)
    k = rbf_kernel(torch.tensor(x))
    dependent = float(hsic(k, delta_kernel(torch.tensor(y), torch.float64)))
    gen = torch.Generator().manual_seed(0)
    nulls = [float(hsic(k, delta_kernel(torch.tensor(y)[torch.randperm(400, generator=gen)],
                                        torch.float64))) for _ in range(5)]
    assert dependent > 0.01
    assert abs(np.mean(nulls)) < 0.05 * dependent
    assert max(abs(v) for v in nulls) < 2e-3


def test_cka_of_a_kernel_with_itself_is_one_and_degenerate_cases_are_zero():
    x, y = _dependent(n=60)
    k = rbf_kernel(torch.tensor(x))
    assert float(nhsic(k, k)) == pytest.approx(1.0, abs=1e-12)
    l = delta_kernel(torch.tensor(y), torch.float64)
    assert float(nhsic(l, l)) == pytest.approx(1.0, abs=1e-12)
    value = float(nhsic(k, l))
    assert 0 < value < 1
    ref = _np_hsic(k.numpy(), l.numpy()) / np.sqrt(_np_hsic(k.numpy(), k.numpy())
                                                   * _np_hsic(l.numpy(), l.numpy()))
    assert rel(value, ref) <= 1e-6
    # a batch of one class, or identical activations: 0, never NaN (values and gradients)
    one_class = delta_kernel(torch.zeros(60, dtype=torch.long), torch.float64)
    assert float(nhsic(k, one_class)) == 0.0
    same = torch.ones(10, 4, dtype=torch.float64, requires_grad=True)
    k_same = rbf_kernel(same)
    assert float(median_bandwidth(pairwise_sq_dists(same))) == 1.0
    labels = delta_kernel(torch.arange(10) % 2, torch.float64)
    total = hsic(k_same, labels) + nhsic(k_same, labels)
    total.backward()
    assert float(total.detach()) == 0.0 and torch.isfinite(same.grad).all()


def _np_reference_shifted(x: np.ndarray, y: np.ndarray, sigma: float) -> tuple[float, float]:
    """float64 HSIC and nHSIC from the definition, with the RBF kernel built as
    expm1(-d²/2σ²) = K − 1 (the shift by −1 leaves both unchanged: H 1 = 0)."""
    k = np.expm1(-squareform(pdist(np.asarray(x, np.float64))) ** 2 / (2 * sigma ** 2))
    l = (y[:, None] == y[None, :]).astype(np.float64)
    value = _np_hsic(k, l)
    return value, value / np.sqrt(_np_hsic(k, k) * _np_hsic(l, l))


def test_precision_does_not_depend_on_the_bandwidth():
    # Issue 11 item 3: at σ = 100 × the median distance, float32 exp rounded K to ~1 and
    # nHSIC came out 0.087 (an absolute 1e-12 cut-off then gave exactly 0 at 1000×),
    # against 0.3461 from the float64 expm1 reference.
    x, y = _dependent(n=60)
    x32, labels = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    x_exact = x32.double().numpy()  # the reference sees exactly the float32 inputs
    median = float(median_bandwidth(pairwise_sq_dists(torch.tensor(x_exact))))
    l32 = delta_kernel(labels)
    for factor in (1.0, 100.0, 1e4, 1e8):
        sigma = factor * median
        ref_hsic, ref_nhsic = _np_reference_shifted(x_exact, y, sigma)
        k = rbf_kernel_minus_one(x32, sigma)
        assert k.dtype == torch.float32
        assert rel(float(hsic(k, l32)), ref_hsic) <= 1e-5, factor
        assert rel(float(nhsic(k, l32)), ref_nhsic) <= 1e-5, factor
    # HSIC scales as 1/σ² for large σ; nHSIC tends to a positive limit (linear CKA)
    assert _np_reference_shifted(x_exact, y, 100 * median)[1] == pytest.approx(0.3461, abs=1e-4)
    # the plain exp kernel also works at 100 × (both kernels are centred before they are
    # multiplied), and at 1000 × it is all rounding: reported as constant, i.e. 0
    ref = _np_reference_shifted(x_exact, y, 100 * median)[1]
    assert rel(float(nhsic(rbf_kernel(x32, 100 * median), l32)), ref) <= 1e-3
    assert float(nhsic(rbf_kernel(x32, 1000 * median), l32)) == 0.0
    # shifting the kernel by a constant changes neither HSIC nor nHSIC
    k64 = rbf_kernel(torch.tensor(x_exact))
    l64 = delta_kernel(labels, torch.float64)
    assert float(hsic(k64 - 1, l64)) == pytest.approx(float(hsic(k64, l64)), rel=1e-12)
    assert float(nhsic(k64 - 1, l64)) == pytest.approx(float(nhsic(k64, l64)), rel=1e-12)


def test_regulariser_with_a_large_fixed_bandwidth_matches_the_reference():
    # the regulariser's own nHSIC path (exp kernel, 1e-12 cut-off) gave 0.087 here before
    x, y = _dependent(n=60)
    x32, labels = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    median = float(median_bandwidth(pairwise_sq_dists(x32.double())))
    for factor in (100, 1e4):  # the regulariser builds K − 1 with expm1 too
        ref = _np_reference_shifted(x32.double().numpy(), y, factor * median)[1]
        reg = HSICRegularizer(NHSICParams(lam=1.0, bandwidth=factor * median))
        assert rel(-float(reg.penalty({"s": x32}, labels)), ref) <= 1e-5, factor


def test_nhsic_cutoff_is_relative():
    x, y = _dependent(n=60)
    k = rbf_kernel_minus_one(torch.tensor(x, dtype=torch.float32))
    l = delta_kernel(torch.tensor(y))
    value = float(nhsic(k, l))
    assert value > 0.3
    # nHSIC is scale-free: tiny or huge kernels give the same value (an absolute cut-off
    # on HSIC(K,K)·HSIC(L,L) < 1e-12 returned 0 for the tiny ones)
    for scale in (1e-30, 1e-6, 1e6, 1e30):
        assert rel(float(nhsic(scale * k, l)), value) <= 1e-5, scale
        assert rel(float(nhsic(k, scale * l)), value) <= 1e-5, scale
    # constant kernels, whose centred form is only rounding noise, give exactly 0
    for c in (0.1, 1.0, 3.7e-20):
        flat = torch.full((60, 60), c)
        assert float(center(flat).abs().max()) < 1e-6 * c  # not exactly zero for 0.1
        assert float(nhsic(flat, l)) == 0.0 and float(nhsic(k, flat)) == 0.0
    # a kernel with a small but real structure is not mistaken for a constant one
    bumped = torch.ones(60, 60) + 1e-4 * l
    assert float(nhsic(bumped, l)) == pytest.approx(1.0, abs=1e-3)


def test_gradient_at_a_large_bandwidth_matches_float64():
    x, y = _dependent(n=60)
    median = float(median_bandwidth(pairwise_sq_dists(torch.tensor(x))))
    grads = {}
    for dtype in (torch.float32, torch.float64):
        xt = torch.tensor(x, dtype=dtype, requires_grad=True)
        value = nhsic(rbf_kernel_minus_one(xt, 1e4 * median), delta_kernel(torch.tensor(y), dtype))
        value.backward()
        grads[dtype] = xt.grad.double()
    g32, g64 = grads[torch.float32], grads[torch.float64]
    assert float(g64.norm()) > 0
    assert float((g32 - g64).norm() / g64.norm()) <= 1e-3
    # and the float64 gradient is that of the plain formula (the internal rescaling of
    # the kernels is a constant, which nHSIC ignores)
    xt = torch.tensor(x, requires_grad=True)
    k, l = rbf_kernel_minus_one(xt, 1e4 * median), delta_kernel(torch.tensor(y), torch.float64)
    (hsic(k, l) / (hsic(k, k) * hsic(l, l)).sqrt()).backward()
    assert float((xt.grad - g64).norm() / g64.norm()) <= 1e-9


def test_kernel_inputs_are_checked():
    x = torch.randn(10, 3)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="bandwidth must be positive and finite"):
            rbf_kernel_minus_one(x, bad)
    with pytest.raises(ValueError, match=r"features of shape \(\.\.\., n, d\), got shape \(10,\)"):
        rbf_kernel(torch.randn(10))
    with pytest.raises(ValueError, match="floating-point features, got dtype torch.int64"):
        rbf_kernel(torch.ones(10, 3, dtype=torch.long))
    with pytest.raises(ValueError,
                       match=r"nhsic: kernels must be square .* \(10, 10\) and \(9, 9\)"):
        nhsic(torch.eye(10), torch.eye(9))
    with pytest.raises(ValueError, match="rtol must be ≥ 0"):
        nhsic(torch.eye(10), torch.eye(10), rtol=-1.0)


def _bottleneck_sigma(x: np.ndarray) -> float:
    """The HSIC-bottleneck code's median heuristic (docs/hsic.md): the median of the
    *squared* distances over the strict lower triangle of the rows of [x; x] (so n zero
    self-pairs join the pool), the mean if that is 0, and at least 1e-2."""
    z = np.concatenate([x, x])
    pool = (squareform(pdist(z)) ** 2)[np.tril_indices(len(z), -1)]
    median = float(np.median(pool))
    return max(median if median > 0 else float(pool.mean()), 1e-2)


def _bottleneck_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC as the HSIC-bottleneck code computes it with its median heuristic: Gaussian
    kernels exp(-d²/(2σ²)) with σ = _bottleneck_sigma on both sides, K H and L H, then
    the mean of their element-wise product with the transpose, i.e. tr(KHLH)/n²."""
    n = len(x)
    h = np.eye(n) - 1 / n
    k, l = (np.exp(-squareform(pdist(v)) ** 2 / (2 * _bottleneck_sigma(v) ** 2)) @ h
            for v in (x, y))
    return float(np.mean(k * l.T))


def test_conversions_from_the_hsic_bottleneck_conventions():
    # every conversion statement of docs/hsic.md, on its own example
    rng = np.random.default_rng(4)
    for n, classes, scale in ((60, 10, 1.0), (60, 10, 30.0), (50, 2, 1.0), (99, 3, 0.2)):
        y = rng.permutation(np.arange(n) % classes)
        x = scale * (rng.normal(size=(n, 16)) + 2 * np.eye(16)[y])
        onehot = np.eye(classes)[y]
        xt, yt = torch.tensor(x), torch.tensor(y)
        l = delta_kernel(yt, torch.float64)
        # the label bandwidth is 2 for balanced classes, so L_ref = e^-1/4 + (1 - e^-1/4) L
        assert _bottleneck_sigma(onehot) == pytest.approx(2.0, rel=1e-12)
        # their feature bandwidth is our fixed bandwidth of the same number (it is in
        # squared-distance units: close to the square of our median distance)
        sigma_ref = _bottleneck_sigma(x)
        sigma_ours = float(median_bandwidth(pairwise_sq_dists(xt)))
        assert sigma_ref == pytest.approx(sigma_ours ** 2, rel=0.05)
        k_ref = rbf_kernel(xt, sigma_ref)
        # HSIC_ref = ((n-1)/n)² (1 - e^-1/4) HSIC_ours(K(σ_ref), δ);  nHSIC_ref = nHSIC_ours
        expected = ((n - 1) / n) ** 2 * (1 - np.exp(-0.25)) * float(hsic(k_ref, l))
        assert rel(_bottleneck_hsic(x, onehot), expected) <= 1e-9
        ref_n = _bottleneck_hsic(x, onehot) / np.sqrt(_bottleneck_hsic(x, x)
                                                      * _bottleneck_hsic(onehot, onehot))
        assert rel(float(nhsic(rbf_kernel_minus_one(xt, sigma_ref), l)), ref_n) <= 1e-9
        # our HSIC(L, L) for balanced classes: n²/(n-1)² · (1/K)(1 - 1/K)
        assert rel(float(hsic(l, l)), n ** 2 / (n - 1) ** 2 * (1 - 1 / classes) / classes) <= 1e-12
    # an unbalanced batch: their label bandwidth falls back to the mean squared distance
    # and the factor becomes 1 - exp(-1/σ_y²)
    y = (np.arange(60) < 48).astype(int)
    sigma_y = _bottleneck_sigma(np.eye(2)[y])
    x = rng.normal(size=(60, 4)) + y[:, None]
    k = np.exp(-squareform(pdist(x)) ** 2 / 2)
    l_ref = np.exp(-squareform(pdist(np.eye(2)[y])) ** 2 / (2 * sigma_y ** 2))
    l = (y[:, None] == y[None, :]).astype(np.float64)
    assert sigma_y < 2
    assert rel(_np_hsic(k, l_ref) / _np_hsic(k, l), 1 - np.exp(-1 / sigma_y ** 2)) <= 1e-9
    # their fixed-σ form exp(-d²/(2σ²·dim)) is our fixed bandwidth σ·sqrt(dim)
    fixed = np.exp(-squareform(pdist(x)) ** 2 / (2 * 5.0 ** 2 * 4))
    assert np.abs(rbf_kernel(torch.tensor(x), 5.0 * 2.0).numpy() - fixed).max() <= 1e-15
    # our median-bandwidth nHSIC ignores the features' scale; theirs does not
    l_t, onehot = delta_kernel(torch.tensor(y), torch.float64), np.eye(2)[y]
    ours = [float(nhsic(rbf_kernel_minus_one(torch.tensor(c * x)), l_t)) for c in (0.1, 10.0)]
    assert ours[0] == pytest.approx(ours[1], rel=1e-9)
    theirs = [_bottleneck_hsic(c * x, onehot) / np.sqrt(
        _bottleneck_hsic(c * x, c * x) * _bottleneck_hsic(onehot, onehot)) for c in (0.1, 10.0)]
    assert abs(theirs[0] - theirs[1]) > 0.01


# --------------------------------------------------------------------------- regularisers


def _pooled(aligned: float, n=64, c=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    means = torch.randn(4, c, generator=gen)
    acts = torch.randn(n, c, generator=gen) + aligned * means[labels]
    return acts, labels


def test_penalty_sign_weights_and_value():
    reg = HSICRegularizer(HSICParams(lam=0.5, betas={"layer4.*": 2.0, "layer1.*": 0.0}))
    assert reg.name == "hsic" and list(reg.site_patterns) == ["*.post_add"]
    assert reg.beta("layer4.1.post_add") == 2.0 and reg.beta("layer1.0.post_add") == 0.0
    assert reg.beta("layer2.0.post_add") == 1.0
    penalties = []
    for aligned in (0.0, 1.0, 3.0):
        acts, labels = _pooled(aligned)
        penalties.append(float(reg.penalty({"layer4.1.post_add": acts}, labels)))
    # more dependence on the labels = lower (more negative) loss term
    assert penalties[0] > penalties[1] > penalties[2] and penalties[2] < 0
    acts, labels = _pooled(1.0)
    b, _ = _pooled(2.0, seed=1)
    pooled = {"layer4.1.post_add": acts, "layer2.0.post_add": b, "layer1.0.post_add": acts}
    l64 = delta_kernel(labels, torch.float64)
    expected = -0.5 * sum(beta * float(hsic(rbf_kernel(a.double()), l64))
                          for beta, a in ((2.0, acts), (1.0, b)))
    assert rel(float(reg.penalty(pooled, labels)), expected) <= 1e-5
    assert set(reg.last_values) == {"layer4.1.post_add", "layer2.0.post_add"}  # β = 0 skipped
    n_reg = HSICRegularizer(NHSICParams(lam=1.0))
    value = float(n_reg.penalty({"s": acts}, labels))
    ref = nhsic(rbf_kernel(acts.double()), delta_kernel(labels, torch.float64))
    assert n_reg.name == "nhsic" and rel(value, -float(ref)) <= 1e-5
    fixed = HSICRegularizer(HSICParams(lam=1.0, bandwidth=3.0))
    ref = hsic(rbf_kernel(acts.double(), 3.0), delta_kernel(labels, torch.float64))
    assert rel(float(fixed.penalty({"s": acts}, labels)), -float(ref)) <= 1e-5
    off = HSICRegularizer(HSICParams(lam=0.0))
    assert float(off.penalty({"s": acts}, labels)) == 0.0


def test_params_are_validated():
    with pytest.raises(ValueError, match="lam"):
        HSICParams(lam=-1)
    with pytest.raises(ValueError, match="betas must be finite"):
        HSICParams(betas={"*": -1.0})
    with pytest.raises(ValueError, match="bandwidth"):
        HSICParams(bandwidth=0.0)
    with pytest.raises(ValueError, match="extra"):
        HSICParams(lamda=1.0)
    with pytest.raises(ValueError, match="invalid hsic parameters: lam"):
        HSICCompareParams(regularizer={"kind": "hsic", "lam": -2})
    filled = HSICCompareParams(regularizer={"kind": "nhsic", "lam": 0.3}).regularizer
    assert filled["lam"] == 0.3 and filled["bandwidth"] == "median"


@pytest.fixture(scope="module")
def data():
    return SyntheticSource(SyntheticParams(n_classes=3, n_train=48, n_val=30, image_size=16,
                                           noise=0.5)).load()


def _train(data, reg=None, seed=0):
    model = build_model("test_resnet", 3, seed=0)
    regs = []
    if reg is not None:
        probe = torch.stack([data.val[0][0], data.val[1][0]])
        regs = [(reg, resolve_sites(model, ResNetAdapter(), probe, reg.site_patterns))]
    cfg = TrainSpecBase(epochs=1, batch_size=16, lr=0.05)
    result = train_model(model, data, cfg, seed, CPU, regularizers=regs, progress=False,
                         log=lambda _m: None)
    return model, result


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_gradient_reaches_the_network(data):
    plain, _ = _train(data)
    zero, res0 = _train(data, HSICRegularizer(HSICParams(lam=0.0)))
    assert _same(plain, zero)  # λ = 0 is plain cross-entropy, bit for bit
    assert res0.history[-1]["regularizer"] == "hsic"
    reg = HSICRegularizer(HSICParams(lam=1.0))
    rewarded, res = _train(data, reg)
    assert not _same(plain, rewarded)
    assert reg.last_values and all(v > 0 for v in reg.last_values.values())
    assert all(not m._forward_hooks for m in rewarded.modules())
    normalised, _ = _train(data, HSICRegularizer(NHSICParams(lam=1.0)))
    assert not _same(plain, normalised) and not _same(rewarded, normalised)
    # the conv weights of the first block changed differently (the gradient reached them)
    w = "layer1.0.conv1.weight"
    assert not torch.equal(plain.state_dict()[w], rewarded.state_dict()[w])


# --------------------------------------------------------------------------- through specs


def test_regulariser_from_a_spec(run_cli, tiny_spec_file, tmp_path):
    spec = tiny_spec_file(text=open(tiny_spec_file()).read().replace(
        "train: {epochs: 2, batch_size: 16, lr: 0.05}",
        "train: {epochs: 1, batch_size: 16, lr: 0.05,\n"
        "          regularizers: [{kind: hsic, lam: 0.1}]}").replace(
        "experiment: {kind: layer_mi}",
        "experiment: {kind: layer_mi, states: [trained], channel_table: false, null_draws: 0}"),
        name="reg.yaml")
    code, _, err = run_cli(spec, "--out", tmp_path / "r")
    assert code == 0, err
    train = pl.read_parquet(tmp_path / "r" / "tables" / "training.parquet")
    assert set(train["regularizer"].to_list()) == {"hsic"} and train["epoch"].max() == 1
    code, _, err = run_cli(spec, "--out", tmp_path / "bad", "--set",
                           "model.train.regularizers=[{kind: hsic, lam: -1}]")
    assert code == 2 and "lam" in err and "Traceback" not in err


HSIC_TINY = """\
name: tiny_hsic
seeds: [0, 1]
data: {kind: synthetic, n_classes: 3, n_train: 32, n_val: 40, image_size: 16, noise: 0.5}
model:
  arch: test_resnet
  weights: train
  train: {epochs: 1, batch_size: 16, lr: 0.05}
sites: {include: ["*.post_add"]}
estimator: {kind: histogram, bins: 8}
experiment: {kind: hsic_compare, regularizer: {kind: hsic, lam: 1.0}}
report: {formats: [png]}
"""


def test_hsic_compare_end_to_end(run_cli, tiny_spec_file, tmp_path):
    code, _, err = run_cli(tiny_spec_file(text=HSIC_TINY, name="h.yaml"), "--out", tmp_path / "r")
    assert code == 0, err
    tables = tmp_path / "r" / "tables"
    frame = pl.read_parquet(tables / "hsic_compare.parquet")
    assert frame.height == 4
    assert sorted(frame["regularizer"].unique()) == ["hsic", "none"]
    for column in ("seed", "regularizer", "best_val_acc", "final_val_acc", "epochs_to_target",
                   "target", "generalisation_gap", "seconds_per_epoch"):
        assert column in frame.columns
    ce = frame.filter(pl.col("regularizer") == "none")
    # default target: 95% of the CE run's best accuracy, which CE itself reaches
    assert (ce["target"] - 0.95 * ce["best_val_acc"]).abs().max() < 1e-12
    assert ce["epochs_to_target"].null_count() == 0
    assert (frame["final_epoch"] == 1).all()
    train = pl.read_parquet(tables / "training.parquet")
    assert set(CORE_SCHEMAS["training"]) <= set(train.columns)
    assert train.group_by(["seed", "regularizer"]).len().height == 4
    summary = pl.read_parquet(tables / "summary_hsic_compare.parquet")
    assert summary.height == 2 and (summary["n_seeds"] == 2).all()
    for name in ("hsic_val_acc", "hsic_val_loss", "hsic_seconds_per_epoch"):
        assert (tmp_path / "r" / "figures" / f"{name}.png").is_file(), name
    # an unknown regulariser fails before any training, naming the choices
    code, _, err = run_cli(tiny_spec_file(text=HSIC_TINY, name="h.yaml"), "--out",
                           tmp_path / "u", "--set", "experiment.regularizer={kind: hsci}")
    assert code != 0 and "hsci" in err and "did you mean 'hsic'" in err
