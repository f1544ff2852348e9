"""Refusals that need the model's structure but no weights, data or training.

``mi-probe validate`` and the start of every run build the spec's architecture on
PyTorch's meta device (shapes only, no memory, no initialisation cost), resolve the
site adapter and the spec's site patterns (and every regulariser's), and check that the
spec's claims name tables and columns the experiment declares. So a misspelt
architecture, a site pattern that matches nothing or a claim about a table that will
never exist fails in a second, not after hours of training.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from pydantic import ValidationError

from mi_probe.errors import SiteError, SpecError
from mi_probe.interfaces import DeclaresTables, TableSchema, as_schema
from mi_probe._core.archs import is_custom_arch
from mi_probe._core.models import build_model
from mi_probe._core.sites import filter_refs, resolve_sites
from mi_probe._core.sites.listed import spec_adapter
from mi_probe._core.sites.trace import probe_for
from mi_probe._core.tables import CORE_SCHEMAS, RUN_COLUMNS


def spec_image_size(spec: Any) -> tuple[int, int] | None:
    """(H, W) of the spec's images when its data source states one (``image_size``)."""
    size = getattr(spec.data, "image_size", None)
    return (size, size) if isinstance(size, int) else None


def structural_model(spec: Any, num_classes: int | None = None,
                     device: str = "meta") -> torch.nn.Module:
    """The spec's model on the meta device (no weights); raises the model errors a real
    build would (unknown architecture with a did-you-mean, bad head or activation, an
    input size timm cannot build the model for)."""
    m = spec.model
    with torch.device(device):
        return build_model(m.arch, num_classes or m.num_classes or 10, 0, m.act, m.head,
                           m.zero_init_last, img_size=spec_image_size(spec))


def _runs(model: torch.nn.Module, probe: torch.Tensor) -> Exception | None:
    try:
        with torch.no_grad():
            model.eval()(probe)
    except Exception as exc:  # any failure of the forward pass is reported by the caller
        return exc
    return None


def check_logits(spec: Any, model: torch.nn.Module, probe: torch.Tensor,
                 num_classes: int) -> None:
    """The forward pass must return (N, num_classes) logits: an encoder without a
    classification head (timm's ``*_enc`` models) cannot be scored or trained."""
    with torch.no_grad():
        out = model.eval()(probe)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    shape = tuple(getattr(logits, "shape", ()))
    if is_custom_arch(spec.model.arch):
        # your own model fixes its class count itself; the run checks it against the
        # data's classes once they are known (ModelStore.build)
        if len(shape) != 2 or shape[0] != probe.shape[0] or shape[1] < 2:
            raise SpecError(f"model.arch {spec.model.arch!r} returns {shape} from its "
                            f"forward pass for {probe.shape[0]} images; expected "
                            f"({probe.shape[0]}, number of classes) logits")
        return
    if shape != (probe.shape[0], num_classes):
        raise SpecError(f"model.arch {spec.model.arch!r} returns {shape} from its forward "
                        f"pass for {probe.shape[0]} images, not ({probe.shape[0]}, "
                        f"{num_classes}) class logits: it has no classification head (an "
                        "encoder); use a classifier architecture")


