"""Built-in executor ``ray``: hands each unit to Ray as a task with the spec's resource
request.

Ray is an optional dependency (``pip install 'mi-probe[ray]'``), imported only when a
spec asks for it (``import ray`` is an absolute import: this module,
``mi_probe.builtin.executors.ray``, never shadows it). A Ray task runs
``jobs.entry(payload)`` in a worker: it rebuilds the plugin manager and the spec there
and writes the unit's results into the run directory (or the model cache), which must
be on a path every node sees.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mi_probe.plugin import hookimpl, RunError, StageJobs


class Resources(BaseModel):
    """What one unit asks the cluster for."""

    model_config = ConfigDict(extra="forbid")
    cpus: float = Field(1.0, gt=0, description="CPU cores per unit (torch threads follow)")
    gpus: float = Field(0.0, ge=0, description="GPUs per unit (fractions share a GPU)")
    processes: int | None = Field(
        None, ge=1, description="training processes per model (DDP through torchrun); "
        "default: one per whole GPU, or 1 without GPUs")

    def process_count(self) -> int:
        return self.processes if self.processes is not None else max(1, int(self.gpus))


_ADDRESS = re.compile(r"^(auto|local|ray://[^\s/:]+:\d+|[^\s/:]+:\d+)$")


class RayParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["ray"] = "ray"
    address: str = Field("local", description="local: start a Ray instance in this process; "
                         "auto: join the cluster this node belongs to (RAY_ADDRESS or "
                         "`ray start`); ray://host:port: Ray client; host:port: a head node")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local instance "
                                 "(default: all); ignored when joining a cluster")
    # pydantic's Field stub (without its mypy plugin) infers Never from a model class
    train: Resources = Field(default_factory=Resources,  # type: ignore[arg-type]
                             description="per (model, seed) training unit")
    analysis: Resources = Field(default_factory=Resources,  # type: ignore[arg-type]
                                description="per experiment unit")
    max_retries: int = Field(1, ge=0, description="retries of a failed unit before it is "
                             "reported by name")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _ADDRESS.match(value):
            raise ValueError(f"expected auto, local, ray://host:port or host:port; got {value!r}")
        return value

    @model_validator(mode="after")
    def _analysis_single_process(self) -> "RayParams":
        if self.analysis.processes not in (None, 1):
            raise ValueError("analysis.processes must be 1: only training runs on several "
                             "processes (DDP)")
        return self


def _describe_failure(exc: BaseException) -> str:
    """The root cause of a Ray failure in one line."""
    cause = getattr(exc, "cause", None)
    if cause is not None and cause is not exc:
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _largest_node(ray: Any) -> dict[str, float]:
    """Per resource, the most any live node offers."""
    best: dict[str, float] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for key, value in node.get("Resources", {}).items():
                best[key] = max(best.get(key, 0.0), float(value))
    return best


class RayExecutor:
    """Every unit becomes a Ray task (``max_retries`` retries, application errors
    included); the driver waits for all of them and reports failures by unit name."""

    name = "ray"

    def __init__(self, params: RayParams):
        self.params = params
        self._ray: Any = None
        self._started = False

    def _connect(self) -> Any:
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            raise RunError("executor 'ray' needs Ray, which is not installed here; install "
                           "it with: pip install 'mi-probe[ray]'") from None
        address = self.params.address
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
            if address == "local":
                kwargs.update(address="local", num_cpus=self.params.num_cpus)
            else:
                kwargs["address"] = address
            # ray.init replaces the process's SIGTERM handler for good (even after
            # shutdown) with one that raises SystemExit wherever the process is: a test
            # runner then only fails its running test instead of stopping. Put back what
            # was there; a run handles SIGTERM itself (driver.terminate_as_interrupt).
            previous = (signal.getsignal(signal.SIGTERM)
                        if threading.current_thread() is threading.main_thread() else None)
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RunError(f"cannot start or reach Ray at address {address!r}: "
                               f"{str(exc).splitlines()[0] if str(exc) else exc}") from None
            finally:
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)
            self._started = True
        self._ray = ray
        return ray

    def run(self, jobs: StageJobs) -> dict[str, str]:
        ray = self._connect()
        resources = self.params.train if jobs.stage == "train" else self.params.analysis
        processes = resources.process_count() if jobs.stage == "train" else 1
        largest = _largest_node(ray)
        for what, need in (("CPU", resources.cpus), ("GPU", resources.gpus)):
            if need and largest.get(what, 0) < need:
                raise RunError(f"executor.{jobs.stage} asks for {need:g} {what}(s) per unit but "
                               f"the largest node of the Ray cluster has "
                               f"{largest.get(what, 0):g}; a unit runs on one node")
        remote = ray.remote(jobs.entry)
        pending: dict[Any, str] = {}
        started: dict[str, float] = {}
        for unit in jobs.units:
            # torch threads per process follow the CPUs asked for (Ray sets
            # OMP_NUM_THREADS only when unset, and a reused worker keeps its first value)
            payload = dict(jobs.payload(unit), processes=processes,
                           threads=max(1, int(resources.cpus // processes)))
            ref = remote.options(num_cpus=resources.cpus, num_gpus=resources.gpus,
                                 max_retries=self.params.max_retries, retry_exceptions=True,
                                 name=f"mi-probe {jobs.stage} {unit}").remote(payload)
            pending[ref] = unit
            started[unit] = time.perf_counter()
        jobs.log(f"ray: submitted {len(jobs.units)} {jobs.stage} unit(s) "
                 f"({resources.cpus:g} CPU, {resources.gpus:g} GPU"
                 + (f", {processes} processes" if processes > 1 else "") + " each)")
        failures: dict[str, str] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                unit = pending.pop(ref)
                try:
                    info = ray.get(ref)
                except Exception as exc:  # any failure is reported by unit name
                    attempts = self.params.max_retries + 1
                    failures[unit] = (f"failed after {attempts} attempt(s): "
                                      f"{_describe_failure(exc)}")
                    jobs.log(f"ray: {jobs.stage} unit {unit} {failures[unit]}")
                else:
                    jobs.log(f"ray: finished {jobs.stage} unit {unit} in "
                             f"{info.get('seconds', time.perf_counter() - started[unit]):.1f}s"
                             f" on {info.get('host', '?')}")
        return failures

    def close(self) -> None:
        if self._ray is not None and self._started:
            self._ray.shutdown()
        self._ray = None
        self._started = False


@hookimpl
def mi_probe_register_executors(register):
    register("ray", RayExecutor, RayParams)


__all__ = ["RayExecutor", "RayParams", "Resources"]
