"""mi-probe: measure how neural networks organise information while they learn.

Histogram mutual information on pooled activations of any timm backbone, per layer and
per channel, for trained and randomly initialised models, from one YAML spec.

Names are imported lazily, so a plugin importing ``mi_probe.hookspecs`` does not pull
in the run machinery.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "run": "mi_probe.api", "load_run": "mi_probe.api", "Run": "mi_probe.api",
    "compare": "mi_probe.api", "bench_estimators": "mi_probe.api",
    "rerender": "mi_probe._core.runner.driver",
    "RunOutcome": "mi_probe._core.runner.driver", "Engine": "mi_probe._core.runner.context",
    "load_spec": "mi_probe._core.spec",
    "get_plugin_manager": "mi_probe._core.plugins",
    "hookimpl": "mi_probe.hookspecs",
    "Captured": "mi_probe.interfaces", "DataBundle": "mi_probe.interfaces",
    "LayerMI": "mi_probe.interfaces", "Site": "mi_probe.interfaces", "SiteRef": "mi_probe.interfaces",
    **{name: "mi_probe.errors" for name in (
        "MiProbeError", "SpecError", "UnknownPluginError", "PluginError", "ModelError",
        "UnknownModelError", "CheckpointError", "SiteError", "DataError",
        "NonFiniteActivationError", "EstimatorError", "RunError")},
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mi_probe' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    """The API names, so ``dir(mi_probe)`` and tab completion list them."""
    return sorted(set(__all__) | {"api", "cli", "errors", "functional", "hookspecs",
                                  "interfaces", "plugin", "testing"})
