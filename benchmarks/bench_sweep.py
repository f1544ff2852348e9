"""Wall time of a seeds sweep: the local executor vs the Ray executor on this machine.

The same spec (``layer_mi`` on resnet18, digits at 48 px, 2 training epochs, 4 seeds)
runs end to end through ``mi_probe._core.runner.driver.run``, from an empty model cache each time:

* ``local``: the default executor, sequential, torch at its default thread count;
* ``local-1t``: the same at one torch thread (what each Ray task gets with 1 CPU);
* ``ray``: ``executor: {kind: ray, address: local, num_cpus: N}``, one task per training
  and per analysis unit, each asking for 1 CPU. The time includes starting and stopping
  the local Ray instance and importing torch in every worker.

Variants are interleaved over ``--repeats`` rounds; the headline is the median over
rounds of local / ray. The tables of every run are checked equal (up to row order and
the wall-clock ``seconds`` column) to the ``local-1t`` run: a Ray task with one CPU runs
torch on one thread, and training is deterministic per thread count.

    .venv/bin/python benchmarks/bench_sweep.py [--repeats 2] [--seeds 4] [--epochs 2]

Prints one line for the README and writes benchmarks/results/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")

import polars as pl  # noqa: E402
import torch  # noqa: E402

from mi_probe._core.runner.driver import run  # noqa: E402
from mi_probe._core.plugins import get_plugin_manager  # noqa: E402
from mi_probe._core.spec import load_spec_text  # noqa: E402

SPEC = """\
name: bench_sweep
seeds: SEEDS
data: {kind: digits, image_size: 48}
model:
  arch: resnet18
  weights: train
  train: {epochs: EPOCHS, batch_size: 64, lr: 0.02}
sites: {include: ["*.post_add"]}
estimator: {kind: histogram, bins: 20}
report: {formats: [html]}
experiment: {kind: layer_mi}
"""


def comparable(tables: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    out = {}
    for name, frame in tables.items():
        frame = frame.drop([c for c in frame.columns if c == "seconds"])
        out[name] = frame.sort(frame.columns)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep.json")
    args = parser.parse_args()

    pm = get_plugin_manager(autoload=False)
    text = SPEC.replace("SEEDS", str(list(range(args.seeds)))).replace("EPOCHS", str(args.epochs))
    variants = {
        "local": ([], None),
        "local-1t": ([], 1),
        "ray": ([f'executor={{"kind": "ray", "address": "local", "num_cpus": {args.cpus}}}'],
                None),
    }
    default_threads = torch.get_num_threads()
    times: dict[str, list[float]] = {k: [] for k in variants}
    reference = None
    equal: dict[str, bool] = {}
    work = Path(tempfile.mkdtemp(prefix="mi-probe-bench-sweep-"))
    try:
        for round_ in range(args.repeats):
            order = list(variants)[round_ % 3:] + list(variants)[:round_ % 3]
            for name in order:
                overrides, threads = variants[name]
                spec = load_spec_text(text, "bench_sweep.yaml", overrides, pm=pm)
                torch.set_num_threads(threads or default_threads)
                folder = work / f"{name}-{round_}"
                t0 = time.perf_counter()
                outcome = run(spec, pm, out=folder / "run", cache_dir=folder / "cache",
                              log=lambda m: None, progress=False)
                times[name].append(time.perf_counter() - t0)
                torch.set_num_threads(default_threads)
                tables = comparable(outcome.tables)
                if name == "local-1t" and reference is None:
                    reference = tables
                if reference is not None and name != "local":
                    equal[name] = equal.get(name, True) and all(
                        tables[t].equals(reference[t]) for t in reference)
                print(f"round {round_}: {name} {times[name][-1]:.1f}s", flush=True)
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {k: statistics.median(v) for k, v in times.items()}
    ratios = [a / b for a, b in zip(times["local"], times["ray"])]
    ratios_1t = [a / b for a, b in zip(times["local-1t"], times["ray"])]
    result = {
        "spec": text, "cpus": args.cpus, "default_threads": default_threads,
        "seconds": times, "median_seconds": median,
        "speedup_ray_vs_local_median": statistics.median(ratios),
        "speedup_ray_vs_local_1thread_median": statistics.median(ratios_1t),
        "tables_equal_to_local_1thread": equal,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "load_average": os.getloadavg()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"sweep of {args.seeds} seeds: local {median['local']:.1f}s "
          f"({default_threads} threads), local 1 thread {median['local-1t']:.1f}s, "
          f"ray ({args.cpus} CPUs) {median['ray']:.1f}s; ray speed-up "
          f"{result['speedup_ray_vs_local_median']:.2f}x vs local, "
          f"{result['speedup_ray_vs_local_1thread_median']:.2f}x vs 1 thread; "
          f"tables equal to local-1t: {equal}")


if __name__ == "__main__":
    main()
