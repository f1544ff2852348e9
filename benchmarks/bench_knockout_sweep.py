"""Knockout sweep at the suffix floor against today's sweep, from one process.

The spec (default ``specs/knockout.yaml``: the trained resnet18 of the digits default,
8 post-add sites, 3 fits x 3 q x 4 selections x 2 variants = 72 knockouts per site) runs
its one analysis unit (``InterventionSweep.run_unit``) on fresh engines:

* ``today``: the store off and every knockout through ``Engine.evaluate`` one at a time
  on the whole evaluation set (the path before issue 25: a forward pass per site fills
  the in-memory site-output cache, then one suffix pass per knockout, scored on its
  rows afterwards);
* ``first``: an empty activation store: one forward pass writes the full outputs of
  every site, then each site's knockouts are scored on their own rows only, stacked
  into shared suffix passes (``eval.sweep_pass_rows``);
* ``second``: another engine on the store ``first`` wrote (a later spec or run on the
  same model and data: no forward pass to the sites);
* ``unstacked``: as ``second`` with ``eval.sweep_pass_rows: 0`` (one knockout per
  pass): what scoring each knockout on its own rows gains without stacking.

Every side's table of drops must equal ``today``'s exactly (same rows, same
accuracies); the script stops with an error otherwise. Model loading and the pooled
capture are outside the clock on every side (the same work for all). Ratios per repeat,
median [min-max] over repeats: today / first and today / second (goal >= 3).

``--sequential W`` adds a fourth side: ``second`` with ``experiment.sequential: {width:
W}``: it reports the suffix evaluations (images x knockouts) it ran against the full
sweep's, and how far its drops are from the full ones (and how often the full drop lies
in its interval).

    .venv/bin/python benchmarks/bench_knockout_sweep.py [--spec specs/knockout.yaml]
        [--repeats 3] [--sequential 0.1] [--out benchmarks/results/knockout_sweep.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
os.environ.pop("MI_PROBE_STORE", None)  # the stores are chosen here

import polars as pl  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mi_probe._core.plugins import get_plugin_manager  # noqa: E402
from mi_probe._core.runner import evaluation  # noqa: E402
from mi_probe._core.runner.context import Engine  # noqa: E402
from mi_probe._core.spec import load_spec  # noqa: E402
from mi_probe._core.store import ActivationStore  # noqa: E402
from provenance import commit, cpu_model  # noqa: E402

GOAL = 3.0
KEYS = ["fit", "part", "site", "q", "selection", "draw", "variant"]


def _engine(spec, pm, store) -> Engine:
    eng = Engine(spec, pm, log=lambda m: None, progress=False, store=store)
    for seed in spec.seeds:  # model and pooled capture outside the clock
        eng.capture(seed, eng.experiment.params.state)
    return eng


def _sweep(eng: Engine, *, today: bool) -> tuple[pl.DataFrame, float, int]:
    """The sweep table, its wall time and the suffix evaluations it ran."""
    counted = [0]
    original_row_wise = evaluation.row_wise
    original_evaluate = evaluation.Evaluator.evaluate
    original_stacked = evaluation.Evaluator._stacked

    def evaluate(self, model, interventions=(), subset=None, sites=(), generator=None):
        out = original_evaluate(self, model, interventions, subset, sites, generator)
        counted[0] += int(out.labels.numel())
        return out

    def stacked(self, model, site, suffix, source, points, batched, results, *rest):
        original_stacked(self, model, site, suffix, source, points, batched, results, *rest)
        counted[0] += sum(int(results[i].rows.numel()) for i in batched)

    evaluation.Evaluator.evaluate = evaluate  # type: ignore[method-assign]
    evaluation.Evaluator._stacked = stacked  # type: ignore[method-assign]
    if today:
        evaluation.row_wise = lambda iv: False  # every knockout one at a time
    try:
        frames = []
        t0 = time.perf_counter()
        for seed in eng.spec.seeds:
            tables = eng.experiment.run_unit(eng, f"seed={seed}", None)
            frames.append(tables[eng.experiment.name])
        seconds = time.perf_counter() - t0
    finally:
        evaluation.row_wise = original_row_wise
        evaluation.Evaluator.evaluate = original_evaluate  # type: ignore[method-assign]
        evaluation.Evaluator._stacked = original_stacked  # type: ignore[method-assign]
    return pl.concat(frames, how="diagonal"), seconds, counted[0]


def _same(reference: pl.DataFrame, other: pl.DataFrame, name: str) -> None:
    cols = ["seed", *KEYS, "accuracy", "baseline_accuracy", "drop"]
    a = reference.select(cols).sort(["seed", *KEYS])
    b = other.select(cols).sort(["seed", *KEYS])
    if not a.equals(b):
        diff = a.join(b, on=["seed", *KEYS], suffix="_new").filter(
            pl.col("drop") != pl.col("drop_new"))
        raise SystemExit(f"{name}: drops differ from today's in {diff.height} rows:\n{diff}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="specs/knockout.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sequential", type=float, default=None)
    ap.add_argument("--out", default="benchmarks/results/knockout_sweep.json")
    args = ap.parse_args()
    pm = get_plugin_manager()
    spec = load_spec(ROOT / args.spec)
    rounds = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            store = ActivationStore(Path(folder) / "acts")
            today, t_today, n_today = _sweep(_engine(spec, pm, False), today=True)
            first, t_first, n_first = _sweep(_engine(spec, pm, store), today=False)
            second, t_second, n_second = _sweep(_engine(spec, pm, store), today=False)
            one_spec = spec.model_copy(deep=True)
            one_spec.eval.sweep_pass_rows = 0
            unstacked, t_unstacked, _ = _sweep(_engine(one_spec, pm, store), today=False)
            _same(today, first, "first")
            _same(today, second, "second")
            _same(today, unstacked, "unstacked")
            entry = {"today_s": t_today, "first_s": t_first, "second_s": t_second,
                     "unstacked_s": t_unstacked, "today_over_unstacked": t_today / t_unstacked,
                     "today_over_first": t_today / t_first,
                     "today_over_second": t_today / t_second,
                     "evaluations_today": n_today, "evaluations_new": n_second}
            if args.sequential is not None:
                seq_spec = spec.model_copy(deep=True)
                seq_spec.experiment.sequential = type(  # type: ignore[union-attr]
                    seq_spec.experiment).model_fields["sequential"].annotation.__args__[0](
                    width=args.sequential)
                seq, t_seq, n_seq = _sweep(_engine(seq_spec, pm, store), today=False)
                joined = today.join(seq, on=["seed", *KEYS], suffix="_seq")
                inside = joined.filter((pl.col("drop") >= pl.col("drop_ci_low"))
                                       & (pl.col("drop") <= pl.col("drop_ci_high")))
                entry.update({
                    "sequential_width": args.sequential, "sequential_s": t_seq,
                    "evaluations_sequential": n_seq,
                    "evaluations_saved": 1 - n_seq / n_second,
                    "stopped_early": int(seq["stopped_early"].sum()), "points": seq.height,
                    "max_abs_drop_error": float((joined["drop"] - joined["drop_seq"]).abs().max()),
                    "mean_abs_drop_error": float((joined["drop"] - joined["drop_seq"]).abs().mean()),
                    "full_drop_in_interval": inside.height / joined.height,
                    "mean_interval_width": float((seq["drop_ci_high"] - seq["drop_ci_low"]).mean())})
            rounds.append(entry)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in entry.items()}), flush=True)

    def summary(key: str) -> dict[str, float]:
        values = [r[key] for r in rounds]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    result = {"spec": args.spec, "repeats": args.repeats, "goal": GOAL,
              "today_over_first": summary("today_over_first"),
              "today_over_second": summary("today_over_second"),
              "rounds": rounds, "threads": torch.get_num_threads(),
              "commit": commit(), "cpu": cpu_model()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    f, s = result["today_over_first"], result["today_over_second"]
    print(f"today / first {f['median']:.2f} [{f['min']:.2f}-{f['max']:.2f}], "
          f"today / second {s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}] "
          f"(goal >= {GOAL}); drops identical in every round")


if __name__ == "__main__":
    main()
