"""Where ``make demo`` spends its time: the demo spec under cProfile, wall time by stage.

``make demo`` is ``mi-probe run specs/semantic_knockout.yaml``. This script runs exactly
that command's code (``mi_probe.cli.main(["run", SPEC, ...])``, plugins autoloaded as
``make demo`` does) in a fresh Python process, in a temporary working directory, with a
fresh run folder (``--out``) and a fresh, empty model cache (``--cache-dir``), so the
resnet18 training is included and ./reports is never touched. The child process runs
under cProfile from its first line, and the wall clock is attributed to stages by timing
wrappers around the functions that implement them, innermost stage wins (so imports made
lazily inside the report count as import, and the knockout evaluations' forward passes
as interventions, not as capture):

* import: every module import (``importlib._bootstrap._find_and_load``), wherever it
  happens; the top-level imports (those not nested in another) are listed by time;
* training: ``Engine``'s ``cached_training`` (model build, the 12 epochs with their
  validation passes, ``train.train_model``); sub-row: checkpoint and weight writes;
* capture: ``Engine.capture`` (pooled activations of the sites, once per seed and state);
* estimators: the histogram estimator's methods and ``analysis.channel_masses`` (class
  masses with their shuffled-label nulls);
* interventions: ``Engine.evaluate`` with interventions (the knockout evaluations); sub-row:
  ``Evaluator.site_outputs``, the per-site full-output cache the suffix evaluations start from;
* report: ``runner.rendering.render`` (Altair charts, PNG through vl-convert, HTML, index.html);
  sub-rows: ``vl_convert.vegalite_to_png`` and ``report.chart_html``;
* other: the rest (CLI and spec, data loading, site resolution, tables, checks, run.json),
  with sub-rows for ``Engine.__init__``, table writing/merging and the experiment's
  ``finalize``.

cProfile's overhead is in every number (Python-heavy stages such as the report are
inflated most; torch kernels hardly); ``--no-cprofile`` runs the same child with the
wrappers only (give it ``--json`` elsewhere to keep the profiled results). Startup is
measured apart: ``mi-probe --version`` (not an option of the
CLI: argparse exits 2, so this is the cost of starting the entry point), ``--help``,
``plugins`` and ``validate SPEC``, 5 fresh processes each, median.

    .venv/bin/python benchmarks/profile_demo.py [--spec specs/semantic_knockout.yaml]
        [--no-cprofile] [--json PATH] [--keep-prof PATH] [--startup-runs 5] [--top 30]

Writes benchmarks/results/demo_profile.json (breakdown in seconds and %) and
demo_profile.txt (top functions by cumulative time).
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

from provenance import commit  # noqa: E402  (benchmarks/provenance.py)

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MAIN = ("import", "training", "capture", "estimators", "interventions", "report", "other")
#: (file suffix, function) pairs whose cumulative time the .txt lists
SELECTED = [
    ("train.py", "train_model"), ("train.py", "_evaluate"), ("train.py", "_save_checkpoint"),
    ("_tensor.py", "backward"), ("distributed.py", "__getitem__"),
    ("context.py", "capture"), ("evaluation.py", "site_outputs"),
    ("evaluation.py", "_suffix_evaluate"), ("evaluation.py", "model_fingerprint"),
    ("rendering.py", "render"), ("context.py", "__init__"),
    ("capture.py", "capture"), ("analysis.py", "channel_masses"),
    ("histogram.py", "label_mi"), ("histogram.py", "_codes"), ("histogram.py", "bin_uniform"),
    ("report.py", "save_chart"), ("report.py", "chart_html"), ("report.py", "render_run"),
    ("report.py", "write_index"), ("tables.py", "write_parquet"), ("digits.py", "load"),
    ("semantic_knockout.py", "run_unit"), ("knockout.py", "__call__")]


# ----------------------------------------------------------------------------- child


class Stages:
    """Exclusive wall-time attribution: time goes to the innermost active stage."""

    def __init__(self):
        self.stack = ["other"]
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.last = time.perf_counter()

    def _charge(self) -> None:
        now = time.perf_counter()
        top = self.stack[-1]
        self.totals[top] = self.totals.get(top, 0.0) + now - self.last
        self.last = now

    def enter(self, stage: str) -> None:
        self._charge()
        self.stack.append(stage)
        self.calls[stage] = self.calls.get(stage, 0) + 1

    def leave(self) -> None:
        self._charge()
        self.stack.pop()

    def wrap(self, owner, name: str, stage) -> None:
        """Replace ``owner.name`` by a timed version; ``stage`` may be a function of the
        call's arguments returning the stage name (or None: not timed)."""
        original = getattr(owner, name)
        stages = self

        def timed(*args, **kwargs):
            label = stage(*args, **kwargs) if callable(stage) else stage
            if label is None:
                return original(*args, **kwargs)
            stages.enter(label)
            try:
                return original(*args, **kwargs)
            finally:
                stages.leave()

        timed.__wrapped__ = original
        setattr(owner, name, timed)


