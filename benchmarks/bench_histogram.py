"""Speed and memory of the batched histogram MI kernels vs a loop of
``sklearn.metrics.mutual_info_score``, in one process, as interleaved ratios.

(a) per-channel label MI, ``HistogramEstimator.label_mi``: C=512 channels, N=3925, B=20,
    10 classes. Target: >= 50x faster than the sklearn loop, identical values.
(b) all channel pairs of one 256-channel layer, ``HistogramEstimator.pair_mi(a, a)``:
    N=2000, 256^2 ordered pairs. The sklearn loop is timed on a fixed random sample of
    pairs and extrapolated linearly to 256^2 pairs. Target: >= 200x.
(c) peak memory (each case in a fresh subprocess) of (b) under several ``pair_cells``
    block bounds, of (a), and of a 2048 x 2048-channel cross-layer ``pair_mi``.

Both sides see the same bin codes (``bin_uniform``). mi-probe is timed end to end from
float32 activations (binning included); the sklearn side is timed on the loop only (its
codes are prepared, untimed, as contiguous int64 rows). Each repeat times every variant
once (mi-probe at the default torch thread count, mi-probe at 1 thread, the sklearn loop)
in a rotating order, so slow drifts of a shared machine hit all of them; the headline is
the median over repeats of the per-repeat ratio sklearn / mi-probe.

    .venv/bin/python benchmarks/bench_histogram.py [--quick] [--repeats R]
        [--cross-n N] [--skip-memory] [--out PATH]

Prints a table and writes benchmarks/results/histogram.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as tnf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mi_probe.builtin.estimators import HistogramEstimator, HistogramParams  # noqa: E402
from mi_probe.functional import histogram as FH  # noqa: E402
from mi_probe.functional import pairwise as FP  # noqa: E402

BINS = 20
NUM_CLASSES = 10
SIZES = {
    "full": dict(label_n=3925, label_c=512, pair_n=2000, pair_c=256, pair_sample=2000,
                 cross_n=2000, cross_c=2048, repeats=5, pair_repeats=3, stage_repeats=3,
                 cells=[1 << 20, 1 << 22, 1 << 24, 1 << 26]),
    "quick": dict(label_n=1000, label_c=64, pair_n=500, pair_c=64, pair_sample=300,
                  cross_n=500, cross_c=256, repeats=3, pair_repeats=2, stage_repeats=1,
                  cells=[1 << 18, 1 << 22]),
}


# ----------------------------------------------------------------------------- data

def make_labels(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, NUM_CLASSES, (n,), generator=g)


def make_layer(n: int, c: int, labels: torch.Tensor, seed: int, factors: int = 16,
               factor_seed: int = 1234) -> torch.Tensor:
    """(N, C) float32 stand-in for globally average-pooled ReLU maps: positive and
    right-skewed (softplus), with a class-dependent mean per channel (so I(T;Y) > 0) and
    shared latent factors (so channel pairs, also across layers built with the same
    ``factor_seed``, are dependent)."""
    g = torch.Generator().manual_seed(seed)
    gf = torch.Generator().manual_seed(factor_seed)
    latent = torch.randn(n, factors, generator=gf)
    means = torch.randn(NUM_CLASSES, c, generator=g) * 0.7
    loading = torch.randn(factors, c, generator=g) / math.sqrt(factors)
    z = means[labels] + latent @ loading + torch.randn(n, c, generator=g)
    return tnf.softplus(z).to(torch.float32).contiguous()


# ----------------------------------------------------------------------------- helpers

def machine_info() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sklearn
    return {"torch": torch.__version__, "numpy": np.__version__, "sklearn": sklearn.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpu": cpu,
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "torch_threads_default": torch.get_num_threads()}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def summary(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "all": xs}


def interleaved(variants: dict, repeats: int) -> dict[str, list[float]]:
    """Time each variant once per repeat, rotating the order; variants are
    name -> (threads, fn). Returns name -> seconds per repeat."""
    names = list(variants)
    times = {k: [] for k in names}
    default_threads = torch.get_num_threads()
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            threads, fn = variants[name]
            torch.set_num_threads(threads)
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        torch.set_num_threads(default_threads)
    return times


def top_ops(fn, k: int = 8) -> list[dict]:
    """torch.profiler on one real call: the k ops with most self CPU time."""
    from torch.profiler import ProfilerActivity, profile
    sys.stderr.flush()
    saved = os.dup(2)  # kineto prints start/stop and "no GPU" lines to fd 2: hide them
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "calls": e.count, "self_s": e.self_cpu_time_total / 1e6,
             "share": e.self_cpu_time_total / total} for e in events[:k]]


class Stages:
    """Accumulate wall time per named stage."""

    def __init__(self):
        self.t = {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.t[name] = self.t.get(name, 0.0) + now - self._last
        self._last = now


def label_mi_staged(acts, labels, num_classes, bins, max_cells=FH.DEFAULT_CHUNK_CELLS):
    """``HistogramEstimator.label_mi`` (no correction) = bin_uniform + label_mi_from_codes,
    re-run step by step with a timer between steps (same ops in the same order; the
    caller checks the result is bit-identical to the library's)."""
    st = Stages()
    codes = FH.bin_uniform(acts, bins)
    st.mark("bin_uniform (float64 scale, floor, int64 codes)")
    n, c = codes.shape
    labels = labels.to(dtype=torch.int64)
    h_y = FH._entropy_of_counts(torch.bincount(labels, minlength=num_classes).to(torch.float64))
    out = torch.empty(c, dtype=torch.float64)
    joint_symbols = bins * num_classes
    st.mark("entropies + combine")
    for sl in FH._chunks(c, n + joint_symbols, max_cells):
        block = codes[:, sl]
        ones = torch.ones(block.shape[1], n, dtype=torch.float64)
        counts_t = torch.zeros(block.shape[1], bins, dtype=torch.float64)
        st.mark("count buffers (ones / zeros)")
        counts_t.scatter_add_(1, block.T, ones)
        st.mark("scatter_add counts H(T)")
        jc = block * num_classes + labels[:, None]
        st.mark("joint codes t*K+y")
        ones = torch.ones(block.shape[1], n, dtype=torch.float64)
        counts_ty = torch.zeros(block.shape[1], joint_symbols, dtype=torch.float64)
        st.mark("count buffers (ones / zeros)")
        counts_ty.scatter_add_(1, jc.T, ones)
        st.mark("scatter_add counts H(T,Y)")
        h_t = FH._entropy_of_counts(counts_t)
        h_ty = FH._entropy_of_counts(counts_ty)
        mi = (h_t + h_y - h_ty).clamp_(min=0.0)
        out[sl] = torch.minimum(mi, torch.minimum(h_t, h_y))
        st.mark("entropies + combine")
    return out, st.t


def pair_mi_staged(acts_a, acts_b, bins, max_cells):
    """``HistogramEstimator.pair_mi`` = bin_uniform x2 + pair_mi_from_codes, re-run step
    by step with timers (same ops, same order; checked bit-identical by the caller)."""
    st = Stages()
    codes_a = FH.bin_uniform(acts_a, bins)
    codes_b = FH.bin_uniform(acts_b, bins)
    st.mark("bin_uniform (both layers)")
    n, c1 = codes_a.shape
    c2 = codes_b.shape[1]
    h_a = FH.entropy_from_codes(codes_a, bins)
    h_b = FH.entropy_from_codes(codes_b, bins)
    out = torch.empty(c1, c2, dtype=torch.float64)
    st.mark("marginal entropies H(A), H(B)")
    b1, b2 = FP.block_sizes(c1, c2, bins, max_cells)
    for s1 in range(0, c1, b1):
        oa = FP._one_hot(codes_a[:, s1:s1 + b1], bins)
        k1 = oa.shape[1] // bins
        st.mark("one-hot (zeros + scatter)")
        for s2 in range(0, c2, b2):
            ob = FP._one_hot(codes_b[:, s2:s2 + b2], bins)
            k2 = ob.shape[1] // bins
            st.mark("one-hot (zeros + scatter)")
            joint = (oa.T @ ob).view(k1, bins, k2, bins).permute(0, 2, 1, 3)
            st.mark("matmul oa.T @ ob (float32 joint counts)")
            p = joint.to(torch.float64) / n
            st.mark("joint -> float64 probabilities")
            h_ab = -torch.special.xlogy(p, p).sum(dim=(2, 3))
            st.mark("xlogy + sum (joint entropy)")
            mi = h_a[s1:s1 + k1, None] + h_b[None, s2:s2 + k2] - h_ab
            out[s1:s1 + k1, s2:s2 + k2] = mi.clamp_(min=0.0)
            st.mark("combine + write")
    return out, st.t


def median_stages(runs: list[dict]) -> dict:
    keys = list(runs[0])
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
    tot = sum(med.values()) or 1.0
    return {k: {"seconds": v, "share": v / tot} for k, v in med.items()}


def breakdown(staged_fn, real_fn, expected, threads: int, repeats: int) -> dict:
    """Stage timings (median of ``repeats`` staged re-runs) and torch.profiler top ops of
    one real call, at the default thread count and at 1 thread."""
    out = {}
    for t in dict.fromkeys([threads, 1]):
        torch.set_num_threads(t)
        runs, identical = [], True
        for _ in range(repeats):
            res, st = staged_fn()
            identical &= bool(torch.equal(res, expected))
            runs.append(st)
        out[f"threads_{t}"] = {"stages": median_stages(runs), "staged_bit_identical": identical,
                               "profiler_top_ops": top_ops(real_fn)}
    torch.set_num_threads(threads)
    return out


# ----------------------------------------------------------------------------- memory

def _status_mb() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) / 1024
    return out


