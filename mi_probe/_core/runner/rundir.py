"""The run directory: where a run's results live, how a re-run finds and resumes them,
and the provenance (versions, commit) recorded in ``run.json``.

Finished units are written to ``<run>/units/<unit>/`` as they complete (``done.json``
last), so an interrupted run re-run with the same ``--out`` (or ``--resume``) computes
only what is missing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import polars as pl

from mi_probe.errors import RunError

DEFAULT_REPORTS = Path("reports")
#: environment variable naming the trained-model cache (like TORCH_HOME, HF_HOME)
CACHE_ENV = "MI_PROBE_CACHE"
LOCK_NAME = ".mi-probe.lock"


def default_cache_dir() -> Path:
    """The trained-model cache: ``$MI_PROBE_CACHE``, else the platform's user cache
    folder (``~/.cache/mi-probe`` on Linux, honouring ``XDG_CACHE_HOME``;
    ``~/Library/Caches/mi-probe`` on macOS; ``%LOCALAPPDATA%\\mi-probe\\Cache`` on
    Windows), so every run of a spec finds its models wherever it is started from."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().absolute()
    from platformdirs import user_cache_path

    return user_cache_path("mi-probe", appauthor=False)


def resolve_cache_dir(cache_dir: Path | str | None) -> Path:
    """An absolute cache folder (the flag's, else the default)."""
    return Path(cache_dir).expanduser().absolute() if cache_dir else default_cache_dir()


#: Spec fields added after runs had been made, as (section, field, default): left out of
#: the hash while at their default, so a run made before a field existed keeps its
#: identity (it stays resumable and a study does not call it stale)
LATER_FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("model", "pretrained_file", None),  # 0.2
    ("sites", "modules", []),  # issue 26: sites listed by module name
    # issue 24: intervals, equal-count bins, joint MI, unpooled sites
    ("experiment", "interval", None),
    ("experiment", "binnings", None),
    ("experiment", "reference_binning", "uniform"),
    ("estimator", "binning", "uniform"),
    ("estimator", "interval_draws", 200),
    ("estimator", "interval_edges", "resampled"),
    ("estimator", "joint_bins", None),
    ("estimator", "max_joint_dims", 4),
    ("estimator", "neighbors", "auto"),
    ("estimator", "interval_folds", 10),
    ("sites", "reduce", "mean"),
    # issue 25: knockouts at the suffix floor
    ("eval", "sweep_pass_rows", 512),
    ("eval", "site_store_mb", 8192),
    ("eval", "stream_mb", 2048),
    ("experiment", "sequential", None),
)


def spec_hash(spec: Any, exclude: frozenset[str] = frozenset()) -> str:
    """The identity of a run: the resolved spec without ``executor`` (where units run
    does not change what they compute), without ``track`` (where values are sent as
    they come), without ``store`` (where captures are kept) and without the ``exclude``
    fields."""
    data = spec.model_dump(mode="json", exclude={"executor", "track", "store", *exclude})
    for section, field, default in LATER_FIELDS:
        part = data.get(section) if section else data
        if isinstance(part, dict) and field in part and part[field] == default:
            part.pop(field)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


#: spec fields that change no table of a run: claims are evaluated on the tables, and
#: the description is prose
NOT_COMPUTED = frozenset({"checks", "description"})


def results_hash(spec: Any) -> str:
    """The identity of what a run computes: two specs with the same results hash have
    the same tables (they may state other claims about them)."""
    return spec_hash(spec, NOT_COMPUTED)


def safe_name(unit: str) -> str:
    """A unit name as a file name."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", unit)


def unit_dir(run_dir: Path, unit: str) -> Path:
    return run_dir / "units" / safe_name(unit)


def is_unit_done(run_dir: Path, unit: str) -> bool:
    return (unit_dir(run_dir, unit) / "done.json").is_file()


def read_unit(run_dir: Path, unit: str) -> tuple[dict[str, pl.DataFrame], dict[str, Any]] | None:
    """A finished unit's tables and ``done.json``; None when it has not finished."""
    folder = unit_dir(run_dir, unit)
    done = folder / "done.json"
    if not done.is_file():
        return None
    info = json.loads(done.read_text())
    return {p.stem: pl.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}, info


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a result depends on."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("mi-probe", "torch", "timm", "numpy", "polars", "pydantic", "altair"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def git_commit() -> str | None:
    """The commit of the mi-probe checkout, when it is one."""
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
        return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _index_file(cache_dir: Path, digest: str) -> Path:
    return cache_dir / "runs" / f"{digest}.txt"


