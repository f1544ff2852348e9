"""Cost of per-epoch MI tracking (the ``dynamics`` experiment) as a fraction of training.

Two settings, one process:

1. **Demo** (``specs/dynamics.yaml``: resnet18, digits 48 px, 898 train / 899 eval, 8
   epochs, ReLU and tanh). The real training loop (``Engine.train``, fresh temporary
   model cache) runs with the experiment's real tracker as its ``track`` callback; the
   tracker's context is wrapped so its capture (``ctx.evaluate``) and estimator calls
   are timed. Training and tracking alternate naturally (epoch, track, epoch, track...),
   so every epoch is one interleaved repeat: training time of epoch e = wall time from
   the end of the tracking after epoch e-1 to the start of the tracking after epoch e
   (training steps, validation pass, checkpoint writes). Reported: the median over
   epochs of tracking / training, and the run total (tracking at epochs 0..E over
   training of epochs 1..E). The same callback also runs the subsample trackers
   (``experiment.track_samples`` = n, several seeds; timed apart, their time is not in
   the training time) on the same model, so their cost and their estimator error
   against full-set tracking come from the same epochs.

2. **Paper** (``specs/paper/dynamics_<arch>.yaml``: Imagenette2, 224 px, batch 64,
   eval batch 128, up to 200 epochs). Not run: its parts are timed at the paper's model
   and image size on this CPU, in interleaved repeats (rotating order, median):
   one SGD training step (forward, cross-entropy, backward, step, as ``train.py``),
   one validation batch (``train.evaluate_sums``, what every training epoch runs), one
   tracking capture batch (``Engine.evaluate(model, sites=...)``, the tracker's own
   call) and the tracker's estimators on the paper's full evaluation-set size (the real
   tracker on pooled activations of that size: the captured batch's rows tiled with a
   little noise; histogram cost does not depend on the values). Then, per sample
   (forward/backward cost is linear in the batch at these sizes):

       T_train/epoch = N_train · t_step/64 + N_val · t_val/128
       T_track/epoch = N_eval · t_cap/128 + t_est(N_eval)
       tracking / training over E epochs = (E + 1) · T_track / (E · T_train)

   with N_train = 9469, N_val = N_eval = 3925 (Imagenette2 train / val). Data loading
   (JPEG decoding, augmentation; 8 loader workers in the paper specs) is left out of
   both sides (in-memory synthetic images), and so are checkpoint writes.

    .venv/bin/python benchmarks/bench_dynamics.py [--quick] [--paper-archs vgg16,resnet18]
        [--subsample 150,300,450] [--subsample-seeds 0,1,2] [--repeats 3] [--threads N]

``--quick`` (about 3 minutes): demo with 2 epochs and ReLU only, one subsample size, paper
parts at batch 4/8 with one repeat (scaled per sample; small batches are less efficient
per sample, so its paper ratios are not for quoting). Writes
benchmarks/results/dynamics.json (``--quick``: $TMPDIR/mi-probe-dynamics-quick.json;
``--out`` for another place). Full run: about 27 minutes on 2 loaded cores.
``--reanalyse FILE`` recomputes the paper summaries of a results file from its raw times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")

from mi_probe.builtin.experiments.dynamics import Dynamics, summarise  # noqa: E402
from mi_probe._core.data import make_loader  # noqa: E402
from mi_probe._core.runner.context import Engine  # noqa: E402
from mi_probe.interfaces import Captured  # noqa: E402
from mi_probe._core.plugins import get_plugin_manager  # noqa: E402
from mi_probe._core.spec import load_spec  # noqa: E402
from mi_probe._core.train import evaluate_sums  # noqa: E402
from provenance import commit  # noqa: E402  (benchmarks/provenance.py)

#: Imagenette2 (full size) split sizes: the paper specs' data.
IMAGENETTE_TRAIN, IMAGENETTE_VAL = 9469, 3925
TEN_PERCENT = 0.10


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------- timing


class TimedEstimator:
    """The run's estimator with its tracker-facing methods timed into ``bucket``."""

    def __init__(self, est: Any, bucket: dict[str, float]):
        self._est, self._bucket = est, bucket

    def _timed(self, name: str, *args):
        t0 = time.perf_counter()
        try:
            return getattr(self._est, name)(*args)
        finally:
            self._bucket["estimators"] += time.perf_counter() - t0

    def label_mi(self, *args):
        return self._timed("label_mi", *args)

    def input_mi(self, *args):
        return self._timed("input_mi", *args)

    def diagnostics(self, *args):
        return self._timed("diagnostics", *args)

    def __getattr__(self, name: str):
        return getattr(self._est, name)


