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

from mi_probe.errors import SpecError
from mi_probe.interfaces import DeclaresTables, TableSchema, as_schema
from mi_probe.models import build_model
from mi_probe.sites import filter_refs, select_adapter
from mi_probe.tables import CORE_SCHEMAS


def structural_model(spec: Any, num_classes: int | None = None) -> torch.nn.Module:
    """The spec's model on the meta device (no weights); raises the model errors a real
    build would (unknown architecture with a did-you-mean, bad head or activation)."""
    m = spec.model
    with torch.device("meta"):
        return build_model(m.arch, num_classes or m.num_classes or 10, 0, m.act, m.head,
                           m.zero_init_last)


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
    """The spec's site patterns, and each regulariser's, must match sites of the model."""
    m = spec.model
    adapter = select_adapter(pm, model, m.arch, spec.sites.adapter)
    refs = adapter.site_refs(model)
    filter_refs(refs, spec.sites.include, spec.sites.exclude, m.arch)
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
        columns = list(schema.columns)
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


def preflight(spec: Any, pm: Any) -> None:
    """All structural refusals: architecture, site patterns, claims (no data, no
    weights; about a second)."""
    model = structural_model(spec)
    check_sites(spec, pm, model)
    check_claims(spec, pm.registry.build("experiments", spec.experiment))
