"""``mi-probe study DIR``: run every spec of a folder and write the reproduction document.

Each spec states one or more of the paper's claims as ``checks:``. The study runs the
specs in name order (trained models are shared through the model cache, finished units
are reused), keeps a ledger of the wall time of every invocation, and then writes
``docs/reproduction.md`` from the run directories alone: for each claim the setting,
the measured effect as a mean and 95% t-interval over seeds with n, the paper's
statement and a verdict, plus each run's figures as PNG. The document is generated;
editing it by hand is pointless, the next ``make study`` rewrites it.

Where a claim does not hold, the document names the known differences from the paper's
setting that bear on its quantity (``known_differences``), and the explanation specs of
``<folder>/explain/`` that re-test it: ``<baseline stem>--<what>.yaml`` runs the baseline
spec's claims in a changed setting (say, more epochs for one seed), and both runs are
evaluated side by side on the same seeds. A run directory made from an earlier version
of a spec is reported as stale, never as the current spec's result.

Verdicts come from :mod:`mi_probe._core.claims`, the same rule ``mi-probe run`` uses
(per-seed effects, 1 − 2α intervals over seeds, Fisher z for correlations, one-sided
tests, TOST for equivalence, a smallest effect of interest); across the study's claims
the verdicts are also Holm-adjusted, and the document shows both.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, cast

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from mi_probe._core.claims import (FAILS, HOLDS, INCONCLUSIVE, ClaimResult, holm,
                                   judge as verdict)
from mi_probe.errors import MiProbeError, SpecError

#: figures per run copied into the document (all of them stay in the run directory)
KEY_FIGURES = 2

#: the study's own facts (headline claims, the paper's architectures, coverage of the
#: paper); files of a study folder whose name starts with "_" are not specs
MANIFEST = "_study.yaml"


class CoverageRow(BaseModel):
    """One result statement of the paper and what tests it (or why nothing does)."""
    model_config = ConfigDict(extra="forbid")
    item: str = Field(description="the paper's figure or appendix, e.g. Fig. 1")
    statement: str = Field(description="what the paper states there")
    specs: list[str] = Field([], description="study specs (file stems) that test it")
    prefixes: list[str] = Field([], description="name prefixes of the claims that test it")
    untested: str | None = Field(None, description="what of it is not tested, and why")


class StudyManifest(BaseModel):
    """``<study folder>/_study.yaml``."""
    model_config = ConfigDict(extra="forbid")
    paper_archs: list[str] = Field([], description="the architectures the paper trained")
    headline: list[str] = Field([], description="name prefixes of the central claims that "
                                "head the README's findings")
    quotes: str = Field("", description="where the claims' quoted sentences come from")
    coverage: list[CoverageRow] = Field([], description="every result statement of the paper")
    run_first: list[str] = Field(
        [], description="specs (names or file stems) run before the others, in this order, "
        "the rest in file order: a spec whose capture holds every site and the logits, run "
        "first, lets the activation store serve the later specs on the same model")


def load_manifest(folder: Path) -> StudyManifest:
    """The study's manifest (an empty one when the folder has none)."""
    import yaml
    from pydantic import ValidationError

    path = folder / MANIFEST
    if not path.is_file():
        return StudyManifest.model_validate({})
    try:
        return StudyManifest.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        raise SpecError(f"{path}: not a valid study manifest: {exc}") from None


#: tables whose values are MI estimates (the histogram's bias bears on them), with their
#: derived tables (``dynamics_summary``, ``estimator_sweep_agreement``)
MI_TABLES = frozenset({"layer_mi", "layer_pairs", "concentration", "dynamics",
                       "estimator_sweep"})
#: tables of layer-level MI or built from it (the undefined layer reduction bears on them)
LAYER_TABLES = frozenset({"layer_mi", "dynamics", "layer_pairs", "estimator_sweep"})
#: folder of explanation specs inside a study folder; ``<baseline stem>--<what>.yaml``
EXPLAIN_FOLDER = "explain"


def _in_family(table: str, family: frozenset[str]) -> bool:
    return any(table == name or table.startswith(name + "_") for name in family)


@dataclass
class SpecRecord:
    path: Path
    name: str
    description: str
    run_dir: Path
    status: str = "not run"
    setting: dict[str, Any] = field(default_factory=dict)
    claims: list[ClaimResult] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    invocations: int = 0
    #: explanation specs: the study spec whose claims they re-test in another setting
    baseline: Path | None = None
    checks: list[Any] = field(default_factory=list, repr=False)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def arch(self) -> str:
        return str(self.setting.get("arch"))


# ------------------------------------------------------------------ running

def spec_files(folder: Path) -> list[Path]:
    """The study's specs (one or more paper claims each), in name order."""
    if not folder.is_dir():
        raise SpecError(f"study folder {folder} does not exist")
    files = sorted(p for p in folder.glob("*.yaml") if not p.name.startswith("_"))
    if not files:
        raise SpecError(f"study folder {folder} holds no .yaml specs")
    return files


def explanation_files(folder: Path) -> list[tuple[Path, Path]]:
    """``(explanation spec, baseline spec)`` pairs of ``folder/explain/``.

    An explanation spec re-tests claims of one study spec in a changed setting (more
    epochs, another estimator ...); its file name is ``<baseline stem>--<what>.yaml``.
    """
    explain = folder / EXPLAIN_FOLDER
    pairs = []
    for path in sorted(explain.glob("*.yaml")) if explain.is_dir() else []:
        stem, sep, what = path.stem.partition("--")
        baseline = folder / f"{stem}.yaml"
        if not sep or not what:
            raise SpecError(f"explanation spec {path}: name it <baseline>--<what>.yaml, where "
                            f"<baseline>.yaml is the study spec it re-tests (e.g. "
                            f"r18_concentration--40_epochs.yaml)")
        if not baseline.is_file():
            raise SpecError(f"explanation spec {path} re-tests {baseline.name}, which is not "
                            f"a spec of {folder}; valid baselines: "
                            f"{[p.stem for p in spec_files(folder)]}")
        pairs.append((path, baseline))
    return pairs