class TimedCtx:
    """An engine whose ``evaluate`` (the tracker's capture) and estimator are timed;
    everything else passes through. ``captured`` (if set) replaces evaluate's result."""

    def __init__(self, engine: Any, captured: Captured | None = None):
        self._engine = engine
        self.bucket = {"capture": 0.0, "estimators": 0.0}
        self.estimator = TimedEstimator(engine.estimator, self.bucket)
        self.captured = captured

    def evaluate(self, model, *args, **kwargs):
        if self.captured is not None:
            return Captured(acts=dict(self.captured.acts), labels=self.captured.labels,
                            logits=self.captured.logits, sites=list(self.captured.sites))
        t0 = time.perf_counter()
        try:
            return self._engine.evaluate(model, *args, **kwargs)
        finally:
            self.bucket["capture"] += time.perf_counter() - t0

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


def timed_tracker(experiment: Dynamics, ctx: TimedCtx):
    track = experiment.tracker(ctx)

    def call(model, epoch) -> tuple[dict, dict[str, float]]:
        ctx.bucket.update(capture=0.0, estimators=0.0)
        t0 = time.perf_counter()
        out = track(model, epoch)
        total = time.perf_counter() - t0
        return out, {"total": total, "capture": ctx.bucket["capture"],
                     "estimators": ctx.bucket["estimators"],
                     "other": total - ctx.bucket["capture"] - ctx.bucket["estimators"]}

    return call


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


# ----------------------------------------------------------------------------- demo


