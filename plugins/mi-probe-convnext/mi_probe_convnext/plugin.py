"""mi-probe plugin: the ``convnext`` site adapter for timm ConvNeXt models.

Registered through the entry point ``[project.entry-points.mi_probe] convnext =
"mi_probe_convnext.plugin"`` (or ``MI_PROBE_PLUGINS=mi_probe_convnext.plugin`` /
``mi-probe -p mi_probe_convnext.plugin``). Uses only mi-probe's public plugin surface
(``hookspecs``, ``interfaces``), never the engine. Importing it also registers the
``<arch>_ls1`` timm architectures (see ``variants``), as soon as timm is imported: the
plugin itself imports neither timm nor torch, so ``mi-probe plugins`` and ``schema``
stay fast.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from mi_probe.plugin import hookimpl

from mi_probe_convnext.adapter import ConvNeXtAdapter
from mi_probe_convnext.variants import register_when_timm_loads

register_when_timm_loads()


class ConvNeXtAdapterParams(BaseModel):
    """The convnext site adapter (no options): stem, and pre_add / post_add per block."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["convnext"] = "convnext"


@hookimpl
def mi_probe_register_adapters(register):
    register("convnext", lambda _params: ConvNeXtAdapter(), ConvNeXtAdapterParams)


@hookimpl
def mi_probe_resolve_adapter(model, arch):
    """Claim timm ConvNeXt models; the generic fallback is ``trylast``, so it never wins
    over this answer."""
    adapter = ConvNeXtAdapter()
    return adapter if adapter.claims(model, arch) else None