def mem_child(spec: dict) -> dict:
    """Runs in a fresh interpreter: build the data, warm the kernels up on a tiny input,
    reset the peak-RSS counter, run the case once, report peak RSS above the baseline."""
    torch.set_num_threads(spec["threads"])
    labels = make_labels(spec["n"])
    est = HistogramEstimator(HistogramParams(bins=BINS, pair_cells=spec.get("cells", 1 << 24)))
    if spec["case"] == "label":
        acts = make_layer(spec["n"], spec["c1"], labels, seed=1)
        est.label_mi(acts[:50, :4], labels[:50], NUM_CLASSES)
        fn = lambda: est.label_mi(acts, labels, NUM_CLASSES)  # noqa: E731
    else:
        a = make_layer(spec["n"], spec["c1"], labels, seed=2)
        b = a if spec.get("same") else make_layer(spec["n"], spec["c2"], labels, seed=3)
        est.pair_mi(a[:50, :4], b[:50, :4])
        fn = lambda: est.pair_mi(a, b)  # noqa: E731
    gc.collect()
    reset = True
    try:  # Linux >= 4.0: "5" resets the peak-RSS high-water mark (VmHWM and ru_maxrss)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        reset = False
    base = _status_mb()
    t0 = time.perf_counter()
    res = fn()
    seconds = time.perf_counter() - t0
    after = _status_mb()
    # ru_maxrss (KiB on Linux) is kept for reference only: clear_refs resets the mm's
    # high-water mark but not the signal struct's, so it can still include the import and
    # data-building peak; VmHWM is the figure reported.
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"baseline_rss_mb": base["VmRSS"], "peak_rss_mb": after["VmHWM"],
            "peak_above_baseline_mb": after["VmHWM"] - base["VmRSS"],
            "ru_maxrss_above_baseline_mb": maxrss - base["VmRSS"],
            "peak_reset": reset, "seconds": seconds, "out_shape": list(res.shape)}


