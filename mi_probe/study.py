"""``mi-probe study DIR``: run every spec of a folder and write the reproduction document.

Each spec states one or more of the paper's claims as ``checks:``. The study runs the
specs in name order (trained models are shared through the model cache, finished units
are reused), keeps a ledger of the wall time of every invocation, and then writes
``docs/reproduction.md`` from the run directories alone: for each claim the setting,
the measured effect as a mean and 95% t-interval over seeds with n, the paper's
statement and a verdict, plus each run's figures as PNG. The document is generated;
editing it by hand is pointless, the next ``make study`` rewrites it.

Verdicts come from per-seed values (sites, classes and draws of a seed are averaged
first: they are not independent observations):

* ``compare``: the per-seed difference greater − lesser. *holds* when its 95% interval
  lies above the claim's margin, *does not hold* when it lies below, *inconclusive*
  when it contains the margin or there is one seed;
* ``trend``: the per-seed Spearman correlation. *holds* when its mean reaches
  ``min_spearman`` and its interval lies above 0, *does not hold* when the interval
  lies below ``min_spearman``, *inconclusive* otherwise;
* ``bound``: the per-seed mean of the value. *holds* when the interval lies within the
  bounds, *does not hold* when it lies outside, *inconclusive* otherwise.
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
from typing import Any, Callable, Sequence

import polars as pl

from mi_probe.errors import RunError, SpecError

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
#: figures per run copied into the document (all of them stay in the run directory)
KEY_FIGURES = 2

#: Where this study's setting departs from the paper's, named in every verdict that is
#: not "holds" (the document says which could explain it).
KNOWN_DIFFERENCES = {
    "image size": "64 px inputs (the paper: 224 px), so late layers see 2x2 maps",
    "epochs": "12 epochs with early stopping after 6 (the paper: up to 200, patience 25)",
    "data size": "2,200 training and 1,000 evaluation images (the paper: Imagenette2's "
                 "9,469 / 3,925)",
    "architecture": "ResNet-18 as in the paper; a VGG at reduced size where run",
    "bias correction": "per-channel histogram MI is biased upwards by about "
                       "(B-1)(K-1)/2N = 0.0855 nats at N = 1,000 (B = 20, K = 10); raw "
                       "and null-corrected masses can disagree",
    "layer reduction": "the layer-level I(T;Y) is the mean over channels (the paper does "
                       "not define its reduction)",
}


@dataclass
class ClaimResult:
    name: str
    kind: str
    table: str
    verdict: str
    reason: str
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    n: int = 0
    quantity: str = ""


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


# ------------------------------------------------------------------ per-seed statistics

def _interval(values: Sequence[float]) -> tuple[float | None, float | None, float | None, int]:
    from mi_probe.tables import t_quantile_975

    values = [v for v in values if v is not None and not math.isnan(v)]
    n = len(values)
    if n == 0:
        return None, None, None, 0
    mean = sum(values) / n
    if n < 2:
        return mean, None, None, n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def _filtered(check: Any, tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    frame = tables.get(check.table)
    if frame is None:
        raise SpecError(f"no table {check.table!r} in the run")
    for column, wanted in check.filter.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        frame = frame.filter(pl.col(column).is_in(values))
    if frame.schema[check.value].is_float():
        frame = frame.with_columns(pl.col(check.value).fill_nan(None))
    frame = frame.drop_nulls(check.value)
    if frame.height == 0 or "seed" not in frame.columns:
        raise SpecError(f"no per-seed rows of {check.table!r} match {check.filter}")
    return frame


def per_seed_values(check: Any, tables: dict[str, pl.DataFrame]) -> tuple[list[float], str]:
    """The claim's quantity for each seed, and what it is."""
    frame = _filtered(check, tables)
    if check.kind == "compare":
        by = pl.col(check.by).cast(pl.Utf8)
        means = {}
        for label in (check.greater, check.lesser):
            part = frame.filter(by == str(label)).group_by("seed").agg(pl.col(check.value).mean())
            means[label] = dict(zip(part["seed"].to_list(), part[check.value].to_list()))
        seeds = sorted(set(means[check.greater]) & set(means[check.lesser]))
        return ([means[check.greater][s] - means[check.lesser][s] for s in seeds],
                f"{check.value}: {check.by}={check.greater} minus {check.by}={check.lesser}")
    if check.kind == "trend":
        from scipy.stats import spearmanr

        values = []
        for seed in sorted(frame["seed"].unique().to_list()):
            per = frame.filter(pl.col("seed") == seed).group_by(check.over).agg(
                pl.col(check.value).mean()).sort(check.over)
            if per.height >= 3:
                rho = spearmanr(per[check.over].to_numpy(), per[check.value].to_numpy()).statistic
                values.append(float(rho))
        return values, f"Spearman({check.over}, {check.value}) per seed"
    per = frame.group_by("seed").agg(pl.col(check.value).mean())
    return per[check.value].to_list(), f"mean {check.value} per seed"


