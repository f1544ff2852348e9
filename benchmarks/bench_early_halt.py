"""Early halt (issue 25, item 3): the cost of a capture that stops after its deepest site
against the full forward pass, next to the prefix's share of the FLOPs.

Candidate: ``capture(model, [site], loader, cpu, halt_after_sites=True)``
(mi_probe/_core/capture.py); baseline: the same call without halting (the pass runs to
the logits). resnet18 (random weights, 10 classes) on random 64 px images, batch 64,
CPU, one process; the sites are the last block output of layer1, layer2 and layer3
(fractional depths by FLOPs printed). FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` over one batch, halted (the prefix) and
full. Each repeat times the full pass and every halted site in rotating order
(interleaved); per site the ratio ``halted / full`` of that repeat, then
``(halted / full) / prefix FLOP share`` (goal <= 1.1), median [min-max] over repeats.

A third side, the floor: the same prefix as a plain ``nn.Sequential`` (stem, max-pool,
the stages up to the site's, then the spatial mean), run over the same loader with no
hooks and no capture. ``halted / prefix`` is what halting itself costs above the floor;
``(prefix / full) / FLOP share`` is how much more CPU time than FLOPs the prefix takes
on this machine, which no halting can remove.

    .venv/bin/python benchmarks/bench_early_halt.py [--images 512] [--repeats 7]
        [--threads 1] [--out benchmarks/results/early_halt.json]
        [--md /work/logs/frag_early_halt.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

os.environ.setdefault("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")

from mi_probe._core.capture import capture  # noqa: E402
from mi_probe._core.models import build_model  # noqa: E402
from mi_probe._core.plugins import get_plugin_manager  # noqa: E402
from mi_probe._core.sites import resolve_sites, select_adapter  # noqa: E402

CPU = torch.device("cpu")
SITES = ["layer1.1.post_add", "layer2.1.post_add", "layer3.1.post_add"]


def plain_prefix(model: torch.nn.Module, site: str) -> torch.nn.Module:
    """timm resnet18 up to the end of the stage that ``site`` closes, then the spatial
    mean (the pooled reduction), as ordinary modules: no hooks, nothing captured."""
    stage = int(site.split(".")[0].removeprefix("layer"))
    layers = [model.conv1, model.bn1, model.act1, model.maxpool,
              *[getattr(model, f"layer{i}") for i in range(1, stage + 1)]]
    return torch.nn.Sequential(*layers).eval()


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/early_halt.json")
    parser.add_argument("--md", default="/work/logs/frag_early_halt.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pm = get_plugin_manager(autoload=False)
    model = build_model("resnet18", 10, 0).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, args.size, args.size, generator=gen)
    y = torch.arange(args.images) % 10
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch)
    every = resolve_sites(model, select_adapter(pm, model, "resnet18"), x[:2], arch="resnet18")
    by_name = {s.name: s for s in every}
    sites = {name: [by_name[name]] for name in SITES}

    one = [(x[:args.batch], y[:args.batch])]

    def flops(site_list, halt: bool) -> int:
        with FlopCounterMode(display=False) as counter:
            capture(model, site_list, one, CPU, halt_after_sites=halt)
        return int(counter.get_total_flops())

    full_flops = flops(sites[SITES[0]], False)
    share = {name: flops(sites[name], True) / full_flops for name in SITES}

    def timed(site_list, halt: bool) -> float:
        t0 = time.perf_counter()
        capture(model, site_list, loader, CPU, halt_after_sites=halt)
        return time.perf_counter() - t0

    prefixes = {name: plain_prefix(model, name) for name in SITES}

    @torch.no_grad()
    def timed_prefix(name: str) -> float:
        t0 = time.perf_counter()
        for images, _ in loader:
            prefixes[name](images).mean((2, 3))
        return time.perf_counter() - t0

    # warm up (allocator, oneDNN kernels)
    timed(sites[SITES[0]], False)
    for name in SITES:
        timed(sites[name], True)
        timed_prefix(name)
    runs: dict[str, list[float]] = {"full": [], **{n: [] for n in SITES},
                                    **{f"plain {n}": [] for n in SITES}}
    labels = list(runs)
    for r in range(args.repeats):
        order = labels[r % len(labels):] + labels[:r % len(labels)]  # rotate
        for label in order:
            if label.startswith("plain "):
                runs[label].append(timed_prefix(label.removeprefix("plain ")))
                continue
            site_list = sites[SITES[-1]] if label == "full" else sites[label]
            runs[label].append(timed(site_list, label != "full"))
    results = {}
    for name in SITES:
        ratios = [h / f for h, f in zip(runs[name], runs["full"])]
        plain = runs[f"plain {name}"]
        results[name] = {
            "prefix_flop_share": share[name],
            "halted_s": _summary(runs[name]),
            "time_ratio": _summary(ratios),
            "ratio_over_flop_share": _summary([q / share[name] for q in ratios]),
            "plain_prefix_s": _summary(plain),
            "halted_over_plain_prefix": _summary([h / p for h, p in zip(runs[name], plain)]),
            "plain_prefix_ratio_over_flop_share": _summary(
                [p / f / share[name] for p, f in zip(plain, runs["full"])]),
        }
    out = {
        "benchmark": "early_halt", "model": "resnet18 (random weights)",
        "images": args.images, "batch": args.batch, "size": args.size,
        "repeats": args.repeats, "threads": args.threads, "device": "cpu",
        "torch": torch.__version__, "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(),
        "full_flops_per_batch": full_flops, "full_s": _summary(runs["full"]),
        "sites": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "### Early halt (benchmarks/bench_early_halt.py)",
        "",
        f"resnet18 (random weights), {args.images} random images at {args.size} px, batch "
        f"{args.batch}, CPU, {args.threads} thread(s), {args.repeats} interleaved repeats, "
        f"median [min–max]; full pass {out['full_s']['median']:.3f} s; load average "
        f"{out['load_avg'][0]:.1f}.",
        "",
        "| halt after | prefix FLOP share | halted / full time "
        "| (halted / full) / FLOP share (goal ≤ 1.1) | halted / plain prefix "
        "| (plain prefix / full) / FLOP share |",
        "|---|---|---|---|---|---|",
    ]

    def cell(v: dict[str, float]) -> str:
        return f"{v['median']:.3f} [{v['min']:.3f}–{v['max']:.3f}]"

    for name in SITES:
        res = results[name]
        lines.append(f"| `{name}` | {res['prefix_flop_share']:.3f} | {cell(res['time_ratio'])} "
                     f"| {cell(res['ratio_over_flop_share'])} "
                     f"| {cell(res['halted_over_plain_prefix'])} "
                     f"| {cell(res['plain_prefix_ratio_over_flop_share'])} |")
    lines += ["", "Command: `.venv/bin/python benchmarks/bench_early_halt.py` "
              f"(result: `{args.out}`).", ""]
    text = "\n".join(lines)
    try:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(text)
    except OSError:
        pass
    print(text)


if __name__ == "__main__":
    main()
