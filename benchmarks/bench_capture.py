"""Capture overhead: pooled capture on every site of resnet18 and vgg16 vs plain inference
over the same batches, one process; and the memory the capture holds.

Candidate: ``mi_probe._core.capture.capture`` -- the call ``Engine.capture`` makes for
``layer_mi`` (forward hooks that average-pool each site's output inside the hook, under
``torch.no_grad``, model in eval mode, then one ``torch.cat`` per site) -- on every site
the built-in adapter lists (``sites.include: ["*"]``). Peer: the same loop with no hooks
(``model(x)`` under ``torch.no_grad``, logits kept). Models come from
``mi_probe._core.models.build_model`` (timm, random init, 10 classes; vgg16 with the paper's
head as in specs/paper/layer_mi_vgg16.yaml), sites from the plugin manager's adapter and
``resolve_sites``. Both sides iterate the same loader, built like the engine's
evaluation loader (``mi_probe._core.data.make_loader``, no shuffle, no workers) over fixed
in-memory random images (no decoding or augmentation on either side).

Timing: per thread setting (1 thread, then torch's default), per model, one warm-up of
each side, then ``--repeats`` repeats timing each side once over all batches, the order
alternating between repeats; the figure is the median over repeats of the per-repeat
ratio capture / plain, with min-max. Target: <= 1.10x.

Image size: 48 px by default, the size of every spec in specs/ (the CPU-scale digits
runs): resnet18's last stage is 2x2, vgg16's last convs 3x3, and vgg16 takes ~0.5 s per
batch of 64 on 2 CPUs. The paper specs (specs/paper/) use 224 px, where vgg16 needs
~20x longer per batch; ``--size 224`` runs that (pooling cost and forward cost both
scale with H x W, so the ratio depends little on the size; at small sizes the fixed
per-hook cost weighs more, so 48 px is the harder case of the two).

Memory: (a) bytes held by each site's captured tensor vs N * C * 4 (float32), from the
timing run; (b) peak RSS growth (VmHWM after ``echo 5 > /proc/self/clear_refs``) of a
capture run and of a plain run, each in a fresh subprocess, for two N at one image size
(``--mem-batches``, ``--mem-sizes``; default N = 1024 and 2048 at 32 px) and for the
larger N at 64 px: the capture - plain difference grows linearly in N and does not
depend on the spatial size. Each under glibc with a pinned mmap threshold (repeatable)
and as shipped (see ``ALLOCATORS``).

    .venv/bin/python benchmarks/bench_capture.py [--size 48] [--batches 8] [--repeats 7]
        [--models resnet18,vgg16] [--threads 1,default] [--skip-memory] [--quick]
        [--profile] [--out PATH]

A 224 px run (slow on CPU): ``--size 224 --batches 2 --repeats 3``.
Writes benchmarks/results/capture.json (``--quick``: capture_quick.json).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torch.utils.data import TensorDataset  # noqa: E402

from mi_probe._core.capture import capture  # noqa: E402
from mi_probe._core.data import make_loader  # noqa: E402
from mi_probe._core.models import build_model  # noqa: E402
from mi_probe._core.plugins import get_plugin_manager  # noqa: E402
from mi_probe._core.sites import get_module, resolve_sites, select_adapter  # noqa: E402

#: The head each model gets (vgg16: the paper's, as in specs/paper/layer_mi_vgg16.yaml).
HEADS = {"vgg16": "paper_vgg"}
NUM_CLASSES = 10
TARGET = 1.10
DEVICE = torch.device("cpu")


# --------------------------------------------------------------------------- set-up


def setup(arch: str, size: int, n_batches: int, batch: int, seed: int = 0):
    """Model (eval mode), every site of it, a loader of ``n_batches`` fixed batches made
    as the engine makes its evaluation loader (``make_loader``, no shuffle, no workers)
    over in-memory tensors, and a one-batch loader for warm-ups."""
    model = build_model(arch, NUM_CLASSES, seed=0, head=HEADS.get(arch, "timm")).to(DEVICE)
    gen = torch.Generator().manual_seed(seed)
    n = n_batches * batch
    x = torch.randn(n, 3, size, size, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    loader = make_loader(TensorDataset(x, y), batch, shuffle=False)
    warm = make_loader(TensorDataset(x[:batch], y[:batch]), batch, shuffle=False)
    pm = get_plugin_manager(autoload=False)
    adapter = select_adapter(pm, model, arch)  # the engine's `adapter: auto`
    sites = resolve_sites(model, adapter, x[:2], ("*",), (), arch)
    return model, adapter.name, sites, loader, warm


def plain_inference(model, batches) -> torch.Tensor:
    """The peer: capture's loop without hooks (eval mode, no_grad, logits kept)."""
    model.eval()
    logits = []
    with torch.no_grad():
        for x, _y in batches:
            logits.append(model(x.to(DEVICE, non_blocking=True)).float())
    return torch.cat(logits)


