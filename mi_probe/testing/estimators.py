"""A conformance suite any estimator plugin can run in its own tests.

Each property of the :class:`mi_probe.interfaces.Estimator` contract is one function,
``check_<name>(estimator, problems)``, run on problems whose mutual information is
known. :func:`estimator_checks` yields the checks that apply to an estimator and
:func:`parametrize_with_checks` makes each one its own pytest item (as
``sklearn.utils.estimator_checks`` does), so a failure names the check;
``check_estimator(est)`` runs them all and returns a :class:`ConformanceReport` that
lists what it checked and what it skipped (and why). The estimator's answers are
memoised in a :class:`ConformanceProblems`, so the items together cost one
``check_estimator`` run.
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
from functools import cached_property, partial
from typing import Any, Callable, Iterable, Iterator, TypeVar, cast

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


_Real = TypeVar("_Real", np.ndarray, np.float64)


def _phi(x: _Real) -> _Real:
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


# ------------------------------------------------------------------ the problems


@dataclass(frozen=True)
class _Draws:
    """Every problem of one run, drawn from one seeded CPU generator."""

    #: (N, 3C) label problems side by side and their (N,) labels, on the device
    acts: torch.Tensor
    labels: torch.Tensor
    #: (N, 2) a ReLU-shift and a ReLU'd independent channel (tied values), on the device
    small: torch.Tensor
    #: "gaussian" / "relu_gaussian" -> float64 CPU columns (a, b), present when enabled
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(eq=False)
class ConformanceProblems:
    """The options of a conformance run (the keyword arguments of
    :func:`check_estimator`), the problems they draw, and each estimator's answers.

    Every ``label_mi``, ``layer_mi``, ``input_mi`` and ``pair_mi`` answer is memoised per
    estimator, so checks run one at a time (separate pytest items) still call each method
    once per problem, as one :func:`check_estimator` run does: an estimator that trains
    per call trains once. Share one object between :func:`parametrize_with_checks` and
    :func:`run_checks` to reuse the answers."""

    n: int = 4000
    channels: int = 4
    num_classes: int = 9
    tolerance: float = 0.1
    independent_tolerance: float | None = None
    device: str | torch.device = "cpu"
    seed: int = 0
    rhos: tuple[float, ...] = (0.5, 0.75, 0.9)
    relu_rho: float | None = 0.9

    def __post_init__(self) -> None:
        if self.n < 10 or self.channels < 1 or self.num_classes < 2 or not self.tolerance > 0:
            raise ValueError(
                f"the conformance checks need n >= 10, channels >= 1, num_classes >= 2 and "
                f"tolerance > 0; got n={self.n}, channels={self.channels}, "
                f"num_classes={self.num_classes}, tolerance={self.tolerance}")
        self.device = torch.device(self.device)
        self.rhos = tuple(self.rhos)
        #: id(estimator) -> (estimator, {question: answer}); the estimator is kept so
        #: that its id is not reused
        self._answers: dict[int, tuple[Any, dict[Any, Any]]] = {}

    @property
    def _device(self) -> torch.device:
        """``device`` as ``__post_init__`` normalised it (always a ``torch.device``)."""
        return cast(torch.device, self.device)

    # ---- the data and the truths

    @cached_property
    def draws(self) -> _Draws:
        """The problems, drawn in a fixed order (label problems, Gaussian pairs, ReLU'd
        pair) whichever check asks first, so every check sees the same data."""
        gen = torch.Generator().manual_seed(self.seed)
        acts, labels = label_problems(self.n, self.num_classes, self.channels, gen)
        acts, labels = acts.to(self.device), labels.to(self.device)
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.rhos:  # one column a shared by every rho
            a = torch.randn(self.n, 1, generator=gen, dtype=torch.float64)
            noise = torch.randn(self.n, len(self.rhos), generator=gen, dtype=torch.float64)
            r = torch.tensor(self.rhos, dtype=torch.float64)
            pairs["gaussian"] = (a, r * a + torch.sqrt(1 - r * r) * noise)
        if self.relu_rho is not None:
            a, b = gaussian_pair_sample(self.n, self.relu_rho, gen)
            pairs["relu_gaussian"] = (a.clamp_min(0), b.clamp_min(0))
        c = self.channels
        return _Draws(acts=acts, labels=labels, small=acts[:, [c, 2 * c]], pairs=pairs)

    @property
    def uniform_shift_truth(self) -> float:
        return closed_form_label_mi(self.num_classes)

    @cached_property
    def relu_shift_truth(self) -> float:
        return relu_shift_label_mi(self.num_classes)

    @cached_property
    def relu_gaussian_truth(self) -> float:
        # only asked for by check_relu_gaussian, which refuses relu_rho=None first
        return relu_gaussian_mi(cast(float, self.relu_rho))

    def independent_limit(self, estimator) -> float:
        """The bound on independent data: ``independent_tolerance``, else
        ``tolerance / 2 + estimator.bias(n, num_classes)``."""
        if self.independent_tolerance is not None:
            return self.independent_tolerance
        return self.tolerance / 2 + float(estimator.bias(self.n, self.num_classes))

    # ---- the estimator's answers, memoised

    def _answer(self, estimator, question: Any, ask: Callable[[], Any]) -> Any:
        answers = self._answers.setdefault(id(estimator), (estimator, {}))[1]
        if question not in answers:
            answers[question] = ask()
        return answers[question]

    def _label_mi_call(self, estimator) -> tuple[Any, bool]:
        """``label_mi`` of copies of the label problems, and whether it modified them."""
        def ask() -> tuple[Any, bool]:
            d = self.draws
            acts, labels = d.acts.clone(), d.labels.clone()
            values = estimator.label_mi(acts, labels, self.num_classes)
            return values, not (torch.equal(acts, d.acts) and torch.equal(labels, d.labels))
        return self._answer(estimator, "label_mi", ask)

    def label_values(self, estimator) -> torch.Tensor:
        """The (3C,) ``label_mi`` of the three label problems side by side (one call),
        held to the value contract: float64 on the device, finite, >= 0."""
        values, _ = self._label_mi_call(estimator)
        return _check_values(values, "label_mi", 3 * self.channels, self._device)

    def label_mi_modified_inputs(self, estimator) -> bool:
        return self._label_mi_call(estimator)[1]

    def label_parts(self, estimator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The uniform-shift, ReLU-shift and independent channels of :meth:`label_values`."""
        values, c = self.label_values(estimator), self.channels
        return values[:c], values[c:2 * c], values[2 * c:]

    def small_values(self, estimator) -> torch.Tensor:
        """``label_mi`` of the two tied channels, held to the value contract."""
        values = self._answer(estimator, "small_label_mi", lambda: estimator.label_mi(
            self.draws.small, self.draws.labels, self.num_classes))
        return _check_values(values, "label_mi", 2, self._device)

    def small_values_again(self, estimator) -> Any:
        """A second ``label_mi`` call on the two tied channels, as returned."""
        return self._answer(estimator, "small_label_mi_again", lambda: estimator.label_mi(
            self.draws.small, self.draws.labels, self.num_classes))

    def layer(self, estimator, reduce: str) -> Any:
        """``layer_mi`` of the two tied channels with ``reduce``, as returned."""
        return self._answer(estimator, ("layer_mi", reduce), lambda: estimator.layer_mi(
            self.draws.small, self.draws.labels, self.num_classes, reduce))

    def unknown_reduction_error(self, estimator) -> EstimatorError | None:
        """The EstimatorError ``layer_mi`` raises for :data:`UNKNOWN_REDUCTION` (None:
        it raised none)."""
        def ask() -> EstimatorError | None:
            try:
                estimator.layer_mi(self.draws.small, self.draws.labels, self.num_classes,
                                   UNKNOWN_REDUCTION)
            except EstimatorError as exc:
                return exc
            return None
        return self._answer(estimator, "unknown_reduction", ask)

    def input_values(self, estimator) -> torch.Tensor | None:
        """``input_mi`` of the two tied channels: None, or held to the value contract."""
        values = self._answer(estimator, "input_mi", lambda: estimator.input_mi(self.draws.small))
        return None if values is None else _check_values(values, "input_mi", 2, self._device)

    def pair_values(self, estimator, problem: str) -> torch.Tensor:
        """``pair_mi`` of the ``"gaussian"`` or ``"relu_gaussian"`` pair (one call), held
        to its contract, as float64 on the CPU."""
        a, b = self.draws.pairs[problem]
        got = self._answer(estimator, ("pair_mi", problem), lambda: estimator.pair_mi(
            a.float().to(self.device), b.float().to(self.device)))
        what = (f"Gaussians rho={self.rhos}" if problem == "gaussian"
                else f"ReLU'd Gaussian rho={self.relu_rho}")
        return _check_pair_values(got, (a.shape[1], b.shape[1]), self._device, what)


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