def _ledger(out: Path) -> dict[str, Any]:
    path = out / "ledger.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _unique_names(specs: Sequence[tuple[Path, Any]]) -> None:
    """Two specs of one study with one name would share a run directory."""
    seen: dict[str, Path] = {}
    for path, spec in specs:
        if spec.name in seen:
            raise SpecError(f"{seen[spec.name]} and {path} both have name {spec.name!r}; the "
                            "specs of a study need distinct names (each gets its own run "
                            "directory)")
        seen[spec.name] = path


def run_currency(spec: Any, run_dir: Path, pm: Any) -> str:
    """Whether ``run_dir`` holds a run of ``spec``: ``absent``, ``current`` (the same
    spec), ``claims changed`` (the same computation; only claims or description differ,
    so its tables answer the spec's claims) or ``stale`` (it computed something else)."""
    from mi_probe._core.runner.rundir import results_hash, spec_hash
    from mi_probe._core.spec import load_spec

    info_path = run_dir / "run.json"
    if not info_path.is_file():
        return "absent"
    if json.loads(info_path.read_text()).get("spec_hash") == spec_hash(spec):
        return "current"
    try:  # the run's own resolved spec, hashed by today's rules
        ran = load_spec(run_dir / "spec.yaml", pm=pm)
    except (MiProbeError, OSError):
        return "stale"
    return "claims changed" if results_hash(ran) == results_hash(spec) else "stale"


def _run_order(specs: list[tuple[Path, Any]], first: Sequence[str], folder: Path
               ) -> list[tuple[Path, Any]]:
    """``specs`` with those named in the manifest's ``run_first`` (name or file stem)
    moved to the front in that order; an unknown name is refused."""
    def rank(entry: tuple[Path, Any]) -> int:
        path, spec = entry
        hits = [i for i, name in enumerate(first) if name in (spec.name, path.stem)]
        return hits[0] if hits else len(first)

    known = {n for path, spec in specs for n in (spec.name, path.stem)}
    unknown = [name for name in first if name not in known]
    if unknown:
        raise SpecError(f"{folder / MANIFEST}: run_first names {', '.join(unknown)}, which "
                        f"is no spec of {folder}; valid: {sorted(p.stem for p, _ in specs)}")
    return sorted(specs, key=rank)  # stable: the rest keep their file order


def run_study(folder: Path, out: Path, pm: Any, *, only: Sequence[str] = (),
              cache_dir: Path | None = None, profile: str | None = None,
              log: Callable[[str], None] = print) -> list[str]:
    """Run (or resume) every spec of ``folder``, then its explanation specs, each into
    ``out/<spec name>``, recording the wall time of each invocation in
    ``out/ledger.json``. Every spec is loaded first (a broken spec stops the study before
    any work); a spec whose run fails does not stop the others. A finished run whose spec
    changed only in its claims or description is not recomputed: its tables answer the
    new claims. Returns the failures as ``"<name>: <reason>"``."""
    from mi_probe._core.runner.driver import run
    from mi_probe._core.spec import load_spec
    from mi_probe._core.tables import write_json

    paths = spec_files(folder) + [p for p, _ in explanation_files(folder)]
    specs = [(path, load_spec(path, pm=pm, profile=profile)) for path in paths]
    _unique_names(specs)
    if only:
        known = {n for path, spec in specs for n in (spec.name, path.stem)}
        unknown = sorted(set(only) - known)
        if unknown:
            raise SpecError(f"--only {', '.join(unknown)}: no such spec in {folder}; valid: "
                            f"{sorted(path.stem for path, _ in specs)}")
    specs = _run_order(specs, load_manifest(folder).run_first, folder)
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    for path, spec in specs:
        if only and spec.name not in only and path.stem not in only:
            continue
        run_dir = out / spec.name
        if (run_currency(spec, run_dir, pm) == "claims changed" and
                json.loads((run_dir / "run.json").read_text()).get("status") == "complete"):
            log(f"study: {path}: {run_dir} computed the same tables (only the claims or the "
                "description changed); its claims are evaluated from them")
            continue
        log(f"study: {path} -> {run_dir}")
        started = time.time()
        status = "interrupted"  # until the run returns or fails with a message
        try:
            run(spec, pm, out=run_dir, cache_dir=cache_dir, progress=False, log=log)
            status = "complete"
        except MiProbeError as exc:  # any refusal of mi-probe's: the next spec still runs
            status = f"failed: {exc}"
            failures.append(f"{spec.name}: {exc}")
            log(f"study: {spec.name} {status}")
        finally:
            ledger = _ledger(out)
            ledger.setdefault(spec.name, []).append({
                "started": _dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
                "seconds": time.time() - started, "status": status})
            write_json(out / "ledger.json", ledger)
    return failures


# ------------------------------------------------------------------ the document

