"""The Python API for notebooks and scripts: ``mi_probe.run``, ``mi_probe.load_run``,
``mi_probe.compare`` and ``mi_probe.bench_estimators``.

    import mi_probe
    result = mi_probe.run("specs/layer_mi.yaml", out="reports/mine", seeds=[0, 1],
                          model__train__epochs=3)
    result.tables["layer_mi"]          # polars DataFrames, by name
    result.figures["layer_i_ty"]       # Altair charts: Jupyter draws them offline (Vega inlined)
    result.checks                      # the spec's claims with their verdicts
    result                             # in Jupyter: status, verdicts, figure names
    again = mi_probe.load_run("reports/mine")
    mi_probe.compare(["reports/relu", "reports/tanh"], out="reports/relu-vs-tanh")
    table = mi_probe.bench_estimators(["ksg", "mine:{steps: 600}"], subset="ci", n=1000,
                                      seeds="0-2", out="reports/bench")

A run from Python is the same as ``mi-probe run``: the same spec validation, cache,
run directory and report; the result object only reads what the run wrote.
"""

from __future__ import annotations

import json
from functools import cached_property
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, cast

from mi_probe.errors import MiProbeError, RunError, SpecError


def _override_args(overrides: Mapping[str, Any]) -> list[str]:
    """Keyword overrides as ``--set`` arguments: ``model__train__epochs=3`` and
    ``{"model.train.epochs": 3}`` both become ``model.train.epochs=3`` (values as JSON,
    which YAML reads back exactly)."""
    args = []
    for key, value in overrides.items():
        try:
            text = json.dumps(value)
        except TypeError:
            raise SpecError(f"override {key}={value!r}: the value must be JSON-like (numbers, "
                            "strings, lists, mappings)") from None
        args.append(f"{key.replace('__', '.')}={text}")
    return args


def _load_spec(spec: Any, overrides: list[str], pm: Any, profile: str | None) -> Any:
    from pydantic import BaseModel

    from mi_probe._core.spec import dump_spec, load_spec, load_spec_text

    looks_like_path = isinstance(spec, Path) or (
        isinstance(spec, str) and "\n" not in spec and not spec.lstrip().startswith("{")
        and (spec.endswith((".yaml", ".yml")) or Path(spec).exists()))
    if looks_like_path:
        return load_spec(spec, overrides, pm, profile=profile)
    if isinstance(spec, str):  # YAML text
        return load_spec_text(spec, "<spec text>", overrides, pm, profile=profile)
    if isinstance(spec, BaseModel):  # a validated spec: re-validate with the overrides
        return load_spec_text(dump_spec(spec), "<spec object>", overrides, pm,
                              profile=profile)
    if isinstance(spec, Mapping):
        import yaml

        return load_spec_text(yaml.safe_dump(dict(spec), sort_keys=False), "<spec mapping>",
                              overrides, pm, profile=profile)
    raise SpecError(f"mi_probe.run: spec must be a path, YAML text, a mapping or a loaded "
                    f"spec; got {type(spec).__name__}")


