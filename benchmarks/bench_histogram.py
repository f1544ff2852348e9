"""Speed and memory of the histogram MI kernels vs a loop of
``sklearn.metrics.mutual_info_score``, in one process, as interleaved ratios.

(a) per-channel label MI, ``HistogramEstimator.label_mi``: C=512 channels, N=3925, B=20,
    10 classes. Target: >= 100x the sklearn loop at 1 thread, binning included.
(b) all channel pairs of one 256-channel layer, ``HistogramEstimator.pair_mi(a, a)``:
    N=2000, 256^2 ordered pairs. The sklearn loop is timed on a fixed random sample of
    ordered pairs and extrapolated linearly to 256^2. Target: >= 300x at 1 thread.
(c) peak memory (each case in a fresh subprocess): (a), (b) and a 2048 x 2048-channel
    cross-layer ``pair_mi``, for the counting kernel and the one-hot kernel.
(d) the kernel cost model: counting vs one-hot matmul per pair, by B, at 1 thread.

Both sides see the same bin codes. mi-probe is timed end to end from float32 activations
(binning included); the sklearn side on the loop only (its codes prepared, untimed, as
contiguous int64 rows). Each repeat times every variant once in a rotating order; the
headline is the median over repeats of the per-repeat ratio sklearn / mi-probe. The
previous design (torch binning + bincount for (a), one-hot matmuls for (b)) runs as a
third variant, so its ratio to the new kernels is measured in the same process.

    .venv/bin/python benchmarks/bench_histogram.py [--quick] [--repeats R]
        [--device cuda] [--skip-memory] [--out PATH]

Prints a table and writes benchmarks/results/histogram.json (--quick: histogram_quick.json;
--device cuda: histogram_cuda.json).
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

from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams  # noqa: E402
from mi_probe.functional import counting  # noqa: E402
from mi_probe.functional import histogram as FH  # noqa: E402
from mi_probe.functional import pairwise as FP  # noqa: E402
from provenance import cpu_model  # noqa: E402

BINS = 20
NUM_CLASSES = 10
SIZES = {
    "full": dict(label_n=3925, label_c=512, pair_n=2000, pair_c=256, pair_sample=2000,
                 cross_n=2000, cross_c=2048, repeats=7, pair_repeats=5, model_c=64,
                 model_bins=[2, 3, 4, 5, 6, 8, 20]),
    "quick": dict(label_n=1000, label_c=64, pair_n=500, pair_c=64, pair_sample=300,
                  cross_n=500, cross_c=256, repeats=3, pair_repeats=2, model_c=16,
                  model_bins=[2, 4, 20]),
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
    cpu = cpu_model()
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
    est = HistogramEstimator(HistogramParams(bins=BINS))
    counting.warm_up()
    if spec["case"] == "label":
        acts = make_layer(spec["n"], spec["c1"], labels, seed=1)
        est.label_mi(acts[:50, :4], labels[:50], NUM_CLASSES)
        fn = lambda: est.label_mi(acts, labels, NUM_CLASSES)  # noqa: E731
    else:
        a = make_layer(spec["n"], spec["c1"], labels, seed=2)
        b = a if spec.get("same") else make_layer(spec["n"], spec["c2"], labels, seed=3)
        method = spec["method"]
        FP.pair_mi(a[:50, :4], b[:50, :4], BINS, method=method)
        fn = lambda: FP.pair_mi(a, b, BINS, method=method)  # noqa: E731
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




def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def previous_label_mi(acts, labels):
    """The previous design of (a): float64 torch binning, then a bincount of the codes
    and one of the (code, label) pairs (two counts; now one joint count)."""
    codes = FH._bin_uniform_torch(acts, BINS)
    h_t = FH._entropy_of_counts(FH._counts(codes, BINS))
    h_y = FH._entropy_of_counts(torch.bincount(labels, minlength=NUM_CLASSES).to(torch.float64))
    h_ty = FH._entropy_of_counts(FH._counts(codes * NUM_CLASSES + labels[:, None],
                                            BINS * NUM_CLASSES))
    return (h_t + h_y - h_ty).clamp_(min=0.0)


def bench_label(sz: dict, threads: int, device: str) -> dict:
    from sklearn.metrics import mutual_info_score
    n, c = sz["label_n"], sz["label_c"]
    labels = make_labels(n)
    acts = make_layer(n, c, labels, seed=1)
    est = HistogramEstimator(HistogramParams(bins=BINS))
    codes_rows = np.ascontiguousarray(FH.bin_uniform(acts, BINS).numpy().T)  # untimed
    y = labels.numpy()
    dev_acts, dev_labels = acts.to(device), labels.to(device)

    def ours():
        out = est.label_mi(dev_acts, dev_labels, NUM_CLASSES)
        sync(device)
        return out

    def previous():
        out = previous_label_mi(dev_acts, dev_labels)
        sync(device)
        return out

    def peer():
        return np.array([mutual_info_score(y, codes_rows[i]) for i in range(c)])

    mi, ref, old = ours().cpu(), peer(), previous().cpu()  # warm-up + value check
    diff = float(np.abs(mi.numpy() - ref).max())
    variants = {"mi_probe": (threads, ours), "mi_probe_1thread": (1, ours),
                "previous_design_1thread": (1, previous), "sklearn_loop": (threads, peer)}
    times = interleaved(variants, sz["repeats"])
    ratios = [p / o for p, o in zip(times["sklearn_loop"], times["mi_probe"])]
    ratios_1t = [p / o for p, o in zip(times["sklearn_loop"], times["mi_probe_1thread"])]
    vs_prev = [p / o for p, o in zip(times["previous_design_1thread"], times["mi_probe_1thread"])]
    return {"N": n, "C": c, "B": BINS, "classes": NUM_CLASSES, "threads": threads,
            "device": device, **{f"{k}_seconds": summary(v) for k, v in times.items()},
            "ratio": summary(ratios), "ratio_1thread": summary(ratios_1t),
            "speedup_over_previous_design_1thread": summary(vs_prev),
            "max_abs_diff": diff, "max_abs_diff_previous_design": float(
                np.abs(old.numpy() - ref).max()),
            "values_identical_1e-9": diff <= 1e-9, "target_ratio_1thread": 100,
            "meets_target": statistics.median(ratios_1t) >= 100,
            "where_the_time_goes": label_stages(acts, labels) if device == "cpu" else None}


def label_stages(acts, labels, repeats: int = 5) -> dict:
    """(a) at 1 thread, step by step: the range pass, the fused binning + joint count,
    and the float64 entropies of the (C, B, K) table."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    steps = {"range (min/max pass)": [], "binning + joint count (fused)": [],
             "entropies of the count table": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        binning = FH._binning(acts, BINS, None)
        t1 = time.perf_counter()
        cnt = counting.label_counts(binning, labels.numpy(), NUM_CLASSES)
        t2 = time.perf_counter()
        counting.label_statistics(cnt)
        t3 = time.perf_counter()
        for k, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2)):
            steps[k].append(dt)
    torch.set_num_threads(before)
    med = {k: statistics.median(v) for k, v in steps.items()}
    total = sum(med.values())
    return {k: {"seconds": v, "share": v / total} for k, v in med.items()}