def _record(path: Path, out: Path, pm: Any, ledger: dict[str, Any],
            baseline: Path | None = None, profile: str | None = None) -> SpecRecord:
    from mi_probe._core.spec import load_spec
    from mi_probe._core.tables import read_tables

    spec = load_spec(path, pm=pm, profile=profile)
    run_dir = out / spec.name
    record = SpecRecord(path, spec.name, spec.description or "", run_dir, baseline=baseline,
                        checks=list(spec.checks))
    entries = ledger.get(spec.name, [])
    record.seconds = sum(e["seconds"] for e in entries)
    record.invocations = len(entries)
    m, data = spec.model, spec.data
    record.setting = {"arch": m.arch, "weights": m.weights,
                      "image_size": getattr(data, "image_size", None),
                      "crop_scale": getattr(data, "crop_scale", None),
                      "epochs": m.train.epochs, "plateau": m.train.plateau_patience,
                      "early_stop": m.train.early_stop_patience, "seeds": list(spec.seeds),
                      "n_seeds": len(spec.seeds),
                      "bins": getattr(spec.estimator, "bins", None),
                      "estimator": spec.estimator.kind,
                      "sites": _sites_text(spec.sites), "experiment": spec.experiment.kind,
                      "mass": getattr(spec.experiment, "mass", None)}
    currency = run_currency(spec, run_dir, pm)
    if currency == "absent":
        return record
    info = json.loads((run_dir / "run.json").read_text())
    record.status = info.get("status", "unknown")
    facts = info.get("data", {})
    root = facts.get("root")
    record.setting.update(n_train=facts.get("n_train"), n_eval=facts.get("n_eval"),
                          n_selection=facts.get("n_selection"),
                          checkpoint_selection=facts.get("checkpoint_selection"),
                          classes=len(facts.get("classes") or []) or None,
                          data=Path(root).name if root else facts.get("source"),
                          device=info.get("device"))
    if currency == "stale":
        # never report a run of an earlier version of the spec as if it were this one
        record.status = (f"stale (computed by an earlier version of this spec; delete "
                         f"{run_dir} and run the study with --only {path.stem})")
        return record
    if record.status != "complete":
        return record
    record.tables = read_tables(run_dir / "tables")
    record.claims = [verdict(check, record.tables) for check in spec.checks]
    # the key figures: the experiment's own (the training curve is in every run), at most
    # KEY_FIGURES per run, to keep the document and the repository light
    words = {w for check in spec.checks for w in check.value.split("_") if len(w) > 2}
    figures = [f for f in sorted((run_dir / "figures").glob("*.png"))
               if f.stem != "training_val_acc"]
    # those that show a claim's quantity first (gini_raw -> gini_by_depth)
    record.figures = sorted(figures, key=lambda f: not any(w in f.stem for w in words))[
        :KEY_FIGURES]
    return record


def _sites_text(sites: Any) -> str:
    """The site selection of a spec in words: its patterns and kinds."""
    parts = [] if list(sites.include) == ["*"] else [", ".join(sites.include)]
    if sites.kinds:
        parts.append("kinds " + ", ".join(sites.kinds))
    return "; ".join(parts) or "all"


def study_records(folder: Path, out: Path, pm: Any, profile: str | None = None
                  ) -> tuple[list[SpecRecord], list[SpecRecord]]:
    """The study's records and its explanation records, read from ``out``."""
    ledger = _ledger(out)
    main = [_record(path, out, pm, ledger, profile=profile) for path in spec_files(folder)]
    # the study's claims are one family: Holm-adjusted verdicts beside the raw ones
    family = [(r, i) for r in main for i in range(len(r.claims))]
    for (record, i), adjusted in zip(family, holm([r.claims[i] for r, i in family])):
        record.claims[i] = adjusted
    explain = [_record(path, out, pm, ledger, baseline=base, profile=profile)
               for path, base in explanation_files(folder)]
    return main, explain


def _copy_small(source: Path, target: Path) -> None:
    """Copy a chart PNG with a 256-colour palette (charts have few colours; about a
    quarter of the size, for a document kept in the repository)."""
    from PIL import Image

    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=256).save(target, optimize=True)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _measured(claim: ClaimResult) -> str:
    if claim.mean is None:
        if claim.low is not None:  # bound over every row: a range, not a test
            return f"range [{_fmt(claim.low)}, {_fmt(claim.high)}] over {claim.n} rows"
        return "–"
    interval = (f" [{_fmt(claim.low)}, {_fmt(claim.high)}]" if claim.low is not None
                else " (no interval)")
    return f"{_fmt(claim.mean)}{interval}, n = {claim.n}"


#: how a claim's role reads in the document
ROLE_LABELS = {"paper": "", "ours": " *(ours)*", "sanity": " *(sanity check, not a finding)*"}


def _label(claim: ClaimResult) -> str:
    """The claim's name with its role, and the paper's sentence it encodes."""
    quote = f"<br>paper: “{claim.paper}”" if claim.paper else ""
    return f"{claim.name}{_role(claim)}{quote}"


def _role(claim: ClaimResult) -> str:
    """The role's label, unless the claim's name already says it."""
    label = ROLE_LABELS.get(claim.role or "", "")
    said = {"ours": "(ours", "sanity": "sanity check"}.get(claim.role or "")
    return "" if said and said in claim.name else label


def _machine() -> str:
    import torch

    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB memory"
    except (ValueError, OSError, AttributeError):
        pass
    return (f"{platform.platform()}, {os.cpu_count()} CPU(s){memory}, torch "
            f"{torch.get_num_threads()} thread(s), "
            + ("CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available()
               else "no GPU"))


def _values(records: Sequence[SpecRecord], key: str) -> str:
    """The distinct values of a setting over the runs, e.g. ``"10, 12"``."""
    shown = {f"{v:,}" if isinstance(v, int) else v if isinstance(v, str) else json.dumps(v)
             for r in records if (v := r.setting.get(key)) is not None}
    return ", ".join(sorted(shown, key=lambda v: (len(v), v))) or "?"


@dataclass(frozen=True)
class Difference:
    """A way this study's setting departs from the paper's, and which claims it bears on."""
    name: str
    text: str
    applies: Callable[[SpecRecord, ClaimResult], bool]