def verdict(check: Any, tables: dict[str, pl.DataFrame]) -> ClaimResult:
    """The claim's verdict from per-seed values (rules in the module docstring)."""
    base = dict(name=check.name, kind=check.kind, table=check.table)
    try:
        values, quantity = per_seed_values(check, tables)
    except (SpecError, pl.exceptions.PolarsError) as exc:
        return ClaimResult(**base, verdict=INCONCLUSIVE, reason=f"cannot be evaluated: {exc}")
    mean, low, high, n = _interval(values)
    stats = dict(mean=mean, low=low, high=high, n=n, quantity=quantity)
    if n == 0:
        return ClaimResult(**base, verdict=INCONCLUSIVE, reason="no seed has a value", **stats)
    if n < 2:
        return ClaimResult(**base, verdict=INCONCLUSIVE,
                           reason="one seed: no interval to decide on", **stats)
    if check.kind == "compare":
        margin = check.margin
        if low > margin:
            return ClaimResult(**base, verdict=HOLDS, reason=f"the interval lies above "
                               f"{margin:g}", **stats)
        if high < margin:
            return ClaimResult(**base, verdict=FAILS, reason=f"the interval lies below "
                               f"{margin:g}", **stats)
        return ClaimResult(**base, verdict=INCONCLUSIVE, reason=f"the interval contains "
                           f"{margin:g}", **stats)
    if check.kind == "trend":
        if check.direction == "increasing":
            target = check.min_spearman
            holds, fails = mean >= target and low > 0, high < target
        else:
            target = -check.min_spearman
            holds, fails = mean <= target and high < 0, low > target
        if holds:
            return ClaimResult(**base, verdict=HOLDS, reason=f"the mean reaches {target:g} "
                               "and the interval excludes 0", **stats)
        if fails:
            return ClaimResult(**base, verdict=FAILS, reason=f"the interval lies on the "
                               f"wrong side of {target:g}", **stats)
        return ClaimResult(**base, verdict=INCONCLUSIVE, reason=f"the interval reaches "
                           f"{target:g} or 0", **stats)
    lo_ok = check.min is None or low >= check.min
    hi_ok = check.max is None or high <= check.max
    if lo_ok and hi_ok:
        return ClaimResult(**base, verdict=HOLDS, reason="the interval lies within the "
                           f"bounds [{check.min}, {check.max}]", **stats)
    outside = ((check.min is not None and high < check.min)
               or (check.max is not None and low > check.max))
    if outside:
        return ClaimResult(**base, verdict=FAILS, reason="the interval lies outside the "
                           f"bounds [{check.min}, {check.max}]", **stats)
    return ClaimResult(**base, verdict=INCONCLUSIVE, reason="the interval crosses a bound",
                       **stats)


# ------------------------------------------------------------------ running

def spec_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SpecError(f"study folder {folder} does not exist")
    files = sorted(p for p in folder.glob("*.yaml"))
    if not files:
        raise SpecError(f"study folder {folder} holds no .yaml specs")
    return files