def bench_pairs(sz: dict, threads: int, device: str) -> dict:
    from sklearn.metrics import mutual_info_score
    n, c, s = sz["pair_n"], sz["pair_c"], sz["pair_sample"]
    labels = make_labels(n)
    acts = make_layer(n, c, labels, seed=2)
    est = HistogramEstimator(HistogramParams(bins=BINS))
    codes_rows = np.ascontiguousarray(FH.bin_uniform(acts, BINS).numpy().T)  # untimed
    rng = np.random.default_rng(0)
    sample = rng.integers(0, c, size=(s, 2))  # ordered pairs, uniform over C x C
    dev_acts = acts.to(device)

    def ours():
        out = est.pair_mi(dev_acts, dev_acts)
        sync(device)
        return out

    def previous():  # the one-hot matmul kernel over all ordered pairs
        out = FP.pair_mi(dev_acts, dev_acts.clone(), BINS, method="onehot")
        sync(device)
        return out

    def peer():
        return np.array([mutual_info_score(codes_rows[i], codes_rows[j]) for i, j in sample])

    full, ref = ours().cpu(), peer()
    diff = float(np.abs(full.numpy()[sample[:, 0], sample[:, 1]] - ref).max())
    variants = {"mi_probe": (threads, ours), "mi_probe_1thread": (1, ours),
                "sklearn_sample": (threads, peer)}
    if device == "cpu":
        variants["onehot_1thread"] = (1, previous)
    times = interleaved(variants, sz["pair_repeats"])
    scale = c * c / s
    extrap = [t * scale for t in times["sklearn_sample"]]
    ratios = [p / o for p, o in zip(extrap, times["mi_probe"])]
    ratios_1t = [p / o for p, o in zip(extrap, times["mi_probe_1thread"])]
    upper = c * (c + 1) // 2
    out = {"N": n, "C": c, "B": BINS, "pairs": c * c, "sampled_pairs": s, "threads": threads,
           "device": device, "method": FP.pair_method(device, n, BINS),
           **{f"{k}_seconds": summary(v) for k, v in times.items()},
           "sklearn_per_pair_seconds": summary([t / s for t in times["sklearn_sample"]]),
           "sklearn_extrapolated_seconds": summary(extrap),
           "extrapolation": f"sklearn time of {s} random ordered pairs x {c}^2/{s}",
           "ratio": summary(ratios), "ratio_1thread": summary(ratios_1t),
           "ratio_1thread_vs_symmetric_peer": summary([r * upper / (c * c) for r in ratios_1t]),
           "symmetric_peer_note": f"a peer exploiting I(i;j)=I(j;i) needs {upper} of the "
                                  f"{c * c} calls; so does mi-probe on a layer with itself",
           "max_abs_diff_on_sample": diff, "values_identical_1e-9": diff <= 1e-9,
           "target_ratio_1thread": 300, "meets_target": statistics.median(ratios_1t) >= 300}
    if "onehot_1thread" in times:
        out["speedup_over_onehot_1thread"] = summary(
            [p / o for p, o in zip(times["onehot_1thread"], times["mi_probe_1thread"])])
    return out


