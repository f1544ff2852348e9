"""KSG at scale: the ``ksg`` plugin's ``joint_mi`` against bmi's and scikit-learn's KSG.

One process times our joint KSG (Kraskov et al. 2004 estimator 1, max-norm) with each
neighbour backend (``kdtree``: scikit-learn's KDTree; ``faiss``: faiss-cpu's IndexFlat
with METRIC_Linf, float32 candidates certified in float64), then, in bmi's own
environment (a subprocess: bmi pins pydantic<2), bmi 0.1.3's
``KSGEnsembleFirstEstimator(neighborhoods=(k,), metric chebyshev)``, which times itself
and returns its value (a time limit stops it; the outcome is recorded with the error),
then ``sklearn.feature_selection.mutual_info_regression(n_neighbors=k)``, which takes a
1-D target only, so it runs on the 1v1 cases. Cases: correlated Gaussians 1v1 (rho 0.75)
and 5v5 (rho 0.5 per coordinate pair) at N = 5,000 and 50,000, float64, k = 3.

Our values and bmi's are on the same float64 arrays without standardizing (the same
definition: they agree to summation order); sklearn standardizes and jitters, so its
value is compared with ours under ``standardize: true``. Ratios are peer seconds / our
KD-tree seconds from the same run. Writes benchmarks/results/ksg_scale.json.

    nice -n 10 .venv/bin/python benchmarks/bench_ksg_scale.py [--bmi-python PATH]
        [--bmi-limit 90] [--sizes 5000 50000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from provenance import commit, cpu_model  # noqa: E402

from mi_probe_ksg import KSGEstimator, KSGParams  # noqa: E402
from mi_probe_ksg import joint as J  # noqa: E402

BMI_SCRIPT = ROOT / "plugins" / "mi-probe-ksg" / "tests" / "bmi_ksg_ref.py"
K = 3


def gaussian(n: int, dim: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """x, y (N, dim): y_t = rho x_t + sqrt(1 - rho^2) e_t; I = -dim/2 ln(1 - rho^2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho * rho) * torch.randn(n, dim, generator=g,
                                                         dtype=torch.float64)
    return x.numpy(), y.numpy(), -dim / 2 * math.log(1 - rho * rho)


def machine() -> dict:
    cpu = cpu_model()
    import scipy
    import sklearn

    facts = {"python": platform.python_version(), "machine": platform.machine(), "cpu": cpu,
             "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
             "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
             "sklearn": sklearn.__version__}
    if J.faiss_available():
        import faiss

        facts["faiss"] = faiss.__version__
        facts["faiss_omp_threads"] = faiss.omp_get_max_threads()
    return facts


def timed(fn, repeats: int) -> dict:
    """``fn()`` ``repeats`` times: the fastest call's seconds (all of them listed) and the
    value (the same every call)."""
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "all_seconds": times, "value": value}


def time_ours(x: np.ndarray, y: np.ndarray, neighbors: str, repeats: int,
              standardize: bool = False) -> dict:
    est = KSGEstimator(KSGParams.model_validate({"k": K, "neighbors": neighbors,
                                                 "standardize": standardize}))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return timed(lambda: est.joint_mi(xt, yt), repeats)


def time_sklearn(x: np.ndarray, y: np.ndarray, repeats: int) -> dict:
    from sklearn.feature_selection import mutual_info_regression

    return timed(lambda: float(mutual_info_regression(x, y[:, 0], n_neighbors=K,
                                                      random_state=0)[0]), repeats)