def capture_run(model, sites, batches):
    """The candidate: the library's capture entry point, as Engine.capture calls it."""
    return capture(model, sites, batches, DEVICE)


def site_shapes(model, sites, x) -> dict[str, list[int]]:
    """Unpooled output shape of each site for input ``x`` (metadata for the memory table)."""
    shapes, handles = {}, []
    for site in sites:
        def hook(_m, _i, out, _n=site.name):
            out = out[0] if isinstance(out, (tuple, list)) else out
            shapes.setdefault(_n, list(out.shape))
        handles.append(get_module(model, site.module).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


# --------------------------------------------------------------------------- timing


def time_model(arch: str, args) -> dict:
    model, adapter, sites, batches, warm = setup(arch, args.size, args.batches, args.batch)
    plain_inference(model, warm)  # warm-up (allocator, oneDNN kernels)
    capture_run(model, sites, warm)
    sides = {"plain": lambda: plain_inference(model, batches),
             "capture": lambda: capture_run(model, sites, batches)}
    times: dict[str, list[float]] = {"plain": [], "capture": []}
    cpu: dict[str, list[float]] = {"plain": [], "capture": []}
    ratios, cpu_ratios = [], []
    outputs = {}
    for r in range(args.repeats):
        order = ["plain", "capture"] if r % 2 == 0 else ["capture", "plain"]
        for side in order:
            t0, c0 = time.perf_counter(), time.process_time()
            outputs[side] = sides[side]()
            times[side].append(time.perf_counter() - t0)
            cpu[side].append(time.process_time() - c0)
        ratios.append(times["capture"][-1] / times["plain"][-1])
        cpu_ratios.append(cpu["capture"][-1] / cpu["plain"][-1])
    cap = outputs["capture"]
    n = args.batches * args.batch
    return {
        "model": arch, "adapter": adapter, "head": HEADS.get(arch, "timm"),
        "sites": len(sites), "threads": torch.get_num_threads(),
        "n_samples": n, "plain_s_per_batch_median": statistics.median(times["plain"]) / args.batches,
        "capture_s_per_batch_median": statistics.median(times["capture"]) / args.batches,
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
        "ratio_max": max(ratios), "ratios": ratios,
        "plain_seconds": times["plain"], "capture_seconds": times["capture"],
        # secondary: process CPU time (all threads; includes OpenMP spin-waits)
        "cpu_ratio_median": statistics.median(cpu_ratios), "cpu_ratio_min": min(cpu_ratios),
        "cpu_ratio_max": max(cpu_ratios),
        "plain_cpu_seconds": cpu["plain"], "capture_cpu_seconds": cpu["capture"],
        "logits_identical": bool(torch.equal(cap.logits, outputs["plain"])),
        "meets_target": statistics.median(ratios) <= TARGET,
        "_held": held_memory(model, sites, cap, batches.dataset.tensors[0][:2]),
    }


def held_memory(model, sites, cap, probe) -> dict:
    """Bytes held per site by the captured pooled activations vs N * C * 4."""
    shapes = site_shapes(model, sites, probe)
    rows = []
    for site in sites:
        t = cap.acts[site.name]
        n, c = t.shape
        unpooled = n * c * 4
        for d in shapes[site.name][1:]:
            unpooled *= d
        unpooled //= c
        rows.append({"site": site.name, "shape": [n, c], "dtype": str(t.dtype).replace("torch.", ""),
                     "contiguous": t.is_contiguous(),
                     "tensor_bytes": t.numel() * t.element_size(),
                     "storage_bytes": t.untyped_storage().nbytes(), "n_c_4": n * c * 4,
                     "unpooled_output_bytes": unpooled})
    total = sum(r["storage_bytes"] for r in rows)
    expected = sum(r["n_c_4"] for r in rows)
    return {"n_samples": int(cap.labels.shape[0]), "per_site": rows,
            "total_storage_bytes": total, "total_n_c_4": expected,
            "storage_over_n_c_4": total / expected,
            "total_unpooled_bytes": sum(r["unpooled_output_bytes"] for r in rows),
            "all_float32_exact": all(r["storage_bytes"] == r["n_c_4"] and r["dtype"] == "float32"
                                     for r in rows)}


# --------------------------------------------------------------------------- peak RSS


def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) * 1024
            for k in ("VmRSS", "VmHWM")}


