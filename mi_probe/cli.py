"""Command line: mi-probe run | validate | check | study | sites | plugins | schema | report
| compare | bench-estimators | cache | completion.

User mistakes (any ``MiProbeError``) print one ``error:`` message, never a traceback,
and exit non-zero (2 for spec errors).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from mi_probe.errors import MiProbeError, SiteError, SpecError


DEFAULT_STUDY_DOC = Path("docs/reproduction.md")

#: shells ``mi-probe completion`` writes a script for (what shtab supports of them)
COMPLETION_SHELLS = ("bash", "zsh", "tcsh")

# What the shell completes an argument with (shtab's FILE and DIRECTORY, written out so
# that building the parser does not need shtab, an optional dependency).
_FILE = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}
_DIR = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/", "tcsh": "d"}


def _complete(action: argparse.Action, what: dict[str, str]) -> argparse.Action:
    """Mark ``action`` to complete file (``_FILE``) or folder (``_DIR``) names."""
    action.complete = what  # type: ignore[attr-defined]  # read by shtab
    return action


def _version() -> str:
    from mi_probe import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mi-probe", description=(
        "Measure mutual information in timm backbones from one YAML spec."))
    parser.add_argument("--version", action="version", version=f"mi-probe {_version()}")
    parser.add_argument("-p", "--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE as an extra plugin (also: MI_PROBE_PLUGINS); "
                        "-p no:NAME blocks a built-in or installed plugin, e.g. "
                        "no:mi_probe.builtin.experiments.knockout, so another can replace it")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do; mi-probe COMMAND -h lists its options")

    run = sub.add_parser("run", help="run a spec and write a report")
    _complete(run.add_argument("spec", help="the spec, a YAML file (see mi-probe schema)"),
              _FILE)
    _complete(run.add_argument("--out", type=Path, help="run directory (default "
                               "reports/<name>/<time>/); an unfinished run of the same spec "
                               "there is resumed"), _DIR)
    run.add_argument("--resume", action="store_true",
                     help="resume the latest unfinished run of this spec (found through the "
                     "cache's run index, from any folder, or under ./reports/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a spec field, e.g. --set model.train.epochs=3")
    _complete(run.add_argument("--cache-dir", type=Path, help="trained-model cache (default "
                               "$MI_PROBE_CACHE, else the user cache folder, e.g. "
                               "~/.cache/mi-probe)"), _DIR)
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--profile", choices=["tiny"], help="apply a run profile (tiny: small "
                     "models and data, for smoke tests; see mi_probe/_core/profiles.py)")
    run.add_argument("--strict", action="store_true",
                     help="exit with status 3 unless every claim in the spec's checks holds "
                     "(one that does not hold or is inconclusive fails)")
    run.add_argument("--executor", metavar="NAME", help="where units run: local (default) or "
                     "ray; replaces the spec's executor block unless it names the same kind "
                     "(then --set executor.address=... etc. refine it)")

    val = sub.add_parser("validate", help="validate specs without running them")
    _complete(val.add_argument("specs", nargs="+",
                               help="spec files (YAML) to validate"), _FILE)
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a spec field in every spec, as for run (repeatable)")
    val.add_argument("--profile", choices=["tiny"], help="validate the specs as the run "
                     "profile changes them, as for run")
    val.add_argument("--executor", metavar="NAME", help="as for run")

    chk = sub.add_parser("check", help="validate, resolve sites, run on the tiny profile and "
                         "check the claims of every spec under PATHS")
    _complete(chk.add_argument("paths", nargs="+", type=Path,
                               help="spec files, or folders searched for specs"), _FILE)
    chk.add_argument("--profile", default="tiny", choices=["tiny"],
                     help="the run profile of the run-tiny stage (default tiny)")
    chk.add_argument("--stages", default="validate,sites,run-tiny,checks",
                     help="comma-separated subset of validate,sites,run-tiny,checks")
    _complete(chk.add_argument("--out", type=Path, help="folder for the runs (default: a "
                               "temporary one)"), _DIR)
    chk.add_argument("--claims-as-warnings", action="store_true",
                     help="report failed claims without failing (tiny models need not show "
                     "paper effects)")

    study = sub.add_parser("study", help="run every spec of a folder (each states paper "
                           "claims as checks) and write the reproduction document")
    _complete(study.add_argument("folder", type=Path, help="the folder of study specs, "
                                 "e.g. specs/study"), _DIR)
    _complete(study.add_argument("--out", type=Path, default=Path("reports/study"),
                                 help="where the run directories go (default reports/study)"),
              _DIR)
    _complete(study.add_argument("--doc", type=Path, help=f"the document to write (default "
                                 f"{DEFAULT_STUDY_DOC}; with --profile, OUT/reproduction.md)"),
              _FILE)
    _complete(study.add_argument("--figures", type=Path, help="folder the document's figures "
                                 "are copied to (default: beside the document, named after "
                                 "it)"), _DIR)
    study.add_argument("--only", action="append", default=[], metavar="NAME",
                       help="run only this spec (name or file stem; repeatable)")
    _complete(study.add_argument("--readme", type=Path,
                                 help="also refresh the findings between the study markers "
                                 "of this file (skipped when it has none; default "
                                 "README.md when the document is the default one, else "
                                 "none)"), _FILE)
    study.add_argument("--report-only", action="store_true",
                       help="only regenerate the document from the existing runs")
    _complete(study.add_argument("--cache-dir", type=Path, help="trained-model cache (as for "
                                 "run)"), _DIR)
    study.add_argument("--profile", choices=["tiny"], help="as for run (smoke tests); the "
                       "document then goes to OUT and the README is left alone")

    sites = sub.add_parser("sites", help="list the sites of a timm architecture")
    sites.add_argument("arch", help="a timm architecture name, e.g. resnet18 (see "
                       "timm.list_models())")
    sites.add_argument("--adapter", default="auto", metavar="NAME",
                       help="the site adapter (a registered name, see mi-probe plugins); "
                       "auto: the one that claims the model (default)")
    sites.add_argument("--act", choices=["relu", "tanh"], help="swap the model's activations "
                       "for this one, as a spec's model.act does (default: keep them)")
    sites.add_argument("--head", choices=["timm", "paper_vgg"], default="timm",
                       help="the classifier head, as a spec's model.head: timm's own, or "
                       "paper_vgg (VGG models only); default timm")
    sites.add_argument("--num-classes", type=int, default=10,
                       help="classes of the head (default 10)")
    sites.add_argument("--image-size", type=int, default=None,
                       help="probe image size in px (default: the model's own default input "
                       "size, e.g. 224, or 299 for inception_v3); models that timm builds "
                       "for one size are built for this one")
    sites.add_argument("--include", action="append", help="fnmatch pattern (repeatable)")
    sites.add_argument("--kinds", action="append", default=[],
                       help="site kind to keep (repeatable): stem, pre_add, post_add, block, "
                       "post_act, stage, or output")
    sites.add_argument("--position", default="all",
                       choices=["all", "first_stage", "last_stage", "first_half",
                                "last_half", "first_third", "middle_third", "last_third",
                                "last"],
                       help="keep the sites whose block lies there")
    sites.add_argument("--tokens", default="patch_mean", choices=["patch_mean", "cls"],
                       help="how token outputs pool (ViT-like blocks)")

    sub.add_parser("plugins", help="list plugins and what each registered")
    sub.add_parser("schema", help="print the JSON Schema of specs")
    rep = sub.add_parser("report", help="redraw figures and index.html of a run directory")
    _complete(rep.add_argument("run_dir", type=Path, help="the run directory (holds "
                               "run.json), e.g. reports/<name>/<time>"), _DIR)
    cmp_ = sub.add_parser("compare", help="overlay finished runs in one offline HTML report",
                          description="Overlay two or more finished runs: for every table "
                          "they share, each per-site value against depth (rel_depth when "
                          "their sites differ), one colour per run, mean over seeds with "
                          "95% t-intervals; the tables concatenated with run metadata "
                          "columns; and what differs between their specs. See "
                          "docs/compare.md.")
    _complete(cmp_.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                                help="run directories (each holds run.json and tables/), "
                                "at least two, e.g. reports/layer_mi/<time>"), _DIR)
    _complete(cmp_.add_argument("--out", type=Path, required=True,
                                help="folder for the comparison: index.html, summary.txt "
                                "and tables/<name>.parquet"), _DIR)
    cmp_.add_argument("--label", dest="labels", action="append", metavar="TEXT",
                      help="legend name of a run, once per run in the order given "
                      "(default: what differs between the specs, e.g. act=tanh, else the "
                      "run folder names)")
    sub.add_parser("cache", add_help=False, help="list or prune the activation store "
                   "(mi-probe cache list | prune ...; docs/store.md)",
                   description="mi-probe cache list [--json] [--long] | prune --older-than "
                   "DAYS | --max-size GB | --all [--dry-run]; --store PATH|URL, --cache-dir "
                   "DIR").add_argument("rest", nargs=argparse.REMAINDER,
                                       help="list [--json] [--long] | prune ... (mi-probe "
                                       "cache list --help)")
    bench = sub.add_parser(
        "bench-estimators", help="run estimators with joint_mi on bmi's benchmark tasks "
        "(Beyond Normal, NeurIPS 2023), beside bmi's own estimators",
        description="Run every --estimator (one with the JointMI ability: joint_mi(x, y)) "
        "on the tasks of bmi's benchmark at bmi's protocol (N = 5000, seeds 0-9, each "
        "sample standardised), and, when bmi's Python is found (--bmi-python, "
        "$MI_PROBE_BMI_PYTHON or .venv-bmi), bmi's own estimators on the same samples. "
        "Rows are kept in OUT as they finish: the same command again resumes. Writes "
        "results, summary and tasks tables (parquet and csv) and figures. See "
        "docs/bench_estimators.md.")
    bench.add_argument("--estimator", dest="estimators", action="append", default=[],
                       metavar="KIND[:{YAML}]", help="an estimator with joint_mi and its "
                       "parameters as a YAML mapping, e.g. ksg, 'ksg:{k: 5}', "
                       "'mine:{steps: 600}' (repeatable)")
    bench.add_argument("--all-estimators", action="store_true",
                       help="also every registered estimator that has joint_mi, with its "
                       "default parameters")
    which = bench.add_mutually_exclusive_group()
    which.add_argument("--tasks", metavar="NAME,...", help="bmi task names "
                       "(comma-separated, e.g. 1v1-normal-0.75,student-identity-2-2-1) or "
                       "subsets; default: all 40")
    which.add_argument("--subset", choices=["all", "v1", "ci", "1v1", "embeddings",
                                            "multinormal", "student", "transformed"],
                       help="a named task list: all (bmi's 40), v1 (bmi's v1 workflow: 39), "
                       "ci (4 small tasks) or one of bmi's groups")
    bench.add_argument("--n", type=int, default=5000,
                       help="samples per task and seed (default 5000, bmi's protocol)")
    bench.add_argument("--seeds", default="0-9", help="sampling seeds: 0-9, 0,3,5 or "
                       "0-4,7 (default 0-9, bmi's protocol)")
    _complete(bench.add_argument("--out", type=Path, required=True,
                                 help="output folder; an unfinished bench there is "
                                 "resumed"), _DIR)
    _complete(bench.add_argument("--bmi-python", metavar="PATH", help="the Python of an "
                                 "environment with bmi (pip install benchmark-mi "
                                 "jax==0.4.30 jaxlib==0.4.30), or that environment's "
                                 "folder; default $MI_PROBE_BMI_PYTHON, else .venv-bmi if "
                                 "present"), _FILE)
    bench.add_argument("--no-bmi", action="store_true",
                       help="do not run bmi even when its Python is found")
    bench.add_argument("--bmi-estimator", dest="bmi_estimators", action="append",
                       metavar="NAME[:{YAML}]", help="a bmi estimator (KSG, Histogram, CCA, "
                       "KDE, MINE, InfoNCE, NWJ, DV) with bmi's keyword arguments, e.g. "
                       "'MINE:{max_n_steps: 2000}' (repeatable; default: all but KDE, "
                       "with bmi's v1 parameters)")
    bench.add_argument("--interval", type=float, metavar="LEVEL", help="also a confidence "
                       "interval at this level (e.g. 0.95) from estimators that have "
                       "joint_mi_interval; the summary gives its coverage")
    bench.add_argument("--no-standardize", action="store_true", help="hand the estimators "
                       "raw samples (bmi's protocol standardises every column)")
    bench.add_argument("--device", default="cpu", help="torch device of the samples "
                       "(default cpu)")
    bench.add_argument("--no-figures", action="store_true", help="tables only")
    comp = sub.add_parser("completion", help="print a shell completion script (needs the "
                          "completion extra: pip install 'mi-probe[completion]')",
                          description="Print the tab-completion script of mi-probe for "
                          "SHELL. bash: eval \"$(mi-probe completion bash)\" in ~/.bashrc; "
                          "zsh: mi-probe completion zsh > a folder on $fpath, named "
                          "_mi-probe.")
    comp.add_argument("shell", choices=COMPLETION_SHELLS, help="the shell the script is for")
    return parser


def _cmd_run(args, pm) -> int:
    from mi_probe._core.runner.driver import run
    from mi_probe._core.claims import verdict_of
    from mi_probe._core.spec import load_spec

    spec = load_spec(args.spec, args.overrides, pm, profile=args.profile,
                     executor=args.executor)
    outcome = run(spec, pm, out=args.out, cache_dir=args.cache_dir, resume=args.resume,
                  progress=not args.no_progress,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    if outcome.run_dir is None:  # a torchrun rank other than 0: it only trained
        return 0
    for warning in outcome.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for check in outcome.checks:
        print(f"claim {check['name']!r} {verdict_of(check)}: {check['detail']}",
              file=sys.stderr)
    print(f"report: {outcome.index}")
    return 3 if args.strict and outcome.failed_checks else 0


def _cmd_validate(args, pm) -> int:
    from mi_probe._core.spec import load_spec
    from mi_probe._core.validation import validate

    failed = 0
    for path in args.specs:
        try:
            spec = load_spec(path, args.overrides, pm, profile=args.profile,
                             executor=args.executor)
            validate(spec, pm)
        except MiProbeError as exc:  # spec, model, site and claim refusals
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
        else:
            print(f"ok: {path} ({spec.experiment.kind} on {spec.model.arch})")
    return 2 if failed else 0


def _cmd_check(args, pm) -> int:
    import tempfile

    from mi_probe.testing.stages import STAGES, SpecState, StageFailure, looks_like_spec, run_stage

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"error: unknown stage(s) {unknown}; valid: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    files: list[Path] = []
    for path in args.paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if looks_like_spec(p))
        elif path.is_file():
            files.append(path)
        else:
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
    workdir = args.out or Path(tempfile.mkdtemp(prefix="mi-probe-check-"))
    failures = 0
    for path in files:
        state = SpecState(path)
        for stage in stages:
            try:
                detail = run_stage(stage, state, pm, args.profile, workdir, workdir / ".cache")
                print(f"PASS {path} [{stage}] {detail}")
            except StageFailure as exc:
                warn_only = stage == "checks" and args.claims_as_warnings
                failures += 0 if warn_only else 1
                label = "WARN" if warn_only else "FAIL"
                print(f"{label} {path} [{stage}] " + str(exc).replace("\n", "\n    "))
    print(f"{len(files)} spec(s), {failures} failure(s); runs in {workdir}")
    return 1 if failures else 0


def _cmd_sites(args, pm) -> int:
    import torch

    from mi_probe._core.models import build_model
    from mi_probe._core.sites import resolve_sites, select_adapter

    from mi_probe._core.models import default_input_size

    if args.image_size is not None and args.image_size < 8:
        raise SpecError(f"--image-size must be at least 8 px, got {args.image_size}")
    size = args.image_size or (default_input_size(args.arch) or (3, 224, 224))[-1]
    model = build_model(args.arch, args.num_classes, 0, args.act, args.head,
                        img_size=size if args.image_size else None)
    adapter = select_adapter(pm, model, args.arch, args.adapter)
    probe = torch.zeros(2, 3, size, size)
    try:
        with torch.no_grad():
            model.eval()(probe)
    except Exception as exc:
        from mi_probe._core.preflight import describe_failure

        raise SiteError(f"{args.arch} cannot run on {size}x{size} px images "
                        f"({describe_failure(exc)}); try another --image-size") from None
    sites = resolve_sites(model, adapter, probe, args.include or ["*"], (), args.arch,
                          args.kinds, args.position, args.tokens)
    print(f"{args.arch}: adapter {adapter.name}, {len(sites)} sites at {size}x{size} px")
    width = max(len(s.name) for s in sites)
    # depth: the site's index among all the model's sites, whatever is selected; rel:
    # depth / (sites - 1), the column rel_depth of every table
    print(f"{'depth':>5}  {'rel':>4}  {'site':<{width}}  {'kind':<9} {'channels':>8}  "
          f"{'stage':>5}  {'pos':>4}  layout  module")
    for s in sites:
        stage = "-" if s.stage is None else str(s.stage)
        pos = "-" if s.position is None else f"{s.position:.2f}"
        layout = s.layout
        if s.layout in ("nlc", "ncl"):
            layout += f" ({s.tokens}, {s.prefix_tokens} prefix)" if s.prefix_tokens else ""
        if s.index:
            layout += f" [output {s.index}]"
        print(f"{s.depth:>5}  {s.rel_depth:>4.2f}  {s.name:<{width}}  {s.kind:<9} "
              f"{s.channels:>8}  {stage:>5}  {pos:>4}  {layout:<6}  {s.module}")
    counts = Counter(s.kind for s in sites)
    print("per kind: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _cmd_plugins(args, pm) -> int:
    """Each plugin (with its distribution's version, or blocked) and what it registered:
    per entry its kind, name and the module that defines its factory."""
    from mi_probe._core.plugins import KINDS

    versions = pm.plugin_versions()
    registry = pm.registry
    by_plugin: dict[str, list[tuple[str, str]]] = {name: [] for name in versions}
    for kind in KINDS:
        for name, entry in registry.entries(kind).items():
            module = getattr(entry.factory, "__module__", None) or entry.plugin
            by_plugin.setdefault(entry.plugin, []).append((f"{kind[:-1]} {name}", module))
    width = max((len(thing) for things in by_plugin.values() for thing, _ in things),
                default=0)
    for plugin, things in by_plugin.items():
        if pm.is_blocked(plugin):
            print(f"{plugin} (blocked)")
            continue
        version = versions.get(plugin) or "-"
        print(f"{plugin} ({version})")
        if not things:
            print("  (hooks only)")
        for thing, module in things:
            print(f"  {thing:<{width}}  {module}")
    return 0


def _cmd_study(args, pm) -> int:
    from mi_probe._core.study import (check_figures_dir, run_study, update_readme,
                                      write_reproduction)

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    # a profile's smoke runs never overwrite the real document or the README's findings
    smoke = args.profile is not None
    doc_path = args.doc or (args.out / "reproduction.md" if smoke else DEFAULT_STUDY_DOC)
    figures = args.figures or doc_path.parent / doc_path.stem
    check_figures_dir(figures, args.out, args.folder)  # before hours of runs, not after
    failures = []
    if not args.report_only:
        failures = run_study(args.folder, args.out, pm, only=args.only,
                             cache_dir=args.cache_dir, profile=args.profile, log=log)
    doc = write_reproduction(args.folder, args.out, doc_path, figures, pm, args.profile)
    # the README quotes the project's document only: a study written elsewhere leaves it
    readme = args.readme or (Path("README.md") if args.doc is None else None)
    if not smoke and readme is not None and update_readme(readme, doc_path, args.folder,
                                                          args.out, pm):
        print(f"findings refreshed in {readme}")
    print(f"reproduction: {doc}")
    if failures:  # the document is written from what finished; the failures are named
        print(f"error: {len(failures)} study spec(s) failed:\n  " + "\n  ".join(failures),
              file=sys.stderr)
        return 1
    return 0


def _cmd_schema(args, pm) -> int:
    from mi_probe._core.spec import json_schema

    print(json.dumps(json_schema(pm), indent=2))
    return 0


def _cmd_report(args, pm) -> int:
    from mi_probe._core.runner.driver import rerender

    print(f"report: {rerender(args.run_dir, pm)}")
    return 0


def _cmd_compare(args, pm) -> int:
    from mi_probe._core.compare import compare_runs

    index = compare_runs(args.runs, args.out, labels=args.labels, pm=pm)
    print((index.parent / "summary.txt").read_text(), end="", file=sys.stderr)
    print(f"report: {index}")
    return 0


def _cmd_bench_estimators(args, pm) -> int:
    from mi_probe._core.bench.runner import run_bench, setup
    from mi_probe._core.bench.summary import summary_table

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    bench = setup(args.estimators, tasks=tasks, subset=args.subset, n=args.n,
                  seeds=args.seeds, out=args.out,
                  bmi_python=False if args.no_bmi else args.bmi_python,
                  bmi_estimators=args.bmi_estimators, interval=args.interval,
                  standardize=not args.no_standardize, all_estimators=args.all_estimators,
                  device=args.device, pm=pm)
    results = run_bench(bench, log=lambda m: print(m, file=sys.stderr, flush=True),
                        figures=not args.no_figures)
    summary = summary_table(results)
    import polars as pl

    per = (summary.group_by("estimator", maintain_order=True)
           .agg(tasks_ok=(pl.col("status") == "ok").sum(), tasks=pl.len(),
                mean_abs_error=pl.col("abs_error_mean").mean(),
                coverage=pl.col("coverage").mean()))
    for row in per.iter_rows(named=True):
        cov = "" if row["coverage"] is None else f", interval coverage {row['coverage']:.2f}"
        err = "-" if row["mean_abs_error"] is None else f"{row['mean_abs_error']:.3f}"
        print(f"{row['estimator']}: {row['tasks_ok']}/{row['tasks']} tasks, mean |error| "
              f"{err} nats{cov}", file=sys.stderr)
    print(f"results: {args.out / 'results.parquet'}")
    return 0


def completion_script(shell: str) -> str:
    """The tab-completion script of ``mi-probe`` for ``shell`` (bash, zsh or tcsh),
    generated from the argument parser by shtab (the ``completion`` extra)."""
    try:
        import shtab
    except ImportError:
        raise MiProbeError("shell completion needs the shtab package, which the "
                           "'completion' extra installs: pip install 'mi-probe[completion]' "
                           "(or pip install shtab)") from None
    if shell not in COMPLETION_SHELLS:
        raise MiProbeError(f"no completion for shell {shell!r}; valid: "
                           f"{', '.join(COMPLETION_SHELLS)}")
    return shtab.complete(_parser(), shell=shell)


def _cmd_cache(args, pm) -> int:
    from mi_probe._core.store.cli import cache_main

    return cache_main(args.rest)


def _cmd_completion(args, pm) -> int:
    print(completion_script(args.shell), end="")
    return 0


COMMANDS = {"run": _cmd_run, "validate": _cmd_validate, "check": _cmd_check, "study": _cmd_study,
            "sites": _cmd_sites,
            "plugins": _cmd_plugins, "schema": _cmd_schema, "report": _cmd_report,
            "compare": _cmd_compare, "cache": _cmd_cache,
            "bench-estimators": _cmd_bench_estimators, "completion": _cmd_completion}

#: commands that need no plugin manager (so no plugin is imported for them): compare
#: reads specs as plain YAML
NO_PLUGINS = frozenset({"completion", "compare", "cache"})


def main(argv: Sequence[str] | None = None, pm: Any = None) -> int:
    """Run one command and return its exit status. An interrupt (Ctrl-C, or SIGTERM
    during a run) prints how to continue and then propagates, so a program that calls
    ``main`` (a test runner, a notebook) stops too; the ``mi-probe`` command turns it
    into exit status 130 (:func:`entry`)."""
    args = _parser().parse_args(argv)
    try:
        if pm is None and args.command not in NO_PLUGINS:
            from mi_probe._core.plugins import get_plugin_manager

            pm = get_plugin_manager(args.plugin)
        return COMMANDS[args.command](args, pm)
    except MiProbeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        run_dir = getattr(exc, "run_dir", None)
        again = (continue_command(list(sys.argv[1:] if argv is None else argv), args.spec,
                                  Path(run_dir))
                 if run_dir is not None and args.command == "run" else
                 "the same command with the same --out")
        print("interrupted: finished units and training checkpoints are kept; continue with "
              f"`{again}` (or the same command with --resume)", file=sys.stderr)
        raise


def entry() -> None:
    """The ``mi-probe`` command: :func:`main`, with an interrupt as exit status 130
    (128 + SIGINT, what a shell expects) instead of a traceback."""
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def continue_command(argv: Sequence[str], spec: str, run_dir: Path) -> str:
    """The command that continues an interrupted run from any folder: the same
    arguments (--set, --profile, --cache-dir, -p ...), the spec and the cache made
    absolute, and --out the run directory."""
    import shlex

    tokens: list[str] = []
    skip = False
    for i, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if token == "--resume" or token.startswith("--out="):
            continue
        if token == "--out":
            skip = True
            continue
        after_cache = i > 0 and argv[i - 1] == "--cache-dir"
        if token == spec or after_cache:
            token = str(Path(token).resolve())
        elif token.startswith("--cache-dir="):
            token = "--cache-dir=" + str(Path(token.split("=", 1)[1]).resolve())
        tokens.append(token)
    tokens += ["--out", str(run_dir.resolve())]
    return "mi-probe " + " ".join(shlex.quote(t) for t in tokens)


if __name__ == "__main__":  # pragma: no cover
    entry()
