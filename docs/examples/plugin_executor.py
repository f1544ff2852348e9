import traceback
from typing import Literal

from pydantic import BaseModel

from mi_probe.plugin import hookimpl


class InlineWorkerParams(BaseModel, extra="forbid"):
    kind: Literal["inline_worker"] = "inline_worker"


class InlineWorker:
    """Runs each unit the way a remote worker would, from its JSON payload alone, but in
    this process: a test bed for a cluster executor (submit `entry` with the payload)."""
    name = "inline_worker"

    def __init__(self, params): self.params = params

    def run(self, jobs):  # one stage's StageJobs -> {unit: why it failed}
        failures = {}
        for unit in jobs.units:
            try:
                jobs.entry(jobs.payload(unit))  # results land in the run dir / model cache
                jobs.log(f"{jobs.stage} unit {unit}: done")
            except Exception as exc:  # keep going: finished units are kept, failed re-run
                failures[unit] = f"{type(exc).__name__}: {exc}"
                jobs.log(traceback.format_exc())
        return failures

    def close(self): pass


@hookimpl
def mi_probe_register_executors(register):
    register("inline_worker", InlineWorker, InlineWorkerParams)
