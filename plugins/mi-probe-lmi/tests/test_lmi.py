"""Tests of the ``lmi`` estimator plugin: its KSG kernels against the ``ksg`` plugin's and
closed forms, LMI against closed forms in 32 ambient dimensions, determinism, the
interfaces it declares and its refusals.

The LMI fits here use a small network (first hidden width 32, lr 1e-3, 150 epochs at
most) and N = 1000, so that each takes seconds; the defaults are latentmi's (width
1024, lr 1e-4, 300 epochs). The values measured at these seeds are in each test's
docstring; tolerances are at least three times the measured error.
"""

from __future__ import annotations

import math

import pytest
import torch

from mi_probe.errors import EstimatorError
from mi_probe.interfaces import Estimator, JointMI, VectorLabelMI
from mi_probe.testing import parametrize_with_checks

from mi_probe_lmi import LMIEstimator, LMIParams
from mi_probe_lmi import knn

from mi_probe_ksg import ksg as K

#: a small, fast LMI (see the module docstring)
FAST = dict(hidden=32, lr=1e-3, epochs=150)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one thread avoids waiting for OpenMP threads on a busy machine;
    the values asserted do not depend on it (tolerances, not bits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def est(**kw) -> LMIEstimator:
    return LMIEstimator(LMIParams(**{**FAST, **kw}))


def gaussian_grid(ambient: int, mi: float, n: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """LMI's Gaussian grid with one intrinsic pair (variances 6 and 3.5, correlation
    set for ``mi`` nats) and ``ambient - 1`` copies of it on each side."""
    g = torch.Generator().manual_seed(seed)
    r = math.sqrt(1 - math.exp(-2 * mi))
    a = torch.randn(n, 1, generator=g, dtype=torch.float64)
    b = r * a + math.sqrt(1 - r * r) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return (a * math.sqrt(6)).expand(n, ambient), (b * math.sqrt(3.5)).expand(n, ambient)


def embedded_shift(ambient: int, m: int, n: int, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """T | Y ~ U(Y, Y + 2), Y uniform on m classes, embedded along a random unit vector
    of ``ambient`` dims: I(X;Y) = I(T;Y) = ln m - (m - 1) ln 2 / m (closed form)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, m, (n,), generator=g)
    t = y + 2 * torch.rand(n, generator=g)
    direction = torch.nn.functional.normalize(torch.randn(ambient, generator=g), dim=0)
    return t[:, None] * direction[None, :], y, math.log(m) - (m - 1) * math.log(2) / m


# ----------------------------------------------------------------------------- kernels

def test_kernels_in_one_dimension_are_the_ksg_plugins():
    """With d = 1 the max-norm is |x|: the multivariate kernels give the ksg plugin's
    (scikit-learn's) numbers."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(700, 1, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (700,), generator=g)
    shifted = x + 0.7 * labels[:, None]
    assert knn.ksg_label(shifted, labels, 3) == pytest.approx(
        K.label_mi_cd(shifted, labels, 3, 5).item(), abs=1e-12)
    y = 0.6 * x + 0.8 * torch.randn(700, 1, generator=g, dtype=torch.float64)
    assert knn.ksg_joint(x, y, 3) == pytest.approx(K.pair_mi_cc(x[:, 0], y, 3).item(),
                                                    abs=1e-12)


def test_ksg_joint_on_two_gaussian_pairs():
    """Two independent pairs of correlation 0.6: I = -ln(1 - 0.36) = 0.4463 nats.
    Measured 0.452 (N = 2000)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    y = 0.6 * x + 0.8 * torch.randn(2000, 2, generator=g, dtype=torch.float64)
    assert knn.ksg_joint(x, y, 3) == pytest.approx(-math.log(1 - 0.36), abs=0.1)


def test_ksg_label_in_two_dimensions():
    """The uniform shift in one coordinate beside an independent one: 0.8664 nats
    (m = 4); the max-norm neighbours see both. Measured 0.857 (N = 2000)."""
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 4, (2000,), generator=g)
    x = torch.stack([y + 2 * torch.rand(2000, generator=g), torch.rand(2000, generator=g)], 1)
    assert knn.ksg_label(x, y, 3) == pytest.approx(math.log(4) - 3 * math.log(2) / 4, abs=0.1)


def test_ksg_label_refuses_when_no_class_has_two_samples():
    with pytest.raises(ValueError, match="every class has a single sample"):
        knn.ksg_label(torch.randn(3, 2), torch.tensor([0, 1, 2]), 3)


# ----------------------------------------------------------------------------- LMI

def test_joint_mi_on_lmis_gaussian_grid():
    """32 ambient dims, one intrinsic pair, 0.5 nats. Measured 0.455 (error -0.045)."""
    x, y = gaussian_grid(32, 0.5, 1000, seed=0)
    assert est().joint_mi(x, y) == pytest.approx(0.5, abs=0.15)


def test_joint_interval_is_kfold_on_the_held_out_codes_and_holds_the_estimate():
    x, y = gaussian_grid(32, 0.5, 1000, seed=0)
    e = est()
    iv = e.joint_mi_interval(x, y, 0.95, seed=3)
    assert iv.method == "kfold" and iv.level == 0.95 and iv.estimate.shape == ()
    assert float(iv.estimate) == e.joint_mi(x, y)  # the same seeded fit
    assert 0.0 <= iv.low <= iv.estimate <= iv.high
    assert iv.high - iv.low < 0.6  # ten folds of 50 held-out codes: informative
    again = e.joint_mi_interval(x, y, 0.95, seed=3)
    assert float(again.low) == float(iv.low) and float(again.high) == float(iv.high)


def test_label_interval_is_the_ksg_plugins():
    from mi_probe_ksg import KSGEstimator, KSGParams

    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 3, (600,), generator=g)
    acts = labels[:, None].float() + torch.randn(600, 3, generator=g)
    chan, mean = est(interval_folds=5).label_mi_interval(acts, labels, 3, 0.9, seed=1)
    ref, ref_mean = KSGEstimator(KSGParams(interval_folds=5)).label_mi_interval(
        acts, labels, 3, 0.9, seed=1)
    assert torch.equal(chan.low, ref.low) and torch.equal(chan.high, ref.high)
    assert torch.equal(chan.estimate, est().label_mi(acts, labels, 3))
    assert float(mean.low) == float(ref_mean.low)


def test_vector_label_mi_on_a_linearly_embedded_shift():
    """The uniform shift of 4 classes along a random direction of 32 dims: 0.8664 nats.
    Measured 0.898 (error +0.031)."""
    x, y, truth = embedded_shift(32, 4, 1000, seed=0)
    estimator = est()
    assert estimator.vector_label_mi(x, y, 4) == pytest.approx(truth, abs=0.15)
    assert estimator.last_fit["held_out"] == 500  # validation_split 0.5


def test_vector_label_mi_of_independent_labels_is_near_zero():
    """Labels drawn apart from the activations. Measured 0.000."""
    x, _, _ = embedded_shift(32, 4, 1000, seed=0)
    labels = torch.randint(0, 4, (1000,), generator=torch.Generator().manual_seed(5))
    assert est().vector_label_mi(x, labels, 4) < 0.1


def test_repeatable_on_the_cpu():
    """Seeded split, weights, batches and tie noise: the same call gives the same bits."""
    x, y, _ = embedded_shift(16, 3, 300, seed=3)
    a, b = est(epochs=5), est(epochs=5)
    assert a.vector_label_mi(x, y, 3) == b.vector_label_mi(x, y, 3)
    assert est(epochs=5, seed=1).last_fit == {}  # nothing fitted yet


def test_declares_the_abilities_and_defaults_from_latentmi():
    e = LMIEstimator()
    assert isinstance(e, Estimator) and isinstance(e, JointMI) and isinstance(e, VectorLabelMI)
    p = e.params
    assert (p.latent_dim, p.hidden, p.epochs, p.patience, p.batch_size, p.lr,
            p.validation_split, p.alpha, p.lam) == (8, None, 300, 30, 512, 1e-4, 0.5, 1.0, 1.0)
    assert e.max_dims == 8192 and e.max_joint_dims == 16384
    assert e.input_mi(torch.zeros(4, 2)) is None and e.bias(100, 10) == 0.0
    assert e.describe()["estimator"] == "lmi"


def test_layer_mi_mean_is_the_ksg_plugins_per_channel_mean():
    from mi_probe_ksg import KSGEstimator, KSGParams

    x, y, _ = embedded_shift(4, 3, 400, seed=4)
    want = KSGEstimator(KSGParams(k=3, seed=0)).label_mi(x, y, 3).mean().item()
    assert est().layer_mi(x, y, 3, "mean").i_ty == want
    assert est().layer_mi(x, y, 3, "mean").i_xt is None


@parametrize_with_checks([LMIEstimator(LMIParams(hidden=16, epochs=3))], rhos=(),
                         relu_rho=None)
def test_conformance(estimator, check):
    """The harness's label problems go to the ksg plugin (per channel); ``layer_mi_joint``
    runs a (3-epoch) LMI on the 12 channels. No pair_mi: the Gaussian checks skip."""
    check(estimator)


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("call, message", [
    (lambda e: e.vector_label_mi([[1.0]], torch.zeros(1, dtype=torch.long), 2),
     "activations must be a torch.Tensor, got list"),
    (lambda e: e.vector_label_mi(torch.zeros(10), torch.zeros(10, dtype=torch.long), 2),
     r"expects \(N, D\) activations, got shape \(10,\)"),
    (lambda e: e.vector_label_mi(torch.full((10, 3), math.nan), torch.zeros(10, dtype=torch.long), 2),
     "activations holds 30 NaN or Inf values"),
    (lambda e: e.vector_label_mi(torch.zeros(10, 9), torch.zeros(10, dtype=torch.long), 2),
     r"D = 9 dimensions, above max_dims = 8 .*sites.reduce: \{project: <dims>\}"),
    (lambda e: e.vector_label_mi(torch.zeros(10, 3), torch.zeros(9, dtype=torch.long), 2),
     r"labels must be \(10,\) to match"),
    (lambda e: e.vector_label_mi(torch.zeros(10, 3), torch.zeros(10), 2),
     "labels must be integers, got dtype torch.float32"),
    (lambda e: e.vector_label_mi(torch.zeros(10, 3), torch.full((10,), 4), 3),
     r"labels must lie in \[0, 3\), got \[4, 4\]"),
    (lambda e: e.vector_label_mi(torch.zeros(10, 3), torch.zeros(10, dtype=torch.long), 1),
     "num_classes must be >= 2"),
    (lambda e: e.vector_label_mi(torch.zeros(6, 3), torch.zeros(6, dtype=torch.long), 2),
     r"6 samples split 3 to train and 3 held out .* needs more than k = 3"),
    (lambda e: e.joint_mi(torch.zeros(10, 3), torch.zeros(11, 2)),
     "joint_mi needs paired rows, got 10 x rows and 11 y rows"),
    (lambda e: e.joint_mi(torch.zeros(10, 3), torch.zeros(10, 0)),
     r"y has no dimensions"),
    (lambda e: e.layer_mi(torch.zeros(10, 3), torch.zeros(10, dtype=torch.long), 2, "max"),
     r"no layer reduction 'max'; valid: \['mean', 'joint'\]"),
])
def test_bad_input_is_refused_naming_the_problem(call, message):
    with pytest.raises(EstimatorError, match=message):
        call(est(max_dims=8))


def test_params_refuse_out_of_range_settings():
    from pydantic import ValidationError

    for bad in ({"validation_split": 1.0}, {"latent_dim": 0}, {"hidden": 2}, {"lr": 0}):
        with pytest.raises(ValidationError):
            LMIParams(**bad)


def test_registered_as_lmi_and_usable_in_a_spec():
    from mi_probe._core.plugins import get_plugin_manager
    from mi_probe._core.spec import load_spec_text

    pm = get_plugin_manager(["mi_probe_lmi.plugin"], autoload=False)
    entry = pm.registry.get("estimators", "lmi")
    assert entry.params_model is LMIParams
    text = ("name: t\ndata: {kind: digits}\nmodel: {arch: resnet18}\n"
            "estimator: {kind: lmi, latent_dim: 4}\nexperiment: {kind: layer_mi, reduce: joint}\n")
    spec = load_spec_text(text, "t.yaml", pm=pm)
    assert spec.estimator.latent_dim == 4


def test_the_plugins_example_spec_validates():
    """specs/unpooled_mi.yaml of this plugin (kept here, not in the repository's specs/,
    because it needs this plugin, which `make test` does not autoload there)."""
    from pathlib import Path

    from mi_probe._core.plugins import get_plugin_manager
    from mi_probe._core.spec import load_spec

    pm = get_plugin_manager(["mi_probe_lmi.plugin"], autoload=False)
    for name in ("unpooled_mi.yaml", "unpooled_r18_imagenette.yaml"):
        spec = load_spec(Path(__file__).parents[1] / "specs" / name, pm=pm)
        assert spec.experiment.kind == "unpooled_mi" and spec.estimator.kind == "lmi"
        assert spec.sites.reduce.project == 1024