class Run:
    """A run directory, read back: its spec, status, tables, figures and claims.

    Tables are read from ``tables/*.parquet`` on first use; figures are drawn from them
    by the run's experiment, as ``mi-probe report`` does."""

    def __init__(self, path: Path, pm: Any = None) -> None:
        self.path = Path(path)
        run_json = self.path / "run.json"
        if not run_json.is_file():
            raise RunError(f"{self.path} is not an mi-probe run directory (no run.json)")
        self.meta: dict[str, Any] = json.loads(run_json.read_text())
        self._pm = pm

    def __repr__(self) -> str:
        return (f"Run({str(self.path)!r}, status={self.status!r}, "
                f"tables={sorted(self.tables) if self.status == 'complete' else '...'})")

    def _repr_html_(self) -> str:
        """Jupyter's view: the status, each claim with its verdict and detail, and the
        figure names (all escaped; figures only of a complete run)."""
        import html

        def esc(value: Any) -> str:
            return html.escape(str(value), quote=True)

        parts = [f"<div><b>mi-probe run</b> <code>{esc(self.path)}</code>: "
                 f"status <b>{esc(self.status)}</b>"]
        if self.checks:
            from mi_probe._core.claims import verdict_of

            items = []
            for check in self.checks:
                verdict = verdict_of(check)
                items.append(f"<li><b>{esc(verdict)}</b>: {esc(check.get('name', '?'))}"
                             f" &mdash; {esc(check.get('detail', ''))}</li>")
            parts.append("<div>claims:</div><ul>" + "".join(items) + "</ul>")
        else:
            parts.append("<div>claims: none</div>")
        if self.status == "complete":
            try:
                names = ", ".join(f"<code>{esc(n)}</code>" for n in self.figures) or "none"
            except MiProbeError as exc:  # a repr never raises: say why there are none
                names = f"unavailable ({esc(exc)})"
            parts.append(f"<div>figures: {names}</div>")
        return "\n".join(parts) + "</div>"

    @property
    def pm(self) -> Any:
        if self._pm is None:
            from mi_probe._core.plugins import get_plugin_manager

            self._pm = get_plugin_manager()
        return self._pm

    @property
    def status(self) -> str:
        """``complete``, ``running``, ``interrupted`` or ``failed``."""
        return self.meta.get("status", "unknown")

    @property
    def index(self) -> Path:
        """The HTML report."""
        return self.path / "index.html"

    @cached_property
    def spec(self) -> Any:
        from mi_probe._core.spec import load_spec

        return load_spec(self.path / "spec.yaml", pm=self.pm)

    @cached_property
    def tables(self) -> dict[str, Any]:
        """Result tables by name (polars DataFrames)."""
        from mi_probe._core.tables import read_tables

        folder = self.path / "tables"
        if not folder.is_dir():
            raise RunError(f"{self.path} has no tables yet (status {self.status!r}); finish "
                           "the run with mi-probe run SPEC --out " + str(self.path))
        return read_tables(folder)

    @property
    def checks(self) -> list[dict[str, Any]]:
        """The spec's claims: name, kind, table, verdict (holds, does not hold or
        inconclusive), passed (it holds), detail, observed and its interval."""
        return list(self.meta.get("checks", []))

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["passed"]]

    @cached_property
    def figures(self) -> dict[str, Any]:
        """Altair charts by name, drawn by the run's experiment from its tables."""
        from mi_probe._core.runner.rendering import figures_of

        from mi_probe._core.notebook import use_inline_renderer

        use_inline_renderer()  # Jupyter shows the charts with Vega inlined: they draw offline
        experiment = self.pm.registry.build("experiments", self.spec.experiment)
        return figures_of(experiment, self.tables)

    def table(self, name: str) -> Any:
        """One table, with a message naming the tables there are when it is missing."""
        if name not in self.tables:
            raise RunError(f"run {self.path} has no table {name!r}; it has "
                           f"{', '.join(sorted(self.tables))}")
        return self.tables[name]


def run(spec: Any, out: str | Path | None = None, *, model: Any = None,
        cache_dir: str | Path | None = None, profile: str | None = None,
        resume: bool = False, plugins: Iterable[Any] = (), progress: bool = True,
        log: Any = None, overrides: Mapping[str, Any] | None = None,
        **kwoverrides: Any) -> Run:
    """Run ``spec`` (a path, YAML text, a mapping or a loaded spec) and return the
    :class:`Run`. Keyword overrides set spec fields, ``__`` separating levels
    (``seeds=[0]``, ``model__train__epochs=3``); ``overrides`` takes dotted keys. Other
    arguments are those of ``mi-probe run``. A run talks by default, as the command
    does: progress bars (``tqdm.auto``: widgets in a notebook, text in a terminal) and
    one line per step (training epochs, units, where the run directory is) on stderr;
    ``log`` receives those lines instead when given (``log=lambda line: None`` and
    ``progress=False`` for silence).

    ``model`` measures your own network instead of the spec's ``model.arch``: an
    ``nn.Module`` (copied for every seed: trained from, or measured at, the weights it
    has) or a function returning one (called with ``num_classes`` when it takes it,
    under each seed). Its sites come from an adapter that understands it (``blocks``
    finds residual and plain blocks in many networks) or from ``sites.modules`` in the
    spec; see docs/custom_models.md."""
    from mi_probe._core.plugins import get_plugin_manager
    from mi_probe._core.runner.driver import run as run_spec

    pm = get_plugin_manager(list(plugins))
    args = _override_args({**(overrides or {}), **kwoverrides})
    if model is not None:
        from mi_probe._core.models import register_python_model

        args.append(f"model.arch={json.dumps(register_python_model(model))}")
    loaded = _load_spec(spec, args, pm, profile)
    # passed on as given: the driver resolves a str too (an empty one: the default)
    outcome = run_spec(loaded, pm, out=Path(out) if out is not None else None,
                       cache_dir=cast("Path | None", cache_dir), resume=resume,
                       progress=progress, log=log or _to_stderr)
    if outcome.run_dir is None:
        raise RunError(outcome.status)  # a torchrun rank other than 0 writes no run
    return Run(outcome.run_dir, pm)


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_run(path: str | Path, *, plugins: Iterable[Any] = ()) -> Run:
    """Reopen a run directory (finished or not) written by ``mi-probe run`` or ``run``."""
    from mi_probe._core.plugins import get_plugin_manager

    return Run(Path(path), get_plugin_manager(list(plugins)) if plugins else None)