#: tables ranked or weighed by per-channel masses (the mass kind bears on them)
MASS_TABLES = frozenset({"concentration", "knockout", "shuffle", "perturb", "transplant",
                         "cover", "semantic_knockout", "skip_concentration", "skip_gain"})


def known_differences(records: Sequence[SpecRecord],
                      paper_archs: Sequence[str] = ()) -> list[Difference]:
    """The known differences, with this study's side read from its runs."""
    ran = [r for r in records if r.status == "complete"] or list(records)
    sizes = sorted({r.setting["image_size"] for r in ran if r.setting.get("image_size")})
    smallest = sizes[0] if sizes else None
    biases = []
    for r in ran:
        bins, k, n = r.setting.get("bins"), r.setting.get("classes"), r.setting.get("n_eval")
        if bins and k and n and r.setting.get("estimator") == "histogram":
            biases.append(((bins - 1) * (k - 1) / (2 * n), bins, k, n))
    bias = max(biases) if biases else None
    always = lambda record, claim: True  # noqa: E731
    off_paper = sorted({r.arch for r in ran if r.arch not in paper_archs})
    post_only = sorted(r.path.stem for r in ran if r.arch.startswith("resnet")
                       and "pre_add" not in str(r.setting.get("sites")))
    seeds = {len(r.setting.get("seeds") or ()) for r in ran}
    most = max(seeds) if seeds else 0
    fewer = sorted(f"{r.path.stem} ({r.setting['n_seeds']})" for r in ran
                   if r.setting.get("n_seeds", most) < most)
    vggs = [a for a in off_paper if a.startswith("vgg")]
    return [
        Difference("image size", f"{_values(ran, 'image_size')} px inputs"
                   + (f", so a ResNet's last stage sees {smallest // 32}x{smallest // 32} maps"
                      if smallest and smallest >= 32 else "")
                   + "; the paper's settings as we encode them (specs/paper) use 224 px "
                     "(7x7), which the summary we work from does not state", always),
        Difference("epochs", f"{_values(ran, 'epochs')} epochs, the learning rate cut after "
                   f"{_values(ran, 'plateau')} epochs without improvement, early stop after "
                   f"{_values(ran, 'early_stop')}; the paper: plateau patience 10, early stop "
                   "after 25 epochs without improvement (specs/paper allow 200 epochs)",
                   always),
        Difference("data size", f"{_values(ran, 'n_train')} training / "
                   f"{_values(ran, 'n_eval')} evaluation images ({_values(ran, 'data')}); "
                   "the paper: Imagenette2's full split (9,469 / 3,925)", always),
        Difference("augmentation", f"random resized crops of scale {_values(ran, 'crop_scale')}"
                   "; the paper's standard random resized crops take scale [0.08, 1]",
                   always),
        Difference("seeds", f"{most} seeds per setting"
                   + (f", fewer for cost in {', '.join(fewer)}" if fewer else "")
                   + "; the paper: five. Few seeds make wide intervals, so small effects "
                     "come out inconclusive",
                   lambda record, claim: claim.verdict == INCONCLUSIVE
                   or record.setting.get("n_seeds", most) < most),
        Difference("image roles", (
            f"models train on {_values(ran, 'n_train')} images of train/, choose their "
            f"checkpoint on {_values(ran, 'n_selection')} held-back images of train/ and are "
            f"analysed on {_values(ran, 'n_eval')} images of val/"
            if all(r.setting.get("n_selection") for r in ran) else
            f"checkpoint selection: {_values(ran, 'checkpoint_selection')}; where that is the "
            "evaluation images, the images that chose the model also analyse it")
            + "; the paper does not say which images chose its checkpoints", always),
        *([Difference("masses", f"channels are ranked and weighed by {_values(ran, 'mass')} "
                      "per-channel masses (raw: the paper's plug-in I(T_c;Y); the claims "
                      "marked (ours) run the project's null-subtracted masses as controls)",
                      lambda record, claim: _in_family(claim.table, MASS_TABLES))]
          if any(r.setting.get("mass") for r in ran) else []),
        Difference("sites", "the paper's sites for ResNet are every block's pre_add and "
                   "post_add; "
                   + (f"post_add only (no pre_add) in {', '.join(post_only)}, for cost"
                      if post_only else "every ResNet run here measures both"),
                   lambda record, claim: record.path.stem in post_only),
        Difference("architecture", "the paper trained VGG-16, ResNet-18 and ResNet-50; "
                   + (f"here {', '.join(vggs)} stands in for the VGG-16 (fewer layers, "
                      "cheaper to train)" if vggs else "")
                   + ("; " if vggs and len(vggs) < len(off_paper) else "")
                   + (f"{', '.join(a for a in off_paper if a not in vggs)} is not one of them"
                      if len(vggs) < len(off_paper) else "")
                   + ("here only the paper's own" if not off_paper else ""),
                   lambda record, claim: record.arch not in paper_archs),
        Difference("bias correction", (
            f"per-channel histogram MI is biased upwards by up to about (B-1)(K-1)/2N = "
            f"{bias[0]:.3g} nats (B = {bias[1]}, K = {bias[2]}, N = {bias[3]:,}), less for "
            "channels that occupy fewer bins; "
            if bias else "histogram MI is biased upwards; ")
            + "it moves levels and masses (hence raw and null-corrected concentration can "
              "disagree) and can reorder channels whose MI differs by less than the bias; "
              "the summary of the paper we work from names no correction",
            lambda record, claim: _in_family(claim.table, MI_TABLES)),
        Difference("layer reduction", "a layer's I(T;Y) and I(X;T) are the mean over its "
                   "channels of per-channel MI; the paper does not define its reduction (a "
                   "joint histogram over hundreds of channels saturates at H(Y))",
                   lambda record, claim: _in_family(claim.table, LAYER_TABLES)),
    ]