def rss_child(spec: str) -> None:
    """Child process: one plain or capture run, peak RSS above a post-warm-up baseline."""
    arch, size, n_batches, batch, mode = spec.split(",")
    model, _, sites, batches, warm = setup(arch, int(size), int(n_batches), int(batch))
    # Same warm-up in both modes: one plain and one capture batch.
    plain_inference(model, warm)
    capture_run(model, sites, warm)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back: a clean baseline
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status()
    if mode == "plain":
        out = plain_inference(model, batches)
        held = out.numel() * out.element_size()
    else:
        out = capture_run(model, sites, batches)
        held = sum(t.untyped_storage().nbytes() for t in out.acts.values())
    after = _status()
    del out
    print(json.dumps({"model": arch, "size": int(size), "n_samples": int(n_batches) * int(batch),
                      "mode": mode, "baseline_rss": before["VmRSS"],
                      "hwm_after_reset": before["VmHWM"], "hwm": after["VmHWM"],
                      "peak_growth": after["VmHWM"] - before["VmRSS"],
                      "held_bytes": held,
                      "sum_channels": sum(s.channels for s in sites),
                      "threads": torch.get_num_threads()}))


#: Peak-RSS allocator settings. ``fixed``: glibc's mmap threshold pinned at 64 KiB, so
#: every large activation is mmapped and unmapped on free (the forward's transient peak is
#: the same in every run; VmHWM repeats to ~0.1 MiB). ``default``: glibc as shipped; its
#: dynamic mmap threshold moves large activations between mmap and the heap from run to
#: run, and VmHWM of identical runs varies by up to tens of MiB (vgg16).
ALLOCATORS = {"fixed": {"MALLOC_MMAP_THRESHOLD_": "65536"}, "default": {}}


