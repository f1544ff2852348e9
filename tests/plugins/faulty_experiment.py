"""A test plugin: ``layer_mi`` whose unit ``fail_unit`` fails on its first ``failures``
attempts while the file ``marker`` exists, by killing its own process (as an
out-of-memory kill or a lost node would) or by raising. Attempts are counted in
``<marker>.attempts`` so a test can see retries across worker processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Literal

from mi_probe.builtin.experiments.layer_mi import LayerMIExperiment, LayerMIParams
from mi_probe.hookspecs import hookimpl


class FaultyParams(LayerMIParams):
    kind: Literal["faulty_layer_mi"] = "faulty_layer_mi"  # type: ignore[assignment]
    fail_unit: str = "seed=1"
    marker: str
    failures: int = 2
    mode: Literal["kill", "raise"] = "kill"


class FaultyExperiment(LayerMIExperiment):
    name = "faulty_layer_mi"

    def run_unit(self, ctx, unit, plan):
        marker = Path(self.params.marker)
        if unit == self.params.fail_unit and marker.exists():
            attempts = marker.with_name(marker.name + ".attempts")
            done = len(attempts.read_text().splitlines()) if attempts.exists() else 0
            if done < self.params.failures:
                with attempts.open("a") as handle:
                    handle.write(f"{os.getpid()}\n")
                if self.params.mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"planted failure of {unit}")
        return super().run_unit(ctx, unit, plan)


@hookimpl
def mi_probe_register_experiments(register):
    register("faulty_layer_mi", FaultyExperiment, FaultyParams)