def _restricted(tables: dict[str, pl.DataFrame], seeds: Sequence[int]) -> dict[str, pl.DataFrame]:
    return {name: (frame.filter(pl.col("seed").is_in(list(seeds)))
                   if "seed" in frame.columns else frame) for name, frame in tables.items()}


def _training_line(tables: dict[str, pl.DataFrame], seeds: Sequence[int]) -> str:
    frame = tables.get("training")
    if frame is None or "val_acc" not in frame.columns:
        return "–"
    parts = []
    for seed in seeds:
        rows = frame.filter(pl.col("seed") == seed)
        if "regularizer" in rows.columns and rows["regularizer"].n_unique() > 1:
            rows = rows.filter(pl.col("regularizer") == "none")
        if rows["val_acc"].drop_nulls().len():
            parts.append(f"seed {seed}: {cast(float, rows['val_acc'].max()):.3f} "
                         f"({cast(int, rows['epoch'].max())} epochs)")
    return "; ".join(parts) or "–"


@dataclass
class ExplanationResult:
    record: SpecRecord
    base: SpecRecord | None
    #: per claim of the explanation spec: (this run, baseline same seeds, baseline all seeds)
    rows: list[tuple[ClaimResult, ClaimResult | None, ClaimResult | None]]


    #: the seeds both runs have (the "same seeds" column)
    shared: list[int] = field(default_factory=list)
    #: per row: how the change moved the quantity on the shared seeds (``_moved``)
    moved: list[str] = field(default_factory=list)


def _explain(record: SpecRecord, main: Sequence[SpecRecord]) -> ExplanationResult:
    # only explanation specs are explained, and they always name their baseline
    assert record.baseline is not None
    baseline = record.baseline
    base = next((r for r in main if r.path.resolve() == baseline.resolve()), None)
    shared = sorted(set(record.setting["seeds"]) & set(base.setting["seeds"])) if base else []
    rows: list[tuple[ClaimResult, ClaimResult | None, ClaimResult | None]] = []
    if record.status == "complete":
        ready = base is not None and base.status == "complete"
        for check, claim in zip(record.checks, record.claims):
            if ready:
                assert base is not None  # ready implies it
                same = verdict(check, _restricted(base.tables, shared)) if shared else None
                rows.append((claim, same, verdict(check, base.tables)))
            else:
                rows.append((claim, None, None))
    moved = [_moved(check, this, same) for check, (this, same, _) in zip(record.checks, rows)]
    return ExplanationResult(record, base, rows, shared, moved)


def _cell(claim: ClaimResult | None, missing: str = "–") -> str:
    if claim is None:
        return missing
    if claim.mean is None:
        return f"– ({claim.reason})"
    text = _measured(claim) + _per_seed(claim)
    return text + (f"; **{claim.verdict}**" if claim.n >= 2 else "")


def _per_seed(claim: ClaimResult) -> str:
    """The per-seed values behind an interval (the distribution, not only its mean)."""
    if len(claim.values) < 2:
        return ""
    return " (per seed: " + ", ".join(_fmt(v) for v in claim.values) + ")"


def _moved(check: Any, this: ClaimResult, same: ClaimResult | None) -> str:
    """How the changed setting moved the claim's quantity on the same seeds: the
    difference, and whether towards the claim or away from it."""
    if same is None or this.mean is None or same.mean is None:
        return "–"
    delta = this.mean - same.mean
    if check.kind == "equivalence":
        return f"{delta:+.3g}"
    if check.kind == "compare" or (check.kind == "trend" and check.direction == "increasing"):
        sign = 1
    elif check.kind == "trend":
        sign = -1
    elif check.min is not None and check.max is None:
        sign = 1
    elif check.max is not None and check.min is None:
        sign = -1
    else:
        return f"{delta:+.3g}"
    if delta == 0:
        return "+0 (unchanged)"
    return f"{delta:+.3g} ({'towards' if sign * delta > 0 else 'away from'} the claim)"


def _anchor(name: str) -> str:
    """GitHub's anchor of a heading made of ``name``."""
    return "".join(c for c in name.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def _setting_line(s: dict[str, Any]) -> str:
    return (f"- setting: {s['arch']} ({s['weights']}), {s.get('image_size')} px, "
            f"{s['epochs']} epochs, seeds {s['seeds']}, sites {s['sites']}"
            + (f", {s.get('n_train')} training / {s.get('n_eval')} evaluation images"
               if s.get("n_eval") else ""))


def _state(record: SpecRecord) -> str:
    return "not run yet" if record.status == "not run" else record.status


#: The file that marks a folder as the figures of a study document (replaced whole on
#: the next run); a folder without it is cleared only when it holds nothing but the
#: study's own figure files, ``<run name>-<figure>.png``.
FIGURES_MARKER = ".mi-probe-study-figures"


def _run_names(folder: Path) -> list[str]:
    """The run directory names (spec names; the file stem when a spec has none) of the
    study's specs and explanation specs, read without validating them."""
    import yaml

    paths = [*spec_files(folder), *(path for path, _ in explanation_files(folder))]
    names = []
    for path in paths:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):  # the run reports a broken spec itself
            data = None
        name = data.get("name") if isinstance(data, dict) else None
        names.append(str(name) if name else path.stem)
    return names