def smallest_working_size(spec: Any, start: int, limit: int = 1024) -> int | None:
    """The smallest square image size >= ``start`` (steps of 8) the spec's model runs on
    (built for that size where timm fixes it), found on the meta device."""
    from mi_probe._core.models import fixes_input_size

    m = spec.model
    fixed = fixes_input_size(m.arch)
    with torch.device("meta"):
        model = None if fixed else build_model(m.arch, m.num_classes or 10, 0, m.act, m.head,
                                               m.zero_init_last)
        size = max(8, -(-start // 8) * 8)
        for _ in range(64):
            if size > limit:
                return None
            try:
                candidate = model or build_model(m.arch, m.num_classes or 10, 0, m.act,
                                                 m.head, m.zero_init_last, img_size=size)
            except Exception:
                candidate = None
            if candidate is not None and _runs(candidate, torch.zeros(2, 3, size, size)) is None:
                return size
            size += 8 if size < 128 else 16
    return None


def check_input_size(spec: Any, model: torch.nn.Module) -> torch.nn.Module:
    """Refuse an image size the model cannot run on, naming the size that would work.
    Returns the model to resolve sites on: the meta build, or a real CPU build when
    the meta device cannot run the model at all (an op with no meta kernel)."""
    size = spec_image_size(spec)
    if size is None:
        return model
    probe = torch.zeros(2, 3, *size, device="meta")
    failure = _runs(model, probe)
    if failure is None:
        check_logits(spec, model, probe, spec.model.num_classes or 10)
        return model
    from mi_probe._core.models import default_input_size

    default = default_input_size(spec.model.arch)
    at_default = None if default is None else _runs(model if not _fixed(spec) else
                                                    _at(spec, default[1:]),
                                                    torch.zeros(2, *default, device="meta"))
    if default is not None and at_default is not None:
        real = structural_model(spec, device="cpu")  # the meta device cannot run it
        failure = _runs(real, torch.zeros(2, 3, *size))
        if failure is None:
            check_logits(spec, real, torch.zeros(2, 3, *size), spec.model.num_classes or 10)
            return real
    works = smallest_working_size(spec, size[0])
    hint = (f"the smallest size it runs on is {works} px" if works else
            "no size up to 1024 px works")
    raise SpecError(f"model.arch {spec.model.arch!r} cannot run on the data's "
                    f"{size[0]}x{size[1]} px images ({describe_failure(failure)}); {hint}"
                    + (f" (timm's default is {default[1]} px)" if default else "")
                    + "; set data image_size accordingly")


def describe_failure(exc: Exception) -> str:
    """``Type: first line of the message`` (timm's asserts often carry none)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def _fixed(spec: Any) -> bool:
    from mi_probe._core.models import fixes_input_size

    return fixes_input_size(spec.model.arch)


def _at(spec: Any, size: tuple[int, int]) -> torch.nn.Module:
    m = spec.model
    with torch.device("meta"):
        return build_model(m.arch, m.num_classes or 10, 0, m.act, m.head, m.zero_init_last,
                           img_size=size)


def regularizer_params(spec: Any, registry: Any) -> list[Any]:
    """Every regulariser the run may train with: the model's, and those an experiment
    names in its own parameters (e.g. ``hsic_compare``'s ``regularizer``)."""
    entries = registry.entries("regularizers")

    def found(value: Any) -> list[Any]:
        if isinstance(value, (list, tuple)):
            return [p for item in value for p in found(item)]
        if isinstance(value, dict) and value.get("kind") in entries:
            try:  # given as a mapping: the experiment validates it, report only sites here
                return [entries[value["kind"]].params_model(**value)]
            except ValidationError:
                return []
        entry = entries.get(getattr(value, "kind", None))
        return [value] if entry is not None and isinstance(value, entry.params_model) else []

    params = list(spec.model.train.regularizers)
    for name in type(spec.experiment).model_fields:
        params += found(getattr(spec.experiment, name))
    return params


def check_sites(spec: Any, pm: Any, model: torch.nn.Module) -> None:
    """The spec's site selection, and each regulariser's patterns, must match sites of
    the model, and every selected site must be captured by a forward pass at the data's
    image size (a stale module name, a module that is never called, a block whose
    output has no channel axis all fail here, before any training)."""
    m = spec.model
    model = check_input_size(spec, model)
    adapter = spec_adapter(pm, model, spec.sites, m.arch)
    refs = adapter.site_refs(model)
    s = spec.sites
    filter_refs(refs, s.include, s.exclude, m.arch, s.kinds)
    size = spec_image_size(spec)
    device = next(model.parameters()).device
    probe = torch.zeros(2, 3, *size, device=device) if size else probe_for(model)
    try:
        resolve_sites(model, adapter, probe, s.include, s.exclude, m.arch, s.kinds,
                      s.position, s.tokens)
    except SiteError as exc:
        fix = ("sites.adapter: auto finds the blocks that run" if s.adapter != "auto" else
               "choose other sites")
        raise SiteError(f"{exc} (model.arch {m.arch!r}, adapter {adapter.name!r}); {fix}; "
                        f"`mi-probe sites {m.arch}` lists what can be captured") from None
    for params in regularizer_params(spec, pm.registry):
        reg = pm.registry.build("regularizers", params)
        filter_refs(refs, list(reg.site_patterns), (), m.arch)


def declared_tables(experiment: Any) -> dict[str, TableSchema] | None:
    """The tables a run of ``experiment`` writes, by name; None when the experiment
    declares none (claims about it are then checked after the run)."""
    if not isinstance(experiment, DeclaresTables):
        return None
    declared = {**CORE_SCHEMAS, **experiment.table_schemas}
    return {name: as_schema(schema) for name, schema in declared.items()}


def check_claims(spec: Any, experiment: Any) -> None:
    """Every claim must name a table the experiment declares and, in a closed schema,
    declared columns for its value and for what it filters and groups by. Claims about
    derived ``summary_*`` tables are checked when the run evaluates them."""
    tables = declared_tables(experiment)
    if tables is None:
        return
    problems = []
    for i, check in enumerate(spec.checks):
        where = f"checks[{i}] ({check.name!r})"
        if check.table.startswith("summary_"):
            continue
        if check.table not in tables:
            close = difflib.get_close_matches(check.table, list(tables), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{where}: table {check.table!r} is not one experiment "
                            f"{spec.experiment.kind!r} writes; it writes "
                            f"{', '.join(sorted(tables))} and summary_* tables{hint}")
            continue
        schema = tables[check.table]
        if schema.open:
            continue
        columns = [*schema.columns, *RUN_COLUMNS]  # every table carries the run columns
        named = [check.value, *check.filter, *(getattr(check, f, None) for f in ("over", "by"))]
        for column in [c for c in named if c is not None]:
            if column not in columns:
                close = difflib.get_close_matches(column, columns, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{where}: table {check.table!r} has no column {column!r}; "
                                f"its columns are {', '.join(columns)}{hint}")
    if problems:
        raise SpecError("the spec's claims name tables or columns the experiment does not "
                        "write", problems)


def preflight(spec: Any, pm: Any, experiment: Any = None) -> None:
    """All structural refusals: architecture, site patterns, claims (no data, no
    weights; about a second). ``experiment``: the one the validation pipeline built."""
    model = structural_model(spec)
    check_sites(spec, pm, model)
    check_claims(spec, experiment if experiment is not None
                 else pm.registry.build("experiments", spec.experiment))
