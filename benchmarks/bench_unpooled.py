"""LMI against KSG and InfoNCE on high-dimensional Gaussians with known MI (issue 24).

All three are the estimators' ``joint_mi`` (``interfaces.JointMI``), called in one
process on the same samples:

* ``lmi``: this repository's ``mi-probe-lmi`` (LMI's paired autoencoder, then KSG on
  the held-out codes) with latentmi's defaults except a first hidden width of 128
  (latentmi: 1024, or 2**floor(log2 D) above 2048) and lr 1e-3 (latentmi: 1e-4), so
  that a fit takes seconds, not minutes, on one CPU thread;
* ``ksg``: ``mi-probe-ksg``'s KSG estimator 1 on the raw vectors (k = 3, max-norm);
* ``infonce``: ``mi-probe-mine``'s InfoNCE bound on the raw vectors (its defaults).

Tasks (N = 2,000 samples each, one draw, seed 0):

* LMI's Gaussian grid (``analysis/B_Gaussian_grid.ipynb``, ``generate_gaussian_dataset``):
  ``intrinsic`` pairs (X_i, Y_i) with covariance [[6, rho], [rho, 3.5]], then X is the
  intrinsic X_i, ``ambient - intrinsic - nuisance`` copies of randomly chosen X_i and
  ``nuisance`` independent N(0, 1) columns (Y the same), so I(X;Y) = intrinsic *
  -1/2 ln(1 - rho^2 / 21). True MI 1 bit (ln 2 nats); ``nuisance`` 0 (copies only) and
  half the ambient dimensions;
* bmi's ``multinormal-dense-25-25-0.5``, ``multinormal-dense-50-50-0.5`` (covariance
  0.5 I + 0.5 * ones over all dx + dy coordinates) and ``multinormal-sparse-25-25-2-2.0``
  (X_i = 2 Z_i + E_i, Y_i = 2 Z_i + F_i for i < 2, else independent: bmi's latent
  variable model with alpha = beta = 0, lambda = eta = 2), sampled with numpy; true MI
  from the Gaussian closed form 1/2 (ln det S_xx + ln det S_yy - ln det S).

    .venv/bin/python benchmarks/bench_unpooled.py [--budget 780] [--threads 1] [--out PATH]

Grid tasks are run in order of ambient dimension until ``--budget`` seconds have passed
(the rest are listed as skipped). Prints a table and writes
benchmarks/results/unpooled.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from provenance import commit  # noqa: E402  (benchmarks/provenance.py)

N = 2000
LMI_SETTINGS = {"hidden": 128, "lr": 1e-3}


def grid_task(ambient: int, intrinsic: int, nuisance: int, mi_bits: float, n: int,
              seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """LMI's ``generate_gaussian_dataset`` with rho set from the MI (nats returned)."""
    rng = np.random.default_rng(seed)
    rho = math.sqrt(6 * 3.5) * math.sqrt(1 - 2 ** (-2 * mi_bits / intrinsic))
    cov = np.array([[6.0, rho], [rho, 3.5]])
    pts = np.hstack([rng.multivariate_normal([0, 0], cov, size=n) for _ in range(intrinsic)])
    xs, ys = pts[:, 0::2], pts[:, 1::2]
    copies = ambient - intrinsic - nuisance
    xr = pts[:, rng.choice(range(0, 2 * intrinsic, 2), size=copies)]
    yr = pts[:, rng.choice(range(1, 2 * intrinsic, 2), size=copies)]
    x = np.hstack([xs, xr, rng.normal(size=(n, nuisance))])
    y = np.hstack([ys, yr, rng.normal(size=(n, nuisance))])
    true = -0.5 * math.log(1 - rho ** 2 / (6 * 3.5)) * intrinsic
    return x, y, true


def gaussian_mi(cov: np.ndarray, dx: int) -> float:
    """I(X;Y) in nats of a Gaussian with covariance ``cov``, X its first ``dx`` coordinates."""
    logdet = lambda m: np.linalg.slogdet(m)[1]  # noqa: E731
    return 0.5 * (logdet(cov[:dx, :dx]) + logdet(cov[dx:, dx:]) - logdet(cov))


def dense_cov(dx: int, dy: int, off: float) -> np.ndarray:
    return np.eye(dx + dy) * (1 - off) + off


