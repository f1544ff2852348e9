"""Startup of the command line: ``mi-probe --help``, ``plugins`` and ``schema``, each in
a fresh process, against a bare ``python -c pass`` timed in the same loop.

Every repeat runs the four commands once, in a rotating order, each in a new
subprocess (wall time from start to exit, output discarded; every run must exit 0).
The headline per command is the median over repeats of its wall time and of the
per-repeat ratio to ``python -c pass`` [min–max]: on a shared, loaded machine only the
ratio carries over. One more run of each command under ``python -X importtime`` gives
the import time by top-level package (torch, timm, torchvision, polars, altair,
pydantic, ...) and whether torch was imported at all.

The commands run as installed (``.venv/bin/mi-probe``, the plugin distributions'
entry points included unless ``MI_PROBE_DISABLE_PLUGIN_AUTOLOAD=1``); set
``PYTHONPATH`` to another checkout to measure that one with the same interpreter.

    .venv/bin/python benchmarks/bench_cli_startup.py [--repeats 7] [--json PATH]

Prints a table and writes benchmarks/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"--help": ["--help"], "plugins": ["plugins"], "schema": ["schema"]}
#: the subprocesses' working folder: not the repository root, which ``python -c`` and
#: ``-m`` would put first on sys.path (ahead of PYTHONPATH)
CWD = tempfile.gettempdir()
#: packages whose import time is reported on its own
PACKAGES = ("torch", "timm", "torchvision", "polars", "altair", "pydantic", "numpy",
            "pluggy", "yaml", "mi_probe")


def entry_point() -> list[str]:
    """The installed ``mi-probe`` script beside this interpreter, else ``-m mi_probe.cli``."""
    script = Path(sys.executable).with_name("mi-probe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mi_probe.cli"]


def measured_checkout() -> tuple[str, str | None]:
    """The folder mi_probe is imported from in the subprocesses (PYTHONPATH may point
    elsewhere than this checkout) and its commit, ``+dirty`` when tracked files differ."""
    where = subprocess.run([sys.executable, "-c", "import mi_probe, pathlib; "
                            "print(pathlib.Path(mi_probe.__file__).resolve().parents[1])"],
                           capture_output=True, text=True, check=True, cwd=CWD).stdout.strip()

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=where, capture_output=True,
                              text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return where, (head + ("+dirty" if dirty else "") if head else None)


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          cwd=CWD)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")
    return elapsed


def import_profile(args: list[str]) -> dict:
    """Self import time by top-level package (s and share) of one run under -X importtime."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "mi_probe.cli", *args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=CWD)
    per: dict[str, int] = {}
    total = 0
    modules = set()
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if not m:
            continue
        us, name = int(m[1]), m[2]
        modules.add(name)
        total += us
        top = name.split(".")[0]
        per[top] = per.get(top, 0) + us
    return {"total_s": round(total / 1e6, 3), "torch_imported": "torch" in modules,
            "timm_imported": "timm" in modules,
            "by_package": {p: {"s": round(per.get(p, 0) / 1e6, 3),
                               "share": round(per.get(p, 0) / total, 3) if total else 0.0}
                           for p in PACKAGES}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/cli_startup.json")
    args = ap.parse_args()

    exe = entry_point()
    cases = {"python -c pass": [sys.executable, "-c", "pass"],
             **{f"mi-probe {name}": exe + argv for name, argv in COMMANDS.items()}}
    names = list(cases)
    times: dict[str, list[float]] = {n: [] for n in names}
    load_before = os.getloadavg()[0]
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in order:
            times[name].append(timed(cases[name]))
    load_after = os.getloadavg()[0]

    base = times["python -c pass"]
    results = {}
    print(f"{'command':<20} {'median s':>9}  {'ratio to python -c pass':<24} torch imported")
    for name in names:
        ratios = [t / b for t, b in zip(times[name], base)]
        entry = {"median_s": round(statistics.median(times[name]), 3),
                 "runs_s": [round(t, 3) for t in times[name]],
                 "ratio_median": round(statistics.median(ratios), 1),
                 "ratio_min": round(min(ratios), 1), "ratio_max": round(max(ratios), 1)}
        if name != "python -c pass":
            entry["imports"] = import_profile(COMMANDS[name.split(" ", 1)[1]])
        results[name] = entry
        torch_flag = entry.get("imports", {}).get("torch_imported", "-")
        print(f"{name:<20} {entry['median_s']:>9.3f}  {entry['ratio_median']:>6.1f}x "
              f"[{entry['ratio_min']:.1f}-{entry['ratio_max']:.1f}]{'':<10} {torch_flag}")
    for name, entry in results.items():
        if "imports" in entry:
            by_package = entry["imports"]["by_package"].items()
            shares = ", ".join(f"{p} {v['share']:.0%}" for p, v in by_package if v["s"] >= 0.005)
            print(f"  {name}: import {entry['imports']['total_s']:.2f} s ({shares})")

    import importlib.metadata as md

    checkout, revision = measured_checkout()
    out = {"checkout": checkout, "commit": revision, "python": platform.python_version(),
           "cpus": os.cpu_count(),
           "load_average": [round(load_before, 2), round(load_after, 2)],
           "repeats": args.repeats, "entry_point": exe,
           "autoload": os.environ.get("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0"),
           "installed_plugins": sorted(ep.value for ep in md.entry_points(group="mi_probe")),
           "results": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
