"""Activation store: a second run's capture against the first's, and the cost of writing
the store during a capture, from one process.

Candidate: ``Engine.capture(seed, state)`` with the activation store on
(mi_probe/_core/store, docs/store.md). For each spec (default: the demo spec
``specs/semantic_knockout.yaml``, 2 sites of the trained resnet18 on the 899 digits
evaluation images at 48 px, and ``specs/layer_mi.yaml``, every one of its 17 sites) and
each repeat, three fresh engines of the spec are timed on one capture each:

* ``plain``: the store off (``Engine(store=False)``): today's capture;
* ``first``: an empty store (a new temporary folder): capture, then write every site
  and the labels and logits;
* ``second``: another engine on the store ``first`` wrote: it fingerprints the model
  (sha256 of its structure and weights) and the evaluation data, and reads the entries
  instead of running the network.

Model loading (from the model cache) and site resolution happen before the clock starts
on every side (they are not capture, and a hit needs the model for its fingerprint
anyway); the data fingerprint is computed inside ``second``'s timed call. ``plain`` and
``first`` run in alternating order between repeats. Ratios per repeat, median [min-max]
over repeats: ``second / first`` (goal <= 0.05) and the write overhead (goal <= 1.10),
twice: ``first / plain`` across two engines (on a loaded machine this carries the
run-to-run noise of two whole forward passes), and within ``first``'s own call, ``first
/ (first - write)`` with ``write`` the time spent in the capture's ``CaptureWriter`` (the
store's share of that capture). Threads: torch's default. Device: CPU.

    .venv/bin/python benchmarks/bench_store.py [--specs A.yaml,B.yaml] [--repeats 5]
        [--state trained] [--threads N] [--out benchmarks/results/store.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
os.environ.pop("MI_PROBE_STORE", None)  # the stores are chosen here

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mi_probe._core.plugins import get_plugin_manager  # noqa: E402
from mi_probe._core.runner.context import Engine  # noqa: E402
from mi_probe._core.spec import load_spec  # noqa: E402
from mi_probe._core.store import ActivationStore  # noqa: E402
from mi_probe._core.store.zarrstore import CaptureWriter  # noqa: E402

DEFAULT_SPECS = "specs/semantic_knockout.yaml,specs/layer_mi.yaml"
GOAL_SECOND = 0.05
GOAL_WRITE = 1.10


def _engine(spec, pm, store, seed: int, state: str) -> Engine:
    """An engine with its model loaded and sites resolved (outside the clock)."""
    eng = Engine(spec, pm, log=lambda m: None, progress=False, store=store)
    model = eng.model(seed, state)
    eng.sites(model)
    return eng


#: seconds spent writing the store inside the last timed capture: every call of the
#: capture's writer (per-batch appends, the outputs, the commit that publishes)
_WRITE = [0.0]


def _timing(method):
    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            _WRITE[0] += time.perf_counter() - t0
    return timed


for _name in ("append", "append_outputs", "commit"):
    setattr(CaptureWriter, _name, _timing(getattr(CaptureWriter, _name)))


def _timed(eng: Engine, seed: int, state: str) -> float:
    _WRITE[0] = 0.0
    t0 = time.perf_counter()
    eng.capture(seed, state)
    return time.perf_counter() - t0


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_spec(path: str, pm, repeats: int, state: str, seed: int) -> dict:
    spec = load_spec(ROOT / path, pm=pm)
    rows = []
    # warm-up: imports, allocator, the first forward pass
    _timed(_engine(spec, pm, False, seed, state), seed, state)
    for repeat in range(repeats):
        folder = Path(tempfile.mkdtemp(prefix="bench-store-"))
        store = ActivationStore(folder / "store")
        order = ("plain", "first") if repeat % 2 == 0 else ("first", "plain")
        times: dict[str, float] = {}
        for side in order:
            eng = _engine(spec, pm, False if side == "plain" else store, seed, state)
            times[side] = _timed(eng, seed, state)
            if side == "first":
                times["first_write"] = _WRITE[0]
        eng = _engine(spec, pm, store, seed, state)
        times["second"] = _timed(eng, seed, state)
        entries = store.entries()
        times["stored_bytes"] = sum(e.nbytes for e in entries)
        times["entries"] = len(entries)
        rows.append(times)
        subprocess.run(["rm", "-rf", str(folder)], check=False)
    probe = _engine(spec, pm, False, seed, state)
    model = probe.model(seed, state)
    sites = probe.sites(model)
    from mi_probe._core.store import data_fingerprint, model_fingerprint

    t0 = time.perf_counter()
    model_fingerprint(model)
    t_model = time.perf_counter() - t0
    t0 = time.perf_counter()
    data_fingerprint(probe.eval_set)
    t_data = time.perf_counter() - t0
    return {
        "spec": path, "state": state, "seed": seed, "n": len(probe.eval_set),
        "sites": len(sites), "channels": sum(s.channels for s in sites),
        "arch": spec.model.arch, "image_size": list(probe.image_size or []),
        "batch_size": spec.eval.batch_size,
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "repeats": rows,
        "seconds": {k: _summary([r[k] for r in rows]) for k in ("plain", "first", "second")},
        "second_over_first": _summary([r["second"] / r["first"] for r in rows]),
        "second_over_plain": _summary([r["second"] / r["plain"] for r in rows]),
        "write_overhead_first_over_plain": _summary([r["first"] / r["plain"] for r in rows]),
        "write_overhead_in_call": _summary([r["first"] / (r["first"] - r["first_write"])
                                            for r in rows]),
        "write_seconds": _summary([r["first_write"] for r in rows]),
        "hit_parts_seconds": {"model_fingerprint": t_model, "data_fingerprint": t_data},
        "stored_bytes": rows[-1]["stored_bytes"], "entries": rows[-1]["entries"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", default=DEFAULT_SPECS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--state", default="trained", choices=["trained", "random"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/store.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pm = get_plugin_manager(autoload=False)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    import zarr

    result = {
        "benchmark": "activation_store",
        "machine": {"commit": commit, "torch": torch.__version__, "zarr": zarr.__version__,
                    "python": platform.python_version(), "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads(), "device": "cpu"},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": list(os.getloadavg()),
        "goals": {"second_over_first": GOAL_SECOND, "write_overhead": GOAL_WRITE},
        "command": "python benchmarks/bench_store.py " + " ".join(sys.argv[1:]),
        "specs": [],
    }
    for path in args.specs.split(","):
        out = bench_spec(path, pm, args.repeats, args.state, args.seed)
        result["specs"].append(out)
        s, w = out["second_over_first"], out["write_overhead_first_over_plain"]
        c = out["write_overhead_in_call"]
        print(f"{path}: {out['sites']} sites, N={out['n']}: first {out['seconds']['first']['median']:.3f} s, "
              f"second {out['seconds']['second']['median']:.3f} s, plain "
              f"{out['seconds']['plain']['median']:.3f} s; second/first {s['median']:.4f} "
              f"[{s['min']:.4f}-{s['max']:.4f}]; first/plain {w['median']:.3f} "
              f"[{w['min']:.3f}-{w['max']:.3f}]; in-call write overhead {c['median']:.4f} "
              f"[{c['min']:.4f}-{c['max']:.4f}]", flush=True)
    result["loadavg_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
