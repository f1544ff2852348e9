"""Measurements behind the README's "Joint MI" and "Intervals" sections (not a test).

    python plugins/mi-probe-mine/scripts/measure_joint_intervals.py grid
    python plugins/mi-probe-mine/scripts/measure_joint_intervals.py joint --tasks 1v1-0.5,1v1-0.75 --seeds 30
    python plugins/mi-probe-mine/scripts/measure_joint_intervals.py label --seeds 20

``grid``: joint_mi over training budgets on four Gaussian tasks, N = 5000, 3 seeds.
``joint``: coverage of joint_mi_interval's nominal 95% interval (default params, N =
5000) of the true MI and of the trained critic's own bound (the critic evaluated on
100,000 fresh rows, standardised with the same training statistics).
``label``: coverage of label_mi_interval's per-channel and channel-mean intervals on the
ReLU shift and the uniform shift (9 classes, N = 4000, 4 channels).
Seeds s = 0..S-1 set the data (offset), the critic seed and the interval seed. Torch
runs on one thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mi_probe.testing import (closed_form_label_mi, relu_shift_label_mi, relu_shift_sample,
                              uniform_shift_sample)
from mi_probe_mine import neural
from mi_probe_mine.plugin import InfoNCEEstimator, InfoNCEParams, MineEstimator, MineParams

KINDS = {"mine": (MineEstimator, MineParams), "infonce": (InfoNCEEstimator, InfoNCEParams)}
#: name -> (dx, dy, rho, dense)
TASKS = {"1v1-0.5": (1, 1, 0.5, False), "1v1-0.75": (1, 1, 0.75, False),
         "1v1-0.9": (1, 1, 0.9, False), "3v3-0.6": (3, 3, 0.6, False),
         "5v5dense-0.5": (5, 5, 0.5, True), "25v25-0.5": (25, 25, 0.5, False)}
FRESH = 100_000


def gaussian(n: int, dx: int, dy: int, rho: float, seed: int, dense: bool = False):
    """x (n, dx), y (n, dy) and the closed form ½ ln(det Σx det Σy / det Σ). Sparse:
    corr(x_i, y_i) = rho for i < min(dx, dy), all else independent. Dense: every
    x_i-y_j correlation rho, 0.5 within x and within y."""
    d = dx + dy
    cov = torch.eye(d, dtype=torch.float64)
    if dense:
        cov[:dx, dx:] = rho
        cov[dx:, :dx] = rho
        cov[:dx, :dx] = 0.5
        cov[dx:, dx:] = 0.5
        cov.fill_diagonal_(1.0)
    else:
        for i in range(min(dx, dy)):
            cov[i, dx + i] = cov[dx + i, i] = rho
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    truth = 0.5 * (torch.logdet(cov[:dx, :dx]) + torch.logdet(cov[dx:, dx:])
                   - torch.logdet(cov)).item()
    return z[:, :dx].float(), z[:, dx:].float(), truth


def grid() -> None:
    configs = [(300, 1e-3, .25), (600, 1e-3, .25), (1000, 1e-3, .25), (600, 3e-3, .25),
               (1000, 3e-3, .25), (1000, 1e-3, .5), (2000, 1e-3, .25)]
    seeds = [11, 12, 13]
    for name in ("1v1-0.75", "3v3-0.6", "5v5dense-0.5", "25v25-0.5"):
        dx, dy, rho, dense = TASKS[name]
        data = [gaussian(5000, dx, dy, rho, s, dense) for s in seeds]
        truth = data[0][2]
        for bound in ("dv", "infonce"):
            for steps, lr, evf in configs:
                vals = [neural.joint_mi(x, y, neural.TrainConfig(
                    bound=bound, steps=steps, lr=lr, eval_fraction=evf, seed=s))[0].item()
                    for (x, y, _), s in zip(data, seeds)]
                mean = statistics.mean(vals)
                print(f"{name} truth={truth:.3f} {bound:8s} steps={steps:5d} lr={lr:g} "
                      f"eval_fraction={evf}: mean {mean:.3f} err {mean - truth:+.3f} "
                      f"[{' '.join(f'{v:.3f}' for v in vals)}]", flush=True)


def critic_bound(est, x, y, fresh_x, fresh_y, params) -> float:
    """The trained critic's bound on fresh rows: its population value, nearly."""
    cfg = est.joint_config
    plan = neural._pair_plan(x.shape[0], cfg, x.shape[1], y.shape[1])
    tr = plan.train_idx

    def std(a: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        ref = a.double()[tr]
        return ((f.double() - ref.mean(0)) / ref.std(0)).float()[None]

    fx, fy = std(x, fresh_x), std(y, fresh_y)
    m = fresh_x.shape[0]
    gen = torch.Generator().manual_seed(999)
    with torch.no_grad():
        if cfg.bound == "dv":
            joint = neural._mlp_blocks(params, torch.cat([fx, fy], 2)).squeeze(2).mean(1)
            marg = torch.cat([neural._mlp_blocks(params, torch.cat(
                [fx, fy[:, torch.randperm(m, generator=gen)]], 2)).squeeze(2)
                for _ in range(4)], 1)
            return (joint - neural._log_mean_exp(marg, (1,), marg.shape[1])).item()
        g, h = params[:len(params) // 2], params[len(params) // 2:]
        gx, hz = neural._mlp_blocks(g, fx), neural._mlp_blocks(h, fy)
        orders = torch.stack([torch.randperm(m, generator=gen) for _ in range(2)])
        return neural.holdout_infonce(
            lambda idx: neural.infonce_pair_terms(gx[:, idx], hz[:, idx]), orders,
            plan.batch).item()


def joint(tasks: list[str], seeds: int) -> None:
    trained: list[list[torch.Tensor]] = []
    real_train = neural._train

    def keep(params, cfg, step_loss):  # the trained critic, for critic_bound
        trained.append(params)
        return real_train(params, cfg, step_loss)

    neural._train = keep
    for name in tasks:
        dx, dy, rho, dense = TASKS[name]
        for kind, (est_cls, params_cls) in KINDS.items():
            rows = []
            for s in range(seeds):
                x, y, truth = gaussian(5000 + FRESH, dx, dy, rho, 1000 + s, dense)
                est = est_cls(params_cls(seed=s))
                trained.clear()
                iv = est.joint_mi_interval(x[:5000], y[:5000], 0.95, s)
                pop = critic_bound(est, x[:5000], y[:5000], x[5000:], y[5000:], trained[-1])
                rows.append((iv.estimate.item(), iv.low.item(), iv.high.item(), pop, truth))
            n = len(rows)
            est_mean = statistics.mean(r[0] for r in rows)
            print(f"{name} {kind}: truth {truth:.4f}, {n} seeds: coverage of the truth "
                  f"{sum(r[1] <= r[4] <= r[2] for r in rows) / n:.2f}, of the critic's bound "
                  f"{sum(r[1] <= r[3] <= r[2] for r in rows) / n:.2f}; mean estimate "
                  f"{est_mean:.4f} (sd {statistics.stdev(r[0] for r in rows):.4f}), mean "
                  f"critic bound {statistics.mean(r[3] for r in rows):.4f}, mean half-width "
                  f"{statistics.mean((r[2] - r[1]) / 2 for r in rows):.4f}", flush=True)
    neural._train = real_train


def label(seeds: int) -> None:
    problems = {"relu_shift": (relu_shift_sample, relu_shift_label_mi(9)),
                "uniform_shift": (uniform_shift_sample, closed_form_label_mi(9))}
    budgets = {"600 steps lr 3e-2": dict(steps=600, lr=3e-2), "default": {}}
    for pname, (draw, truth) in problems.items():
        for bname, budget in budgets.items():
            for kind, (est_cls, params_cls) in KINDS.items():
                cov_c = cov_m = 0
                ests, halves = [], []
                for s in range(seeds):
                    acts, labels = draw(4000, 9, 4, torch.Generator().manual_seed(500 + s))
                    est = est_cls(params_cls(seed=s, **budget))
                    chan, mean = est.label_mi_interval(acts, labels, 9, 0.95, s)
                    cov_c += int(((chan.low <= truth) & (truth <= chan.high)).sum())
                    cov_m += int(mean.low.item() <= truth <= mean.high.item())
                    ests += chan.estimate.tolist()
                    halves += ((chan.high - chan.low) / 2).tolist()
                print(f"{pname} truth {truth:.4f} {bname} {kind}: per-channel coverage "
                      f"{cov_c / (4 * seeds):.2f} ({4 * seeds} intervals), channel-mean "
                      f"coverage {cov_m / seeds:.2f} ({seeds} runs), mean estimate "
                      f"{statistics.mean(ests):.4f}, mean half-width "
                      f"{statistics.mean(halves):.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["grid", "joint", "label"])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    if args.what == "grid":
        grid()
    elif args.what == "joint":
        joint(args.tasks.split(","), args.seeds)
    else:
        label(args.seeds)
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