def run_bmi(python: str | None, cases: list[dict], limit: float) -> list[dict]:
    """bmi on every case in one subprocess (its import of jax is paid once)."""
    if python is None or not Path(python).is_file():
        return [{"error": f"bmi environment not found ({python})"} for _ in cases]
    with tempfile.TemporaryDirectory() as tmp:
        spec = []
        for i, case in enumerate(cases):
            np.save(f"{tmp}/x{i}.npy", case["x"])
            np.save(f"{tmp}/y{i}.npy", case["y"])
            spec.append({"x": f"{tmp}/x{i}.npy", "y": f"{tmp}/y{i}.npy", "k": K,
                         "standardize": False,
                         "limit_s": limit if case["x"].shape[0] > 10_000 else None})
        Path(f"{tmp}/cases.json").write_text(json.dumps(spec))
        done = subprocess.run([python, str(BMI_SCRIPT), f"{tmp}/cases.json"],
                              capture_output=True, text=True)
    if done.returncode != 0:
        return [{"error": f"exit {done.returncode}: {done.stderr[-500:]}"} for _ in cases]
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bmi-python", default=os.environ.get("MI_PROBE_BMI_PYTHON",
                                                               "/tmp/bmitest/bin/python"))
    parser.add_argument("--bmi-limit", type=float, default=120.0,
                        help="seconds bmi may run on one case above N = 10,000")
    parser.add_argument("--faiss-max-n", type=int, default=20_000,
                        help="largest N timed with the faiss backend (its float32 Linf brute "
                        "force is O(N^2): larger N are extrapolated from the smallest)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="calls per timing at N <= 10,000 (the fastest is kept)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50_000])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ksg_scale.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    load0 = os.getloadavg()
    backends = ["kdtree"] + (["faiss"] if J.faiss_available() else [])
    warm_x, warm_y, _ = gaussian(500, 2, 0.5, seed=0)
    for backend in backends:  # imports and first-call costs, outside the timings
        time_ours(warm_x, warm_y, backend, 1)
    time_sklearn(warm_x[:, :1], warm_y[:, :1], 1)
    cases = []
    for n in args.sizes:
        reps = args.repeats if n <= 10_000 else 1
        for dim, rho in ((1, 0.75), (5, 0.5)):
            x, y, truth = gaussian(n, dim, rho, seed=n + dim)
            case = {"dims": f"{dim}v{dim}", "n": n, "rho": rho, "truth": truth, "x": x, "y": y,
                    "ours": {}}
            for backend in backends:
                if backend == "faiss" and n > args.faiss_max_n:
                    case["ours"][backend] = {"skipped": f"N > --faiss-max-n {args.faiss_max_n}"}
                    continue
                case["ours"][backend] = time_ours(x, y, backend, reps)
                print(f"{case['dims']} N={n} ours {backend}: {case['ours'][backend]}", flush=True)
            if dim == 1:
                case["ours_standardized"] = time_ours(x, y, "kdtree", 1, standardize=True)
                case["sklearn"] = time_sklearn(x, y, reps)
                print(f"{case['dims']} N={n} sklearn: {case['sklearn']}", flush=True)
            cases.append(case)
    for case, outcome in zip(cases, run_bmi(args.bmi_python, cases, args.bmi_limit)):
        case["bmi"] = outcome
        print(f"{case['dims']} N={case['n']} bmi: {outcome}", flush=True)
    small = {c["dims"]: c for c in cases if c["n"] == min(args.sizes)}
    rows = []
    for case in cases:
        ours = case["ours"]["kdtree"]
        ratios = {}
        faiss_run = case["ours"].get("faiss", {})
        if "value" in faiss_run:
            ratios["faiss_over_kdtree"] = faiss_run["seconds"] / ours["seconds"]
            assert faiss_run["value"] == ours["value"]  # exact by construction
        elif "skipped" in faiss_run and "value" in small[case["dims"]]["ours"].get("faiss", {}):
            scale = (case["n"] / min(args.sizes)) ** 2
            faiss_run["extrapolated_seconds_n2"] = (
                small[case["dims"]]["ours"]["faiss"]["seconds"] * scale)
            ratios["faiss_over_kdtree_extrapolated"] = (faiss_run["extrapolated_seconds_n2"]
                                                        / ours["seconds"])
        bmi = case["bmi"]
        if "value" in bmi:
            ratios["bmi_over_ours"] = bmi["seconds"] / ours["seconds"]
            case["bmi_minus_ours"] = bmi["value"] - ours["value"]
        elif case["n"] > min(args.sizes) and "value" in small[case["dims"]]["bmi"]:
            # not measured: bmi's pairwise distances make it O(N^2); scaled from the
            # smallest N of the same case, labelled as an extrapolation
            scale = (case["n"] / min(args.sizes)) ** 2
            bmi["extrapolated_seconds_n2"] = small[case["dims"]]["bmi"]["seconds"] * scale
            ratios["bmi_over_ours_extrapolated"] = bmi["extrapolated_seconds_n2"] / ours["seconds"]
        if "sklearn" in case:
            ratios["sklearn_over_ours"] = case["sklearn"]["seconds"] / ours["seconds"]
            case["sklearn_minus_ours_standardized"] = (case["sklearn"]["value"]
                                                       - case["ours_standardized"]["value"])
        case["ratios"] = ratios
        rows.append({key: value for key, value in case.items() if key not in ("x", "y")})
    result = {"what": "KSG estimator 1 (max-norm), k = 3, float64 Gaussians; seconds of one "
                      "call each, in one process (bmi in its own subprocess, one call per "
                      "case, import excluded)",
              "commit": commit(), "argv": sys.argv[1:], "machine": machine(),
              "threads": {"ours_kdtree_workers": torch.get_num_threads(),
                          "bmi_n_jobs": 1, "sklearn_n_jobs": 1},
              "loadavg_start": [round(v, 2) for v in load0],
              "loadavg_end": [round(v, 2) for v in os.getloadavg()],
              "cases": rows, "total_seconds": time.perf_counter() - start}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"| case | N | ours kdtree s | ours faiss s | bmi s | sklearn s | I (truth) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        faiss_s = r["ours"].get("faiss", {}).get("seconds",
                                                 r["ours"].get("faiss", {}).get("skipped"))
        bmi = r["bmi"].get("seconds") if "value" in r["bmi"] else r["bmi"].get("error")
        sk = r.get("sklearn", {}).get("seconds")
        print(f"| {r['dims']} | {r['n']} | {r['ours']['kdtree']['seconds']:.3f} | "
              f"{round(faiss_s, 3) if isinstance(faiss_s, float) else faiss_s} | {bmi} | "
              f"{sk if sk is None else round(sk, 3)} | "
              f"{r['ours']['kdtree']['value']:.4f} ({r['truth']:.4f}) |")
    print(f"total {result['total_seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
