"""One unit in a process of its own: what a Ray task (or a torchrun rank) runs.

A payload (``engine.job_payload``) is JSON: the resolved spec, how to rebuild the plugin
manager, the shared run directory and model cache, and the unit's name. The worker
rebuilds everything from it, computes the unit and writes its results where the driver
reads them, so nothing but a short receipt travels back. A training unit that asks for
several processes is re-launched under ``torchrun`` (DDP); ``python -m mi_probe.jobs
PAYLOAD.json`` is what each of its ranks runs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mi_probe.errors import RunError


def run_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Run the unit described by ``payload`` and return a receipt (unit, seconds, host)."""
    from mi_probe.distributed import launched_world_size

    t0 = time.perf_counter()
    if (payload["stage"] == "train" and payload.get("processes", 1) > 1
            and launched_world_size() == 1):
        _torchrun(payload)
    else:
        _run_here(payload)
    return {"unit": payload["unit"], "seconds": time.perf_counter() - t0,
            "host": socket.gethostname()}


def _run_here(payload: dict[str, Any]) -> None:
    import torch.distributed

    from mi_probe.distributed import init_from_env, launched_world_size
    from mi_probe.engine import Engine, run_analysis_unit
    from mi_probe.models import resolve_device
    from mi_probe.plugins import get_plugin_manager
    from mi_probe.spec import load_spec_text

    log_path = Path(payload["log"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as handle:
        def log(message: str) -> None:
            handle.write(message + "\n")
            handle.flush()

        pm = get_plugin_manager(**payload["plugins"])
        spec = load_spec_text(payload["spec"], payload["source"], pm=pm)
        dist_ctx = None
        if launched_world_size() > 1:
            dist_ctx = init_from_env(resolve_device(spec.device).type)
        try:
            engine = Engine(spec, pm, Path(payload["cache_dir"]), log=log, progress=False,
                            dist_ctx=dist_ctx)
            unit = payload["unit"]
            if payload["stage"] == "train":
                requests = {r.label: r for r in engine.training_requests()}
                if unit not in requests:
                    raise RunError(f"training unit {unit} is not one this spec asks for "
                                   f"({', '.join(requests) or 'none'})")
                engine.run_training(requests[unit], dist_ctx)
            else:
                run_analysis_unit(engine, Path(payload["run_dir"]), unit)
        finally:
            if dist_ctx is not None:
                torch.distributed.destroy_process_group()


def _torchrun(payload: dict[str, Any]) -> None:
    """Train one model with ``payload['processes']`` DDP processes on this node."""
    n = int(payload["processes"])
    log_path = Path(payload["log"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    job_file = log_path.with_suffix(".json")
    job_file.write_text(json.dumps(payload))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={n}", "-m", "mi_probe.jobs", str(job_file)]
    with log_path.open("a", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        raise RunError(f"torchrun with {n} processes for {payload['unit']} exited with "
                       f"status {result.returncode}; last lines of {log_path}:\n"
                       + "\n".join(tail))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mi_probe.jobs PAYLOAD.json", file=sys.stderr)
        return 2
    run_job(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