def _check_pair_values(got: Any, shape: tuple[int, int], device: torch.device,
                       what: str) -> torch.Tensor:
    assert isinstance(got, torch.Tensor) and got.shape == shape, (
        f"pair_mi of (N, {shape[0]}) and (N, {shape[1]}) inputs must be a {shape} tensor "
        f"({what}), got {tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
    assert got.device.type == device.type, f"pair_mi must stay on the input's device ({what})"
    assert torch.isfinite(got).all() and (got >= 0).all(), (
        f"pair_mi {what}: {got.tolist()} is not finite and >= 0")
    return got.double().cpu()


def _or_default(problems: ConformanceProblems | None) -> ConformanceProblems:
    return ConformanceProblems() if problems is None else problems


def check_interface(estimator, problems: ConformanceProblems | None = None) -> None:
    """``name`` (a non-empty str), ``reductions`` (a set of str), ``label_mi``,
    ``input_mi``, ``layer_mi``, ``bias`` and ``describe`` exist."""
    for attr in ("name", "reductions", "label_mi", "input_mi", "layer_mi", "bias", "describe"):
        assert hasattr(estimator, attr), f"estimator lacks {attr!r} (interfaces.Estimator)"
    assert isinstance(estimator.name, str) and estimator.name, (
        f"estimator.name must be a non-empty str, got {estimator.name!r}")
    reductions = estimator.reductions
    assert isinstance(reductions, (set, frozenset)) and all(isinstance(r, str) for r in reductions), (
        f"estimator.reductions must be a set of str, got {reductions!r}")


def check_label_mi_contract(estimator, problems: ConformanceProblems | None = None) -> None:
    """``label_mi`` of the three label problems side by side: (3C,) float64 on the
    input's device, finite, >= 0; the input tensors are left unmodified."""
    problems = _or_default(problems)
    problems.label_values(estimator)
    assert not problems.label_mi_modified_inputs(estimator), (
        "label_mi modified its input tensors in place")


def check_independent(estimator, problems: ConformanceProblems | None = None) -> float:
    """Every channel independent of Y (ReLU'd, 1/8-grid, constant, Gaussian) is at most
    :meth:`ConformanceProblems.independent_limit`; returns the largest value."""
    problems = _or_default(problems)
    independent = problems.label_parts(estimator)[2]
    limit = problems.independent_limit(estimator)
    independent_max = independent.max().item()
    assert independent_max <= limit, (
        f"independent data (ReLU'd, 1/8-grid, constant, Gaussian channels) gave I = "
        f"{independent_max:.4f} nats > {limit:.4f} (values {independent.tolist()})")
    return independent_max


def check_uniform_shift(estimator, problems: ConformanceProblems | None = None) -> float:
    """Every uniform-shift channel within ``tolerance`` of the closed form; returns the
    largest error."""
    problems = _or_default(problems)
    return _check_close("uniform shift (closed form)", problems.label_parts(estimator)[0],
                        problems.uniform_shift_truth, problems.tolerance)


def check_relu_shift(estimator, problems: ConformanceProblems | None = None) -> float:
    """Every ReLU-shift channel (half the values exactly 0) within ``tolerance`` of the
    integral; returns the largest error."""
    problems = _or_default(problems)
    return _check_close("ReLU shift (half the values exactly 0)",
                        problems.label_parts(estimator)[1], problems.relu_shift_truth,
                        problems.tolerance)


def check_repeatable(estimator, problems: ConformanceProblems | None = None) -> None:
    """A second ``label_mi`` call on the two tied channels gives bitwise the same values
    (required on CPU only: :func:`estimator_checks` skips it on other devices)."""
    problems = _or_default(problems)
    part = problems.small_values(estimator)
    again = problems.small_values_again(estimator)
    assert torch.equal(again, part), (f"label_mi is not repeatable: {part.tolist()} "
                                      f"then {again.tolist()} on the same input")


def check_layer_mi_mean(estimator, problems: ConformanceProblems | None = None) -> None:
    """``layer_mi(reduce="mean")`` on the two tied channels is a LayerMI whose ``i_ty`` is
    the mean of ``label_mi`` and whose ``i_xt`` is None exactly when ``input_mi`` is
    None, else the mean of ``input_mi`` (to :data:`MEAN_MATCH` relative)."""
    problems = _or_default(problems)
    part = problems.small_values(estimator)
    layer = problems.layer(estimator, "mean")
    assert isinstance(layer, LayerMI), f"layer_mi must return a LayerMI, got {type(layer).__name__}"
    mean = part.mean().item()
    assert abs(layer.i_ty - mean) <= MEAN_MATCH * (1 + abs(mean)), (
        f"layer_mi(reduce='mean').i_ty = {layer.i_ty} is not the mean of label_mi ({mean})")
    input_values = problems.input_values(estimator)
    if input_values is None:
        assert layer.i_xt is None, (f"input_mi is None, so layer_mi(reduce='mean').i_xt must be "
                                    f"None, got {layer.i_xt}")
    else:
        x_mean = input_values.mean().item()
        assert layer.i_xt is not None and abs(layer.i_xt - x_mean) <= MEAN_MATCH * (1 + abs(x_mean)), (
            f"layer_mi(reduce='mean').i_xt = {layer.i_xt} is not the mean of input_mi ({x_mean})")


def check_layer_mi_reduction(estimator, problems: ConformanceProblems | None = None, *,
                             reduce: str) -> None:
    """``layer_mi(reduce=reduce)``, for a reduction the estimator declares besides
    ``mean``: a LayerMI with a finite ``i_ty`` >= 0 and an ``i_xt`` that is None or
    finite and >= 0."""
    out = _or_default(problems).layer(estimator, reduce)
    assert isinstance(out, LayerMI), (f"layer_mi(reduce={reduce!r}) must return a LayerMI, "
                                      f"got {type(out).__name__}")
    assert math.isfinite(out.i_ty) and out.i_ty >= 0, (
        f"layer_mi(reduce={reduce!r}).i_ty = {out.i_ty} is not finite and >= 0")
    assert out.i_xt is None or (math.isfinite(out.i_xt) and out.i_xt >= 0), (
        f"layer_mi(reduce={reduce!r}).i_xt = {out.i_xt} is not None or finite and >= 0")


def check_layer_mi_unknown(estimator, problems: ConformanceProblems | None = None) -> None:
    """An unknown reduction raises ``mi_probe.errors.EstimatorError`` naming it."""
    exc = _or_default(problems).unknown_reduction_error(estimator)
    if exc is None:
        raise AssertionError(f"layer_mi(reduce={UNKNOWN_REDUCTION!r}) must raise "
                             "mi_probe.errors.EstimatorError")
    assert UNKNOWN_REDUCTION in str(exc), (
        f"the EstimatorError for an unknown reduction must name it; got: {exc}")


def check_input_mi(estimator, problems: ConformanceProblems | None = None) -> None:
    """``input_mi`` of the two tied channels: None, or (2,) float64 on the device,
    finite, >= 0."""
    _or_default(problems).input_values(estimator)


def check_bias(estimator, problems: ConformanceProblems | None = None) -> None:
    """``bias(n, m)`` and ``bias(4n, m)`` are finite and >= 0."""
    problems = _or_default(problems)
    m = problems.num_classes
    for size in (problems.n, 4 * problems.n):
        b = float(estimator.bias(size, m))
        assert math.isfinite(b) and b >= 0, f"bias({size}, {m}) = {b} is not finite and >= 0"


def check_describe(estimator, problems: ConformanceProblems | None = None) -> None:
    """``describe()`` is a dict with str keys that ``json.dumps`` accepts."""
    facts = estimator.describe()
    assert isinstance(facts, dict) and all(isinstance(k, str) for k in facts), (
        f"describe() must return a dict with str keys, got {facts!r}")
    try:
        json.dumps(facts)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"describe() must be JSON-able: {exc}") from exc