def run_mem_child(spec: dict, timeout: float = 3600) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_mem-child",
                           json.dumps(spec)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pair_memory_model(n: int, c1: int, c2: int, bins: int, cells: int) -> dict:
    """Predicted peak bytes of pair_mi (binning + pair_mi_from_codes) from its tensor
    lifetimes, by inspection of the code: replays the block loop and records the largest
    sum of live tensors at any allocation. Per block of M = k1*k2*B^2 cells: the float32
    joint (4 B/cell), its float64 copy and p = copy / n (8 + 8), while the previous block's
    p (8 B/cell) is still bound -> 20 B/cell of the new block + 8 of the previous one;
    plus the one-hot slabs (float32, N x k x B; old and new coexist while replaced), the
    int64 codes of both layers and the float64 output. Transient MKL buffers and malloc
    slack are not modelled."""
    b1, b2 = FP.block_sizes(c1, c2, bins, cells)
    codes = 8 * n * (c1 + c2)
    out = 8 * c1 * c2
    # binning: float64 copy + two temporaries alive at once (+ codes of the first layer)
    binning = max(8 * n * c1 * 3, 8 * n * c1 + 8 * n * c2 * 3)
    peak = binning
    base = codes + out
    oa = ob = joint = p = 0
    for s1 in range(0, c1, b1):
        k1 = min(b1, c1 - s1)
        new_oa = 4 * n * k1 * bins
        peak = max(peak, base + oa + new_oa + ob + joint + p)
        oa = new_oa
        for s2 in range(0, c2, b2):
            k2 = min(b2, c2 - s2)
            m = k1 * k2 * bins * bins
            new_ob = 4 * n * k2 * bins
            peak = max(peak, base + oa + ob + new_ob + joint + p)
            ob = new_ob
            peak = max(peak, base + oa + ob + joint + p + 4 * m)  # mm result
            joint = 4 * m
            peak = max(peak, base + oa + ob + joint + p + 8 * m + 8 * m)  # to(f64), / n
            p = 8 * m
            peak = max(peak, base + oa + ob + joint + p + 8 * m)  # xlogy
    return {"block": [b1, b2], "block_cells": b1 * b2 * bins * bins,
            "block_bytes_per_cell": 28, "codes_mb": codes / 2**20, "output_mb": out / 2**20,
            "onehot_slab_mb": 4 * n * max(b1, b2) * bins / 2**20,
            "predicted_peak_mb": peak / 2**20}