def remember_run(cache_dir: Path, spec: Any, run_dir: Path) -> None:
    """Record ``run_dir`` in the cache's index of runs of this spec, so ``--resume``
    finds it from any working directory (best effort: the index is only a hint)."""
    path = _index_file(cache_dir, spec_hash(spec))
    entry = str(run_dir.resolve())
    try:
        known = path.read_text().split("\n") if path.is_file() else []
        if entry not in known:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(entry + "\n")
    except OSError:
        pass


def _unfinished(run_dir: Path, digest: str) -> float | None:
    """When an unfinished run of spec ``digest`` in ``run_dir`` started (None: it is not
    one)."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if info.get("spec_hash") != digest or info.get("status") == "complete":
        return None
    return (run_dir / "run.json").stat().st_mtime


def find_unfinished_run(spec: Any, reports: Path, cache_dir: Path) -> Path:
    """The latest unfinished run of ``spec``: among the runs the cache's index recorded
    (from any working directory) and those under ``reports/<name>/``."""
    digest = spec_hash(spec)
    index = _index_file(cache_dir, digest)
    candidates = [Path(line) for line in index.read_text().split("\n") if line] \
        if index.is_file() else []
    parent = reports / spec.name
    if parent.is_dir():
        candidates += [p for p in parent.iterdir() if p.is_dir()]
    started = {p.resolve(): t for p in candidates
               if (t := _unfinished(p, digest)) is not None}
    if not started:
        raise RunError(f"--resume: no unfinished run of spec {spec.name!r} (hash {digest}) "
                       f"under {parent.absolute()} or in the run index {index}; give the run "
                       "directory with --out instead")
    return max(started, key=lambda path: started[path])


def prepare_run_dir(spec: Any, out: Path | None, resume: bool, reports: Path = DEFAULT_REPORTS,
                    cache_dir: Path | None = None) -> tuple[Path, bool]:
    """The run directory and whether it resumes an earlier run of the same spec."""
    digest = spec_hash(spec)
    if out is None and resume:
        return find_unfinished_run(spec, reports, resolve_cache_dir(cache_dir)), True
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = reports / spec.name / stamp
        suffix = 1
        while out.exists():
            out = reports / spec.name / f"{stamp}-{suffix}"
            suffix += 1
    out = Path(out)
    check_run_path(out)
    run_json = out / "run.json"
    if resume and not run_json.is_file():
        raise RunError(f"--resume: {out} holds no run to resume (no run.json); drop "
                       "--resume to start a new run there")
    if run_json.is_file():
        info = json.loads(run_json.read_text())
        if info.get("spec_hash") != digest:
            raise RunError(f"{out} holds a run of another spec (spec hash {info.get('spec_hash')}"
                           f", this one {digest}); choose another --out or delete the folder")
        return out, True
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; the run directory must be a folder")
    if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise RunError(f"--out {out} exists and is not an mi-probe run directory; choose an "
                       "empty or new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the run directory {out}: {exc.strerror or exc}; "
                       "choose a writable --out") from None
    return out, False


#: the longest file name (bytes) of common filesystems (ext4, XFS, APFS, NTFS)
NAME_MAX = 255


def check_run_path(out: Path) -> None:
    """Refuse a run directory path the filesystem cannot hold (a name over 255 bytes,
    a path it cannot look up), naming it, before anything is written."""
    long = [part for part in out.parts if len(os.fsencode(part)) > NAME_MAX]
    if long:
        name = long[0]
        raise RunError(f"cannot use {out} as the run directory: its folder name "
                       f"{name[:40]}... is {len(os.fsencode(name))} bytes long; file names "
                       f"may have at most {NAME_MAX}; choose a shorter --out")
    try:
        (out / "run.json").is_file()
    except OSError as exc:
        raise RunError(f"cannot use {out} as the run directory: {exc.strerror or exc}; "
                       "choose another --out") from None


def check_writable(run_dir: Path) -> None:
    """Refuse a run directory this process cannot write, before any work."""
    probe = run_dir / ".mi-probe-write-test"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"cannot write to the run directory {run_dir}: "
                       f"{exc.strerror or exc}; choose a writable --out") from None


class RunLock:
    """Held by the driver for a whole run: a second run into the same directory stops
    with a message instead of computing the same units."""

    def __init__(self, run_dir: Path) -> None:
        from filelock import FileLock

        self.path = run_dir / LOCK_NAME
        self._lock = FileLock(str(self.path))

    def __enter__(self) -> "RunLock":
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunError(f"another mi-probe run is writing to {self.path.parent} (it holds "
                           f"{self.path}); wait for it to finish, or choose another "
                           "--out") from None
        except (OSError, NotImplementedError) as exc:  # a filesystem without locks
            raise RunError(f"cannot lock {self.path} ({type(exc).__name__}: {exc}); run "
                           "from a filesystem that supports file locks") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()