def _ledger(out: Path) -> dict[str, Any]:
    path = out / "ledger.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def run_study(folder: Path, out: Path, pm: Any, *, only: Sequence[str] = (),
              cache_dir: Path | None = None, profile: str | None = None,
              log: Callable[[str], None] = print) -> None:
    """Run (or resume) every spec of ``folder`` into ``out/<spec name>``, recording the
    wall time of each invocation in ``out/ledger.json``."""
    from mi_probe.runner.driver import run
    from mi_probe.spec import load_spec
    from mi_probe.tables import write_json

    out.mkdir(parents=True, exist_ok=True)
    for path in spec_files(folder):
        spec = load_spec(path, pm=pm, profile=profile)
        if only and spec.name not in only and path.stem not in only:
            continue
        log(f"study: {path} -> {out / spec.name}")
        started = time.time()
        status = "interrupted"  # until the run returns or fails with a message
        try:
            run(spec, pm, out=out / spec.name, cache_dir=cache_dir, progress=False, log=log)
            status = "complete"
        except RunError as exc:
            status = f"failed: {exc}"
            log(f"study: {spec.name} {status}")
        finally:
            ledger = _ledger(out)
            ledger.setdefault(spec.name, []).append({
                "started": _dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
                "seconds": time.time() - started, "status": status})
            write_json(out / "ledger.json", ledger)


# ------------------------------------------------------------------ the document

def _record(path: Path, out: Path, pm: Any, ledger: dict[str, Any]) -> SpecRecord:
    from mi_probe.spec import load_spec
    from mi_probe.tables import read_tables

    spec = load_spec(path, pm=pm)
    run_dir = out / spec.name
    record = SpecRecord(path, spec.name, spec.description or "", run_dir)
    entries = ledger.get(spec.name, [])
    record.seconds = sum(e["seconds"] for e in entries)
    record.invocations = len(entries)
    m, data = spec.model, spec.data
    record.setting = {"arch": m.arch, "weights": m.weights,
                      "image_size": getattr(data, "image_size", None),
                      "epochs": m.train.epochs, "seeds": list(spec.seeds),
                      "sites": list(spec.sites.include), "experiment": spec.experiment.kind}
    info_path = run_dir / "run.json"
    if not info_path.is_file():
        return record
    info = json.loads(info_path.read_text())
    record.status = info.get("status", "unknown")
    record.setting.update(n_train=info.get("data", {}).get("n_train"),
                          n_eval=info.get("data", {}).get("n_eval"), device=info.get("device"))
    if record.status != "complete":
        return record
    tables = read_tables(run_dir / "tables")
    record.claims = [verdict(check, tables) for check in spec.checks]
    # the key figures: the experiment's own (the training curve is in every run), at most
    # KEY_FIGURES per run, to keep the document and the repository light
    words = {w for check in spec.checks for w in check.value.split("_") if len(w) > 2}
    figures = [f for f in sorted((run_dir / "figures").glob("*.png"))
               if f.stem != "training_val_acc"]
    # those that show a claim's quantity first (gini_raw -> gini_by_depth)
    record.figures = sorted(figures, key=lambda f: not any(w in f.stem for w in words))[
        :KEY_FIGURES]
    return record


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
        return "–"
    interval = (f" [{_fmt(claim.low)}, {_fmt(claim.high)}]" if claim.low is not None
                else " (no interval)")
    return f"{_fmt(claim.mean)}{interval}, n = {claim.n}"


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