# ----------------------------------------------------------------------------- benches

def bench_label(sz: dict, threads: int) -> dict:
    from sklearn.metrics import mutual_info_score
    n, c = sz["label_n"], sz["label_c"]
    labels = make_labels(n)
    acts = make_layer(n, c, labels, seed=1)
    est = HistogramEstimator(HistogramParams(bins=BINS))
    codes_rows = np.ascontiguousarray(FH.bin_uniform(acts, BINS).numpy().T)  # untimed
    y = labels.numpy()

    def ours():
        return est.label_mi(acts, labels, NUM_CLASSES)

    def peer():
        return np.array([mutual_info_score(y, codes_rows[i]) for i in range(c)])

    mi, ref = ours(), peer()  # warm-up + value check
    diff = float(np.abs(mi.numpy() - ref).max())
    times = interleaved({"mi_probe": (threads, ours), "mi_probe_1thread": (1, ours),
                         "sklearn_loop": (threads, peer)}, sz["repeats"])
    ratios = [p / o for p, o in zip(times["sklearn_loop"], times["mi_probe"])]
    ratios_1t = [p / o for p, o in zip(times["sklearn_loop"], times["mi_probe_1thread"])]
    thread_gain = [a / b for a, b in zip(times["mi_probe_1thread"], times["mi_probe"])]
    where = breakdown(lambda: label_mi_staged(acts, labels, NUM_CLASSES, BINS), ours, mi,
                      threads, sz["stage_repeats"])
    return {"N": n, "C": c, "B": BINS, "classes": NUM_CLASSES, "threads": threads,
            "mi_probe_seconds": summary(times["mi_probe"]),
            "mi_probe_1thread_seconds": summary(times["mi_probe_1thread"]),
            "sklearn_loop_seconds": summary(times["sklearn_loop"]),
            "ratio": summary(ratios), "ratio_1thread": summary(ratios_1t),
            "speedup_default_threads_over_1": summary(thread_gain),
            "max_abs_diff": diff, "values_identical_1e-9": diff <= 1e-9,
            "target_ratio": 50, "meets_target": statistics.median(ratios) >= 50,
            "where_the_time_goes": where}