def child(args) -> None:
    t_start = time.perf_counter()
    profile = None
    if not args.no_cprofile:
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    stages = Stages()
    stages.last = t_start
    import importlib._bootstrap as bootstrap

    top_imports: dict[str, float] = {}
    depth = [0]
    original_find_and_load = bootstrap._find_and_load

    def find_and_load(name, import_):
        depth[0] += 1
        t0 = time.perf_counter()
        stages.enter("import")
        try:
            return original_find_and_load(name, import_)
        finally:
            stages.leave()
            depth[0] -= 1
            if depth[0] == 0:
                top_imports[name] = top_imports.get(name, 0.0) + time.perf_counter() - t0

    bootstrap._find_and_load = find_and_load

    # The modules whose functions are timed must be imported to be patched; their import
    # time is charged to "import" as it would be anyway.
    from mi_probe import cli, train
    from mi_probe._core.runner import context, driver, evaluation, training
    from mi_probe.builtin.estimators import histogram
    from mi_probe.builtin.experiments import knockout, semantic_knockout

    from mi_probe._core import distributed

    E = context.Engine
    stages.wrap(training, "cached_training", "training")
    stages.wrap(train, "_save_checkpoint", "training:checkpoint writes")
    stages.wrap(train, "save_weights", "training:checkpoint writes")
    stages.wrap(train, "_evaluate", "training:validation passes")
    stages.wrap(distributed.SeededItems, "__getitem__", "training:data items (augmentation)")
    stages.wrap(E, "capture", "capture")
    stages.wrap(E, "evaluate", lambda self, model, interventions=(), *a, **k:
                "interventions" if interventions else "capture")
    stages.wrap(evaluation.Evaluator, "_suffix_evaluate", lambda self, model, site, *a, **k:
                f"interventions:suffix forward from {site.name}")
    stages.wrap(evaluation.Evaluator, "site_outputs",
                "interventions:site-output cache (forward to the site)")
    stages.wrap(evaluation, "model_fingerprint", "interventions:model fingerprint checks")
    stages.wrap(E, "__init__", "other:engine init (data, plugins)")
    for name in ("label_mi", "input_mi", "layer_mi", "diagnostics", "pair_mi"):
        stages.wrap(histogram.HistogramEstimator, name, "estimators")
    stages.wrap(knockout, "channel_masses", "estimators")
    stages.wrap(semantic_knockout, "channel_masses", "estimators")
    stages.wrap(driver, "render", "report")
    stages.wrap(driver, "write_parquet", "other:tables (merge, write, finalize)")
    stages.wrap(driver, "concat_tables", "other:tables (merge, write, finalize)")
    stages.wrap(semantic_knockout.SemanticKnockout, "finalize",
                "other:tables (merge, write, finalize)")
    stages.wrap(driver, "evaluate_checks", "other:checks")
    from mi_probe._core import report

    stages.wrap(report, "chart_html", "report:chart html")
    import vl_convert

    stages.wrap(vl_convert, "vegalite_to_png", "report:vl-convert png")

    t_run = time.perf_counter()
    code = cli.main(["run", str(args.spec), "--out", str(args.out), "--cache-dir",
                     str(args.cache), "--no-progress"])
    t_end = time.perf_counter()
    stages._charge()
    if profile is not None:
        profile.disable()
        profile.dump_stats(str(args.stats))
    json.dump({"exit_code": code, "wall_in_child_s": t_end - t_start,
               "run_call_s": t_end - t_run, "stages": stages.totals, "calls": stages.calls,
               "top_imports": dict(sorted(top_imports.items(), key=lambda kv: -kv[1])[:15])},
              open(args.child_out, "w"), indent=1)


# ----------------------------------------------------------------------------- parent


def _timed_process(argv: list[str], runs: int, cwd: Path) -> dict:
    walls, codes = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        codes.append(res.returncode)
    return {"argv": [Path(argv[0]).name, *argv[1:]], "median_s": statistics.median(walls),
            "runs_s": walls, "exit_codes": sorted(set(codes))}


def breakdown(stages: dict[str, float], wall: float) -> tuple[list[dict], list[dict]]:
    """Main stages (sub-rows folded into their stage) and the sub-rows, in s and %."""
    main = {name: 0.0 for name in MAIN}
    subs = []
    for label, seconds in stages.items():
        head = label.split(":", 1)[0]
        main[head] = main.get(head, 0.0) + seconds
        if ":" in label:
            subs.append({"stage": head, "part": label.split(":", 1)[1], "seconds": seconds,
                         "percent": 100 * seconds / wall})
    rows = [{"stage": k, "seconds": v, "percent": 100 * v / wall} for k, v in main.items()]
    return rows, sorted(subs, key=lambda r: -r["seconds"])


