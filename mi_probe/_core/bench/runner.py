"""``mi-probe bench-estimators``: every chosen estimator with the ``JointMI`` ability on
bmi's tasks, at bmi's protocol (N = 5,000, seeds 0–9, each sample standardised), beside
bmi's own estimators on the same samples when bmi's Python is there.

One row per (task, n, seed, estimator, source) is appended to ``rows.jsonl`` in the
output folder as soon as it is measured, so an interrupted run keeps what it finished
and a rerun with the same folder does only the rest; the tables and figures are then
written from every row of the folder (see :mod:`.summary`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from mi_probe.errors import EstimatorError, RunError, SpecError
from mi_probe._core.bench import tasks as T
from mi_probe._core.bench.rows import ROWS, RowLog
from mi_probe._core.files import atomic_write_text

#: bmi's v1 protocol: N and seeds of workflows/benchmark/v1/config.py
DEFAULT_N = 5000
DEFAULT_SEEDS = tuple(range(10))
#: the smallest sample size the bench accepts (KSG needs more rows than neighbours)
MIN_N = 10
SETTINGS = "bench.json"



# --------------------------------------------------------------------------- arguments


def parse_seeds(text: str | Iterable[int]) -> list[int]:
    """``0-9``, ``0,3,5`` or ``0-4,7`` (or a list of ints) -> sorted unique seeds."""
    if not isinstance(text, str):
        values = list(text)
        if not values or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                 and s >= 0 for s in values):
            raise SpecError(f"seeds must be non-negative integers, got {values!r}")
        return sorted({int(s) for s in values})
    seeds: set[int] = set()
    for part in text.replace(" ", "").split(","):
        lo, dash, hi = part.partition("-")
        try:
            if dash:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                seeds.update(range(a, b + 1))
            else:
                seeds.add(int(lo))
        except ValueError:
            raise SpecError(f"--seeds {text!r}: expected seeds like 0-9, 0,3,5 or 0-4,7 "
                            "(non-negative integers)") from None
    if any(s < 0 for s in seeds):
        raise SpecError(f"--seeds {text!r}: seeds must be non-negative")
    return sorted(seeds)


def check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < MIN_N:
        raise SpecError(f"--n must be an integer of at least {MIN_N} samples per task "
                        f"(bmi's protocol: {DEFAULT_N}); got {n!r}")
    return int(n)


def check_level(level: Any) -> float | None:
    if level is None:
        return None
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise SpecError(f"--interval must be a coverage level in (0, 1), e.g. 0.95; "
                        f"got {level!r}")
    return float(level)


# --------------------------------------------------------------------------- estimators


@dataclass
class Contender:
    """One estimator of the bench: ``label`` is its ``estimator`` column (kind, and the
    parameters given, if any: ``mine(steps=600)``; bmi's: ``bmi:MINE``)."""

    label: str
    kind: str
    params: dict[str, Any]
    source: str  # mi-probe | bmi
    estimator: Any = None  # the built mi-probe estimator


def _params_id(params: Mapping[str, Any]) -> str:
    if not params:
        return ""
    parts = [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in sorted(params.items())]
    return "(" + ",".join(parts) + ")"


def parse_estimator(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``KIND``, ``KIND:{yaml mapping}`` or a mapping with ``kind`` -> (kind, params)."""
    import yaml

    if isinstance(spec, Mapping):
        params = dict(spec)
        kind = params.pop("kind", None)
        if not isinstance(kind, str) or not kind:
            raise SpecError(f"an estimator mapping needs a 'kind', got {dict(spec)!r}")
        return kind, params
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"an estimator is KIND or KIND:{{yaml params}}, got {spec!r}")
    kind, _, rest = spec.partition(":")
    kind = kind.strip()
    if not rest.strip():
        return kind, {}
    try:
        loaded = yaml.safe_load(rest)
    except yaml.YAMLError as exc:
        raise SpecError(f"--estimator {spec!r}: the parameters after ':' are not YAML: "
                        f"{exc}") from None
    if not isinstance(loaded, dict):
        raise SpecError(f"--estimator {spec!r}: the parameters after ':' must be a YAML "
                        f"mapping, e.g. {kind}:{{steps: 600}}; got {loaded!r}")
    return kind, loaded


def joint_mi_kinds(pm: Any) -> tuple[list[str], dict[str, str]]:
    """Registered estimators that have ``joint_mi`` when built with default params, and
    the others with why not."""
    from mi_probe.interfaces import JointMI

    able, not_able = [], {}
    for name, entry in sorted(pm.registry.entries("estimators").items()):
        try:
            built = entry.factory(entry.params_model())
        except Exception as exc:  # noqa: BLE001 - a plugin that needs params is reported
            not_able[name] = f"cannot be built with default parameters ({exc})"
            continue
        if isinstance(built, JointMI):
            able.append(name)
        else:
            not_able[name] = "has no joint_mi"
    return able, not_able


def build_contenders(specs: Sequence[str | Mapping[str, Any]], pm: Any,
                     all_estimators: bool = False) -> list[Contender]:
    """Validated, built mi-probe estimators; every one must have ``joint_mi``."""
    from mi_probe.interfaces import JointMI

    parsed = [parse_estimator(s) for s in specs]
    if all_estimators:
        able, _ = joint_mi_kinds(pm)
        given = {kind for kind, _ in parsed}
        parsed += [(kind, {}) for kind in able if kind not in given]
    out: list[Contender] = []
    for kind, params in parsed:
        validated = pm.registry.validate_params("estimators", {"kind": kind, **params})
        estimator = pm.registry.build("estimators", validated)
        if not isinstance(estimator, JointMI):
            able, _ = joint_mi_kinds(pm)
            raise SpecError(f"estimator {kind!r} cannot take bmi's tasks: it has no "
                            f"joint_mi(x, y) (interfaces.JointMI); estimators that have it: "
                            f"{', '.join(able) or '(none registered)'}")
        label = kind + _params_id(params)
        if any(c.label == label for c in out):
            raise SpecError(f"estimator {label!r} is given twice")
        out.append(Contender(label, kind, dict(params), "mi-probe", estimator))
    return out


def bmi_contenders(specs: Sequence[str] | None) -> list[Contender]:
    from mi_probe._core.bench.bridge import DEFAULT_BMI_ESTIMATORS, parse_bmi_estimator

    out: list[Contender] = []
    for text in (DEFAULT_BMI_ESTIMATORS if specs is None else specs):
        name, params = parse_bmi_estimator(text)
        label = f"bmi:{name}{_params_id(params)}"
        if any(c.label == label for c in out):
            raise SpecError(f"bmi estimator {label!r} is given twice")
        out.append(Contender(label, name, params, "bmi"))
    return out


# --------------------------------------------------------------------------- rows log


def _settings(out: Path, wanted: dict[str, Any]) -> dict[str, Any]:
    """The folder's settings that change every row (standardisation, interval level):
    a rerun must use the same ones, so rows of one folder stay comparable."""
    path = out / SETTINGS
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{path} is not a bench settings file ({exc})") from None
    for key, value in wanted.items():
        if key in meta.get("settings", {}) and meta["settings"][key] != value:
            raise RunError(f"{out} holds rows made with {key}={meta['settings'][key]!r}; "
                           f"this run asks for {key}={value!r}. Use another --out (rows "
                           "of one folder must be comparable)")
    return dict(meta)


# --------------------------------------------------------------------------- one row


def _base_row(task: T.Task, n: int, seed: int, c: Contender) -> dict[str, Any]:
    return {"task": task.name, "title": task.title, "dx": task.dim_x, "dy": task.dim_y,
            "n": n, "seed": seed, "estimator": c.label, "estimator_kind": c.kind,
            "estimator_params": json.dumps(c.params, sort_keys=True), "source": c.source,
            "status": "ok", "reason": None, "estimate": None, "truth": task.truth,
            "error": None, "abs_error": None, "time_s": None, "ci_low": None,
            "ci_high": None, "ci_level": None, "interval_method": None}


def _finish(row: dict[str, Any], value: float) -> dict[str, Any]:
    if not math.isfinite(value):
        row.update(status="failed", reason=f"non-finite estimate {value}")
        return row
    row.update(estimate=value, error=value - row["truth"], abs_error=abs(value - row["truth"]))
    return row


def measure(c: Contender, task: T.Task, n: int, seed: int, x: Any, y: Any,
            level: float | None) -> dict[str, Any]:
    """One mi-probe row: the estimate (and interval), or why there is none."""
    from mi_probe.interfaces import JointMIIntervals

    row = _base_row(task, n, seed, c)
    est = c.estimator
    cap = getattr(est, "max_joint_dims", None)
    dims = task.dim_x + task.dim_y
    if cap is not None and dims > cap:
        row.update(status="skipped",
                   reason=f"dx + dy = {dims} > max_joint_dims {cap} of {c.label}")
        return row
    try:
        start = time.perf_counter()
        if level is not None and isinstance(est, JointMIIntervals):
            iv = est.joint_mi_interval(x, y, level, seed)
            elapsed = time.perf_counter() - start
            value = float(iv.estimate)
            row.update(ci_low=float(iv.low), ci_high=float(iv.high), ci_level=float(iv.level),
                       interval_method=str(iv.method))
        else:
            value = float(est.joint_mi(x, y))
            elapsed = time.perf_counter() - start
    except EstimatorError as exc:
        row.update(status="failed", reason=str(exc))
        return row
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - one broken estimator does not stop a bench
        row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        return row
    row["time_s"] = elapsed
    return _finish(row, value)


def measure_bmi(c: Contender, task: T.Task, n: int, seed: int, bridge: Any,
                paths: tuple[Path, Path]) -> dict[str, Any]:
    row = _base_row(task, n, seed, c)
    answer = bridge.estimate(c.kind, c.params, paths)
    if answer.get("ok"):
        row["time_s"] = float(answer["time_s"])
        return _finish(row, float(answer["estimate"]))
    if "skip" in answer:
        row.update(status="skipped", reason=str(answer["skip"]))
    else:
        row.update(status="failed", reason=str(answer.get("error", "unknown failure")))
    return row


# --------------------------------------------------------------------------- the bench


@dataclass
class BenchSetup:
    """Everything a bench needs, validated before any work."""

    tasks: list[T.Task]
    n: int
    seeds: list[int]
    contenders: list[Contender]
    bmi: list[Contender]
    bmi_python: Path | None
    level: float | None
    standardize: bool
    out: Path
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)


def setup(estimators: Sequence[str | Mapping[str, Any]] = (), *,
          tasks: Sequence[str] | None = None, subset: str | None = None,
          n: int = DEFAULT_N, seeds: str | Iterable[int] = DEFAULT_SEEDS,
          out: str | Path, bmi_python: str | Path | bool | None = None,
          bmi_estimators: Sequence[str] | None = None, interval: float | None = None,
          standardize: bool = True, all_estimators: bool = False, device: str = "cpu",
          pm: Any) -> BenchSetup:
    from mi_probe._core.bench.bridge import find_bmi_python

    chosen = T.select(tasks, subset if subset is not None or tasks else "all")
    n = check_n(n)
    seed_list = parse_seeds(seeds)
    level = check_level(interval)
    contenders = build_contenders(estimators, pm, all_estimators)
    python: Path | None = None
    if bmi_python is not False:
        python = find_bmi_python(None if bmi_python in (None, True) else bmi_python)  # type: ignore[arg-type]
        if bmi_python is True and python is None:
            raise SpecError("bmi's Python was asked for but none is found: pass "
                            "--bmi-python PATH, set MI_PROBE_BMI_PYTHON, or make .venv-bmi")
    if bmi_estimators and python is None:
        raise SpecError("--bmi-estimator needs bmi's Python (a separate environment: bmi "
                        "pins jax 0.4.30 and pydantic<2): pass --bmi-python PATH, set "
                        "MI_PROBE_BMI_PYTHON, or make .venv-bmi")
    bmi = bmi_contenders(bmi_estimators or None) if python is not None else []
    if not contenders and not bmi:
        raise SpecError("no estimators: give --estimator KIND (repeatable; an estimator "
                        "with joint_mi), --all-estimators, or bmi's Python for bmi's own")
    return BenchSetup(chosen, n, seed_list, contenders, bmi, python, level, standardize,
                      Path(out), device)


def _to_torch(a: np.ndarray, device: str) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=torch.float64)


def _sampler_checks(s: BenchSetup, bridge: Any, log: Callable[[str], None]
                    ) -> list[dict[str, Any]]:
    """Per task: bmi's truth and dims, and a two-sample KS test per dimension of bmi's
    own sample against mi-probe's (n and the first seed of the run, raw values)."""
    from scipy.stats import ks_2samp

    meta = bridge.tasks([t.name for t in s.tasks])
    rows = []
    seed = s.seeds[0]
    for task in s.tasks:
        info = meta[task.name]
        if (info["dim_x"], info["dim_y"]) != (task.dim_x, task.dim_y):
            raise RunError(f"bmi's task {task.name} has dims {info['dim_x']} x "
                           f"{info['dim_y']}, mi-probe's {task.dim_x} x {task.dim_y}")
        ours = np.concatenate(task.sample(s.n, seed), axis=1)
        theirs = np.concatenate(bridge.sample(task.name, s.n, seed), axis=1)
        tests = [ks_2samp(ours[:, d], theirs[:, d]) for d in range(ours.shape[1])]
        p_min = min(float(t.pvalue) for t in tests)
        dims = ours.shape[1]
        row = {"task": task.name, "title": task.title, "dx": task.dim_x, "dy": task.dim_y,
               "truth": task.truth, "truth_bmi": float(info["truth"]),
               "truth_diff": task.truth - float(info["truth"]), "check_n": s.n,
               "check_seed": seed, "ks_max": max(float(t.statistic) for t in tests),
               "ks_p_min": p_min, "ks_p_bonferroni": min(1.0, p_min * dims),
               "sampler_ok": p_min * dims >= 1e-3}
        if not row["sampler_ok"]:
            log(f"warning: {task.name}: mi-probe's sampler and bmi's differ (KS p = "
                f"{p_min:.2g} over {dims} dims)")
        rows.append(row)
    return rows


def run_bench(s: BenchSetup, log: Callable[[str], None] | None = None,
              figures: bool = True) -> Any:
    """Run (or resume) the bench of ``s`` into ``s.out``; returns the results table
    (polars) of every row of the folder."""
    from mi_probe._core.bench import summary as S

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    s.out.mkdir(parents=True, exist_ok=True)
    wanted = {"standardize": s.standardize, "interval": s.level}
    previous = _settings(s.out, wanted)
    started = time.perf_counter()
    meta: dict[str, Any] = {
        "settings": wanted, "bmi_protocol": "bmi v1 (workflows/benchmark/v1/config.py): "
        "N = 5000, seeds 0-9, each sample standardised", "status": "running",
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv, "python": platform.python_version(),
        "runs": previous.get("runs", []) + [{
            "tasks": [t.name for t in s.tasks], "n": s.n, "seeds": s.seeds,
            "estimators": [c.label for c in s.contenders + s.bmi],
            "bmi_python": str(s.bmi_python) if s.bmi_python else None}]}
    atomic_write_text(s.out / SETTINGS, json.dumps({**previous, **meta}, indent=2))
    rows = RowLog(s.out / ROWS)
    pending_total = sum(1 for t in s.tasks for seed in s.seeds for c in s.contenders + s.bmi
                        if (t.name, s.n, seed, c.label, c.source) not in rows.done)
    log(f"bench-estimators: {len(s.tasks)} task(s) x {len(s.seeds)} seed(s) x "
        f"{len(s.contenders) + len(s.bmi)} estimator(s) at n = {s.n}: {pending_total} row(s) "
        f"to do, {len(rows.rows)} already in {s.out / ROWS}")
    checks: list[dict[str, Any]] = []
    done_now = 0
    try:
        with ExitStack() as stack:
            bridge = None
            if s.bmi_python is not None:
                from mi_probe._core.bench.bridge import BmiBridge

                worker_log = stack.enter_context(open(s.out / "bmi_worker.log", "a"))
                scratch = s.out / ".bmi-exchange"
                bridge = stack.enter_context(BmiBridge(s.bmi_python, scratch, worker_log))
                meta["bmi_versions"] = bridge.versions
                log(f"bmi {bridge.versions.get('benchmark-mi', '?')} via {s.bmi_python}: "
                    "checking its truths and samplers against mi-probe's tasks")
                checks = _sampler_checks(s, bridge, log)
            for task in s.tasks:
                for seed in s.seeds:
                    todo = [c for c in s.contenders + s.bmi
                            if (task.name, s.n, seed, c.label, c.source) not in rows.done]
                    if not todo:
                        continue
                    x_np, y_np = task.sample(s.n, seed)
                    if s.standardize:
                        x_np, y_np = T.standardize(x_np), T.standardize(y_np)
                    x = y = None
                    paths = None
                    try:
                        for c in todo:
                            if c.source == "bmi":
                                if paths is None:
                                    paths = bridge.put(x_np, y_np)  # type: ignore[union-attr]
                                row = measure_bmi(c, task, s.n, seed, bridge, paths)
                            else:
                                if x is None:
                                    x, y = _to_torch(x_np, s.device), _to_torch(y_np, s.device)
                                row = measure(c, task, s.n, seed, x, y, s.level)
                            rows.add(row)
                            done_now += 1
                            log(_describe(row, done_now, pending_total))
                    finally:
                        if paths is not None:
                            bridge.drop(paths)  # type: ignore[union-attr]
    except BaseException as exc:  # finished rows stay in the log; say how it ended
        rows.close()
        meta.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                    rows=len(rows.rows))
        if not isinstance(exc, KeyboardInterrupt):
            meta["error"] = f"{type(exc).__name__}: {exc}"
        atomic_write_text(s.out / SETTINGS, json.dumps({**previous, **meta}, indent=2))
        raise
    rows.close()
    table = S.write_outputs(s.out, rows.rows, checks, figures=figures)
    meta.update(status="complete", rows=len(rows.rows), wall_s=time.perf_counter() - started,
                finished=_dt.datetime.now().isoformat(timespec="seconds"))
    atomic_write_text(s.out / SETTINGS, json.dumps({**previous, **meta}, indent=2))
    return table


def _describe(row: Mapping[str, Any], i: int, total: int) -> str:
    head = f"[{i}/{total}] {row['estimator']} on {row['task']} seed {row['seed']}: "
    if row["status"] != "ok":
        return head + f"{row['status']} ({row['reason']})"
    ci = (f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if row["ci_low"] is not None
          else "")
    return head + f"{row['estimate']:.4f}{ci} (truth {row['truth']:.4f}) in {row['time_s']:.2f} s"
