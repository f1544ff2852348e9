"""The run package: everything between a validated spec and a run directory.

Modules, by reason to change (imports run one way, top to bottom)::

    rundir      the run directory: naming, resuming, unit folders, provenance
    evaluation  forward passes with interventions, and the per-site output cache
    training    the models a run uses: random, loaded, or trained through the cache
    context     Engine, the RunContext experiments receive (composes the two above)
    stages      one analysis unit, worker payloads, failed-unit reports
    worker      one unit in a process of its own (Ray tasks, torchrun ranks)
    rendering   notes, figures, index.html and plugin report writers
    driver      run(spec): the training stage, the analysis stage, the report

Only :mod:`driver` knows the whole pipeline; nothing here imports it back. Importing
this package imports none of them (a worker process starts light); ``run``,
``rerender`` and ``RunOutcome`` are loaded on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunOutcome", "rerender", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mi_probe._core.runner import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'mi_probe._core.runner' has no attribute {name!r}")