def check_gaussian(estimator, problems: ConformanceProblems | None = None
                   ) -> dict[float, tuple[float, float]]:
    """``pair_mi(a (N, 1), b (N, len(rhos)))`` of correlated Gaussians is (1, len(rhos)),
    each within ``tolerance`` of −½ ln(1 − ρ²); returns rho -> (estimate, truth)."""
    problems = _or_default(problems)
    if not problems.rhos:
        raise ValueError("check_gaussian needs rhos; rhos=() skips it")
    got = problems.pair_values(estimator, "gaussian")[0]
    gaussian = {rho: (float(got[j]), gaussian_mi(rho)) for j, rho in enumerate(problems.rhos)}
    for rho, (e, t) in gaussian.items():
        assert abs(e - t) <= problems.tolerance, (
            f"Gaussian rho={rho}: {e:.4f} vs {t:.4f} nats (tolerance {problems.tolerance})")
    return gaussian


def check_relu_gaussian(estimator, problems: ConformanceProblems | None = None
                        ) -> tuple[float, float]:
    """``pair_mi`` of the ReLU'd Gaussian pair (atoms at 0) is (1, 1), within
    ``tolerance`` of the integral; returns (estimate, truth)."""
    problems = _or_default(problems)
    if problems.relu_rho is None:
        raise ValueError("check_relu_gaussian needs relu_rho; relu_rho=None skips it")
    got = float(problems.pair_values(estimator, "relu_gaussian")[0, 0])
    truth = problems.relu_gaussian_truth
    assert abs(got - truth) <= problems.tolerance, (
        f"ReLU'd Gaussian rho={problems.relu_rho} (atoms at 0): {got:.4f} vs {truth:.4f} "
        f"nats (tolerance {problems.tolerance})")
    return got, truth


