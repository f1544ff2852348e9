"""Built-in executor ``local`` (the default): runs units one after another in this
process."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from mi_probe.plugin import hookimpl, StageJobs


class LocalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["local"] = "local"


class LocalExecutor:
    """Sequential, in this process, with one engine: a failing unit stops the run with
    its own error (finished units are kept)."""

    name = "local"

    def __init__(self, params: LocalParams):
        self.params = params

    def run(self, jobs: StageJobs) -> dict[str, str]:
        for unit in jobs.units:
            jobs.run_here(unit)
        return {}

    def close(self) -> None:
        pass


@hookimpl
def mi_probe_register_executors(register):
    register("local", LocalExecutor, LocalParams)


__all__ = ["LocalExecutor", "LocalParams"]
