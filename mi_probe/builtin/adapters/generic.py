"""Built-in adapter ``generic``, the ``trylast`` fallback for any timm model: the
modules of timm's feature contract (``model.feature_info``: the stage outputs that
``features_only`` would return), kind ``stage``. Models without ``feature_info`` fall
back to each top-level child that runs before the classifier, kind ``block``."""

from __future__ import annotations

from torch import nn

from mi_probe.builtin.adapters._params import _params
from mi_probe.hookspecs import hookimpl
from mi_probe.interfaces import SiteRef

_HEAD_NAMES = {"head", "fc", "classifier", "global_pool", "pre_logits", "head_drop", "fc_norm",
               "norm"}


class GenericAdapter:
    name = "generic"

    def claims(self, model: nn.Module, arch: str) -> bool:
        return True

    def site_refs(self, model: nn.Module) -> list[SiteRef]:
        info = getattr(model, "feature_info", None)
        if info:
            return [SiteRef(i["module"], i["module"], "stage", i.get("num_chs")) for i in info]
        return [SiteRef(name, name, "block") for name, child in model.named_children()
                if name not in _HEAD_NAMES and any(True for _ in child.parameters())]


@hookimpl
def mi_probe_register_adapters(register):
    register("generic", lambda _params: GenericAdapter(), _params("generic"))


@hookimpl(specname="mi_probe_resolve_adapter", trylast=True)
def resolve_generic_adapter(model, arch):
    """Every model has sites: timm's feature contract, when nothing else claims it."""
    return GenericAdapter()
