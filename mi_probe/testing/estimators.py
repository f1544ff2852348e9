"""A conformance suite any estimator plugin can run in its own tests.

``check_estimator(est)`` runs every method of the :class:`mi_probe.interfaces.Estimator`
contract on problems whose mutual information is known, and returns a
:class:`ConformanceReport` that lists what it checked and what it skipped (and why).
Every problem is one a 20-bin histogram resolves at the defaults, so the built-in
estimator passes with its default parameters (see ``docs/estimators.md``). The label
problems share one label vector and are estimated in one ``label_mi`` call:

* **independent data**: channels independent of Y (ReLU'd Gaussian with half its
  values exactly 0, Gaussian on a 1/8 grid, constant, Gaussian) must give about 0;
* **uniform shift** (closed form): Y uniform on m classes, T | Y ~ U(Y, Y + 2),
  I(T;Y) = ln m − (m − 1) ln 2 / m (1.5811 nats for the default m = 9, whose class
  boundaries fall on the edges of 20 uniform bins);
* **ReLU shift** (ties: a point mass plus a density): T = max(0, Y + Z − (m − 1)/2),
  Z ~ N(0, 1), so half the values are exactly 0; I(T;Y) by numerical integration
  (0.7315 nats for m = 9);
* **Gaussian pairs** (when the estimator has ``pair_mi``): correlated Gaussians,
  I = −½ ln(1 − ρ²), and the ReLU of both coordinates (an atom at (0, 0), two strips
  where one coordinate is 0, a density), I by numerical integration (0.5544 nats at
  ρ = 0.9).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mi_probe.errors import EstimatorError
from mi_probe.interfaces import LayerMI, PairMI

#: spacing of the grid that the ``grid`` independent channel is rounded to
GRID = 1 / 8
#: a reduction name no estimator implements: ``layer_mi`` must refuse it with EstimatorError
UNKNOWN_REDUCTION = "no-such-reduction"
#: how far ``layer_mi(reduce="mean")`` may sit from the mean of the per-channel values
#: (both are float64 means of the same numbers; this only absorbs summation order)
MEAN_MATCH = 1e-9


# ------------------------------------------------------------------ closed forms


def closed_form_label_mi(m: int) -> float:
    """I(T;Y) in nats for Y ~ U{0..m-1}, T | Y ~ U(Y, Y + 2)."""
    return math.log(m) - (m - 1) * math.log(2) / m


def gaussian_mi(rho: float) -> float:
    """I(A;B) in nats of a bivariate normal with correlation ``rho``."""
    return -0.5 * math.log(1 - rho * rho)


def _phi(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def relu_shift_label_mi(m: int, threshold: float | None = None) -> float:
    """I(T;Y) in nats for Y ~ U{0..m-1}, T = max(0, Y + Z − threshold), Z ~ N(0, 1)
    (default threshold (m − 1)/2: half the values are exactly 0), by numerical
    integration of the KL form

        I = Σ_y p(y) [ P0(y) ln(P0(y)/P0) + ∫_0^∞ φ(t + c − y) ln(φ(t + c − y)/p(t)) dt ]

    with P0(y) = Φ(c − y) the mass of the atom at 0, P0 its mean over y, p(t) the mean
    density. 0.7846 nats for m = 10, c = 4.5; 0.7315 for m = 9, c = 4."""
    from scipy import integrate  # here: the pytest plugin imports this package at startup

    c = (m - 1) / 2 if threshold is None else float(threshold)
    ys = np.arange(m, dtype=np.float64)
    p0y = np.array([_norm_cdf(c - y) for y in ys])
    p0 = p0y.mean()
    safe = np.where(p0y > 0, p0y, 1.0)
    atom = float(np.sum(p0y / m * np.log(safe / p0)))

    def density_term(t: float) -> float:
        f = _phi(t + c - ys)
        pt = f.mean()
        if pt <= 0:
            return 0.0
        pos = f > 0
        return float(np.sum(f[pos] / m * np.log(f[pos] / pt)))

    upper = max(m - 1 - c, 0.0) + 40.0  # φ is 0 in float64 beyond ~38 σ
    cont, _ = integrate.quad(density_term, 0.0, upper, limit=400, epsabs=1e-13, epsrel=1e-12)
    return atom + cont


def relu_gaussian_mi(rho: float) -> float:
    """I(max(0, A); max(0, B)) in nats for a standard bivariate normal (A, B) with
    correlation ``rho`` > −1: an atom at (0, 0), two strips (one coordinate 0) and a
    density on the positive quadrant. The atom and quadrant terms are closed forms
    (quadrant moments of the bivariate normal); the strips are a 1-D integral.
    0.5544 nats at ρ = 0.9."""
    from scipy import integrate

    if not -1 < rho < 1:
        raise ValueError(f"rho must lie in (-1, 1), got {rho}")
    s = math.sqrt(1 - rho * rho)
    p_quadrant = 0.25 + math.asin(rho) / (2 * math.pi)  # P(A>0, B>0) = P(A<0, B<0)
    atom = p_quadrant * math.log(p_quadrant / 0.25)

    def strip_term(b: float) -> float:
        q = _norm_cdf(-rho * b / s)  # P(A <= 0 | B = b)
        return float(_phi(np.float64(b))) * q * math.log(2 * q) if q > 0 else 0.0

    strip, _ = integrate.quad(strip_term, 0.0, 40.0, limit=400, epsabs=1e-13, epsrel=1e-12)
    # ∫∫_{a,b>0} φ2 ln(φ2/(φφ)) = P·(−½ ln(1−ρ²)) − E[(ρ²a² − 2ρab + ρ²b²) 1{a,b>0}]/(2(1−ρ²))
    e_aa = p_quadrant + rho * s / (2 * math.pi)  # E[A² 1{A>0,B>0}] (= E[B² ...])
    e_ab = rho * p_quadrant + s / (2 * math.pi)  # E[AB 1{A>0,B>0}]
    quadrant = (p_quadrant * gaussian_mi(rho)
                - (2 * rho * rho * e_aa - 2 * rho * e_ab) / (2 * (1 - rho * rho)))
    return atom + 2 * strip + quadrant


# -------------------------------------------------------------------- samples


def uniform_shift_sample(n: int, m: int, channels: int, generator: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) values and (N,) labels of the closed-form problem (channels independent
    given Y)."""
    labels = torch.randint(0, m, (n,), generator=generator)
    acts = labels[:, None].double() + 2 * torch.rand(n, channels, generator=generator,
                                                     dtype=torch.float64)
    return acts.float(), labels