def check_figures_dir(figures_dir: Path, out: Path, folder: Path) -> None:
    """Refuse a figures folder whose replacement (the study deletes it whole) would
    delete anything but the study's own figures: a symbolic link; the run directories
    (``out``), a folder holding them, or one inside a run directory; the spec folder, a
    folder holding it, or one inside its ``explain/``; an existing folder that a study
    did not write (no :data:`FIGURES_MARKER`, and other files than the study's
    ``<run name>-<figure>.png``). Called before any run, so no run time is lost."""
    if figures_dir.is_symlink():
        raise SpecError(f"the figures folder {figures_dir} is a symbolic link; the study "
                        f"replaces that folder whole and does not follow links. Pass "
                        f"--figures <a real folder>")
    figures, runs, specs = (Path(p).resolve() for p in (figures_dir, out, folder))
    names = _run_names(folder)
    in_a_run = figures.is_relative_to(runs) and figures != runs and (
        figures.relative_to(runs).parts[0] in names
        or any((parent / "run.json").exists() for parent in figures.parents
               if parent.is_relative_to(runs) and parent != runs))
    in_explain = figures.is_relative_to(specs / EXPLAIN_FOLDER)
    for other, what, inside in ((runs, "the run directories (--out)", in_a_run),
                                (specs, "the spec folder", in_explain)):
        if figures == other or other.is_relative_to(figures) or inside:
            raise SpecError(
                f"the figures folder {figures_dir} overlaps {what} {other}: the study "
                f"replaces the figures folder whole, which would delete them. Pass "
                f"--figures <another folder> or a --doc path whose name differs")
    if not figures.exists():
        return
    if not figures.is_dir():
        raise SpecError(f"the figures folder {figures_dir} exists and is not a folder")
    if (figures / FIGURES_MARKER).is_file():
        return
    foreign = sorted(p.name for p in figures.iterdir() if not (
        p.is_file() and p.suffix == ".png"
        and any(p.name.startswith(f"{name}-") for name in names)))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise SpecError(
            f"the figures folder {figures_dir} exists and was not written by mi-probe "
            f"study (it holds {shown}); the study replaces that folder whole. Pass "
            f"--figures <a new or empty folder>, or remove it yourself")


def write_reproduction(folder: Path, out: Path, doc: Path, figures_dir: Path, pm: Any,
                       profile: str | None = None) -> Path:
    """Write ``doc`` (and the figures under ``figures_dir``) from the runs in ``out``."""
    from mi_probe._core.runner.rundir import git_commit, versions
    from mi_probe._core.files import atomic_write_text

    check_figures_dir(figures_dir, out, folder)
    records, explained = study_records(folder, out, pm, profile)
    explanations = [_explain(r, records) for r in explained]
    if figures_dir.exists():  # ours (check_figures_dir): cleared, so no stale figure stays
        shutil.rmtree(figures_dir)
    figures_dir.mkdir(parents=True)
    (figures_dir / FIGURES_MARKER).write_text(
        "Figures of a document written by mi-probe study; the next run replaces this "
        "folder whole.\n")
    rel = os.path.relpath(figures_dir, doc.parent)
    everything = records + explained
    total = sum(r.seconds for r in everything)
    done = [r for r in records if r.status == "complete"]
    vers = versions()
    lines = [
        "# The paper's claims on real images",
        "",
        f"*Generated by `make study` (`mi-probe study {folder}`) from the run directories "
        f"under `{out}`; do not edit by hand. Verdict rules: `mi_probe/_core/claims.py`, docs/claims.md.*",
        "",
        f"- commit: `{git_commit() or 'unknown'}`; generated "
        f"{_dt.datetime.now().isoformat(timespec='minutes')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        f"- machine: {_machine()}",
        f"- wall time of every study invocation recorded in `{out}/ledger.json`: "
        f"{total / 60:.1f} min over {sum(r.invocations for r in everything)} run(s) "
        f"({sum(r.seconds for r in records) / 60:.1f} min for the study specs, "
        f"{sum(r.seconds for r in explained) / 60:.1f} min for the explanation specs), model "
        "training included (models are shared through the cache, so the first spec that "
        "needs one pays for it)",
        f"- specs run: {len(done)} of {len(records)}, and "
        f"{sum(r.status == 'complete' for r in explained)} of {len(explained)} explanation "
        "spec(s)",
        "",
        "## Verdicts",
        "",
        "Measured: the claim's effect per seed (sites, classes and draws averaged within "
        "a seed), mean [1 − 2α interval over seeds; 90% for α = 0.05] and n seeds; "
        "correlations are averaged in Fisher z. *holds*: the one-sided test at α passes "
        "(TOST for equivalence claims); *does not hold*: the interval excludes every effect "
        "of interest; otherwise *inconclusive* (always with one seed). The adjusted verdict "
        f"applies Holm's correction across all {sum(len(r.claims) for r in records)} "
        "claims of the study. Claims marked *(ours)* are the project's reading, not the "
        "paper's statement; *sanity checks* test that the measurement works. The quoted "
        "sentences: see \"Where the claims come from\" below.",
        "",
        "| claim | model | measured | verdict | Holm-adjusted |",
        "|---|---|---|---|---|",
    ]
    for record in records:
        if record.status != "complete":
            lines.append(f"| `{record.path.name}`: {_state(record)} | – | – | – | – |")
            continue
        for claim in record.claims:
            lines.append(f"| {_label(claim)} | {record.arch} | {claim.quantity}: "
                         f"{_measured(claim)} | **{claim.verdict}** ({claim.reason}) | "
                         f"**{claim.adjusted or claim.verdict}** |")
    manifest = load_manifest(folder)
    lines += [""] + _coverage_section(manifest, records)
    if manifest.quotes:
        lines += ["## Where the claims come from", "", manifest.quotes, ""]
    lines += ["", "## Runs", ""]
    for record in records:
        lines += _run_section(record, figures_dir, rel)
    lines += _differences_section(records, explanations, manifest.paper_archs)
    lines += _explanations_section(explanations, figures_dir, rel)
    atomic_write_text(doc, "\n".join(lines) + "\n")
    return doc