def write_reproduction(folder: Path, out: Path, doc: Path, figures_dir: Path, pm: Any) -> Path:
    """Write ``doc`` (and the figures under ``figures_dir``) from the runs in ``out``."""
    from mi_probe.runner.rundir import git_commit, versions
    from mi_probe.tables import atomic_write_text

    ledger = _ledger(out)
    records = [_record(path, out, pm, ledger) for path in spec_files(folder)]
    if figures_dir.exists():
        shutil.rmtree(figures_dir)
    figures_dir.mkdir(parents=True)
    rel = os.path.relpath(figures_dir, doc.parent)
    total = sum(r.seconds for r in records)
    done = [r for r in records if r.status == "complete"]
    vers = versions()
    lines = [
        "# The paper's claims on real images",
        "",
        f"*Generated by `make study` (`mi-probe study {folder}`) from the run directories "
        f"under `{out}`; do not edit by hand. Verdict rules: `mi_probe/study.py`.*",
        "",
        f"- commit: `{git_commit() or 'unknown'}`; generated "
        f"{_dt.datetime.now().isoformat(timespec='minutes')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        f"- machine: {_machine()}",
        f"- wall time of every study invocation so far: {total / 60:.1f} min over "
        f"{sum(r.invocations for r in records)} run(s), model training included "
        "(models are shared through the cache, so the first spec that needs one pays for it)",
        f"- specs run: {len(done)} of {len(records)}",
        "",
        "## Verdicts",
        "",
        "Measured: the claim's quantity per seed (sites, classes and draws averaged within "
        "a seed), mean [95% t-interval] over seeds, n seeds.",
        "",
        "| claim (the paper's statement) | measured | verdict |",
        "|---|---|---|",
    ]
    for record in records:
        if record.status != "complete":
            lines.append(f"| `{record.path.name}`: not run yet ({record.status}) | – | – |")
            continue
        for claim in record.claims:
            lines.append(f"| {claim.name} | {claim.quantity}: {_measured(claim)} | "
                         f"**{claim.verdict}** ({claim.reason}) |")
    lines += ["", "## Runs", ""]
    for record in records:
        s = record.setting
        lines += [f"### {record.name}", "", record.description, "",
                  f"- spec: `{record.path}`; run directory: `{record.run_dir}`; status: "
                  f"{record.status}",
                  f"- setting: {s['arch']} ({s['weights']}), {s.get('image_size')} px, "
                  f"{s['epochs']} epochs, seeds {s['seeds']}, sites {s['sites']}"
                  + (f", {s.get('n_train')} training / {s.get('n_eval')} evaluation images"
                     if s.get("n_eval") else ""),
                  f"- wall time: {record.seconds / 60:.1f} min over {record.invocations} "
                  "invocation(s)", ""]
        for claim in record.claims:
            lines.append(f"- **{claim.verdict}**: {claim.name}. {claim.quantity}: "
                         f"{_measured(claim)}; {claim.reason}.")
        for figure in record.figures:
            target = figures_dir / f"{record.name}-{figure.name}"
            _copy_small(figure, target)
            lines += ["", f"![{record.name}: {figure.stem}]({rel}/{target.name})"]
        lines.append("")
    others = [c for r in records for c in r.claims if c.verdict != HOLDS]
    lines += ["## Where the results differ from the paper", ""]
    if others:
        lines += [f"{len(others)} claim(s) do not hold or are inconclusive here. The known "
                  "differences between this setting and the paper's, any of which could "
                  "explain a difference:", ""]
        lines += [f"- **{k}**: {v}" for k, v in KNOWN_DIFFERENCES.items()]
        lines += ["", "Claims affected: " + "; ".join(f"{c.name} ({c.verdict})"
                                                       for c in others) + "."]
    else:
        lines.append("Every claim that was run holds here.")
    atomic_write_text(doc, "\n".join(lines) + "\n")
    return doc


README_BEGIN, README_END = "<!-- study:begin -->", "<!-- study:end -->"


def update_readme(readme: Path, doc: Path, folder: Path, out: Path, pm: Any) -> bool:
    """Replace the block between the study markers of ``readme`` with the verdicts (so
    the README's findings are generated too); False when the markers are absent."""
    from mi_probe.tables import atomic_write_text

    if not readme.is_file():
        return False
    text = readme.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        return False
    ledger = _ledger(out)
    records = [_record(path, out, pm, ledger) for path in spec_files(folder)]
    rel = os.path.relpath(doc, readme.parent)
    rows = [f"Generated by `make study` into [{rel}]({rel}) (setting, intervals, figures, "
            "and which known differences could explain each departure):", ""]
    for record in records:
        if record.status != "complete":
            rows.append(f"- *{record.path.stem}*: not run yet")
            continue
        for claim in record.claims:
            rows.append(f"- **{claim.verdict}**: {claim.name} ({_measured(claim)})")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    atomic_write_text(readme, head + README_BEGIN + "\n" + "\n".join(rows) + "\n"
                      + README_END + tail)
    return True