def bench_pairs(sz: dict, threads: int) -> dict:
    from sklearn.metrics import mutual_info_score
    n, c, s = sz["pair_n"], sz["pair_c"], sz["pair_sample"]
    labels = make_labels(n)
    acts = make_layer(n, c, labels, seed=2)
    params = HistogramParams(bins=BINS)
    est = HistogramEstimator(params)
    codes_rows = np.ascontiguousarray(FH.bin_uniform(acts, BINS).numpy().T)  # untimed
    rng = np.random.default_rng(0)
    sample = rng.integers(0, c, size=(s, 2))  # ordered pairs, uniform over C x C

    def ours():
        return est.pair_mi(acts, acts)

    def peer():
        return np.array([mutual_info_score(codes_rows[i], codes_rows[j]) for i, j in sample])

    full, ref = ours(), peer()
    diff = float(np.abs(full.numpy()[sample[:, 0], sample[:, 1]] - ref).max())
    times = interleaved({"mi_probe": (threads, ours), "mi_probe_1thread": (1, ours),
                         "sklearn_sample": (threads, peer)}, sz["pair_repeats"])
    scale = c * c / s
    extrap = [t * scale for t in times["sklearn_sample"]]
    ratios = [p / o for p, o in zip(extrap, times["mi_probe"])]
    ratios_1t = [p / o for p, o in zip(extrap, times["mi_probe_1thread"])]
    thread_gain = [a / b for a, b in zip(times["mi_probe_1thread"], times["mi_probe"])]
    upper = c * (c + 1) // 2
    ratios_sym = [r * upper / (c * c) for r in ratios]
    where = breakdown(lambda: pair_mi_staged(acts, acts, BINS, params.pair_cells), ours, full,
                      threads, sz["stage_repeats"])
    b1, b2 = FP.block_sizes(c, c, BINS, params.pair_cells)
    return {"N": n, "C": c, "B": BINS, "pairs": c * c, "sampled_pairs": s, "threads": threads,
            "pair_cells": params.pair_cells, "block": [b1, b2],
            "blocks": math.ceil(c / b1) * math.ceil(c / b2),
            "mi_probe_seconds": summary(times["mi_probe"]),
            "mi_probe_1thread_seconds": summary(times["mi_probe_1thread"]),
            "sklearn_sample_seconds": summary(times["sklearn_sample"]),
            "sklearn_per_pair_seconds": summary([t / s for t in times["sklearn_sample"]]),
            "sklearn_extrapolated_seconds": summary(extrap),
            "extrapolation": f"sklearn time of {s} random ordered pairs x {c}^2/{s}",
            "ratio": summary(ratios), "ratio_1thread": summary(ratios_1t),
            "ratio_vs_symmetric_peer": summary(ratios_sym),
            "symmetric_peer_note": f"a peer exploiting I(i;j)=I(j;i) needs {upper} of the "
                                   f"{c * c} pairs; mi-probe computes all {c * c}",
            "speedup_default_threads_over_1": summary(thread_gain),
            "max_abs_diff_on_sample": diff, "values_identical_1e-9": diff <= 1e-9,
            "target_ratio": 200, "meets_target": statistics.median(ratios) >= 200,
            "where_the_time_goes": where}


