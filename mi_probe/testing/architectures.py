"""Conformance sweep over timm's registry (like timm's own ``tests/test_models.py``).

For one architecture, :func:`check_architecture` does what a researcher who brings a
timm model would do, through the public entry points:

1. picks the image size: 64 px where the model runs on it (models that timm builds for
   one size are built for 64 px), else the smallest size that works;
2. resolves the sites (adapter ``auto``) and checks that none is the model root, a
   head module or the logits, and that every site's pooled capture of one tiny batch
   has the channel count the probe reported and finite values;
3. runs ``layer_mi`` (random weights, every site) and ``knockout`` (random weights,
   ``kinds: [output]``, the deepest block) with :func:`mi_probe.run` on
   synthetic images, and checks that both wrote rows for every site they selected.

:func:`sweep` does it for the smallest model of every timm module (family) and
:func:`write_markdown` renders ``docs/architectures.md``. ``make architectures`` runs
the whole sweep; ``tests/test_architectures.py`` runs a fixed sample that covers every
built-in adapter.
"""

from __future__ import annotations

import json
import math
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

#: the paper's architectures, checked besides the smallest model of each family
PAPER_ARCHS = ("resnet18", "resnet50", "vgg16")
#: default image size of the sweep (small, so 98 families run in minutes on a CPU)
SWEEP_SIZE = 64


def family_models() -> dict[str, list[str]]:
    """timm's model names per model module (family), as timm registers them."""
    from timm.models import _registry

    def from_timm(names: set[str]) -> bool:  # not mi-probe's or a plugin's own models
        return any(_registry._model_entrypoints[n].__module__.startswith("timm.")
                   for n in names)

    return {module: sorted(names) for module, names in
            sorted(_registry._module_to_models.items()) if from_timm(names)}


def smallest_model(names: Iterable[str]) -> tuple[str, int] | None:
    """The model with the fewest parameters (built on the meta device: no memory)."""
    import timm

    best = None
    for name in names:
        try:
            with torch.device("meta"):
                model = timm.create_model(name, num_classes=10)
        except Exception:  # models timm cannot build without extra arguments
            continue
        count = sum(p.numel() for p in model.parameters())
        if best is None or count < best[1]:
            best = (name, count)
    return best


def _spec(arch: str, size: int, experiment: dict[str, Any], sites: dict[str, Any]
          ) -> dict[str, Any]:
    return {
        "name": f"sweep-{experiment['kind']}",
        "seeds": [0],
        "data": {"kind": "synthetic", "n_classes": 4, "n_train": 8, "n_val": 16,
                 "image_size": size},
        "model": {"arch": arch, "weights": "random"},
        "sites": sites,
        "estimator": {"kind": "histogram", "bins": 10},
        "eval": {"batch_size": 16},
        "experiment": experiment,
        "report": {"formats": ["html"]},
    }


def _pick_size(arch: str, pm: Any) -> int:
    """64 px where the model runs on it, else the smallest size that works."""
    from mi_probe.errors import SpecError
    from mi_probe._core.preflight import check_input_size, smallest_working_size, structural_model
    from mi_probe._core.spec import load_spec_text

    import yaml

    spec = load_spec_text(yaml.safe_dump(_spec(arch, SWEEP_SIZE, {"kind": "layer_mi"}, {})),
                          "<sweep>", [], pm)
    try:
        check_input_size(spec, structural_model(spec))
        return SWEEP_SIZE
    except SpecError:
        found = smallest_working_size(spec, SWEEP_SIZE)
        if found is None:
            raise
        return found


def _site_problems(model: torch.nn.Module, sites: list[Any], probe: torch.Tensor,
                   num_classes: int) -> list[str]:
    """Sites that are the root, a head module or the logits, or whose capture disagrees
    with the probe (channel count, finiteness)."""
    from mi_probe._core.capture import capture, check_logits
    from mi_probe._core.sites.trace import head_paths

    problems = []
    heads = head_paths(model)
    for site in sites:
        if site.module == "":
            problems.append(f"{site.name}: the model root")
        elif site.module.split(".")[0] in heads:
            problems.append(f"{site.name}: inside head module {site.module}")
    labels = torch.arange(len(probe)) % 2
    loader = [(probe, labels)]
    captured = capture(model, sites, loader, torch.device("cpu"))
    check_logits(captured, num_classes)
    for site in sites:
        acts = captured.acts[site.name]
        if acts.shape != (len(probe), site.channels):
            problems.append(f"{site.name}: captured {tuple(acts.shape)}, probe said "
                            f"{site.channels} channels")
        if not torch.isfinite(acts).all():
            problems.append(f"{site.name}: non-finite pooled values")
        if captured.logits is not None and acts.shape == captured.logits.shape and \
                torch.equal(acts, captured.logits):
            problems.append(f"{site.name}: equals the logits")
    return problems


