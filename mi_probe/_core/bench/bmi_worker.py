"""The bmi side of ``mi-probe bench-estimators``: run by bmi's own Python (a separate
virtual environment: bmi pins jax 0.4.30, pydantic<2, pandas<2 and numpy 1.26), it
imports only bmi, numpy and the standard library, never mi_probe.

Two uses:

* ``python bmi_worker.py serve``: a loop over JSON requests, one per line on stdin, one
  JSON answer per line on stdout (``bridge.BmiBridge`` is the other end). Samples travel
  as ``.npy`` files in a folder both sides see. Requests (``op``): ``versions``;
  ``tasks`` (metadata of bmi tasks: dims, true MI, display name); ``sample`` (bmi's own
  sampler, to .npy); ``estimate`` (one of bmi's estimators on .npy samples);
  ``transform`` (a task's transform chain applied to given root samples); ``quit``.
* ``python bmi_worker.py fixture OUT.json [--n 2000] [--seed 0]``: writes the fixture of
  ``tests/test_bench_estimators.py`` (see :func:`fixture`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any

import numpy as np

#: bmi's estimators by the names the bench uses, with the parameters bmi's v1 benchmark
#: (workflows/benchmark/v1/config.py) gives them; a request's params override these
ESTIMATORS: dict[str, tuple[str, dict[str, Any]]] = {
    "KSG": ("KSGEnsembleFirstEstimator", {"neighborhoods": [5]}),
    "Histogram": ("HistogramEstimator", {"n_bins_x": 10}),
    "CCA": ("CCAMutualInformationEstimator", {}),
    "KDE": ("KDEMutualInformationEstimator", {}),
    "MINE": ("MINEEstimator", {"hidden_layers": [10, 5], "verbose": False}),
    "InfoNCE": ("InfoNCEEstimator", {"hidden_layers": [10, 5], "verbose": False}),
    "NWJ": ("NWJEstimator", {"hidden_layers": [10, 5], "verbose": False}),
    "DV": ("DonskerVaradhanEstimator", {"hidden_layers": [10, 5], "verbose": False}),
}

#: bmi's Histogram loops in Python over every cell of the joint histogram; above this
#: many cells (bins^(dim_x+dim_y)) a run would take hours, so it is refused
MAX_HISTOGRAM_CELLS = 10 ** 6

#: probabilities of the per-dimension quantiles the fixture stores
FIXTURE_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def _task(name: str) -> Any:
    import bmi

    try:
        return bmi.benchmark.BENCHMARK_TASKS[name]
    except KeyError:
        raise ValueError(f"bmi has no task {name!r}") from None


def _root_and_chain(sampler: Any) -> tuple[Any, list[Any]]:
    """The innermost (untransformed) sampler of a task and its TransformedSamplers,
    innermost first."""
    chain = []
    while hasattr(sampler, "_base_sampler"):
        chain.append(sampler)
        sampler = sampler._base_sampler
    return sampler, chain[::-1]


def task_info(name: str) -> dict[str, Any]:
    task = _task(name)
    return {"title": task.name, "dim_x": int(task.dim_x), "dim_y": int(task.dim_y),
            "truth": float(task.mutual_information)}


def sample(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _task(name).sample(n, seed)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def transform(name: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The task's transform chain applied to root samples (x, y)."""
    _, chain = _root_and_chain(_task(name).sampler)
    for step in chain:
        x, y = step.transform(x, y)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def make_estimator(name: str, params: dict[str, Any]) -> Any:
    import bmi

    if name not in ESTIMATORS:
        raise ValueError(f"unknown bmi estimator {name!r}; valid: {', '.join(ESTIMATORS)}")
    cls_name, defaults = ESTIMATORS[name]
    return getattr(bmi.estimators, cls_name)(**{**defaults, **params})


def estimate(name: str, params: dict[str, Any], x: np.ndarray, y: np.ndarray
             ) -> dict[str, Any]:
    if name == "Histogram":
        bins_x = int(params.get("n_bins_x", ESTIMATORS[name][1]["n_bins_x"]))
        bins_y = int(params.get("n_bins_y") or bins_x)
        cells = float(bins_x) ** x.shape[1] * float(bins_y) ** y.shape[1]
        if cells > MAX_HISTOGRAM_CELLS:
            return {"ok": False, "skip": f"bmi Histogram would loop over {cells:.3g} cells "
                    f"(bins^dims > {MAX_HISTOGRAM_CELLS:g})"}
    estimator = make_estimator(name, params)
    start = time.perf_counter()
    info: dict[str, Any] = {}
    if hasattr(estimator, "estimate_with_info"):
        result = estimator.estimate_with_info(x, y)
        value = float(result.mi_estimate)
        info = dict(getattr(result, "additional_information", None) or {})
    else:
        value = float(estimator.estimate(x, y))
    elapsed = time.perf_counter() - start
    if not np.isfinite(value):  # e.g. a neural estimator's batch larger than its train split
        said = {k: v for k, v in info.items() if isinstance(v, (bool, int, float, str))}
        return {"ok": False, "error": f"bmi's {name} returned {value}"
                + (f" ({said})" if said else "")}
    return {"ok": True, "estimate": value, "time_s": elapsed}