def bench_memory(sz: dict, threads: int, cross_n: int) -> dict:
    default_cells = HistogramParams().pair_cells
    out = {"method": "fresh subprocess per case; data built and kernels warmed on a tiny "
                     "input, then the peak-RSS mark is reset (/proc/self/clear_refs) and "
                     "peak_above_baseline = VmHWM after the call - VmRSS before it",
           "default_pair_cells": default_cells, "label": None, "pairs_by_cells": [],
           "cross": None}
    out["label"] = run_mem_child({"case": "label", "n": sz["label_n"], "c1": sz["label_c"],
                                  "threads": threads})
    n, c = sz["pair_n"], sz["pair_c"]
    for cells in sz["cells"]:
        r = run_mem_child({"case": "pair", "n": n, "c1": c, "c2": c, "same": True,
                           "cells": cells, "threads": threads})
        r.update({"pair_cells": cells, "N": n, "C": c,
                  "model": pair_memory_model(n, c, c, BINS, cells)})
        out["pairs_by_cells"].append(r)
        print(f"  memory pair_mi C={c} N={n} pair_cells=2^{int(math.log2(cells))}: "
              f"{r.get('peak_above_baseline_mb', float('nan')):.0f} MB", flush=True)
    cc = sz["cross_c"]
    r = run_mem_child({"case": "pair", "n": cross_n, "c1": cc, "c2": cc,
                       "cells": default_cells, "threads": threads})
    r.update({"pair_cells": default_cells, "N": cross_n, "C1": cc, "C2": cc,
              "pairs": cc * cc, "model": pair_memory_model(cross_n, cc, cc, BINS, default_cells)})
    out["cross"] = r
    return out


# ----------------------------------------------------------------------------- main

def _fmt_s(x: float) -> str:
    return f"{x:.3g} s" if x >= 0.01 else f"{x * 1e3:.3g} ms"