def compare(runs: Iterable[str | Path | Run], out: str | Path, *,
            labels: Iterable[str] | None = None) -> Path:
    """Overlay finished runs in one report, as ``mi-probe compare`` does: writes
    ``out/index.html`` (Vega inlined), ``out/tables/<name>.parquet`` (the runs' rows
    concatenated, with run_id, arch, act, estimator and data columns) and
    ``out/summary.txt`` (what differs between the specs); returns the page's path."""
    from mi_probe._core.compare import compare_runs

    paths = [r.path if isinstance(r, Run) else Path(r) for r in runs]
    return compare_runs(paths, Path(out), list(labels) if labels is not None else None)


def bench_estimators(estimators: Iterable[str | Mapping[str, Any]] = (), *,
                     out: str | Path, tasks: Iterable[str] | None = None,
                     subset: str | None = None, n: int = 5000,
                     seeds: str | Iterable[int] = range(10),
                     bmi_python: str | Path | bool | None = None,
                     bmi_estimators: Iterable[str] | None = None,
                     interval: float | None = None, standardize: bool = True,
                     all_estimators: bool = False, device: str = "cpu",
                     plugins: Iterable[Any] = (), figures: bool = True,
                     log: Any = None) -> Any:
    """Run (or resume) ``mi-probe bench-estimators``: each estimator with ``joint_mi``
    (``"ksg"``, ``"mine:{steps: 600}"`` or ``{"kind": "mine", "steps": 600}``) on bmi's
    tasks (``tasks`` by bmi's names and/or a ``subset``: all, v1, ci, 1v1, multinormal,
    student, transformed, embeddings; default all), ``n`` samples per task and seed,
    each sample standardised unless ``standardize=False`` (bmi's v1 protocol), with
    intervals at level ``interval`` where an estimator has them. bmi's own estimators
    (``bmi_estimators``, default KSG, Histogram, CCA, MINE, InfoNCE, NWJ, DV) run on the
    same samples when bmi's Python is found (``bmi_python``, ``$MI_PROBE_BMI_PYTHON`` or
    ``.venv-bmi``; ``False`` turns bmi off). Rows are kept in ``out`` as they finish, so
    the same call again resumes. Returns the results table (polars) of every row of
    ``out``; ``out`` also gets summary, tasks and figures (docs/bench_estimators.md)."""
    from mi_probe._core.bench.runner import run_bench, setup
    from mi_probe._core.plugins import get_plugin_manager

    pm = get_plugin_manager(list(plugins))
    bench = setup(list(estimators), tasks=list(tasks) if tasks is not None else None,
                  subset=subset, n=n, seeds=seeds if isinstance(seeds, str) else list(seeds),
                  out=out, bmi_python=bmi_python,
                  bmi_estimators=list(bmi_estimators) if bmi_estimators is not None else None,
                  interval=interval, standardize=standardize, all_estimators=all_estimators,
                  device=device, pm=pm)
    return run_bench(bench, log=log or _to_stderr, figures=figures)