def relu_shift_sample(n: int, m: int, channels: int, generator: torch.Generator,
                      threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) values and (N,) labels with T = max(0, Y + Z − threshold) (default
    (m − 1)/2), Z ~ N(0, 1) independent per channel: ReLU-like channels, half exactly 0.
    The truth is :func:`relu_shift_label_mi`."""
    c = (m - 1) / 2 if threshold is None else float(threshold)
    labels = torch.randint(0, m, (n,), generator=generator)
    z = torch.randn(n, channels, generator=generator, dtype=torch.float64)
    return (labels[:, None].double() + z - c).clamp_min(0.0).float(), labels


def gaussian_pair_sample(n: int, rho: float, generator: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (N, 1) float64 columns of a standard bivariate normal with correlation ``rho``."""
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    a = z[:, :1]
    return a, rho * a + math.sqrt(1 - rho * rho) * z[:, 1:]


def independent_channels(labels: torch.Tensor, channels: int, generator: torch.Generator
                         ) -> torch.Tensor:
    """(N, C) values independent of ``labels`` (N,). Channel c is, by c mod 4: a ReLU'd
    Gaussian (half exactly 0); a Gaussian rounded to a 1/8 grid (ties); a constant (a
    dead channel); a Gaussian."""
    n = labels.shape[0]
    z = torch.randn(n, channels, generator=generator, dtype=torch.float64)
    kind = torch.arange(channels) % 4
    acts = torch.where(kind == 0, z.clamp_min(0.0), z)
    acts = torch.where(kind == 1, torch.round(z / GRID) * GRID, acts)
    acts = torch.where(kind == 2, torch.zeros_like(acts), acts)
    return acts.float()


