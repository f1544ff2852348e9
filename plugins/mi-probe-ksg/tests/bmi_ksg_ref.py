"""bmi's KSG on saved arrays, run in bmi's own environment (bmi pins pydantic<2, so it
cannot share mi-probe's); used by the tests and benchmarks/bench_ksg_scale.py.

    python bmi_ksg_ref.py cases.json

``cases.json`` is a list of ``{"x": "x.npy", "y": "y.npy", "k": 3, "standardize": false,
"limit_s": 120}`` (``limit_s`` optional). Prints one JSON list with, per case,
``{"value", "seconds", "bmi"}`` (``seconds`` times ``estimate`` alone, not the import)
or ``{"error": ...}`` when bmi raises or runs past ``limit_s`` (the outcome to record).
The estimator is ``bmi.estimators.KSGEnsembleFirstEstimator(neighborhoods=(k,))`` with the
Chebyshev metric on both sides: Kraskov et al. estimator 1 with the max-norm.
"""

import json
import signal
import sys
import time

import numpy as np


class _Limit(Exception):
    pass


def _alarm(signum, frame):
    raise _Limit()


def run(case: dict, version: str) -> dict:
    from bmi.estimators import KSGEnsembleFirstEstimator

    x, y = np.load(case["x"]), np.load(case["y"])
    est = KSGEnsembleFirstEstimator(neighborhoods=(int(case["k"]),),
                                    standardize=bool(case["standardize"]),
                                    metric_x="chebyshev", metric_y="chebyshev")
    limit = case.get("limit_s")
    t0 = time.perf_counter()
    try:
        if limit:
            signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, float(limit))
        value = float(est.estimate(x, y))
    except _Limit:
        return {"error": f"did not finish within {limit} s (stopped)",
                "seconds": time.perf_counter() - t0}
    except BaseException as exc:  # MemoryError and friends are the outcome to record
        return {"error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return {"value": value, "seconds": time.perf_counter() - t0, "bmi": version}


def main() -> None:
    from importlib.metadata import version

    with open(sys.argv[1]) as fh:
        cases = json.load(fh)
    v = version("benchmark-mi")
    print(json.dumps([run(c, v) for c in cases]))


if __name__ == "__main__":
    main()