def _coverage_section(manifest: StudyManifest, records: Sequence[SpecRecord]) -> list[str]:
    """Every result statement of the paper (the manifest's coverage), the claims that test
    it with their verdicts, and what is not tested and why."""
    if not manifest.coverage:
        return []
    by_stem = {r.path.stem: r for r in records}
    lines = ["## Coverage of the paper", "",
             "Every result statement of the paper, the study specs and claims that test it, "
             "and what is not tested (from the study's `_study.yaml`).", "",
             "| paper | statement | tested by | verdicts (raw; Holm-adjusted) | not tested |",
             "|---|---|---|---|---|"]
    for row in manifest.coverage:
        tested, verdicts = [], []
        for stem in row.specs:
            record = by_stem.get(stem)
            if record is None:
                tested.append(f"`{stem}` (no such spec)")
                continue
            tested.append(f"`{stem}`" + ("" if record.status == "complete"
                                         else f" ({_state(record)})"))
            for claim in record.claims:
                if any(claim.name.startswith(p) for p in row.prefixes):
                    verdicts.append(f"{claim.verdict}; {claim.adjusted or claim.verdict} "
                                    f"({record.arch}: {claim.name})")
        lines.append(f"| {row.item} | {row.statement} | {', '.join(tested) or '–'} | "
                     f"{'<br>'.join(verdicts) or '–'} | {row.untested or '–'} |")
    return lines + [""]


def _run_section(record: SpecRecord, figures_dir: Path, rel: str) -> list[str]:
    lines = [f"### {record.name}", "", record.description, "",
             f"- spec: `{record.path}`; run directory: `{record.run_dir}`; status: "
             f"{record.status}",
             _setting_line(record.setting),
             f"- wall time: {record.seconds / 60:.1f} min over {record.invocations} "
             "invocation(s)", ""]
    for claim in record.claims:
        lines.append(f"- **{claim.verdict}** (Holm-adjusted: {claim.adjusted or claim.verdict})"
                     f": {claim.name}{_role(claim)}. "
                     f"{claim.quantity}: {_measured(claim)}{_per_seed(claim)}; "
                     f"{claim.reason}.")
    return lines + _figure_lines(record, figures_dir, rel) + [""]


def _figure_lines(record: SpecRecord, figures_dir: Path, rel: str) -> list[str]:
    """Copy the record's key figures next to the document and link them."""
    lines = []
    for figure in record.figures:
        target = figures_dir / f"{record.name}-{figure.name}"
        _copy_small(figure, target)
        lines += ["", f"![{record.name}: {figure.stem}]({rel}/{target.name})"]
    return lines


def _differences_section(records: Sequence[SpecRecord],
                         explanations: Sequence[ExplanationResult],
                         paper_archs: Sequence[str] = ()) -> list[str]:
    differences = known_differences(records, paper_archs)
    lines = ["## Where the results differ from the paper", ""]
    others = [(r, c) for r in records for c in r.claims if c.verdict != HOLDS]
    if not others:
        return lines + ["Every claim that was run holds here.", ""]
    lines += ["The known differences between this setting and the paper's:", ""]
    lines += [f"- **{d.name}**: {d.text}" for d in differences]
    lines += ["", f"{len(others)} claim(s) do not hold or are inconclusive here; for each, the "
              "differences that bear on its quantity (the estimator's bias and the layer "
              "reduction bear on MI values; accuracies under interventions depend on them "
              "only through the channels chosen, so they are not listed there), and the "
              "explanations tested:", ""]
    for record, claim in others:
        names = [d.name for d in differences if d.applies(record, claim)]
        lines.append(f"- {claim.name} ({record.arch}; **{claim.verdict}**, "
                     f"{_measured(claim)}): could be explained by {', '.join(names)}.")
        for ex in explanations:
            if ex.base is not record:
                continue
            for (this, same, _), moved in zip(ex.rows, ex.moved):
                if this.name == claim.name:
                    lines.append(f"  - tested in [{ex.record.name}](#{_anchor(ex.record.name)})"
                                 f" ({ex.record.description}): seeds "
                                 f"{ex.record.setting['seeds']}: {_cell(this)} there vs seeds "
                                 f"{ex.shared}: {_cell(same, '– (no seed in common)')} in "
                                 f"the study; moved {moved}.")
    lines.append("")
    return lines


