"""The mi-probe side of the bmi bridge: bmi's Python runs ``bmi_worker.py serve`` in a
subprocess, and this module talks to it (one JSON request and answer per line), handing
samples over as ``.npy`` files in a temporary folder.

bmi cannot be installed beside mi-probe (it pins jax 0.4.30, pydantic<2, pandas<2 and
numpy 1.26), so it gets its own environment: ``--bmi-python PATH``, else
``$MI_PROBE_BMI_PYTHON``, else ``.venv-bmi/bin/python`` (what ``make .venv-bmi`` makes).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import IO, Any, Mapping

import numpy as np

from mi_probe.errors import MiProbeError, SpecError

WORKER = Path(__file__).with_name("bmi_worker.py")
ENV_VAR = "MI_PROBE_BMI_PYTHON"
DEFAULT_VENV = Path(".venv-bmi")

#: bmi's estimators the bridge runs (``bmi_worker.ESTIMATORS``; written out here so this
#: side need not import the worker, which imports bmi's numpy stack)
BMI_ESTIMATORS = ("KSG", "Histogram", "CCA", "KDE", "MINE", "InfoNCE", "NWJ", "DV")
#: what a run with bmi uses unless told otherwise: every estimator bmi's v1 benchmark ran
#: in Python (its R and Julia ones aside), with the v1 parameters
DEFAULT_BMI_ESTIMATORS = ("KSG", "Histogram", "CCA", "MINE", "InfoNCE", "NWJ", "DV")


class BmiError(MiProbeError):
    """bmi's Python is missing, broken, or its worker failed."""


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def find_bmi_python(explicit: str | Path | None = None, root: Path | None = None
                    ) -> Path | None:
    """The Python that has bmi: ``explicit``, else ``$MI_PROBE_BMI_PYTHON``, else
    ``<root or cwd>/.venv-bmi``'s; None when none is given or found. An explicit path
    or variable that does not exist is an error (a typo should not silently drop bmi)."""
    given = explicit if explicit is not None else os.environ.get(ENV_VAR) or None
    if given is not None:
        path = Path(given).expanduser()
        if path.is_dir():  # a virtual environment's folder
            path = _venv_python(path)
        if not path.exists():
            source = "--bmi-python" if explicit is not None else f"${ENV_VAR}"
            raise BmiError(f"{source} {given}: no such Python (make .venv-bmi creates one "
                           "with bmi: pip install benchmark-mi jax==0.4.30 jaxlib==0.4.30)")
        return path
    default = _venv_python((root or Path.cwd()) / DEFAULT_VENV)
    return default if default.exists() else None


