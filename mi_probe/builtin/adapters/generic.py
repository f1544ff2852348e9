"""Built-in adapter ``generic``, the last fallback for a model in which the ``blocks``
trace finds no block: the modules of timm's feature contract (``model.feature_info``:
the stage outputs that ``features_only`` would return), kind ``stage``. Models without
``feature_info`` fall back to each top-level child that runs before the classifier,
kind ``block``. A site is never the model root, a head module or the classifier:
timm's ``feature_info`` names the root (``''``) for some models (tresnet) and stale
module names for others (hrnet, mobilenetv5); such entries are left out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mi_probe.builtin.adapters._params import _params
from mi_probe.plugin import hookimpl, SiteError, SiteRef

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    from torch import nn


class GenericAdapter:
    name = "generic"

    def claims(self, model: nn.Module, arch: str) -> bool:
        return True

    def site_refs(self, model: nn.Module) -> list[SiteRef]:
        from mi_probe.plugin import head_paths

        heads = head_paths(model)
        modules = dict(model.named_modules())

        def usable(path: str) -> bool:
            return bool(path) and path in modules and path.split(".")[0] not in heads

        info = getattr(model, "feature_info", None)
        if info:
            entries = [i for i in info if usable(i.get("module", ""))]
            if not entries:
                raise SiteError(f"{type(model).__name__}: none of timm's feature_info modules "
                                f"{[i.get('module') for i in info]} is a body module of the "
                                "model (the root, a head or a name that does not exist)")
            return [SiteRef(i["module"], i["module"], "stage", i.get("num_chs")) for i in entries]
        return [SiteRef(name, name, "block") for name, child in model.named_children()
                if usable(name) and any(True for _ in child.parameters())]


@hookimpl
def mi_probe_register_adapters(register):
    register("generic", lambda _params: GenericAdapter(), _params("generic"))


@hookimpl(specname="mi_probe_resolve_adapter", trylast=True)
def resolve_generic_adapter(model, arch):
    """Every model has sites: timm's feature contract, when nothing else claims it."""
    return GenericAdapter()
