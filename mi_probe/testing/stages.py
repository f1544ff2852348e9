"""The stages a spec goes through in CI, shared by ``mi-probe check`` and the pytest
collector: ``validate`` (the spec loads under the profile), ``sites`` (the adapter
resolves and the patterns find sites), ``run-tiny`` (the whole experiment runs on the
profile) and ``checks`` (the spec's claims hold on that run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("validate", "sites", "run-tiny", "checks")


class StageFailure(Exception):
    """A stage failed; the message is what the user sees (no traceback)."""


@dataclass
class SpecState:
    """What earlier stages of one spec produced."""

    path: Path
    spec: Any = None
    sites: list = field(default_factory=list)
    outcome: Any = None
    failed: str | None = None


def looks_like_spec(path: Path) -> bool:
    """A YAML file with a top-level ``experiment:`` key (or any YAML under ``specs/``);
    never a file whose name starts with "_" (a study's ``_study.yaml`` manifest)."""
    if path.suffix not in (".yaml", ".yml") or path.name.startswith("_"):
        return False
    if "specs" in path.parts:
        return True
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(line.startswith("experiment:") for line in text.splitlines())


def stage_validate(state: SpecState, pm: Any, profile: str | None) -> str:
    from mi_probe._core.validation import load_validated

    state.spec = load_validated(state.path, pm=pm, profile=profile).spec
    return f"{state.spec.experiment.kind} on {state.spec.model.arch}"


def stage_sites(state: SpecState, pm: Any) -> str:
    import torch

    from mi_probe._core.models import build_model
    from mi_probe._core.sites import resolve_sites
    from mi_probe._core.sites.listed import spec_adapter

    spec = state.spec
    m = spec.model
    classes = m.num_classes or getattr(spec.data, "n_classes", None) or 10
    size = getattr(spec.data, "image_size", 32)
    model = build_model(m.arch, classes, spec.seeds[0], m.act, m.head, m.zero_init_last,
                        img_size=size)
    adapter = spec_adapter(pm, model, spec.sites, m.arch)
    s = spec.sites
    state.sites = resolve_sites(model, adapter, torch.zeros(2, 3, size, size), s.include,
                                s.exclude, m.arch, s.kinds, s.position, s.tokens)
    kinds: dict[str, int] = {}
    for site in state.sites:
        kinds[site.kind] = kinds.get(site.kind, 0) + 1
    return f"{len(state.sites)} sites ({', '.join(f'{k} {v}' for k, v in kinds.items())})"


def stage_run(state: SpecState, pm: Any, out: Path, cache_dir: Path) -> str:
    from mi_probe._core.runner.driver import run

    state.outcome = run(state.spec, pm, out=out, cache_dir=cache_dir, progress=False,
                        log=lambda _m: None)
    return f"{len(state.outcome.tables)} tables in {out}"


def stage_checks(state: SpecState) -> str:
    from mi_probe._core.claims import verdict_of

    checks = state.outcome.checks
    failed = state.outcome.failed_checks
    if failed:
        raise StageFailure("\n".join(
            f"claim {c['name']!r} failed ({verdict_of(c)}): {c['detail']}"
            for c in failed))
    return f"{len(checks)} claim(s) hold" if checks else "no claims"


def run_stage(stage: str, state: SpecState, pm: Any, profile: str | None, workdir: Path,
              cache_dir: Path) -> str:
    """Run one stage; raises StageFailure (with a readable message) when it fails."""
    from mi_probe.errors import MiProbeError

    if state.failed is not None:
        raise StageFailure(f"skipped: stage {state.failed!r} failed")
    try:
        if stage != "validate" and state.spec is None:  # selected alone (pytest -k checks)
            run_stage("validate", state, pm, profile, workdir, cache_dir)
        if stage == "checks" and state.outcome is None:
            run_stage("run-tiny", state, pm, profile, workdir, cache_dir)
        if stage == "validate":
            return stage_validate(state, pm, profile)
        if stage == "sites":
            return stage_sites(state, pm)
        if stage == "run-tiny":
            name = "__".join(state.path.with_suffix("").parts[-3:]).replace(".", "_")
            return stage_run(state, pm, workdir / name, cache_dir)
        if stage == "checks":
            return stage_checks(state)
        raise StageFailure(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    except StageFailure:
        if stage != "checks":
            state.failed = state.failed or stage  # validate, when run for a later stage
        raise
    except MiProbeError as exc:
        state.failed = stage
        raise StageFailure(str(exc)) from None
    except Exception:
        state.failed = stage  # an internal error: later stages skip, the traceback shows
        raise