# ------------------------------------------------------------- running the checks


@dataclass(frozen=True, eq=False)
class NamedCheck:
    """One check bound to its problems: ``check(estimator)`` runs it and returns what it
    measured; an AssertionError it raises names the check first."""

    name: str
    function: Callable[..., Any] = field(repr=False)
    problems: ConformanceProblems = field(repr=False)

    def __call__(self, estimator) -> Any:
        try:
            return self.function(estimator, self.problems)
        except AssertionError as exc:
            raise AssertionError(f"conformance check {self.name!r} failed: {exc}"
                                 ).with_traceback(exc.__traceback__) from None
        except Exception as exc:
            if hasattr(exc, "add_note"):  # Python >= 3.11
                exc.add_note(f"in conformance check {self.name!r}")
            raise


def _declared_reductions(estimator) -> list[str]:
    """The reductions besides ``mean`` that ``estimator`` declares (none when
    ``reductions`` is malformed: :func:`check_interface` fails on that)."""
    reductions = getattr(estimator, "reductions", None)
    if not isinstance(reductions, (set, frozenset)):
        return []
    return sorted(r for r in reductions - {"mean"} if isinstance(r, str))


def _plan(estimator, problems: ConformanceProblems
          ) -> list[tuple[str, Callable[..., Any], str | None]]:
    """Every check, in the order of ``ConformanceReport.checked``, with the reason it
    does not apply to ``estimator`` under ``problems`` (None: it applies)."""
    device = problems._device.type
    off_cpu = None if device == "cpu" else (
        f"bitwise repeatability is only required on CPU, not {device}")
    no_pairs = None if isinstance(estimator, PairMI) else "the estimator has no pair_mi"
    return [
        ("interface", check_interface, None),
        ("label_mi_contract", check_label_mi_contract, None),
        ("independent", check_independent, None),
        ("uniform_shift", check_uniform_shift, None),
        ("relu_shift", check_relu_shift, None),
        ("repeatable", check_repeatable, off_cpu),
        ("layer_mi_mean", check_layer_mi_mean, None),
        *((f"layer_mi_{r}", partial(check_layer_mi_reduction, reduce=r), None)
          for r in _declared_reductions(estimator)),
        ("layer_mi_unknown", check_layer_mi_unknown, None),
        ("input_mi", check_input_mi, None),
        ("bias", check_bias, None),
        ("describe", check_describe, None),
        ("gaussian", check_gaussian, no_pairs or (None if problems.rhos else "rhos=() was passed")),
        ("relu_gaussian", check_relu_gaussian,
         no_pairs or (None if problems.relu_rho is not None else "relu_rho=None was passed")),
    ]