def sparse_cov(dx: int, dy: int, k: int, strength: float) -> np.ndarray:
    """bmi's GaussianLVMParametrization(alpha=0, beta=0, lambd=eta=strength, eps=1)."""
    mixing = np.zeros((dx + dy, k + dx + dy + (dx - k) + (dy - k)))
    for i in range(dx):
        if i < k:
            mixing[i, i] = strength
        else:
            mixing[i, k + dx + dy + (i - k)] = strength
        mixing[i, k + i] = 1.0
    for j in range(dy):
        row = dx + j
        if j < k:
            mixing[row, j] = strength
        else:
            mixing[row, k + dx + dy + (dx - k) + (j - k)] = strength
        mixing[row, k + dx + j] = 1.0
    return mixing @ mixing.T


def bmi_task(cov: np.ndarray, dx: int, n: int, seed: int
             ) -> tuple[np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal(np.zeros(cov.shape[0]), cov, size=n)
    return z[:, :dx], z[:, dx:], gaussian_mi(cov, dx)


def estimators() -> tuple[dict[str, Callable[[torch.Tensor, torch.Tensor], float]],
                          dict[str, str]]:
    """name -> joint_mi, and the estimators that could not be loaded -> why."""
    out: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {}
    missing: dict[str, str] = {}
    from mi_probe_lmi import LMIEstimator, LMIParams

    out["lmi"] = LMIEstimator(LMIParams(**LMI_SETTINGS)).joint_mi
    try:
        from mi_probe_ksg import KSGEstimator, KSGParams

        ksg = KSGEstimator(KSGParams())
        if not hasattr(ksg, "joint_mi"):
            raise AttributeError("KSGEstimator has no joint_mi")
        out["ksg"] = ksg.joint_mi
    except (ImportError, AttributeError) as exc:
        missing["ksg"] = f"{type(exc).__name__}: {exc}"
    try:
        from mi_probe_mine.plugin import InfoNCEEstimator, InfoNCEParams

        nce = InfoNCEEstimator(InfoNCEParams())
        if not hasattr(nce, "joint_mi"):
            raise AttributeError("InfoNCEEstimator has no joint_mi")
        out["infonce"] = nce.joint_mi
    except (ImportError, AttributeError) as exc:
        missing["infonce"] = f"{type(exc).__name__}: {exc}"
    return out, missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=780.0,
                        help="seconds after which no further grid task is started")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "unpooled.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ests, missing = estimators()
    tasks: list[tuple[str, dict[str, Any], Callable[[], tuple[np.ndarray, np.ndarray, float]]]] = []
    for dx, dy, off in ((25, 25, 0.5), (50, 50, 0.5)):
        name = f"multinormal-dense-{dx}-{dy}-{off}"
        tasks.append((name, {"family": "bmi", "dims": dx + dy},
                      lambda dx=dx, dy=dy, off=off: bmi_task(dense_cov(dx, dy, off), dx, N, 0)))
    tasks.append(("multinormal-sparse-25-25-2-2.0", {"family": "bmi", "dims": 50},
                  lambda: bmi_task(sparse_cov(25, 25, 2, 2.0), 25, N, 0)))
    for ambient in (10, 100, 1000, 5000):
        for nuisance in (0, ambient // 2):
            if nuisance and ambient > 1000:
                continue
            name = f"grid-ambient{ambient}-intrinsic1-nuisance{nuisance}-1bit"
            tasks.append((name, {"family": "lmi_grid", "dims": 2 * ambient, "ambient": ambient,
                                 "intrinsic": 1, "nuisance": nuisance},
                          lambda a=ambient, u=nuisance: grid_task(a, 1, u, 1.0, N, 0)))
    rows, skipped = [], []
    start = time.perf_counter()
    for name, info, make in tasks:
        if info["family"] == "lmi_grid" and time.perf_counter() - start > args.budget:
            skipped.append(name)
            continue
        x, y, true = make()
        xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
        row: dict[str, Any] = {"task": name, **info, "n": N, "true_mi": true}
        for est_name, joint_mi in ests.items():
            t0 = time.perf_counter()
            value = float(joint_mi(xt, yt))
            row[est_name] = {"estimate": value, "error": value - true,
                             "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"{name:48s} true {true:6.3f}  " + "  ".join(
            f"{k} {row[k]['estimate']:6.3f} ({row[k]['seconds']:5.1f}s)" for k in ests),
            flush=True)
    result = {
        "benchmark": "bench_unpooled", "commit": commit(), "n": N, "threads": args.threads,
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "lmi_settings": {**LMI_SETTINGS, "note": "latentmi defaults otherwise: latent 8, "
                         "epochs 300, patience 30, batch 512, validation_split 0.5, k 3"},
        "ksg_settings": "mi-probe-ksg defaults (k 3, max-norm, tie noise)",
        "infonce_settings": "mi-probe-mine InfoNCE defaults (joint_steps, joint_lr)",
        "missing_estimators": missing, "skipped_tasks": skipped,
        "wall_seconds": time.perf_counter() - start, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
