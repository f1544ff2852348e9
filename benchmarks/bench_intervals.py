"""Coverage of every estimator's confidence intervals on problems with known MI.

For each estimator with the ``Intervals`` ability (and ``JointMIIntervals``), over fixed
seeds: the nominal ``level`` interval of

* per-channel label MI on the conformance problems of ``mi_probe.testing`` (uniform
  shift, closed form; ReLU shift, numerical integration), C independent channels per
  seed, and the interval of their mean (one per seed; the truth is the same value);
* joint MI on correlated Gaussians (1v1 at ρ = 0.75, and 3v3 with a dense correlation
  0.5, as in bmi's ``multinormal-dense``), truth −½ ln det of the correlation structure.

Coverage is the share of intervals that contain the truth; the mean width and the mean
error of the estimate are reported beside it, so that a low coverage can be read (an
interval of a biased estimate is narrow around the wrong value). Writes
benchmarks/results/intervals.json and prints a Markdown table.

    .venv/bin/python benchmarks/bench_intervals.py [--seeds 100] [--n 2000]
        [--estimators histogram ksg mine infonce] [--neural-seeds 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mi_probe._core.plugins import get_plugin_manager  # noqa: E402
from mi_probe.functional.intervals import coverage  # noqa: E402
from mi_probe.interfaces import Intervals, JointMIIntervals  # noqa: E402
from mi_probe.testing.estimators import (closed_form_label_mi, relu_shift_label_mi,  # noqa: E402
                                         relu_shift_sample, uniform_shift_sample)

NEURAL = {"mine", "infonce", "lmi"}


def dense_gaussian(n: int, dx: int, dy: int, corr: float, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """bmi's multinormal-dense: every off-diagonal correlation ``corr``; truth in nats."""
    d = dx + dy
    cov = np.full((d, d), corr)
    np.fill_diagonal(cov, 1.0)
    truth = 0.5 * (np.linalg.slogdet(cov[:dx, :dx])[1] + np.linalg.slogdet(cov[dx:, dx:])[1]
                   - np.linalg.slogdet(cov)[1])
    chol = torch.from_numpy(np.linalg.cholesky(cov))
    z = torch.randn(n, d, generator=gen, dtype=torch.float64) @ chol.T
    return z[:, :dx], z[:, dx:], float(truth)


def build(kind: str, params: dict) -> object:
    registry = get_plugin_manager().registry
    return registry.get("estimators", kind).factory(
        registry.validate_params("estimators", {"kind": kind, **params}))


def label_rows(est, kind: str, seeds: int, n: int, m: int, channels: int, level: float):
    rows = []
    problems = {"uniform_shift": (uniform_shift_sample, closed_form_label_mi(m)),
                "relu_shift": (relu_shift_sample, relu_shift_label_mi(m))}
    for name, (sample, truth) in problems.items():
        lows, highs, est_c, mlow, mhigh, means, took = [], [], [], [], [], [], 0.0
        for seed in range(seeds):
            acts, labels = sample(n, m, channels, torch.Generator().manual_seed(seed))
            start = time.perf_counter()
            chan, mean = est.label_mi_interval(acts, labels, m, level, seed)
            took += time.perf_counter() - start
            lows.append(chan.low), highs.append(chan.high), est_c.append(chan.estimate)
            mlow.append(mean.low), mhigh.append(mean.high), means.append(mean.estimate)
        low, high, estimate = torch.cat(lows), torch.cat(highs), torch.cat(est_c)
        ml, mh = torch.stack(mlow), torch.stack(mhigh)
        for scope, (lo, hi, e) in {"channel": (low, high, estimate),
                                   "channel_mean": (ml, mh, torch.stack(means))}.items():
            rows.append({"estimator": kind, "method": chan.method, "task": f"{name} ({scope})",
                         "truth": truth, "n": n, "intervals": int(lo.numel()),
                         "coverage": coverage(lo, hi, truth),
                         "mean_width": float((hi - lo).mean()),
                         "mean_error": float((e - truth).mean()),
                         "seconds_per_call": took / seeds})
    return rows


def joint_rows(est, kind: str, seeds: int, n: int, level: float):
    rows = []
    for name, (dx, dy, corr) in {"gaussian-1v1-0.75": (1, 1, 0.75),
                                 "multinormal-dense-3-3-0.5": (3, 3, 0.5)}.items():
        lows, highs, ests, truth, took = [], [], [], 0.0, 0.0
        for seed in range(seeds):
            x, y, truth = dense_gaussian(n, dx, dy, corr, torch.Generator().manual_seed(seed))
            start = time.perf_counter()
            try:
                iv = est.joint_mi_interval(x, y, level, seed)
            except Exception as err:  # e.g. histogram beyond its max_joint_dims
                rows.append({"estimator": kind, "task": name, "skipped": str(err)})
                break
            took += time.perf_counter() - start
            lows.append(iv.low), highs.append(iv.high), ests.append(iv.estimate)
        else:
            lo, hi, e = torch.stack(lows), torch.stack(highs), torch.stack(ests)
            rows.append({"estimator": kind, "method": iv.method, "task": name, "truth": truth,
                         "n": n, "intervals": seeds, "coverage": coverage(lo, hi, truth),
                         "mean_width": float((hi - lo).mean()),
                         "mean_error": float((e - truth).mean()),
                         "seconds_per_call": took / seeds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--neural-seeds", type=int, default=20)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--classes", type=int, default=9)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--estimators", nargs="+", default=["histogram", "ksg", "mine", "infonce"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/intervals.json")
    args = parser.parse_args()
    rows = []
    for kind in args.estimators:
        est = build(kind, {})
        seeds = args.neural_seeds if kind in NEURAL else args.seeds
        if isinstance(est, Intervals):
            rows += label_rows(est, kind, seeds, args.n, args.classes, args.channels, args.level)
        else:
            rows.append({"estimator": kind, "task": "label problems", "skipped": "no Intervals"})
        if isinstance(est, JointMIIntervals):
            rows += joint_rows(est, kind, seeds, args.n, args.level)
        print(f"{kind}: done", file=sys.stderr, flush=True)
    facts = {"python": platform.python_version(), "torch": torch.__version__,
             "threads": torch.get_num_threads(), "level": args.level, "n": args.n,
             "seeds": args.seeds, "neural_seeds": args.neural_seeds,
             "channels": args.channels, "classes": args.classes}
    args.out.write_text(json.dumps({"facts": facts, "rows": rows}, indent=1))
    print(f"| estimator | method | task | truth | intervals | coverage | mean width | mean error |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['estimator']} | | {r['task']} | | | skipped: {r['skipped']} | | |")
            continue
        print(f"| {r['estimator']} | {r['method']} | {r['task']} | {r['truth']:.4f} | "
              f"{r['intervals']} | {r['coverage']:.3f} | {r['mean_width']:.4f} | "
              f"{r['mean_error']:+.4f} |")


if __name__ == "__main__":
    main()