def versions() -> dict[str, Any]:
    from importlib.metadata import version

    out = {"python": sys.version.split()[0]}
    for dist in ("benchmark-mi", "jax", "jaxlib", "numpy", "scipy", "scikit-learn"):
        try:
            out[dist] = version(dist)
        except Exception:  # noqa: BLE001 - a missing distribution is just not listed
            pass
    return out


def handle(request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "versions":
        return {"ok": True, "versions": versions()}
    if op == "tasks":
        out, unknown = {}, []
        for name in request["names"]:
            try:
                out[name] = task_info(name)
            except ValueError:
                unknown.append(name)
        return {"ok": True, "tasks": out, "unknown": unknown}
    if op == "sample":
        x, y = sample(request["task"], int(request["n"]), int(request["seed"]))
        np.save(request["x"], x)
        np.save(request["y"], y)
        return {"ok": True, "shape_x": list(x.shape), "shape_y": list(y.shape)}
    if op == "transform":
        x, y = transform(request["task"], np.load(request["x"]), np.load(request["y"]))
        np.save(request["out_x"], x)
        np.save(request["out_y"], y)
        return {"ok": True}
    if op == "estimate":
        x, y = np.load(request["x"]), np.load(request["y"])
        return estimate(request["estimator"], dict(request.get("params") or {}), x, y)
    return {"ok": False, "error": f"unknown op {op!r}"}


def serve() -> None:
    """Answer requests until stdin closes or a ``quit`` request. Everything bmi, jax or
    an estimator prints goes to stderr; stdout carries the answers only."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if request.get("op") == "quit":
                break
            answer = handle(request)
        except Exception as exc:  # noqa: BLE001 - every failure goes back as an answer
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")


def _g(value: float) -> float:
    """7 significant digits: what the fixture needs, at a third of the size."""
    return float(f"{value:.7g}")


def fixture(n: int = 2000, seed: int = 0, rows: int = 3) -> dict[str, Any]:
    """What ``tests/test_bench_estimators.py`` compares mi-probe's tasks with: per bmi
    task, its dims and true MI (full precision), per-dimension quantiles of ``n`` bmi
    samples at ``seed`` (at ``FIXTURE_LEVELS``), Spearman correlations of a few
    coordinate pairs, and for transformed tasks ``rows`` root samples with bmi's
    transform of them (mi-probe's transforms must map the one to the other)."""
    import bmi
    from scipy.stats import spearmanr

    tasks: dict[str, Any] = {}
    for name, task in bmi.benchmark.BENCHMARK_TASKS.items():
        x, y = sample(name, n, seed)
        xy = np.concatenate([x, y], axis=1)
        dx = x.shape[1]
        pairs = {"x0,y0": (0, dx)}
        if dx > 1:
            pairs["x0,x1"] = (0, 1)
            pairs["x1,y1"] = (1, dx + 1) if y.shape[1] > 1 else (1, dx)
        pairs["xlast,ylast"] = (dx - 1, xy.shape[1] - 1)
        entry: dict[str, Any] = {
            **task_info(name),
            "quantiles": [[_g(q) for q in np.quantile(xy[:, d], FIXTURE_LEVELS)]
                          for d in range(xy.shape[1])],
            "spearman": {k: _g(spearmanr(xy[:, i], xy[:, j])[0]) for k, (i, j) in pairs.items()},
        }
        root, chain = _root_and_chain(task.sampler)
        if chain:
            rx, ry = root.sample(rows, seed)
            rx, ry = np.asarray(rx, dtype=np.float64), np.asarray(ry, dtype=np.float64)
            tx, ty = transform(name, rx, ry)
            entry["transform"] = {"root_x": rx.tolist(), "root_y": ry.tolist(),
                                  "x": tx.tolist(), "y": ty.tolist()}
        tasks[name] = entry
    return {"source": "bmi.benchmark.BENCHMARK_TASKS, sampled by bmi_worker.py fixture",
            "versions": versions(), "n": n, "seed": seed, "levels": list(FIXTURE_LEVELS),
            "tasks": tasks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="answer JSON requests on stdin (one per line)")
    fix = sub.add_parser("fixture", help="write the bmi task fixture (JSON)")
    fix.add_argument("out", help="the JSON file to write")
    fix.add_argument("--n", type=int, default=2000, help="samples per task")
    fix.add_argument("--seed", type=int, default=0, help="bmi's sampling seed")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve()
        return 0
    data = fixture(args.n, args.seed)
    with open(args.out, "w") as fh:
        json.dump(data, fh, separators=(",", ":"))
        fh.write("\n")
    print(f"wrote {args.out}: {len(data['tasks'])} tasks", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
