"""Peak memory of ``layer_mi`` at N = 50,000 against N = 5,000: streamed from the
activation store against held in memory.

The spec: ``layer_mi`` on a randomly initialised resnet18 (no training), every site
(``sites: {include: ["*"]}``), on synthetic images (8 px, 10 classes), the histogram
estimator (30 bins, 3 shuffled-label null draws), one seed, the random state only. Each
measurement is a fresh Python process running the spec end to end
(``driver.run``: data, model, capture, estimates, tables, report); its peak resident
set size is ``getrusage(RUSAGE_SELF).ru_maxrss`` at its end. Variants:

* ``memory``: today's path, the store off: the pooled capture of every site is held
  whole (N x channels x 4 bytes) while the estimator runs;
* ``stream``: ``eval.stream_mb: 0`` with a fresh store: the capture writes every batch
  to the store and keeps nothing; the estimator reads each site chunk by chunk.

Headline: stream's peak at 50,000 over its peak at 5,000 (goal <= 1.2), beside
memory's. The script also checks the two variants' layer_mi and channel_mi tables are
equal at each N (so streaming changes memory, not results).

    .venv/bin/python benchmarks/bench_stream_rss.py [--sizes 5000,50000]
        [--out benchmarks/results/stream_rss.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

GOAL = 1.2
SPEC = """\
name: bench_stream_rss
seeds: [0]
data: {{kind: synthetic, n_classes: 10, n_train: 16, n_val: {n}, image_size: 8, noise: 1.0}}
model: {{arch: resnet18, weights: random}}
sites: {{include: ["*"]}}
estimator: {{kind: histogram, bins: 30}}
experiment: {{kind: layer_mi, states: [random], null_draws: 3}}
eval: {{batch_size: 500, stream_mb: {stream_mb}}}
report: {{formats: [html]}}
"""


def child(n: int, variant: str, folder: Path) -> None:
    """Run the spec once; print peak RSS (MiB) and where the tables are, as JSON."""
    os.environ["MI_PROBE_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    os.environ["MI_PROBE_STORE"] = "off" if variant == "memory" else str(folder / "store")
    from mi_probe._core.plugins import get_plugin_manager
    from mi_probe._core.runner.driver import run
    from mi_probe._core.spec import load_spec_text

    pm = get_plugin_manager(autoload=False)
    text = SPEC.format(n=n, stream_mb=0 if variant == "stream" else 1_000_000)
    outcome = run(load_spec_text(text, "bench_stream_rss.yaml", pm=pm), pm, out=folder / "run",
                  cache_dir=folder / "cache", log=lambda m: None, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_mib": peak, "run": str(outcome.run_dir)}))


def measure(n: int, variant: str) -> tuple[float, Path, tempfile.TemporaryDirectory]:
    folder = tempfile.TemporaryDirectory()
    out = subprocess.run([sys.executable, __file__, "--child", str(n), variant, folder.name],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{variant} at N={n} failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["peak_mib"], Path(result["run"]), folder


def _same_tables(a: Path, b: Path, label: str) -> None:
    import polars as pl

    for table in ("layer_mi", "channel_mi"):
        # run_id names the run (its time), not a value
        x = pl.read_parquet(a / "tables" / f"{table}.parquet").drop("run_id", strict=False)
        y = pl.read_parquet(b / "tables" / f"{table}.parquet").drop("run_id", strict=False)
        keys = [c for c in ("seed", "state", "site", "channel") if c in x.columns]
        if not x.sort(keys).equals(y.select(x.columns).sort(keys)):
            raise SystemExit(f"{label}: {table} differs between memory and stream")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
        return
    from provenance import commit, cpu_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5000,50000")
    ap.add_argument("--out", default="benchmarks/results/stream_rss.json")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    peaks: dict[str, dict[int, float]] = {"memory": {}, "stream": {}}
    for n in sizes:
        runs = {}
        folders = []
        for variant in ("memory", "stream"):
            peak, run_dir, folder = measure(n, variant)
            peaks[variant][n] = peak
            runs[variant] = run_dir
            folders.append(folder)
            print(f"N = {n:,} {variant}: peak RSS {peak:,.0f} MiB", flush=True)
        _same_tables(runs["memory"], runs["stream"], f"N = {n}")
        for folder in folders:
            folder.cleanup()
    small, large = sizes[0], sizes[-1]
    ratios = {v: peaks[v][large] / peaks[v][small] for v in peaks}
    result = {"sizes": sizes, "peak_mib": peaks, "ratio_large_over_small": ratios,
              "goal": GOAL, "commit": commit(), "cpu": cpu_model()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"peak RSS N={large:,} / N={small:,}: stream {ratios['stream']:.3f} "
          f"(goal <= {GOAL}), memory {ratios['memory']:.3f}; tables equal")


if __name__ == "__main__":
    main()