def run_demo(args, pm, workdir: Path) -> dict[str, Any]:
    overrides = list(args.demo_set)
    if args.quick:
        overrides += ["model.train.epochs=2", "experiment.acts=[relu]"]
    spec = load_spec(ROOT / "specs" / "dynamics.yaml", overrides, pm)
    engine = Engine(spec, pm, cache_dir=workdir / "cache", log=lambda _m: None, progress=False)
    params = spec.experiment
    n_eval, k = len(engine.eval_set), engine.num_classes
    bins = spec.estimator.bins
    subs = [(n, s) for n in args.subsample for s in (args.subsample_seeds if n == args.subsample[
        len(args.subsample) // 2] else args.subsample_seeds[:1])]
    result: dict[str, Any] = {
        "spec": "specs/dynamics.yaml", "overrides": overrides, "arch": spec.model.arch,
        "image_size": spec.data.image_size, "n_train": len(engine.data.train),
        "n_eval": n_eval, "classes": k, "bins": bins, "epochs": spec.model.train.epochs,
        "batch_size": spec.model.train.batch_size, "eval_batch_size": spec.eval.batch_size,
        "subsamples": [{"n": n, "seed": s} for n, s in subs], "acts": {}}
    values: dict[tuple, dict] = {}  # (act, variant) -> epoch -> tracked sites
    for act in params.acts:
        full = timed_tracker(Dynamics(params), TimedCtx(engine))
        sub_trackers = {(n, s): timed_tracker(
            Dynamics(params.model_copy(update={"track_samples": n, "track_seed": s})),
            TimedCtx(engine)) for n, s in subs}
        epochs: list[dict[str, Any]] = []
        last_end = [None]

        def track(model, epoch, _full=full, _subs=sub_trackers, _epochs=epochs, _act=act):
            start = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch, "train_wall_s": (
                start - last_end[0] if last_end[0] is not None else None), "sub": {}}
            order = [("full", _full), *[(key, fn) for key, fn in _subs.items()]]
            if epoch % 2:
                order = order[::-1]  # alternate which tracker runs first
            out_full = None
            for key, fn in order:
                out, times = fn(model, epoch)
                if key == "full":
                    out_full = out
                    row["track_s"] = times
                else:
                    row["sub"][f"n={key[0]},seed={key[1]}"] = times
                values.setdefault((_act, key), {})[epoch] = out["sites"]
            _epochs.append(row)
            last_end[0] = time.perf_counter()
            return out_full

        t0 = time.perf_counter()
        model, history = engine.train(0, model_overrides={"act": act}, track=track,
                                      track_key=f"bench-dynamics:{time.time_ns()}")
        wall = time.perf_counter() - t0
        for row, rec in zip(epochs, history):
            row["loop_seconds"] = rec["seconds"] if rec["epoch"] else None
            row["val_acc"] = rec["val_acc"]
        sites = engine.sites(model)
        trained = [r for r in epochs if r["epoch"] > 0]
        ratios = [r["track_s"]["total"] / r["train_wall_s"] for r in trained]
        track_total = sum(r["track_s"]["total"] for r in epochs)
        train_total = sum(r["train_wall_s"] for r in trained)
        part = {"wall_s": wall, "epochs": epochs,
                "median_train_epoch_s": _median([r["train_wall_s"] for r in trained]),
                "median_track_s": _median([r["track_s"]["total"] for r in epochs]),
                "median_track_capture_s": _median([r["track_s"]["capture"] for r in epochs]),
                "median_track_estimators_s": _median([r["track_s"]["estimators"] for r in epochs]),
                "median_ratio": _median(ratios), "ratio_range": [min(ratios), max(ratios)],
                "total_fraction": track_total / train_total,
                "track_total_s": track_total, "train_total_s": train_total, "subsample": {}}
        for n, s in subs:
            name = f"n={n},seed={s}"
            sub_ratios = [r["sub"][name]["total"] / r["train_wall_s"] for r in trained]
            sub_total = sum(r["sub"][name]["total"] for r in epochs)
            part["subsample"][name] = {
                "median_track_s": _median([r["sub"][name]["total"] for r in epochs]),
                "median_ratio": _median(sub_ratios), "total_fraction": sub_total / train_total,
                "speedup_vs_full": track_total / sub_total}
        part["errors"] = {}
        for n, s in subs:
            part["errors"][f"n={n},seed={s}"] = subsample_error(
                values[(act, "full")], values[(act, (n, s))], sites, history, params,
                engine.estimator, n_eval, n, k)
        result["acts"][act] = part
    all_ratios = [x for a in result["acts"].values()
                  for x in [r["track_s"]["total"] / r["train_wall_s"] for r in a["epochs"]
                            if r["epoch"] > 0]]
    track_all = sum(a["track_total_s"] for a in result["acts"].values())
    train_all = sum(a["train_total_s"] for a in result["acts"].values())
    result["median_ratio"] = _median(all_ratios)
    result["total_fraction"] = track_all / train_all
    result["subsample_total_fraction"] = {
        f"n={n},seed={s}": sum(a["subsample"][f"n={n},seed={s}"]["total_fraction"]
                               * a["train_total_s"] for a in result["acts"].values()) / train_all
        for n, s in subs}
    return result


def _frame(tracked: dict[int, dict], sites, history) -> Any:
    import polars as pl

    acc = {int(r["epoch"]): r["val_acc"] for r in history}
    rows = [{"epoch": e, "site": s.name, "depth": s.depth, "site_kind": s.kind,
             "i_xt": tracked[e][s.name]["i_xt"], "i_ty": tracked[e][s.name]["i_ty"],
             "val_acc": acc[e]} for e in sorted(tracked) for s in sites]
    return pl.DataFrame(rows, schema_overrides={"i_xt": pl.Float64, "i_ty": pl.Float64})


def subsample_error(full: dict, sub: dict, sites, history, params, est, n_full: int, n: int,
                    k: int) -> dict[str, Any]:
    """|I_sub − I_full| of the tracked per-site values over epochs and sites, the signed
    I(T;Y) shift against the predicted plug-in bias change, and the derived quantities
    (ΔI, plateau epoch, post-plateau slopes) from both series."""
    d_ty, d_xt = [], []
    for e in full:
        for s in sites:
            a, b = full[e][s.name], sub[e][s.name]
            d_ty.append(b["i_ty"] - a["i_ty"])
            d_xt.append(b["i_xt"] - a["i_xt"])
    bias_full, bias_sub = est.bias(n_full, k), est.bias(n, k)
    shift = bias_sub - bias_full
    abs_ty = sorted(abs(x) for x in d_ty)
    abs_xt = sorted(abs(x) for x in d_xt)
    corrected = sorted(abs(x - shift) for x in d_ty)

    def q(xs, p):
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    s_full, _ = summarise(_frame(full, sites, history), params)
    s_sub, _ = summarise(_frame(sub, sites, history), params)
    derived = {}
    for key in ("delta_i_xt", "delta_i_ty", "plateau_epoch", "post_plateau_slope_i_xt",
                "post_plateau_slope_i_ty", "i_xt_init", "i_ty_init", "i_ty_best"):
        derived[key] = {"full": s_full[key], "sub": s_sub[key],
                        "diff": (s_sub[key] - s_full[key]) if None not in (
                            s_full[key], s_sub[key]) else None}
    mean_ty = statistics.mean(a["i_ty"] for e in full for a in full[e].values())
    return {"n": n, "n_full": n_full, "cells": len(d_ty),
            "i_ty_abs_err": {"median": q(abs_ty, 0.5), "p90": q(abs_ty, 0.9), "max": abs_ty[-1]},
            "i_ty_signed_mean": statistics.mean(d_ty),
            "i_ty_abs_err_after_bias_shift": {"median": q(corrected, 0.5),
                                              "p90": q(corrected, 0.9), "max": corrected[-1]},
            "i_xt_abs_err": {"median": q(abs_xt, 0.5), "p90": q(abs_xt, 0.9), "max": abs_xt[-1]},
            "i_xt_signed_mean": statistics.mean(d_xt),
            "mean_i_ty_full": mean_ty,
            "plugin_bias_full": bias_full, "plugin_bias_sub": bias_sub,
            "plugin_bias_change": shift, "derived": derived}


# ----------------------------------------------------------------------------- paper


def run_paper(arch: str, args, pm, workdir: Path) -> dict[str, Any]:
    path = ROOT / "specs" / "paper" / f"dynamics_{arch}.yaml"
    raw = load_spec(path, [], pm)
    tb, eb = args.paper_train_batch, args.paper_eval_batch
    size = raw.data.image_size
    spec = load_spec(path, [
        f"data={{kind: synthetic, n_classes: 10, n_train: {tb}, n_val: {eb}, "
        f"image_size: {size}, noise: 1.0}}", "device=cpu", f"eval.batch_size={eb}",
        "model.train.num_workers=0"], pm)
    engine = Engine(spec, pm, cache_dir=workdir / "cache", log=lambda _m: None,
                    progress=False)
    model = engine.build_model(0).to(engine.device)
    sites = engine.sites(model)
    cfg = raw.model.train
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    x_train = torch.stack([engine.data.train[i][0] for i in range(tb)])
    y_train = torch.tensor([engine.data.train[i][1] for i in range(tb)])
    val_loader = make_loader(engine.data.val, eb, shuffle=False)
    n_eval, n_train = args.paper_n_eval, args.paper_n_train
    tiled: dict[int, Captured] = {}

    def step() -> None:
        model.train()
        loss = F.cross_entropy(model(x_train), y_train)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def val() -> None:
        evaluate_sums(model, val_loader, engine.device)

    def capture() -> Captured:
        return engine.evaluate(model, sites=sites)

    def fake(n: int) -> Captured:
        if n not in tiled:
            cap = capture()
            gen = torch.Generator().manual_seed(0)
            acts = {}
            for s in sites:
                a = cap.acts[s.name]
                reps = a[torch.arange(n) % a.shape[0]]
                noise = torch.randn(reps.shape, generator=gen) * 1e-3 * (a.std(0) + 1e-6)
                acts[s.name] = reps + noise
            tiled[n] = Captured(acts=acts, labels=torch.arange(n) % engine.num_classes,
                                logits=torch.zeros(n, engine.num_classes), sites=sites)
        return tiled[n]

    est_ns = sorted({n_eval, *[n for n in args.paper_subsample if n < n_eval]})
    trackers = {}
    for n in est_ns:
        ctx = TimedCtx(engine, captured=fake(n))
        trackers[n] = timed_tracker(Dynamics(spec.experiment), ctx)

    # warm-up (allocator, kernels) on small inputs, then interleaved repeats
    model.train()
    loss = F.cross_entropy(model(x_train[:2]), y_train[:2])
    loss.backward()
    optimizer.zero_grad(set_to_none=True)
    val()
    for n in est_ns:
        trackers[n](model, 0)
    parts = {"train_step": step, "val_batch": val, "capture_batch": capture,
             **{f"estimators_n{n}": (lambda n=n: trackers[n](model, 0)) for n in est_ns}}
    times: dict[str, list[float]] = {name: [] for name in parts}
    est_only: dict[str, list[float]] = {f"estimators_n{n}": [] for n in est_ns}
    names = list(parts)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            out = parts[name]()
            times[name].append(time.perf_counter() - t0)
            if name.startswith("estimators_"):
                est_only[name].append(out[1]["estimators"])
    result = {
        "spec": str(path.relative_to(ROOT)), "arch": arch, "head": raw.model.head,
        "image_size": size, "sites": len(sites), "site_pattern": raw.sites.include,
        "channels": [s.channels for s in sites], "train_batch": tb, "eval_batch": eb,
        "repeats": args.repeats, "times_s": times, "estimators_only_s": est_only,
        "n_train": n_train, "n_val": n_eval, "n_eval": n_eval, "subsample_n": est_ns,
        "epochs_max": cfg.epochs,
        "formula": ("T_train/epoch = N_train*t_step/64 + N_val*t_val/128; T_track/epoch = "
                    "N_eval*t_cap/128 + t_est(N_eval); fraction(E) = (E+1)*T_track / "
                    "(E*T_train) (E+1: tracking also runs at initialisation)"),
        "left_out": "data loading (JPEG decode, augmentation) and checkpoint writes"}
    return paper_summary(result)


def paper_summary(p: dict[str, Any]) -> dict[str, Any]:
    """Medians, per-sample costs and the estimate from a paper part's raw times (also
    per repeat: each repeat timed every part once, so it gives an estimate of its own)."""
    tb, eb, times = p["train_batch"], p["eval_batch"], p["times_s"]
    if "estimators_only_s" not in p:  # results written before the lists were kept
        p = {**p, "estimators_only_s": {k: v for k, v in times.items()
                                        if k.startswith("estimators_n")},
             "estimators_only_note": "per-repeat estimator times are the tracker's total "
             "on the tiled capture (estimators + bookkeeping); medians as measured"}
        p["subsample_n"] = sorted(int(k[len("estimators_n"):]) for k in p["estimators_only_s"])
    n_train, n_val = p["n_train"], p["n_val"]
    med = {name: statistics.median(v) for name, v in times.items()}
    med_est = p.get("median_estimators_only_s") if "estimators_only_note" in p else None
    med_est = med_est or {name: statistics.median(v)
                          for name, v in p["estimators_only_s"].items()}
    t_step_ps, t_val_ps, t_cap_ps = (med["train_step"] / tb, med["val_batch"] / eb,
                                     med["capture_batch"] / eb)
    t_train_epoch = n_train * t_step_ps + n_val * t_val_ps
    estimates = {}
    for n in p["subsample_n"]:
        key = f"estimators_n{n}"
        t_track = n * t_cap_ps + med_est[key]
        per_repeat = [
            (n * cap / eb + est) / (n_train * step / tb + n_val * val / eb)
            for step, val, cap, est in zip(times["train_step"], times["val_batch"],
                                           times["capture_batch"], p["estimators_only_s"][key])]
        estimates[f"n={n}"] = {
            "track_epoch_s": t_track, "capture_s": n * t_cap_ps, "estimators_s": med_est[key],
            "ratio_per_epoch": t_track / t_train_epoch,
            "ratio_per_repeat": per_repeat,
            "fraction_E200": 201 * t_track / (200 * t_train_epoch),
            "fraction_E50": 51 * t_track / (50 * t_train_epoch)}
    return {**p, "median_s": med, "median_estimators_only_s": med_est,
            "per_sample_s": {"train_step": t_step_ps, "val": t_val_ps, "capture": t_cap_ps},
            "train_epoch_s": t_train_epoch, "estimates": estimates}


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="paper parts (default 3; quick 1)")
    ap.add_argument("--paper-archs", default="vgg16,resnet18")
    ap.add_argument("--paper-train-batch", type=int, default=None,
                    help="default 64 (the paper's); quick 4")
    ap.add_argument("--paper-eval-batch", type=int, default=None,
                    help="default 128 (the paper specs' eval.batch_size); quick 8")
    ap.add_argument("--paper-n-train", type=int, default=IMAGENETTE_TRAIN)
    ap.add_argument("--paper-n-eval", type=int, default=IMAGENETTE_VAL)
    ap.add_argument("--paper-subsample", default="1000",
                    help="track_samples values estimated at paper scale")
    ap.add_argument("--subsample", default=None, help="demo track_samples values "
                    "(default 150,300,450; quick 300)")
    ap.add_argument("--subsample-seeds", default=None, help="track_seed values for the middle "
                    "subsample size (default 0,1,2; quick 0)")
    ap.add_argument("--demo-set", action="append", default=[], help="extra --set for the demo")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--reanalyse", type=Path, default=None, metavar="JSON",
                    help="recompute the paper summaries of a results file from its raw times")
    args = ap.parse_args(argv)
    if args.reanalyse:
        data = json.loads(args.reanalyse.read_text())
        for arch, part in data.get("paper", {}).items():
            data["paper"][arch] = paper_summary(part)
        args.reanalyse.write_text(json.dumps(data, indent=1, default=str) + "\n")
        return data
    q = args.quick
    args.repeats = args.repeats or (1 if q else 3)
    args.paper_train_batch = args.paper_train_batch or (4 if q else 64)
    args.paper_eval_batch = args.paper_eval_batch or (8 if q else 128)
    args.subsample = [int(x) for x in (args.subsample or ("300" if q else "150,300,450")).split(",")]
    args.subsample_seeds = [int(x) for x in (args.subsample_seeds or ("0" if q else "0,1,2")).split(",")]
    args.paper_subsample = [int(x) for x in args.paper_subsample.split(",") if x]
    out = args.out or (Path(tempfile.gettempdir()) / "mi-probe-dynamics-quick.json" if q
                       else ROOT / "benchmarks" / "results" / "dynamics.json")
    if args.threads:
        torch.set_num_threads(args.threads)
    pm = get_plugin_manager()
    meta = {"benchmark": "dynamics_tracking_overhead", "quick": q, "commit": commit(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "loadavg_start": _load(), "argv": sys.argv[1:]}
    t0 = time.perf_counter()
    result: dict[str, Any] = {"meta": meta}
    with tempfile.TemporaryDirectory(prefix="bench-dynamics-") as tmp:
        if not args.skip_demo:
            result["demo"] = run_demo(args, pm, Path(tmp))
            d = result["demo"]
            print(f"demo: tracking / training median {d['median_ratio']:.1%} per epoch, run total "
                  f"{d['total_fraction']:.1%}; " + ", ".join(
                      f"track_samples {k}: {v:.1%}" for k, v in
                      d["subsample_total_fraction"].items()), flush=True)
        if not args.skip_paper:
            result["paper"] = {}
            for arch in [a for a in args.paper_archs.split(",") if a]:
                p = run_paper(arch, args, pm, Path(tmp))
                result["paper"][arch] = p
                print(f"paper {arch}: train epoch {p['train_epoch_s']:.0f} s; " + ", ".join(
                    f"{k}: track {v['track_epoch_s']:.0f} s/epoch = {v['ratio_per_epoch']:.1%}"
                    f" (E=200: {v['fraction_E200']:.1%})" for k, v in p["estimates"].items()),
                    flush=True)
    meta["loadavg_end"] = _load()
    meta["wall_s"] = time.perf_counter() - t0
    meta["threshold"] = TEN_PERCENT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"load average {meta['loadavg_start']} -> {meta['loadavg_end']}; "
          f"{meta['wall_s']:.0f} s -> {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return result


if __name__ == "__main__":
    main()
