"""One unit in a process of its own: what a Ray task (or a torchrun rank) runs.

A payload (``stages.job_payload``) is JSON: the resolved spec, how to rebuild the plugin
manager, the shared run directory and model cache, and the unit's name. The worker
rebuilds everything from it, computes the unit and writes its results where the driver
reads them, so nothing but a short receipt travels back. A training unit that asks for
several processes is re-launched under ``torchrun`` (DDP); ``python -m
mi_probe._core.runner.worker PAYLOAD.json`` is what each of its ranks runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from mi_probe.errors import RunError


def run_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Run the unit described by ``payload`` and return a receipt (unit, seconds, host)."""
    from mi_probe._core.distributed import launched_world_size

    t0 = time.perf_counter()
    _enter_driver_folder(payload)
    if payload.get("threads"):
        import torch

        torch.set_num_threads(int(payload["threads"]))
    if (payload["stage"] == "train" and payload.get("processes", 1) > 1
            and launched_world_size() == 1):
        _torchrun(payload)
    else:
        _run_here(payload)
    return {"unit": payload["unit"], "seconds": time.perf_counter() - t0,
            "host": socket.gethostname()}


def _enter_driver_folder(payload: dict[str, Any]) -> None:
    """Work in the driver's folder, so relative paths of the spec (data.root, weights)
    mean what they meant there: on a cluster it must be on the shared filesystem."""
    cwd = payload.get("cwd")
    if cwd is None:
        return
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise RunError(f"the driver's working directory {cwd} is not usable on "
                       f"{socket.gethostname()} ({exc.strerror}); run mi-probe from a "
                       "folder on the filesystem every node mounts") from None


def _run_here(payload: dict[str, Any]) -> None:
    log_path = Path(payload["log"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as handle:
        def log(message: str) -> None:
            handle.write(message + "\n")
            handle.flush()

        try:
            _compute(payload, log)
        except BaseException:
            log(traceback.format_exc())  # the driver shows one line; the log has it all
            raise


def _compute(payload: dict[str, Any], log: Callable[[str], None]) -> None:
    import torch.distributed

    from mi_probe._core.distributed import init_from_env, launched_world_size
    from mi_probe.interfaces import Plan
    from mi_probe._core.models import resolve_device
    from mi_probe._core.plugins import get_plugin_manager
    from mi_probe._core.runner.context import Engine
    from mi_probe._core.runner.units import run_analysis_unit
    from mi_probe._core.spec import load_spec_text

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
            units = engine.training_units()
            if unit not in units:
                raise RunError(f"training unit {unit} is not one this spec asks for "
                               f"({', '.join(units) or 'none'})")
            engine.run_training(units[unit], dist_ctx)
        else:
            plan = Plan.from_json(payload["plan"])
            if unit not in plan.units:
                raise RunError(f"analysis unit {unit} is not in the plan "
                               f"({', '.join(plan.units) or 'no units'})")
            run_analysis_unit(engine, Path(payload["run_dir"]), unit, plan)
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
               f"--nproc_per_node={n}", "-m", "mi_probe._core.runner.worker", str(job_file)]
    with log_path.open("a", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        # its own process group (torchrun and its ranks), ended with this process: a
        # retried task must not find the previous attempt still training
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=_die_with_parent)
        try:
            returncode = process.wait()
        except BaseException:
            _end_group(process)
            raise
    if returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        raise RunError(f"torchrun with {n} processes for {payload['unit']} exited with "
                       f"status {returncode}; last lines of {log_path}:\n"
                       + "\n".join(tail))


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when its parent dies (a Ray
    worker killed outright runs no cleanup); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _end_group(process: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mi_probe._core.runner.worker PAYLOAD.json", file=sys.stderr)
        return 2
    run_job(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
