"""Where the activation store is: the default folder, ``MI_PROBE_STORE`` and the spec's
setting, resolved to a store (or to None, with the reason)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from mi_probe._core.store.zarrstore import ActivationStore, zarr_available

#: environment variable that turns the store off (``off``) or relocates it (a folder or
#: an fsspec URL); it overrides the spec's ``store`` section
STORE_ENV = "MI_PROBE_STORE"
OFF = frozenset({"off", "0", "false", "no", "none", "disabled"})
ON = frozenset({"", "on", "1", "true", "yes", "default"})


def default_location(cache_dir: Path) -> Path:
    """Where the store lives by default: ``<cache>/activations`` (beside ``models/``)."""
    return Path(cache_dir) / "activations"


def resolve_store(cache_dir: Path, enabled: bool = True, location: str | None = None,
                  storage_options: dict[str, Any] | None = None,
                  log: Callable[[str], None] | None = None
                  ) -> tuple[ActivationStore | None, str]:
    """The store a run uses, and a line saying which (or why none).

    ``MI_PROBE_STORE`` wins: ``off`` turns it off, a path or URL relocates it, ``on``
    keeps the default. Otherwise ``enabled`` and ``location`` (the spec's) decide; the
    default is ``<cache>/activations``. Without zarr 3 there is no store."""
    env = os.environ.get(STORE_ENV)
    if env is not None:
        value = env.strip()
        if value.lower() in OFF:
            return None, f"activation store: off ({STORE_ENV}={env})"
        enabled, location = True, (None if value.lower() in ON else value)
    if not enabled:
        return None, "activation store: off (store.enabled: false)"
    if (reason := zarr_available()) is not None:
        return None, f"activation store: off ({reason})"
    store = ActivationStore(location if location else default_location(cache_dir),
                            storage_options=storage_options, log=log)
    return store, f"activation store: {store.location}"