def parse_bmi_estimator(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:{yaml mapping}`` (bmi's keyword arguments, e.g.
    ``MINE:{max_n_steps: 2000}``) -> (bmi name, params); names are case-insensitive."""
    import yaml

    name, _, rest = text.partition(":")
    by_lower = {n.lower(): n for n in BMI_ESTIMATORS}
    key = name.strip().lower().replace("-", "").replace("_", "")
    aliases = {"donskervaradhan": "dv", "hist": "histogram"}
    key = aliases.get(key, key)
    if key not in by_lower:
        from mi_probe._core.plugins import unknown_name_message

        raise SpecError(unknown_name_message("bmi estimator", name.strip(), BMI_ESTIMATORS))
    params: Any = {}
    if rest.strip():
        try:
            params = yaml.safe_load(rest)
        except yaml.YAMLError as exc:
            raise SpecError(f"bmi estimator {text!r}: parameters are not YAML: {exc}") from None
        if not isinstance(params, dict):
            raise SpecError(f"bmi estimator {text!r}: parameters must be a YAML mapping, "
                           f"e.g. {name}:{{max_n_steps: 2000}}; got {params!r}")
    return by_lower[key], params


class BmiBridge:
    """A running bmi worker. Use as a context manager; every call blocks until the
    worker answers. ``log`` (a file) receives the worker's stderr."""

    def __init__(self, python: str | Path, workdir: Path, log: IO[str] | None = None):
        self.python = Path(python)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
               "PYTHONNOUSERSITE": "1"}
        env.pop("PYTHONPATH", None)  # mi-probe's paths must not shadow bmi's packages
        try:
            self._proc = subprocess.Popen(
                [str(self.python), str(WORKER), "serve"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log if log is not None else subprocess.DEVNULL,
                text=True, bufsize=1, env=env)
        except OSError as exc:
            raise BmiError(f"cannot start bmi's Python {self.python}: {exc}") from None
        self._count = 0
        self.versions: dict[str, Any] = self._ask({"op": "versions"})["versions"]

    def __enter__(self) -> "BmiBridge":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        proc = self._proc
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                proc.stdin.close()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                proc.kill()
                proc.wait()

    def _ask(self, request: Mapping[str, Any]) -> dict[str, Any]:
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(dict(request)) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            code = proc.poll()
            raise BmiError(f"bmi's worker ({self.python}) stopped (exit status {code}) on "
                           f"{request.get('op')!r}; is bmi installed there? "
                           f"({self.python} -c 'import bmi' must work; the worker's log "
                           "says more)")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok") and "error" in answer and request.get("op") != "estimate":
            hint = (f"; install bmi there: {self.python} -m pip install benchmark-mi "
                    "jax==0.4.30 jaxlib==0.4.30 (or make .venv-bmi)"
                    if "No module named" in answer["error"] else "")
            raise BmiError(f"bmi's worker ({self.python}) failed on {request.get('op')!r}: "
                           f"{answer['error']}{hint}")
        return answer

    def _paths(self, stem: str) -> tuple[Path, Path]:
        self._count += 1
        return (self.workdir / f"{stem}-{self._count}-x.npy",
                self.workdir / f"{stem}-{self._count}-y.npy")

    def tasks(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """bmi's metadata of ``names``: title, dim_x, dim_y, truth. Unknown names raise."""
        answer = self._ask({"op": "tasks", "names": names})
        if answer["unknown"]:
            raise BmiError(f"bmi ({self.versions.get('benchmark-mi', '?')}) has no task(s) "
                           f"{answer['unknown']}")
        return answer["tasks"]

    def sample(self, task: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """bmi's own sample of ``task`` (its sampler and seed)."""
        px, py = self._paths("bmi-sample")
        try:
            self._ask({"op": "sample", "task": task, "n": n, "seed": seed, "x": str(px),
                       "y": str(py)})
            return np.load(px), np.load(py)
        finally:
            px.unlink(missing_ok=True)
            py.unlink(missing_ok=True)

    def put(self, x: np.ndarray, y: np.ndarray) -> tuple[Path, Path]:
        """Write a sample for :meth:`estimate` (the caller deletes it with :meth:`drop`)."""
        px, py = self._paths("sample")
        np.save(px, np.ascontiguousarray(x, dtype=np.float64))
        np.save(py, np.ascontiguousarray(y, dtype=np.float64))
        return px, py

    @staticmethod
    def drop(paths: tuple[Path, Path]) -> None:
        for p in paths:
            p.unlink(missing_ok=True)

    def estimate(self, estimator: str, params: Mapping[str, Any], paths: tuple[Path, Path]
                 ) -> dict[str, Any]:
        """bmi's ``estimator`` on the sample at ``paths``: ``{"ok": True, "estimate",
        "time_s"}``, or ``{"ok": False, "skip": reason}`` / ``{"ok": False, "error": ...}``."""
        return self._ask({"op": "estimate", "estimator": estimator, "params": dict(params),
                          "x": str(paths[0]), "y": str(paths[1])})


__all__ = ["BmiBridge", "BmiError", "find_bmi_python", "parse_bmi_estimator",
           "BMI_ESTIMATORS", "DEFAULT_BMI_ESTIMATORS"]