def _settings_summary(explanations: Sequence[ExplanationResult]) -> list[str]:
    """Per baseline, one table: which settings make each of its claims hold (the
    baseline's own verdict first, then each one-factor change), with the effect."""
    lines: list[str] = []
    baselines: dict[Path, list[ExplanationResult]] = {}
    for ex in explanations:
        if ex.base is not None and ex.base.status == "complete":
            baselines.setdefault(ex.base.path, []).append(ex)
    for group in baselines.values():
        base = group[0].base
        assert base is not None  # grouped on it above
        names = [c.name for c in base.claims]
        lines += [f"### Which settings make the claims of `{base.path.name}` hold", "",
                  "| setting | seeds | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 2) + "|"]
        lines.append(f"| baseline | {len(base.setting['seeds'])} | "
                     + " | ".join(_verdict_cell(c) for c in base.claims) + " |")
        for ex in group:
            by_name = {this.name: this for this, _, _ in ex.rows}
            change = ex.record.path.stem.partition("--")[2]
            lines.append(f"| {change} ({ex.record.status}) | {len(ex.record.setting['seeds'])} | "
                         + " | ".join(_verdict_cell(by_name.get(n)) for n in names) + " |")
        lines.append("")
        # the same, in words: per claim, the settings under which it holds and fails
        for claim in base.claims:
            found = _settings_verdicts(group, claim.name)
            if found:
                lines.append(f"- *{claim.name}* (baseline: {claim.verdict}): {found}.")
        lines.append("")
    return lines


def _settings_verdicts(group: Sequence[ExplanationResult], name: str) -> str:
    """``"holds with a, b (3 seeds); does not hold with c"``: the one-factor changes
    (the part of each explanation's file name after ``--``, with its seed count where it
    differs from the baseline's) under which the claim ``name`` reaches each verdict;
    empty when no explanation re-tests it."""
    found: dict[str, list[str]] = {}
    for ex in group:
        seeds = len(ex.record.setting["seeds"])
        fewer = (f" ({seeds} seed{'s' * (seeds != 1)})" if ex.base is not None
                 and seeds != len(ex.base.setting["seeds"]) else "")
        for claim, _, _ in ex.rows:
            if claim.name == name:
                found.setdefault(claim.verdict, []).append(
                    ex.record.path.stem.partition("--")[2] + fewer)
    return "; ".join(f"{verdict} with {', '.join(found[verdict])}"
                     for verdict in (HOLDS, FAILS, INCONCLUSIVE) if verdict in found)


def _verdict_cell(claim: ClaimResult | None) -> str:
    if claim is None:
        return "–"
    if claim.mean is None:
        return claim.verdict
    return f"**{claim.verdict}** {_fmt(claim.mean)} [{_fmt(claim.low)}, {_fmt(claim.high)}]"


def _explanations_section(explanations: Sequence[ExplanationResult], figures_dir: Path,
                          rel: str) -> list[str]:
    if not explanations:
        return []
    lines = ["## Testing explanations", "",
             f"Each spec under `{EXPLAIN_FOLDER}/` re-tests claims of one study spec (its "
             "baseline, named before `--` in its file name) in a changed setting. Every claim "
             "is evaluated on the explanation's run and on the baseline's run, for the same "
             "seeds and for all of the baseline's seeds.", ""]
    lines += _settings_summary(explanations)
    for ex in explanations:
        record, seeds = ex.record, ex.record.setting["seeds"]
        lines += [f"### {record.name}", "", record.description, "",
                  f"- spec: `{record.path}`; baseline: `{record.baseline}`; run directory: "
                  f"`{record.run_dir}`; status: {record.status}",
                  _setting_line(record.setting),
                  f"- wall time: {record.seconds / 60:.1f} min over {record.invocations} "
                  "invocation(s)"]
        if record.status == "complete" and ex.base is not None and ex.base.status == "complete":
            lines.append(f"- best validation accuracy: here {_training_line(record.tables, seeds)}"
                         f"; baseline {_training_line(ex.base.tables, seeds)}")
        if ex.base is None or ex.base.status != "complete":
            lines.append(f"- baseline: {_state(ex.base) if ex.base else 'missing'}; no "
                         "comparison yet")
        elif ex.rows:
            lines += ["", f"| claim | here, seeds {seeds} | baseline, the same seeds "
                      f"{ex.shared} | moved by the change | baseline, all seeds "
                      f"{ex.base.setting['seeds']} |", "|---|---|---|---|---|"]
            for (this, same, every), moved in zip(ex.rows, ex.moved):
                lines.append(f"| {this.name} | {this.quantity}: {_cell(this)} | "
                             f"{_cell(same, '– (no seed in common)')} | {moved} | "
                             f"{_cell(every)} |")
        lines += _figure_lines(record, figures_dir, rel) + [""]
    return lines


README_BEGIN, README_END = "<!-- study:begin -->", "<!-- study:end -->"


def update_readme(readme: Path, doc: Path, folder: Path, out: Path, pm: Any,
                  profile: str | None = None) -> bool:
    """Replace the block between the study markers of ``readme`` with a summary of the
    verdicts and the three headline claims (so the README's findings are generated too);
    False when the markers are absent."""
    from mi_probe._core.files import atomic_write_text

    if not readme.is_file():
        return False
    text = readme.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        return False
    records, explained = study_records(folder, out, pm, profile)
    explanations = [_explain(r, records) for r in explained]
    rel = os.path.relpath(doc, readme.parent)
    claims = [(r, c) for r in records for c in r.claims]
    counts = {v: sum(c.verdict == v for _, c in claims) for v in (HOLDS, FAILS, INCONCLUSIVE)}
    missing = [f"{r.path.stem} ({_state(r)})" for r in records if r.status != "complete"]
    rows = [f"Generated by `make study`: of {len(claims)} claims, {counts[HOLDS]} hold, "
            f"{counts[FAILS]} do not hold and {counts[INCONCLUSIVE]} are inconclusive"
            + (f"; {len(missing)} spec(s) without a finished run: {', '.join(missing)}"
               if missing else "")
            + f". Every verdict, its setting and interval, and which known differences could "
            f"explain each departure are in [{rel}]({rel}). The paper's three central claims:",
            ""]
    for prefix in load_manifest(folder).headline:
        found = [(r, c) for r, c in claims if c.name.startswith(prefix)]
        if not found:
            rows.append(f"- *{prefix}*: no finished run states it yet")
        for record, claim in found:
            rows.append(f"- **{claim.verdict}** (Holm-adjusted: {claim.adjusted or claim.verdict}"
                        f"; {record.arch}): {claim.name} ({_measured(claim)})")
            tested = _settings_verdicts([ex for ex in explanations if ex.base is record
                                         and ex.record.status == "complete"], claim.name)
            if tested:
                rows.append(f"  - with one factor changed: {tested}")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    atomic_write_text(readme, head + README_BEGIN + "\n" + "\n".join(rows) + "\n"
                      + README_END + tail)
    return True