def check_architecture(arch: str, workdir: Path, pm: Any = None,
                       family: str | None = None) -> dict[str, Any]:
    """One row of the conformance table for ``arch`` (never raises: failures are rows)."""
    from mi_probe.api import run as run_spec
    from mi_probe._core.models import build_model
    from mi_probe._core.plugins import get_plugin_manager
    from mi_probe._core.sites import resolve_sites, select_adapter

    pm = pm or get_plugin_manager()
    row: dict[str, Any] = {"family": family or "", "model": arch, "adapter": "",
                           "image_size": None, "site_kinds": "", "sites": 0,
                           "layer_mi": False, "knockout": False, "notes": ""}
    started = time.perf_counter()
    step = "build"
    try:
        size = _pick_size(arch, pm)
        row["image_size"] = size
        model = build_model(arch, 4, 0, img_size=size)
        row["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
        step = "sites"
        adapter = select_adapter(pm, model, arch)
        row["adapter"] = adapter.name
        probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        sites = resolve_sites(model, adapter, probe, arch=arch)
        kinds = Counter(s.kind for s in sites)
        row["sites"] = len(sites)
        row["site_kinds"] = ", ".join(f"{k} {v}" for k, v in kinds.items())
        problems = _site_problems(model, sites, probe, 4)
        if problems:
            row["notes"] = "; ".join(problems[:3])
            return row
        step = "layer_mi"
        layer = run_spec(_spec(arch, size, {"kind": "layer_mi", "states": ["random"],
                                            "null_draws": 0, "channel_table": False}, {}),
                         out=workdir / arch / "layer_mi", cache_dir=workdir / "cache")
        table = layer.tables["layer_mi"]
        measured = set(table["site"].to_list())
        values = [v for v in table["i_ty"].to_list() if v is not None]
        row["layer_mi"] = (measured == {s.name for s in sites} and len(values) == len(sites)
                           and all(math.isfinite(v) for v in values))
        if not row["layer_mi"]:
            row["notes"] = f"layer_mi measured {len(measured)} of {len(sites)} sites"
            return row
        step = "knockout"
        knock = run_spec(_spec(arch, size, {
            "kind": "knockout", "state": "random", "q": [0.5], "selections": ["top", "random"],
            "random_draws": 1, "variants": ["plain"], "fit": ["in_sample"], "mass": "raw"},
            {"kinds": ["output"], "position": "last"}),
            out=workdir / arch / "knockout", cache_dir=workdir / "cache")
        drops = knock.tables.get("knockout")
        row["knockout"] = drops is not None and drops.height > 0 and all(
            math.isfinite(v) for v in drops["drop"].to_list() if v is not None)
        if not row["knockout"]:
            row["notes"] = "knockout wrote no finite drop"
    except Exception as exc:  # a failure of any step is a row with the reason
        from mi_probe._core.preflight import describe_failure

        row["notes"] = f"{step}: {describe_failure(exc)}"
        row["traceback"] = traceback.format_exc(limit=4)
    finally:
        row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def sweep(workdir: Path, families: Iterable[str] | None = None, extra: Iterable[str] = PAPER_ARCHS,
          log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Rows for the smallest model of every timm family (or of ``families``), then the
    ``extra`` architectures. Rows are appended to ``workdir/rows.jsonl`` as they finish,
    and a rerun skips the architectures already there (an interrupted sweep resumes)."""
    from mi_probe._core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    workdir.mkdir(parents=True, exist_ok=True)
    ledger = workdir / "rows.jsonl"
    done = {}
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["family"]] = row
    wanted = set(families) if families is not None else None
    todo: list[tuple[str, list[str]]] = [
        (family, names) for family, names in family_models().items()
        if wanted is None or family in wanted]
    todo += [(f"(paper) {a}", [a]) for a in extra]
    rows = []
    for family, names in todo:
        if family in done:
            rows.append(done[family])
            continue
        with warnings.catch_warnings():  # timm's deprecated-name remaps while searching
            warnings.simplefilter("ignore")
            best = smallest_model(names) if len(names) > 1 else (names[0], 0)
        arch = best[0] if best else names[0]
        row = check_architecture(arch, workdir, pm, family)
        log(f"{family:28s} {arch:36s} layer_mi {row['layer_mi']!s:5s} "
            f"knockout {row['knockout']!s:5s} {row['seconds']:6.1f}s {row['notes'][:80]}")
        with ledger.open("a") as fh:
            fh.write(json.dumps({k: v for k, v in row.items() if k != "traceback"}) + "\n")
        rows.append(row)
    return rows


def write_markdown(rows: list[dict[str, Any]], path: Path, versions: dict[str, str]) -> Path:
    """``docs/architectures.md``: one row per family, then the failures with reasons."""
    families = [r for r in rows if not r["family"].startswith("(paper)")]
    passing = [r for r in families if r["layer_mi"] and r["knockout"]]
    named = [r for r in families if r["adapter"] in ("blocks", "resnet", "vgg", "convnext")]
    lines = [
        "# Architectures: every timm family, checked",
        "",
        "Generated by `make architectures` (`python -m mi_probe.testing.architectures`); "
        "do not edit by hand.",
        "",
        f"timm {versions.get('timm', '?')}, torch {versions.get('torch', '?')}. For the "
        "smallest model (fewest parameters) of each of timm's model modules, and the "
        "paper's architectures: build it with random weights, list its sites "
        "(`adapter: auto`), capture one batch of 2 images and check that no site is the "
        "model root, a head module or the logits and that every site has the channels the "
        "probe reported; then run `layer_mi` on every site and `knockout` (top vs. random "
        "at q = 0.5) on the output of the deepest block, both through `mi_probe.run` "
        "on synthetic images (4 classes, 16 evaluation images) at 64 px, or the smallest "
        "size the model runs on.",
        "",
        f"**{len([r for r in passing if r in named])} of {len(families)} families have "
        f"named block sites and pass layer_mi and knockout** ({len(named)} resolve named "
        "block sites: adapter `blocks`, `resnet`, `vgg` or a plugin's; `generic` would mean "
        "only timm's stage list). No site of any model is the root, a head module or the "
        "logits.",
        "",
        "Site kinds: `stem`; `pre_add` (a residual branch as it is added); `post_add` (a "
        "residual block's output); `block` (a block without a residual add); `post_act` "
        "(VGG); `stage` (timm's feature_info stage output, the fallback). "
        "See docs/concepts.md, \"Sites on any architecture\".",
        "",
        "| family | model | params (M) | px | adapter | sites | site kinds | layer_mi | "
        "knockout | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['family']} | `{r['model']}` | {r.get('params_m', '')} | "
                     f"{r['image_size'] or ''} | {r['adapter']} | {r['sites']} | "
                     f"{r['site_kinds']} | {'ok' if r['layer_mi'] else 'FAIL'} | "
                     f"{'ok' if r['knockout'] else 'FAIL'} | "
                     f"{r['notes'].replace('|', '/')} |")
    failing = [r for r in rows if not (r["layer_mi"] and r["knockout"])]
    lines += ["", "## Families that fail", ""]
    if failing:
        lines += [f"- `{r['model']}` ({r['family']}): {r['notes']}" for r in failing]
    else:
        lines.append("None.")
    no_residual = [r for r in families if r["layer_mi"] and not any(
        kind in r["site_kinds"] for kind in ("post_add", "post_act"))]
    lines += ["", "## Families measured without a residual split", "",
              "These pass, but their blocks show no residual add that the trace recognises "
              "(plain stacks, dense or inception-style concatenation, or an add of a scaled "
              "branch), so they have `block` sites and no `pre_add`/`post_add`:", ""]
    lines.append(", ".join(f"`{r['model']}`" for r in no_residual) or "None.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    import timm

    parser = argparse.ArgumentParser(description="timm conformance sweep -> docs/architectures.md")
    parser.add_argument("--out", type=Path, default=Path("docs/architectures.md"))
    parser.add_argument("--workdir", type=Path, default=Path("reports/architectures"))
    parser.add_argument("--family", action="append", help="only these timm modules")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = sweep(args.workdir, args.family)
    path = write_markdown(rows, args.out, {"timm": timm.__version__, "torch": torch.__version__})
    print(f"wrote {path}")
    families = [r for r in rows if not r["family"].startswith("(paper)")]
    return 0 if all(r["layer_mi"] and r["knockout"] for r in families) else 1


if __name__ == "__main__":
    raise SystemExit(main())