def _resolve(problems: ConformanceProblems | None, options: dict[str, Any]) -> ConformanceProblems:
    if problems is not None and options:
        raise TypeError(f"pass a ConformanceProblems or its options, not both: {sorted(options)}")
    return problems if problems is not None else ConformanceProblems(**options)


def estimator_checks(estimator, problems: ConformanceProblems | None = None, **options
                     ) -> Iterator[tuple[str, NamedCheck]]:
    """Yield ``(name, check)`` for every check that applies to ``estimator``, in the
    order of ``ConformanceReport.checked``; ``check(estimator)`` runs one. ``options``
    are :class:`ConformanceProblems`' (the keyword arguments of :func:`check_estimator`);
    :func:`skipped_checks` lists the checks that do not apply, and why."""
    problems = _resolve(problems, options)
    for name, function, reason in _plan(estimator, problems):
        if reason is None:
            yield name, NamedCheck(name, function, problems)


def skipped_checks(estimator, problems: ConformanceProblems | None = None, **options
                   ) -> dict[str, str]:
    """Check name -> why it does not apply to ``estimator`` (no ``pair_mi``, ``rhos=()``,
    ``relu_rho=None``, repeatability off the CPU), never passed over silently."""
    return {name: reason for name, _, reason in _plan(estimator, _resolve(problems, options))
            if reason is not None}