def bench_cost_model(sz: dict, device: str) -> dict:
    """Seconds per pair of each kernel by B (cross-layer pairs, 1 thread on the CPU),
    against the cost model's prediction of which is cheaper."""
    n, c = sz["pair_n"], sz["model_c"]
    labels = make_labels(n)
    a = make_layer(n, c, labels, seed=4).to(device)
    b = make_layer(n, c, labels, seed=5).to(device)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    methods = ["counting", "onehot"] if device == "cpu" else ["onehot"]
    for bins in sz["model_bins"]:
        per_pair = {}
        for method in methods:
            FP.pair_mi(a, b, bins, method=method)  # warm-up
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                FP.pair_mi(a, b, bins, method=method)
                sync(device)
                ts.append(time.perf_counter() - t0)
            per_pair[method] = statistics.median(ts) / (c * c)
        measured = min(per_pair, key=per_pair.get)
        rows.append({"bins": bins, "seconds_per_pair": per_pair, "faster": measured,
                     "cost_model_picks": FP.pair_method(device, n, bins)})
    torch.set_num_threads(before)
    return {"N": n, "C": c, "device": device, "rows": rows,
            "model_agrees": all(r["faster"] == r["cost_model_picks"] for r in rows)}


def bench_memory(sz: dict, threads: int) -> dict:
    out = {"method": "fresh subprocess per case; data built and kernels warmed on a tiny "
                     "input, then the peak-RSS mark is reset (/proc/self/clear_refs) and "
                     "peak_above_baseline = VmHWM after the call - VmRSS before it",
           "cases": []}
    n, c, cc = sz["pair_n"], sz["pair_c"], sz["cross_c"]
    cases = [{"case": "label", "n": sz["label_n"], "c1": sz["label_c"]},
             {"case": "pair", "n": n, "c1": c, "c2": c, "same": True, "method": "counting"},
             {"case": "pair", "n": n, "c1": c, "c2": c, "same": True, "method": "onehot"},
             {"case": "pair", "n": sz["cross_n"], "c1": cc, "c2": cc, "method": "counting"}]
    for spec in cases:
        r = run_mem_child({**spec, "threads": threads})
        r.update(spec)
        out["cases"].append(r)
        print(f"  memory {spec}: {r.get('peak_above_baseline_mb', float('nan')):.0f} MB "
              f"in {r.get('seconds', float('nan')):.2f} s", flush=True)
    return out


# ----------------------------------------------------------------------------- main

def _fmt_s(x: float) -> str:
    return f"{x:.3g} s" if x >= 0.01 else f"{x * 1e3:.3g} ms"


def _r(x: dict) -> str:
    return f"{x['median']:.0f}x [{x['min']:.0f}-{x['max']:.0f}]"


