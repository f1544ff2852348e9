"""One ``layer_mi`` unit's estimator work per site, before and after the histogram
estimator prepares once (``interfaces.Prepares``), in one process, as interleaved ratios.

For each site ``layer_mi`` asks the estimator for label MI, input MI, label MI under
each of 3 shuffled-label permutations (the null) and its diagnostics. **Before**: the
per-quantity methods (``label_mi``, ``input_mi``, ``diagnostics``), each binning the
activations again; this is ``analysis.prepare_site(est, acts, use_state=False)``, the
path every estimator without the ability takes. **After**: ``prepare_site(est, acts)``,
which bins once (``prepare``) and counts every quantity from the codes. Both sides are
exactly the calls ``layer_mi``'s ``run_unit`` makes, from float32 activations, the
labels' permutation included; their results are checked to be bit-identical.

Cases: single sites of C = 64..512 channels at N = 1000 and 5000, and the 17 sites of a
resnet18 ``layer_mi`` (stem 64, pre/post-add 4 × 64, 128, 256, 512 channels) as one
unit, with the default min/max range and with ``range: quantile``. Data: the skewed,
label-dependent stand-ins of ``bench_histogram.py``; 10 classes, B = 20, 1 thread.
Each repeat times both sides once in alternating order; the headline is the median
over repeats of the per-repeat ratio before / after.

    .venv/bin/python benchmarks/bench_prepare.py [--repeats 7] [--threads 1]
        [--device cpu|cuda] [--out PATH]

Prints a table and writes benchmarks/results/prepare.json (cuda: prepare_cuda.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import struct
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_histogram import loadavg, machine_info, make_labels, make_layer  # noqa: E402
from provenance import commit  # noqa: E402  (benchmarks/provenance.py)

from mi_probe._core.analysis import prepare_site  # noqa: E402
from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams  # noqa: E402
from mi_probe.functional import counting  # noqa: E402

BINS, NUM_CLASSES, NULL_DRAWS = 20, 10, 3
SITE_CHANNELS = [64, 128, 256, 512]
#: resnet18's layer_mi sites (*.pre_add, *.post_add and the stem): 17 sites
RESNET18 = [64] + [c for c in (64, 128, 256, 512) for _ in range(4)]


def unit_work(est, sites: list[torch.Tensor], labels: torch.Tensor,
              perms: list[torch.Tensor], use_state: bool) -> list:
    """What layer_mi's run_unit asks the estimator for, for each site."""
    out = []
    for acts in sites:
        site = prepare_site(est, acts, use_state=use_state)
        out.append((site.label_mi(labels, NUM_CLASSES), site.input_mi(),
                    [site.label_mi(labels[p], NUM_CLASSES) for p in perms],
                    site.diagnostics()))
    return out


def identical(a: list, b: list) -> bool:
    """Bit-identical tensors and diagnostic values (NaN equal to NaN)."""
    def same(x, y):
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        if isinstance(x, float):
            return (math.isnan(x) and math.isnan(y)) or struct.pack("<d", x) == struct.pack("<d", y)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        return x == y
    return same(a, b)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(est, sites, labels, perms, repeats: int, device: torch.device) -> dict:
    """Interleaved repeats of before / after; per-repeat ratio before / after."""
    before = unit_work(est, sites, labels, perms, use_state=False)  # warm-up and check
    after = unit_work(est, sites, labels, perms, use_state=True)
    times = {False: [], True: []}
    for r in range(repeats):
        for use_state in ((False, True) if r % 2 == 0 else (True, False)):
            gc.collect()
            sync(device)
            t0 = time.perf_counter()
            unit_work(est, sites, labels, perms, use_state)
            sync(device)
            times[use_state].append(time.perf_counter() - t0)
    ratios = [b / a for b, a in zip(times[False], times[True])]
    return {"before_s": statistics.median(times[False]),
            "after_s": statistics.median(times[True]),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "ratios": ratios,
            "before_all_s": times[False], "after_all_s": times[True],
            "identical": identical(before, after)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch (and kernel) threads")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    counting.warm_up()
    started, load_start = time.time(), loadavg()
    cases = []
    for n in (1000, 5000):
        labels = make_labels(n).to(device)
        gen = torch.Generator().manual_seed(n)
        perms = [torch.randperm(n, generator=gen).to(device) for _ in range(NULL_DRAWS)]
        layers = {c: make_layer(n, c, labels.cpu(), seed=c).to(device)
                  for c in sorted(set(SITE_CHANNELS + RESNET18))}
        for rng in ("minmax", "quantile"):
            est = HistogramEstimator(HistogramParams(bins=BINS, range=rng))
            shapes = [("site", [c]) for c in SITE_CHANNELS] if rng == "minmax" else []
            for what, channels in shapes + [("resnet18, 17 sites", RESNET18)]:
                row = {"case": what, "n": n, "channels": channels, "range": rng,
                       **time_case(est, [layers[c] for c in channels], labels, perms,
                                   args.repeats, device)}
                cases.append(row)
                print(f"N={n:5d} {rng:8s} {what:18s} C={sum(channels):5d}: before "
                      f"{row['before_s'] * 1e3:8.1f} ms, after {row['after_s'] * 1e3:7.1f} ms, "
                      f"ratio {row['ratio_median']:5.2f}x [{row['ratio_min']:.2f}-"
                      f"{row['ratio_max']:.2f}], identical: {row['identical']}", flush=True)
    result = {"benchmark": "prepare_once", "commit": commit(), "device": str(device),
              "threads": torch.get_num_threads(), "bins": BINS, "num_classes": NUM_CLASSES,
              "null_draws": NULL_DRAWS, "repeats": args.repeats,
              "work": "label MI + input MI + 3 shuffled-label nulls + diagnostics per site",
              "cases": cases, "all_identical": all(c["identical"] for c in cases),
              "loadavg_start": load_start, "loadavg_end": loadavg(),
              "seconds": time.time() - started, "machine": machine_info()}
    suffix = "_cuda" if device.type == "cuda" else ""
    out = args.out or ROOT / "benchmarks" / "results" / f"prepare{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"all identical: {result['all_identical']}; {result['seconds']:.0f} s; load "
          f"{load_start} -> {result['loadavg_end']} -> {out}")
    return result


if __name__ == "__main__":
    main()
