"""Training-step cost of the HSIC regulariser: resnet18 with ``hsic`` on every post-add
site (8 sites) vs plain cross-entropy, same batches, one process.

A step is forward + loss + backward + SGD step, exactly as ``mi_probe._core.train`` runs it
(pooling hooks that keep the graph, ``penalty`` added to the cross-entropy). The two
variants are timed in interleaved repeats on the same fixed batches (so slow drifts of
a shared machine hit both), and the reported figure is the median over repeats of the
per-repeat time ratio HSIC / CE. Target: ≤ 1.10×.

    .venv/bin/python benchmarks/bench_hsic.py [--steps 3] [--repeats 9] [--batch 64]
        [--image-size 64] [--threads N] [--device cpu|cuda] [--kind hsic|nhsic]

Prints one line for the README and writes benchmarks/results/hsic.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mi_probe.builtin.adapters.resnet import ResNetAdapter  # noqa: E402
from mi_probe.builtin.regularizers.hsic import HSICParams, HSICRegularizer  # noqa: E402
from mi_probe.builtin.regularizers.nhsic import NHSICParams  # noqa: E402
from mi_probe._core.capture import add_pooling_hooks, removing  # noqa: E402
from mi_probe._core.models import build_model  # noqa: E402
from mi_probe._core.sites import resolve_sites  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_stepper(model, device, regs):
    """A function running one training step per batch; returns nothing."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def run(batches) -> float:
        store: dict[str, list] = {}
        handles: list = []
        _sync(device)
        t0 = time.perf_counter()
        with removing(handles):
            for reg, sites in regs:
                handles.extend(add_pooling_hooks(model, sites, store, detach=False))
            for x, y in batches:
                for parts in store.values():
                    parts.clear()
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                for reg, sites in regs:
                    loss = loss + reg.penalty({s.name: store[s.name][-1] for s in sites}, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        _sync(device)
        return time.perf_counter() - t0

    return run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="training steps per timed block")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved CE/HSIC blocks")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--kind", choices=["hsic", "nhsic"], default="hsic")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hsic.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen).to(device),
                torch.randint(0, 10, (args.batch,), generator=gen).to(device))
               for _ in range(args.steps)]
    # Two identical models (same init), one per variant, so neither sees the other's updates.
    ce_model = build_model("resnet18", 10, seed=0).to(device).train()
    reg_model = build_model("resnet18", 10, seed=0).to(device).train()
    params = (HSICParams if args.kind == "hsic" else NHSICParams)(lam=1.0, sites=["*.post_add"])
    reg = HSICRegularizer(params)
    sites = resolve_sites(reg_model, ResNetAdapter(), batches[0][0][:2], reg.site_patterns)
    ce_step = make_stepper(ce_model, device, [])
    reg_step = make_stepper(reg_model, device, [(reg, sites)])

    ce_step(batches[:1])  # warm-up (allocator, kernels)
    reg_step(batches[:1])
    ce_times, reg_times, ratios = [], [], []
    for r in range(args.repeats):
        order = [(ce_step, ce_times), (reg_step, reg_times)]
        if r % 2:
            order.reverse()  # alternate which variant goes first
        for step, times in order:
            times.append(step(batches) / args.steps)
        ratios.append(reg_times[-1] / ce_times[-1])
    result = {
        "benchmark": "hsic_step_overhead",
        "model": "resnet18", "num_classes": 10, "batch": args.batch,
        "image_size": args.image_size, "sites": [s.name for s in sites],
        "regularizer": params.model_dump(mode="json"),
        "device": str(device), "threads": torch.get_num_threads(),
        "steps_per_block": args.steps, "repeats": args.repeats,
        "ce_step_seconds_median": statistics.median(ce_times),
        "hsic_step_seconds_median": statistics.median(reg_times),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios, "ce_step_seconds": ce_times, "hsic_step_seconds": reg_times,
        "target_ratio": 1.10,
        "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "processor": platform.processor(),
    }
    result["meets_target"] = result["ratio_median"] <= result["target_ratio"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.kind} on {len(sites)} post_add sites of resnet18 (batch {args.batch}, "
          f"{args.image_size} px, {device}, {torch.get_num_threads()} threads): "
          f"{result['hsic_step_seconds_median'] * 1e3:.0f} ms/step vs CE "
          f"{result['ce_step_seconds_median'] * 1e3:.0f} ms/step, median ratio "
          f"{result['ratio_median']:.3f}x (target <= 1.10x; {args.repeats} interleaved repeats "
          f"of {args.steps} steps) -> {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return result


if __name__ == "__main__":
    main()