def print_table(res: dict) -> None:
    a, b = res["label_mi"], res["pair_mi"]
    print()
    print("| case | mi-probe, 1 thread | sklearn loop | ratio, 1 thread | ratio, default "
          "threads | max abs diff | target |")
    print("|---|---|---|---|---|---|---|")
    print(f"| (a) label MI, C={a['C']}, N={a['N']}, B={a['B']} | "
          f"{_fmt_s(a['mi_probe_1thread_seconds']['median'])} | "
          f"{_fmt_s(a['sklearn_loop_seconds']['median'])} | {_r(a['ratio_1thread'])} | "
          f"{_r(a['ratio'])} | {a['max_abs_diff']:.1e} | >= 100x |")
    print(f"| (b) all pairs, C={b['C']} ({b['pairs']} pairs), N={b['N']} | "
          f"{_fmt_s(b['mi_probe_1thread_seconds']['median'])} | "
          f"{_fmt_s(b['sklearn_extrapolated_seconds']['median'])} (extrap.) | "
          f"{_r(b['ratio_1thread'])} | {_r(b['ratio'])} | "
          f"{b['max_abs_diff_on_sample']:.1e} | >= 300x |")
    print(f"\n(a) vs previous design at 1 thread: "
          f"{a['speedup_over_previous_design_1thread']['median']:.1f}x")
    if "speedup_over_onehot_1thread" in b:
        print(f"(b) vs one-hot matmul kernel at 1 thread: "
              f"{b['speedup_over_onehot_1thread']['median']:.1f}x")
    if a.get("where_the_time_goes"):
        print("(a) where the time goes (1 thread):")
        for k, v in a["where_the_time_goes"].items():
            print(f"    {k:36s} {_fmt_s(v['seconds']):>10s} {100 * v['share']:5.1f}%")
    m = res.get("cost_model")
    if m:
        print(f"(d) cost model (N={m['N']}, {m['C']}x{m['C']} pairs, 1 thread), "
              f"agrees: {m['model_agrees']}")
        for r in m["rows"]:
            sp = ", ".join(f"{k} {v * 1e6:.2f} us" for k, v in r["seconds_per_pair"].items())
            print(f"    B={r['bins']:3d}: {sp}; faster: {r['faster']}, model: "
                  f"{r['cost_model_picks']}")
    if res.get("memory"):
        print("(c) peak RSS above baseline:")
        for r in res["memory"]["cases"]:
            print(f"    {r['case']} C={r['c1']}{'x' + str(r['c2']) if 'c2' in r else ''} "
                  f"N={r['n']} {r.get('method', '')}: {r.get('peak_above_baseline_mb', 0):.0f}"
                  f" MB, {_fmt_s(r.get('seconds', 0))}")
    print(f"\nload average start {res['loadavg_start']} end {res['loadavg_end']}; "
          f"torch threads {res['machine']['torch_threads_default']}, "
          f"{res['machine']['cpus_usable']} usable CPUs")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats for (a)")
    ap.add_argument("--pair-repeats", type=int, default=None, help="interleaved repeats for (b)")
    ap.add_argument("--threads", type=int, default=None, help="default torch CPU threads")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where mi-probe runs (the sklearn loop always runs on the CPU)")
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
    suffix = "_quick" if args.quick else ""
    suffix += "_cuda" if args.device == "cuda" else ""
    out_path = args.out or ROOT / "benchmarks" / "results" / f"histogram{suffix}.json"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    res = {"benchmark": "histogram_mi_vs_sklearn", "mode": mode, "sizes": sz,
           "device": args.device, "commit": commit, "machine": machine_info(),
           "loadavg_start": loadavg()}
    if args.device == "cuda":
        res["machine"]["gpu"] = torch.cuda.get_device_name()
    counting.warm_up()
    t_start = time.perf_counter()
    print(f"[{mode}] (a) label MI C={sz['label_c']} N={sz['label_n']} ...", flush=True)
    res["label_mi"] = bench_label(sz, threads, args.device)
    print(f"[{mode}] (b) pair MI C={sz['pair_c']} N={sz['pair_n']} ...", flush=True)
    res["pair_mi"] = bench_pairs(sz, threads, args.device)
    print(f"[{mode}] (d) cost model ...", flush=True)
    res["cost_model"] = bench_cost_model(sz, args.device)
    if not args.skip_memory and args.device == "cpu":
        print(f"[{mode}] (c) peak memory (fresh subprocesses) ...", flush=True)
        res["memory"] = bench_memory(sz, threads)
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