def label_problems(n: int, m: int, channels: int, generator: torch.Generator,
                   threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The three label problems of :func:`check_estimator` on one label vector, so one
    ``label_mi`` call covers them: (N, 3C) values, columns ``[0, C)`` uniform shift,
    ``[C, 2C)`` ReLU shift, ``[2C, 3C)`` independent (:func:`independent_channels`), and
    the (N,) labels."""
    labels = torch.randint(0, m, (n,), generator=generator)
    shift = labels[:, None].double() + 2 * torch.rand(n, channels, generator=generator,
                                                      dtype=torch.float64)
    c = (m - 1) / 2 if threshold is None else float(threshold)
    relu = (labels[:, None].double() + torch.randn(n, channels, generator=generator,
                                                   dtype=torch.float64) - c).clamp_min(0.0)
    return torch.cat([shift.float(), relu.float(),
                      independent_channels(labels, channels, generator)], dim=1), labels


# --------------------------------------------------------------------- report


@dataclass
class ConformanceReport:
    """What :func:`check_estimator` measured. Values are in nats; ``*_estimate`` is the
    mean over channels, ``errors[check]`` the largest absolute error of that check."""

    independent_max: float
    closed_form_estimate: float
    closed_form_truth: float
    tied_estimate: float
    tied_truth: float
    #: rho -> (estimate, truth); empty when the Gaussian check was skipped
    gaussian: dict[float, tuple[float, float]] = field(default_factory=dict)
    #: (estimate, truth) of the ReLU'd Gaussian pair, None when skipped
    relu_gaussian: tuple[float, float] | None = None
    errors: dict[str, float] = field(default_factory=dict)
    #: names of the properties checked, in order
    checked: list[str] = field(default_factory=list)
    #: property -> why it was not checked
    skipped: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------- checks


def _check_values(values: Any, what: str, channels: int, device: torch.device) -> torch.Tensor:
    assert isinstance(values, torch.Tensor), f"{what} must return a tensor, got {type(values).__name__}"
    assert values.shape == (channels,), f"{what} shape {tuple(values.shape)} != ({channels},)"
    assert values.dtype == torch.float64, f"{what} must return float64 (nats), got {values.dtype}"
    assert values.device.type == device.type, (f"{what} must stay on the input's device "
                                               f"({device.type}), got {values.device.type}")
    assert torch.isfinite(values).all(), f"{what} returned non-finite values {values.tolist()}"
    assert (values >= 0).all(), f"{what} returned negative values {values.tolist()}"
    return values


def _check_close(name: str, estimates: torch.Tensor, truth: float, tolerance: float) -> float:
    err = (estimates.double().cpu() - truth).abs().max().item()
    assert err <= tolerance, (f"{name}: estimates {[round(v, 4) for v in estimates.tolist()]} "
                              f"vs {truth:.4f} nats (error {err:.4f} > tolerance {tolerance})")
    return err


def _pair_values(estimator, a: torch.Tensor, b: torch.Tensor, device: torch.device,
                 what: str) -> torch.Tensor:
    got = estimator.pair_mi(a.float().to(device), b.float().to(device))
    shape = (a.shape[1], b.shape[1])
    assert isinstance(got, torch.Tensor) and got.shape == shape, (
        f"pair_mi of (N, {shape[0]}) and (N, {shape[1]}) inputs must be a {shape} tensor "
        f"({what}), got {tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
    assert got.device.type == device.type, f"pair_mi must stay on the input's device ({what})"
    assert torch.isfinite(got).all() and (got >= 0).all(), (
        f"pair_mi {what}: {got.tolist()} is not finite and >= 0")
    return got.double().cpu()


def check_estimator(estimator, *, n: int = 4000, channels: int = 4, num_classes: int = 9,
                    tolerance: float = 0.1, independent_tolerance: float | None = None,
                    device: str | torch.device = "cpu", seed: int = 0,
                    rhos: tuple[float, ...] = (0.5, 0.75, 0.9),
                    relu_rho: float | None = 0.9) -> ConformanceReport:
    """Run the conformance checks on ``estimator``; raise AssertionError naming the first
    property that fails, else return a :class:`ConformanceReport`.

    Arguments (all keyword-only):

    * ``n``: samples of every problem;
    * ``channels``: C, channels of each label problem; ``label_mi`` sees the three
      problems side by side, 3C channels in one call. The independent channels cycle
      ReLU'd, 1/8-grid, constant and Gaussian, so C ≥ 4 covers all four kinds;
    * ``num_classes``: m, the classes of Y. The default 9 puts every class boundary of
      the uniform-shift problem on an edge of 20 uniform bins; other values add
      discretisation error for histogram estimators (0.15 nats at m = 10);
    * ``tolerance``: absolute error (nats) allowed for every channel or pair against its
      closed form or integral (uniform shift, ReLU shift, Gaussian and ReLU'd Gaussian);
    * ``independent_tolerance``: bound on every value on independent data; default
      ``tolerance / 2 + estimator.bias(n, num_classes)``;
    * ``device``: where the inputs are put (results must come back on it);
    * ``seed``: seed of the CPU generator that draws every problem;
    * ``rhos``: correlations of the Gaussian ``pair_mi`` check (``()`` skips it);
    * ``relu_rho``: correlation of the ReLU'd Gaussian ``pair_mi`` check (None skips it).

    What is checked (the names in ``report.checked``, in order):

    1. ``interface``: ``name`` (a non-empty str), ``reductions`` (a set of str),
       ``label_mi``, ``input_mi``, ``layer_mi``, ``bias`` and ``describe`` exist;
    2. ``label_mi_contract``: (3C,) float64 values on the input's device, finite, ≥ 0;
       the input tensors are left unmodified;
    3. ``independent``: every independent channel ≤ ``independent_tolerance``;
    4. ``uniform_shift`` and 5. ``relu_shift``: every channel within ``tolerance``;
    6. ``repeatable``: on two tied channels (the first ReLU-shift channel and the first
       ReLU'd independent one), a second ``label_mi`` call gives bitwise the same values
       (on CPU; other devices record it in ``skipped``). Checks 7-10 use these two
       channels too, so an estimator that trains per call stays cheap;
    7. ``layer_mi_mean``: ``layer_mi(reduce="mean")`` returns a LayerMI whose ``i_ty`` is
       the mean of ``label_mi`` and whose ``i_xt`` is None exactly when ``input_mi`` is
       None, else the mean of ``input_mi`` (to 1e-9 relative);
    8. ``layer_mi_<r>`` for each other reduction r in ``estimator.reductions``: a LayerMI
       with a finite ``i_ty`` ≥ 0 and an ``i_xt`` that is None or finite and ≥ 0;
    9. ``layer_mi_unknown``: an unknown reduction raises
       ``mi_probe.errors.EstimatorError`` whose message names it;
    10. ``input_mi``: None, or (2,) float64 on the device, finite, ≥ 0;
    11. ``bias``: ``bias(n, m)`` and ``bias(4n, m)`` finite and ≥ 0;
    12. ``describe``: a dict with str keys that ``json.dumps`` accepts;
    13. ``gaussian``: ``pair_mi(a (N, 1), b (N, len(rhos)))`` is (1, len(rhos)), each
        within ``tolerance`` of −½ ln(1 − ρ²);
    14. ``relu_gaussian``: ``pair_mi`` of the ReLU'd pair is (1, 1), within ``tolerance``.

    Estimators without ``pair_mi`` get 13 and 14 recorded in ``report.skipped`` with the
    reason, never passed over silently.
    """
    if n < 10 or channels < 1 or num_classes < 2 or not tolerance > 0:
        raise ValueError(f"check_estimator needs n >= 10, channels >= 1, num_classes >= 2 and "
                         f"tolerance > 0; got n={n}, channels={channels}, "
                         f"num_classes={num_classes}, tolerance={tolerance}")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    m, c = num_classes, channels
    checked: list[str] = []
    skipped: dict[str, str] = {}
    errors: dict[str, float] = {}

    # 1. interface
    for attr in ("name", "reductions", "label_mi", "input_mi", "layer_mi", "bias", "describe"):
        assert hasattr(estimator, attr), f"estimator lacks {attr!r} (interfaces.Estimator)"
    assert isinstance(estimator.name, str) and estimator.name, (
        f"estimator.name must be a non-empty str, got {estimator.name!r}")
    reductions = estimator.reductions
    assert isinstance(reductions, (set, frozenset)) and all(isinstance(r, str) for r in reductions), (
        f"estimator.reductions must be a set of str, got {reductions!r}")
    checked.append("interface")

    # 2-6. one label_mi call on the three label problems side by side
    acts, labels = label_problems(n, m, c, gen)
    acts, labels = acts.to(device), labels.to(device)
    acts_before, labels_before = acts.clone(), labels.clone()
    values = _check_values(estimator.label_mi(acts, labels, m), "label_mi", 3 * c, device)
    assert torch.equal(acts, acts_before) and torch.equal(labels, labels_before), (
        "label_mi modified its input tensors in place")
    checked.append("label_mi_contract")
    shift, tied, independent = values[:c], values[c:2 * c], values[2 * c:]
    bias = float(estimator.bias(n, m))
    limit = independent_tolerance if independent_tolerance is not None else tolerance / 2 + bias
    independent_max = independent.max().item()
    assert independent_max <= limit, (
        f"independent data (ReLU'd, 1/8-grid, constant, Gaussian channels) gave I = "
        f"{independent_max:.4f} nats > {limit:.4f} (values {independent.tolist()})")
    checked.append("independent")
    truth = closed_form_label_mi(m)
    errors["uniform_shift"] = _check_close("uniform shift (closed form)", shift, truth, tolerance)
    checked.append("uniform_shift")
    tied_truth = relu_shift_label_mi(m)
    errors["relu_shift"] = _check_close("ReLU shift (half the values exactly 0)", tied,
                                        tied_truth, tolerance)
    checked.append("relu_shift")

    # 4, 7-10. repeatability, layer_mi and input_mi on two of those channels (a ReLU shift
    # and a ReLU'd independent one: tied values), which keeps trained estimators cheap
    cols = [c, 2 * c]
    small = acts[:, cols]
    part = _check_values(estimator.label_mi(small, labels, m), "label_mi", len(cols), device)
    if device.type == "cpu":
        again = estimator.label_mi(small, labels, m)
        assert torch.equal(again, part), (f"label_mi is not repeatable: {part.tolist()} "
                                          f"then {again.tolist()} on the same input")
        checked.append("repeatable")
    else:
        skipped["repeatable"] = f"bitwise repeatability is only required on CPU, not {device.type}"
    layer = estimator.layer_mi(small, labels, m, "mean")
    assert isinstance(layer, LayerMI), f"layer_mi must return a LayerMI, got {type(layer).__name__}"
    mean = part.mean().item()
    assert abs(layer.i_ty - mean) <= MEAN_MATCH * (1 + abs(mean)), (
        f"layer_mi(reduce='mean').i_ty = {layer.i_ty} is not the mean of label_mi ({mean})")
    input_values = estimator.input_mi(small)
    if input_values is None:
        assert layer.i_xt is None, (f"input_mi is None, so layer_mi(reduce='mean').i_xt must be "
                                    f"None, got {layer.i_xt}")
    else:
        input_values = _check_values(input_values, "input_mi", len(cols), device)
        x_mean = input_values.mean().item()
        assert layer.i_xt is not None and abs(layer.i_xt - x_mean) <= MEAN_MATCH * (1 + abs(x_mean)), (
            f"layer_mi(reduce='mean').i_xt = {layer.i_xt} is not the mean of input_mi ({x_mean})")
    checked.append("layer_mi_mean")
    for reduce in sorted(reductions - {"mean"}):
        out = estimator.layer_mi(small, labels, m, reduce)
        assert isinstance(out, LayerMI), (f"layer_mi(reduce={reduce!r}) must return a LayerMI, "
                                          f"got {type(out).__name__}")
        assert math.isfinite(out.i_ty) and out.i_ty >= 0, (
            f"layer_mi(reduce={reduce!r}).i_ty = {out.i_ty} is not finite and >= 0")
        assert out.i_xt is None or (math.isfinite(out.i_xt) and out.i_xt >= 0), (
            f"layer_mi(reduce={reduce!r}).i_xt = {out.i_xt} is not None or finite and >= 0")
        checked.append(f"layer_mi_{reduce}")
    try:
        estimator.layer_mi(small, labels, m, UNKNOWN_REDUCTION)
    except EstimatorError as exc:
        assert UNKNOWN_REDUCTION in str(exc), (
            f"the EstimatorError for an unknown reduction must name it; got: {exc}")
    else:
        raise AssertionError(f"layer_mi(reduce={UNKNOWN_REDUCTION!r}) must raise "
                             "mi_probe.errors.EstimatorError")
    checked.append("layer_mi_unknown")
    checked.append("input_mi")

    # 11-12. bias, describe
    for size in (n, 4 * n):
        b = float(estimator.bias(size, m))
        assert math.isfinite(b) and b >= 0, f"bias({size}, {m}) = {b} is not finite and >= 0"
    checked.append("bias")
    facts = estimator.describe()
    assert isinstance(facts, dict) and all(isinstance(k, str) for k in facts), (
        f"describe() must return a dict with str keys, got {facts!r}")
    try:
        json.dumps(facts)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"describe() must be JSON-able: {exc}") from exc
    checked.append("describe")

    # 13-14. pairs: one call for all Gaussians (they share the column a), one for the ReLU
    gaussian: dict[float, tuple[float, float]] = {}
    relu_pair: tuple[float, float] | None = None
    if not isinstance(estimator, PairMI):
        skipped["gaussian"] = skipped["relu_gaussian"] = "the estimator has no pair_mi"
    else:
        if rhos:
            a = torch.randn(n, 1, generator=gen, dtype=torch.float64)
            noise = torch.randn(n, len(rhos), generator=gen, dtype=torch.float64)
            r = torch.tensor(rhos, dtype=torch.float64)
            b = r * a + torch.sqrt(1 - r * r) * noise
            got = _pair_values(estimator, a, b, device, f"Gaussians rho={tuple(rhos)}")[0]
            gaussian = {rho: (float(got[j]), gaussian_mi(rho)) for j, rho in enumerate(rhos)}
            errors["gaussian"] = max(abs(e - t) for e, t in gaussian.values())
            for rho, (e, t) in gaussian.items():
                assert abs(e - t) <= tolerance, (
                    f"Gaussian rho={rho}: {e:.4f} vs {t:.4f} nats (tolerance {tolerance})")
            checked.append("gaussian")
        else:
            skipped["gaussian"] = "rhos=() was passed"
        if relu_rho is not None:
            a, b = gaussian_pair_sample(n, relu_rho, gen)
            got = float(_pair_values(estimator, a.clamp_min(0), b.clamp_min(0), device,
                                     f"ReLU'd Gaussian rho={relu_rho}")[0, 0])
            truth_pair = relu_gaussian_mi(relu_rho)
            relu_pair = (got, truth_pair)
            errors["relu_gaussian"] = abs(got - truth_pair)
            assert abs(got - truth_pair) <= tolerance, (
                f"ReLU'd Gaussian rho={relu_rho} (atoms at 0): {got:.4f} vs {truth_pair:.4f} "
                f"nats (tolerance {tolerance})")
            checked.append("relu_gaussian")
        else:
            skipped["relu_gaussian"] = "relu_rho=None was passed"

    return ConformanceReport(
        independent_max=independent_max, closed_form_estimate=shift.mean().item(),
        closed_form_truth=truth, tied_estimate=tied.mean().item(), tied_truth=tied_truth,
        gaussian=gaussian, relu_gaussian=relu_pair, errors=errors, checked=checked,
        skipped=skipped)