def rss_cases(arch: str, args) -> list[dict]:
    """Plain and capture runs at (size1, N1), (size1, N2) and, unless --quick,
    (size2, N2), under each allocator setting; each in a fresh subprocess
    (``--quick``: two at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    s1, s2 = args.mem_sizes
    cases = [(s1, args.mem_batches[0]), (s1, args.mem_batches[1])]
    if not args.quick:
        cases.append((s2, args.mem_batches[1]))
    jobs = [(alloc, f"{arch},{size},{nb},{args.batch},{mode}") for alloc in args.allocators
            for size, nb in cases for mode in ("plain", "capture")]

    def one(job) -> dict:
        alloc, spec = job
        env = {**os.environ, "PYTHONHASHSEED": "0", **ALLOCATORS[alloc]}
        res = subprocess.run([sys.executable, __file__, "--_rss-child", spec], env=env,
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"rss child {spec} failed:\n{res.stderr[-3000:]}")
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["allocator"] = alloc
        print(f"  rss [{alloc}] {spec}: +{row['peak_growth'] / 2**20:.1f} MiB", flush=True)
        return row

    with ThreadPoolExecutor(max_workers=2 if args.quick else 1) as pool:
        return list(pool.map(one, jobs))


def rss_summary(rows: list[dict]) -> list[dict]:
    """capture - plain peak growth per (allocator, model, size, N), against N * sum(C) * 4."""
    summary = []
    keys = []
    for r in rows:
        key = (r["allocator"], r["model"], r["size"], r["n_samples"])
        if key not in keys:
            keys.append(key)
    for key in keys:
        p, c = (next(r for r in rows if (r["allocator"], r["model"], r["size"], r["n_samples"],
                                         r["mode"]) == (*key, mode))
                for mode in ("plain", "capture"))
        n = key[3]
        stored = n * c["sum_channels"] * 4
        summary.append({"allocator": key[0], "model": key[1], "size": key[2], "n_samples": n,
                        "plain_peak_growth": p["peak_growth"],
                        "capture_peak_growth": c["peak_growth"],
                        "capture_minus_plain": c["peak_growth"] - p["peak_growth"],
                        "n_sum_c_4": stored, "held_bytes": c["held_bytes"],
                        "extra_over_n_sum_c_4": (c["peak_growth"] - p["peak_growth"]) / stored})
    return summary


# --------------------------------------------------------------------------- profile


def profile_capture(arch: str, args) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    model, _, sites, batches, _ = setup(arch, args.size, min(args.batches, 2), args.batch)
    capture_run(model, sites, batches)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        capture_run(model, sites, batches)
    rows = []
    for ev in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]:
        rows.append({"op": ev.key, "calls": ev.count, "self_cpu_ms": ev.self_cpu_time_total / 1e3})
    return rows


# --------------------------------------------------------------------------- main


def machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "mi_probe/_core/capture.py",
                                "mi_probe/_core/sites"], cwd=ROOT, capture_output=True, text=True,
                               check=False).stdout.strip()
    except OSError:
        commit, dirty = None, ""
    import timm

    return {"commit": commit, "capture_code_modified_in_tree": bool(dirty),
            "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "default_threads": torch.get_num_threads()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,vgg16")
    ap.add_argument("--size", type=int, default=None,
                    help="image size in px (default 48, as in specs/; --quick: 32)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=8, help="batches per timed pass")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", default="1,default", help="comma list; 'default' = torch's")
    ap.add_argument("--mem-batches", default="16,32",
                    help="two batch counts (N = count * batch) for the peak-RSS runs")
    ap.add_argument("--mem-sizes", default="32,64",
                    help="two image sizes for the peak-RSS runs (the second at the larger N)")
    ap.add_argument("--allocators", default="fixed,default",
                    help="peak-RSS allocator settings: fixed (pinned mmap threshold), default")
    ap.add_argument("--skip-memory", action="store_true", help="no peak-RSS subprocesses")
    ap.add_argument("--memory-from", type=Path, default=None,
                    help="take the peak-RSS section from an earlier result JSON of the same "
                         "memory configuration instead of re-measuring it (a timing re-run)")
    ap.add_argument("--skip-timing", action="store_true",
                    help="no timing (memory only; held bytes from one untimed capture)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler on one capture")
    ap.add_argument("--quick", action="store_true", help="smoke run (< 1 min)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--_rss-child", dest="rss_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child)
        return {}
    if args.quick:
        args.batches, args.repeats, args.mem_batches = 1, 3, "1,4"
    if args.size is None:
        args.size = 32 if args.quick else 48
    args.mem_batches = [int(v) for v in args.mem_batches.split(",")]
    args.mem_sizes = [int(v) for v in args.mem_sizes.split(",")]
    args.allocators = [a for a in args.allocators.split(",") if a]
    if args.quick:
        args.allocators = args.allocators[:1]
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / (
            "capture_quick.json" if args.quick else "capture.json")
    models = [m for m in args.models.split(",") if m]
    default_threads = torch.get_num_threads()
    thread_list = [default_threads if t == "default" else int(t) for t in args.threads.split(",")]

    t_start = time.time()
    result = {"benchmark": "capture_overhead", "machine": machine(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "loadavg_start": os.getloadavg(),
              "config": {"models": models, "image_size": args.size, "batch": args.batch,
                         "batches_per_pass": args.batches, "n_samples": args.batch * args.batches,
                         "repeats": args.repeats, "threads": thread_list,
                         "num_classes": NUM_CLASSES, "heads": {m: HEADS.get(m, "timm") for m in models},
                         "sites": "every site of the built-in adapter (include ['*'])",
                         "quick": args.quick, "target_ratio": TARGET,
                         "mem_sizes": args.mem_sizes,
                         "mem_n_samples": [b * args.batch for b in args.mem_batches],
                         "allocators": {a: ALLOCATORS[a] for a in args.allocators}},
              "timing": [], "held_memory": {}}
    for threads in ([] if args.skip_timing else thread_list):
        torch.set_num_threads(threads)
        for arch in models:
            row = time_model(arch, args)
            held = row.pop("_held")
            result["held_memory"].setdefault(arch, held)
            result["timing"].append(row)
            print(f"{arch:9s} {row['sites']:2d} sites  {threads} thr  plain "
                  f"{row['plain_s_per_batch_median'] * 1e3:7.1f} ms/batch  capture "
                  f"{row['capture_s_per_batch_median'] * 1e3:7.1f} ms/batch  ratio "
                  f"{row['ratio_median']:.3f} [{row['ratio_min']:.3f}-{row['ratio_max']:.3f}]  cpu-time "
                  f"{row['cpu_ratio_median']:.3f}"
                  f"  logits identical: {row['logits_identical']}", flush=True)
        result.setdefault("loadavg_after_threads", {})[threads] = os.getloadavg()
    torch.set_num_threads(default_threads)
    for arch in models:
        if arch not in result["held_memory"]:
            model, _, sites, loader, _ = setup(arch, args.size, args.batches, args.batch)
            result["held_memory"][arch] = held_memory(model, sites, capture_run(model, sites, loader),
                                                      loader.dataset.tensors[0][:2])
    if args.profile:
        result["profile"] = {arch: profile_capture(arch, args) for arch in models}
    if args.memory_from is not None:
        earlier = json.loads(args.memory_from.read_text())
        keys = ("mem_sizes", "mem_n_samples", "allocators", "batch")
        if any(earlier["config"].get(k) != result["config"].get(k) for k in keys):
            raise SystemExit(f"--memory-from {args.memory_from}: another memory configuration")
        result["peak_rss"] = {**earlier["peak_rss"], "measured_in_run": {
            k: earlier.get(k) for k in ("machine", "loadavg_start", "loadavg_end", "started")}}
    elif not args.skip_memory:
        rows = []
        for arch in (models[:1] if args.quick else models):
            rows += rss_cases(arch, args)
        result["peak_rss"] = {"runs": rows, "summary": rss_summary(rows)}
    result["loadavg_end"] = os.getloadavg()
    result["wall_seconds"] = time.time() - t_start
    result["meets_target"] = (all(r["meets_target"] for r in result["timing"])
                              if result["timing"] else None)
    for arch, held in result["held_memory"].items():
        print(f"{arch}: captured {held['total_storage_bytes'] / 2**20:.2f} MiB = "
              f"{held['storage_over_n_c_4']:.3f} x N*sum(C)*4 (N = {held['n_samples']}); "
              f"unpooled outputs would be {held['total_unpooled_bytes'] / 2**20:.0f} MiB")
    for s in result.get("peak_rss", {}).get("summary", []):
        print(f"[{s['allocator']:7s}] {s['model']:9s} {s['size']:3d} px N={s['n_samples']:5d}: plain "
              f"+{s['plain_peak_growth'] / 2**20:6.1f} MiB, capture "
              f"+{s['capture_peak_growth'] / 2**20:6.1f} MiB, diff "
              f"{s['capture_minus_plain'] / 2**20:+6.1f} MiB = "
              f"{s['extra_over_n_sum_c_4']:.2f} x N*sum(C)*4 "
              f"({s['n_sum_c_4'] / 2**20:.1f} MiB)")
    print(f"load average start {result['loadavg_start']}, end {result['loadavg_end']}; "
          f"target <= {TARGET}x met: {result['meets_target']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")
    return result


if __name__ == "__main__":
    main()