def print_table(res: dict) -> None:
    a, b, m = res["label_mi"], res["pair_mi"], res.get("memory")
    print()
    print("| case | mi-probe (bins incl.) | sklearn loop | ratio, median [min-max] | "
          "ratio at 1 thread | max abs diff | target |")
    print("|---|---|---|---|---|---|---|")
    print(f"| (a) label MI, C={a['C']}, N={a['N']}, B={a['B']} | "
          f"{_fmt_s(a['mi_probe_seconds']['median'])} | "
          f"{_fmt_s(a['sklearn_loop_seconds']['median'])} | "
          f"{a['ratio']['median']:.1f}x [{a['ratio']['min']:.1f}-{a['ratio']['max']:.1f}] | "
          f"{a['ratio_1thread']['median']:.1f}x | {a['max_abs_diff']:.1e} | >= 50x |")
    print(f"| (b) all pairs, C={b['C']} ({b['pairs']} pairs), N={b['N']} | "
          f"{_fmt_s(b['mi_probe_seconds']['median'])} | "
          f"{_fmt_s(b['sklearn_extrapolated_seconds']['median'])} (extrap. from "
          f"{b['sampled_pairs']}) | "
          f"{b['ratio']['median']:.1f}x [{b['ratio']['min']:.1f}-{b['ratio']['max']:.1f}] | "
          f"{b['ratio_1thread']['median']:.1f}x | {b['max_abs_diff_on_sample']:.1e} | >= 200x |")
    for name, sec in (("(a)", a), ("(b)", b)):
        for tk, w in sec["where_the_time_goes"].items():
            print(f"\n{name} where the time goes, {tk.replace('_', ' ')} (staged re-run, "
                  f"medians; bit-identical: {w['staged_bit_identical']}):")
            for k, v in w["stages"].items():
                print(f"    {k:48s} {_fmt_s(v['seconds']):>10s}  {100 * v['share']:5.1f}%")
            ops = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in w["profiler_top_ops"][:5])
            print(f"    profiler top ops (self CPU): {ops}")
    if m:
        print("\n(c) peak RSS above baseline:")
        lab = m["label"]
        print(f"    label_mi C={a['C']} N={a['N']}: {lab.get('peak_above_baseline_mb', 0):.0f} MB")
        for r in m["pairs_by_cells"]:
            print(f"    pair_mi C={r['C']} N={r['N']} pair_cells=2^{int(math.log2(r['pair_cells']))}"
                  f" block {r['model']['block']}: {r.get('peak_above_baseline_mb', 0):.0f} MB "
                  f"(model {r['model']['predicted_peak_mb']:.0f} MB), {_fmt_s(r.get('seconds', 0))}")
        r = m["cross"]
        print(f"    cross-layer pair_mi {r['C1']}x{r['C2']} N={r['N']} (default pair_cells): "
              f"{r.get('peak_above_baseline_mb', 0):.0f} MB (model "
              f"{r['model']['predicted_peak_mb']:.0f} MB), {_fmt_s(r.get('seconds', 0))}")
    print(f"\nload average start {res['loadavg_start']} end {res['loadavg_end']}; "
          f"torch threads {res['machine']['torch_threads_default']}, "
          f"{res['machine']['cpus_usable']} usable CPUs")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats for (a)")
    ap.add_argument("--pair-repeats", type=int, default=None, help="interleaved repeats for (b)")
    ap.add_argument("--cross-n", type=int, default=None,
                    help="samples of the 2048-channel cross-layer memory run")
    ap.add_argument("--threads", type=int, default=None, help="default torch CPU threads")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--_mem-child", dest="mem_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mem_child:
        print(json.dumps(mem_child(json.loads(args.mem_child))))
        return {}
    mode = "quick" if args.quick else "full"
    sz = dict(SIZES[mode])
    if args.repeats:
        sz["repeats"] = args.repeats
    if args.pair_repeats:
        sz["pair_repeats"] = args.pair_repeats
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cross_n = args.cross_n or sz["cross_n"]
    out_path = args.out or ROOT / "benchmarks" / "results" / (
        "histogram_quick.json" if args.quick else "histogram.json")
    res = {"benchmark": "histogram_mi_vs_sklearn", "mode": mode, "sizes": sz,
           "machine": machine_info(), "loadavg_start": loadavg()}
    t_start = time.perf_counter()
    print(f"[{mode}] (a) label MI C={sz['label_c']} N={sz['label_n']} ...", flush=True)
    res["label_mi"] = bench_label(sz, threads)
    res["loadavg_after_a"] = loadavg()
    print(f"[{mode}] (b) pair MI C={sz['pair_c']} N={sz['pair_n']} ...", flush=True)
    res["pair_mi"] = bench_pairs(sz, threads)
    res["loadavg_after_b"] = loadavg()
    if not args.skip_memory:
        print(f"[{mode}] (c) peak memory (fresh subprocesses) ...", flush=True)
        res["memory"] = bench_memory(sz, threads, cross_n)
        if res["memory"]["cross"].get("seconds") and cross_n == sz["pair_n"]:
            per_pair = res["pair_mi"]["sklearn_per_pair_seconds"]["median"]
            cc = sz["cross_c"]
            res["memory"]["cross"]["sklearn_extrapolated_seconds"] = per_pair * cc * cc
            res["memory"]["cross"]["ratio_rough"] = (per_pair * cc * cc
                                                     / res["memory"]["cross"]["seconds"])
    res["loadavg_end"] = loadavg()
    res["total_seconds"] = time.perf_counter() - t_start
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=2) + "\n")
    print_table(res)
    print(f"-> {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path} "
          f"({res['total_seconds']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