def _label(estimator) -> str:
    name = getattr(estimator, "name", None)
    return name if isinstance(name, str) and name else type(estimator).__name__


def parametrize_with_checks(estimators: Iterable[Any], problems: ConformanceProblems | None = None,
                            **options):
    """A ``pytest.mark.parametrize("estimator, check", ...)`` decorator with one item per
    estimator and check, with id ``<estimator name>-<check name>``; checks that do not
    apply are items marked skip with the reason, so the test report shows them::

        @parametrize_with_checks([MyEstimator(MyParams())])
        def test_conformance(estimator, check):
            check(estimator)

    ``options`` (or ``problems``) as for :func:`estimator_checks`. The items share one
    :class:`ConformanceProblems`, so each estimator answers each problem once."""
    import pytest  # here: mi_probe.testing is imported outside test runs too

    problems = _resolve(problems, options)
    params = []
    for estimator in estimators:
        for name, function, reason in _plan(estimator, problems):
            marks = () if reason is None else pytest.mark.skip(reason=reason)
            params.append(pytest.param(estimator, NamedCheck(name, function, problems),
                                       id=f"{_label(estimator)}-{name}", marks=marks))
    return pytest.mark.parametrize("estimator, check", params)


def run_checks(estimator, problems: ConformanceProblems | None = None) -> ConformanceReport:
    """Run every check that applies to ``estimator``, in order, stopping at the first
    failure (an AssertionError naming the check); else return the
    :class:`ConformanceReport`. Answers already memoised in ``problems`` are reused."""
    problems = _or_default(problems)
    checked: list[str] = []
    results: dict[str, Any] = {}
    for name, check in estimator_checks(estimator, problems):
        results[name] = check(estimator)
        checked.append(name)
    errors = {"uniform_shift": results["uniform_shift"], "relu_shift": results["relu_shift"]}
    gaussian: dict[float, tuple[float, float]] = results.get("gaussian", {})
    if gaussian:
        errors["gaussian"] = max(abs(e - t) for e, t in gaussian.values())
    relu_pair: tuple[float, float] | None = results.get("relu_gaussian")
    if relu_pair is not None:
        errors["relu_gaussian"] = abs(relu_pair[0] - relu_pair[1])
    shift, tied, _ = problems.label_parts(estimator)
    return ConformanceReport(
        independent_max=results["independent"], closed_form_estimate=shift.mean().item(),
        closed_form_truth=problems.uniform_shift_truth, tied_estimate=tied.mean().item(),
        tied_truth=problems.relu_shift_truth, gaussian=gaussian, relu_gaussian=relu_pair,
        errors=errors, checked=checked, skipped=skipped_checks(estimator, problems))


def check_estimator(estimator, *, n: int = 4000, channels: int = 4, num_classes: int = 9,
                    tolerance: float = 0.1, independent_tolerance: float | None = None,
                    device: str | torch.device = "cpu", seed: int = 0,
                    rhos: tuple[float, ...] = (0.5, 0.75, 0.9),
                    relu_rho: float | None = 0.9) -> ConformanceReport:
    """Run every conformance check on ``estimator``; raise AssertionError naming the
    first check that fails (``conformance check 'relu_shift' failed: ...``), else return
    a :class:`ConformanceReport`. :func:`run_checks` on a
    ``ConformanceProblems(**arguments)``; in pytest, :func:`parametrize_with_checks`
    makes each check its own item.

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

    The checks (the names in ``report.checked``, in order; each is ``check_<name>``):

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
    8. ``layer_mi_<r>`` for each other reduction r in ``estimator.reductions``
       (``check_layer_mi_reduction``): a LayerMI with a finite ``i_ty`` ≥ 0 and an
       ``i_xt`` that is None or finite and ≥ 0;
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
    return run_checks(estimator, ConformanceProblems(
        n=n, channels=channels, num_classes=num_classes, tolerance=tolerance,
        independent_tolerance=independent_tolerance, device=device, seed=seed, rhos=rhos,
        relu_rho=relu_rho))
