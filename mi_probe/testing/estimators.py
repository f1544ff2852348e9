"""A conformance suite any estimator plugin can run in its own tests.

``check_estimator(est)`` asserts that the estimator returns finite, non-negative
per-channel values of the right shape on the input's device, about zero on independent
data, and the closed-form value on a discrete-label / continuous-value problem:
Y uniform on m classes, T | Y ~ U(Y, Y + 2), for which
I(T;Y) = ln m − (m − 1) ln 2 / m (1.6788 nats for m = 10). When the estimator offers
``pair_mi(a, b)`` it is also checked on correlated Gaussians, I = −½ ln(1 − ρ²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def closed_form_label_mi(m: int) -> float:
    """I(T;Y) in nats for Y ~ U{0..m-1}, T | Y ~ U(Y, Y + 2)."""
    return math.log(m) - (m - 1) * math.log(2) / m


def gaussian_mi(rho: float) -> float:
    """I(A;B) in nats of a bivariate normal with correlation ``rho``."""
    return -0.5 * math.log(1 - rho * rho)


def uniform_shift_sample(n: int, m: int, channels: int, generator: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) values and (N,) labels of the closed-form problem (channels independent
    given Y)."""
    labels = torch.randint(0, m, (n,), generator=generator)
    acts = labels[:, None].double() + 2 * torch.rand(n, channels, generator=generator,
                                                     dtype=torch.float64)
    return acts.float(), labels


@dataclass
class ConformanceReport:
    independent_max: float
    closed_form_estimate: float
    closed_form_truth: float
    gaussian: dict[float, tuple[float, float]]


def check_estimator(estimator, *, n: int = 4000, channels: int = 4, num_classes: int = 10,
                    tolerance: float = 0.1, independent_tolerance: float | None = None,
                    device: str | torch.device = "cpu", seed: int = 0,
                    rhos: tuple[float, ...] = (0.5, 0.75, 0.9)) -> ConformanceReport:
    """Run the conformance checks; raises AssertionError naming the failed property.

    ``tolerance`` is the absolute error (nats) allowed against closed forms;
    ``independent_tolerance`` (default: tolerance / 2 + the estimator's stated bias)
    bounds the estimate on independent data.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    for attr in ("name", "label_mi", "input_mi", "layer_mi", "bias", "describe"):
        assert hasattr(estimator, attr), f"estimator lacks {attr!r} (interfaces.Estimator)"

    # shape, dtype, finiteness on independent data
    acts = torch.randn(n, channels, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (n,), generator=gen).to(device)
    values = estimator.label_mi(acts, labels, num_classes)
    assert isinstance(values, torch.Tensor), "label_mi must return a tensor"
    assert values.shape == (channels,), f"label_mi shape {tuple(values.shape)} != ({channels},)"
    assert values.device.type == device.type, "label_mi must stay on the input's device"
    assert torch.isfinite(values).all(), f"label_mi returned non-finite values {values}"
    assert (values >= 0).all(), f"label_mi returned negative values {values}"
    bias = float(estimator.bias(n, num_classes))
    limit = independent_tolerance if independent_tolerance is not None else tolerance / 2 + bias
    independent_max = values.max().item()
    assert independent_max <= limit, (f"independent data gave I = {independent_max:.4f} nats "
                                      f"> {limit:.4f}")

    # closed form
    acts, labels = uniform_shift_sample(n, num_classes, channels, gen)
    estimate = estimator.label_mi(acts.to(device), labels.to(device), num_classes)
    truth = closed_form_label_mi(num_classes)
    err = (estimate - truth).abs().max().item()
    assert err <= tolerance, (f"closed-form check: estimates {estimate.tolist()} vs "
                              f"{truth:.4f} nats (tolerance {tolerance})")

    gaussian: dict[float, tuple[float, float]] = {}
    if hasattr(estimator, "pair_mi"):
        for rho in rhos:
            z = torch.randn(n, 2, generator=gen, dtype=torch.float64)
            a = z[:, :1]
            b = rho * z[:, :1] + math.sqrt(1 - rho * rho) * z[:, 1:]
            got = float(estimator.pair_mi(a.float().to(device), b.float().to(device)).reshape(-1)[0])
            gaussian[rho] = (got, gaussian_mi(rho))
            assert abs(got - gaussian_mi(rho)) <= tolerance, (
                f"Gaussian rho={rho}: {got:.4f} vs {gaussian_mi(rho):.4f} nats")
    return ConformanceReport(independent_max, float(estimate.mean()), truth, gaussian)