def parent(args) -> dict:
    import torch

    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    spec = (ROOT / args.spec).resolve() if not Path(args.spec).is_absolute() else Path(args.spec)
    meta = {"benchmark": "demo_profile", "spec": str(spec.relative_to(ROOT)),
            "commit": commit(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "cprofile": not args.no_cprofile,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    exe = str(VENV_BIN / "mi-probe")
    with tempfile.TemporaryDirectory(prefix="profile-demo-") as tmp:
        tmp = Path(tmp)
        startup = {
            "version": _timed_process([exe, "--version"], args.startup_runs, tmp),
            "help": _timed_process([exe, "--help"], args.startup_runs, tmp),
            "plugins": _timed_process([exe, "plugins"], args.startup_runs, tmp),
            "validate": _timed_process([exe, "validate", str(spec)], args.startup_runs, tmp)}
        print("startup (median of %d): " % args.startup_runs + ", ".join(
            f"{k} {v['median_s']:.2f} s (exit {v['exit_codes']})" for k, v in startup.items()),
            flush=True)
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--spec", str(spec),
                "--out", str(tmp / "run"), "--cache", str(tmp / "cache"),
                "--stats", str(tmp / "demo.prof"), "--child-out", str(tmp / "child.json")]
        if args.no_cprofile:
            argv.append("--no-cprofile")
        t0 = time.perf_counter()
        res = subprocess.run(argv, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            sys.stderr.write(res.stdout + res.stderr)
            raise SystemExit(f"the profiled demo run failed (exit {res.returncode})")
        info = json.loads((tmp / "child.json").read_text())
        run_json = json.loads((tmp / "run" / "run.json").read_text())
        text = ""
        if not args.no_cprofile:
            import io
            import pstats

            buf = io.StringIO()
            stats = pstats.Stats(str(tmp / "demo.prof"), stream=buf)
            stats.strip_dirs().sort_stats("cumulative").print_stats(args.top)
            text = buf.getvalue()
            buf = io.StringIO()
            stats.stream = buf
            stats.sort_stats("tottime").print_stats(15)
            text += "\n\n==== top 15 by own (total) time ====\n" + buf.getvalue()
            text += "\n\n==== selected functions (cumulative s, calls) ====\n"
            selected = {}
            for (fname, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():
                for want in SELECTED:
                    if func == want[1] and fname.endswith(want[0]):
                        selected[f"{want[0]}:{func}"] = {"cumulative_s": ct, "calls": nc,
                                                          "own_s": tt}
            for name, row in sorted(selected.items(), key=lambda kv: -kv[1]["cumulative_s"]):
                text += f"{row['cumulative_s']:10.2f} s {row['calls']:8d} calls  {name}\n"
            if args.keep_prof:
                import shutil

                shutil.copy(tmp / "demo.prof", args.keep_prof)
        figures = sorted(p.name for p in (tmp / "run" / "figures").iterdir())
    # the process's own start (interpreter, site) is the part of the wall the child did
    # not see; it is charged to import
    stages = dict(info["stages"])
    stages["import"] = stages.get("import", 0.0) + max(0.0, wall - info["wall_in_child_s"])
    rows, subs = breakdown(stages, wall)
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out = {"meta": meta, "wall_s": wall, "exit_code": info["exit_code"],
           "breakdown": rows, "sub_rows": subs, "calls": info["calls"],
           "top_imports_s": info["top_imports"], "startup": startup,
           "run_json_timings": run_json.get("timings"),
           "trained": run_json.get("trained_models"), "figures": figures,
           "stderr_tail": res.stderr[-3000:]}
    target = args.json or results / "demo_profile.json"
    target.write_text(json.dumps(out, indent=1) + "\n")
    if text:
        header = (f"# cProfile of `mi-probe run {meta['spec']}` (fresh --out and --cache-dir), "
                  f"commit {meta['commit']}, torch {meta['torch']}, {meta['threads']} threads, "
                  f"wall {wall:.1f} s, load average {meta['loadavg_start']} -> "
                  f"{meta['loadavg_end']}\n# top {args.top} functions by cumulative time\n\n")
        (results / "demo_profile.txt").write_text(header + text)
    print(f"demo wall {wall:.1f} s (cProfile {'on' if not args.no_cprofile else 'off'}):")
    for r in rows:
        print(f"  {r['stage']:<14} {r['seconds']:8.1f} s  {r['percent']:5.1f} %")
    for r in subs:
        print(f"    {r['stage']}: {r['part']:<36} {r['seconds']:8.1f} s  {r['percent']:5.1f} %")
    print(f"load average {meta['loadavg_start']} -> {meta['loadavg_end']} -> {target}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="specs/semantic_knockout.yaml")
    ap.add_argument("--no-cprofile", action="store_true")
    ap.add_argument("--startup-runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--json", type=Path, default=None, help="where the breakdown goes "
                    "(default benchmarks/results/demo_profile.json)")
    ap.add_argument("--keep-prof", type=Path, default=None, help="also copy the raw cProfile "
                    "stats there")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
