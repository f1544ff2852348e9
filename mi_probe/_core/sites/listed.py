"""Sites a spec lists by module name (``sites.modules``), for a model no adapter
understands, e.g. your own ``nn.Module``; and the one place that picks a run's adapter
from its spec (the listed modules, else the adapter named or claiming the model)."""

from __future__ import annotations

import difflib
from typing import Any, Sequence

from torch import nn

from mi_probe.errors import SiteError
from mi_probe.interfaces import Adapter, SiteRef
from mi_probe._core.sites import select_adapter


class ListedModulesAdapter:
    """The outputs of the modules a spec lists, kind ``block``, in the order given (list
    them in forward order: depth is that order). Interventions hook these modules like
    any other site; the whole network re-runs for each (no suffix ability)."""

    name = "modules"

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = list(modules)

    def claims(self, model: nn.Module, arch: str) -> bool:
        return True

    def site_refs(self, model: nn.Module) -> list[SiteRef]:
        known = dict(model.named_modules())
        doubled = sorted({m for m in self.modules if self.modules.count(m) > 1})
        if doubled:
            raise SiteError(f"sites.modules lists {doubled} more than once")
        for path in self.modules:
            if path == "" or path not in known:
                close = difflib.get_close_matches(path, [k for k in known if k], n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise SiteError(f"sites.modules: {type(model).__name__} has no module "
                                f"{path!r} (a dotted name from model.named_modules(), "
                                f"e.g. {[k for k in known if k][:4]}){hint}")
        return [SiteRef(path, path, "block") for path in self.modules]


def spec_adapter(pm: Any, model: nn.Module, sites_spec: Any, arch: str) -> Adapter:
    """The adapter of a spec's ``sites`` section: its listed modules when it lists any,
    else the adapter it names (``auto``: the first that claims the model)."""
    modules = getattr(sites_spec, "modules", None) or []
    if modules:
        if sites_spec.adapter != "auto":
            raise SiteError(f"sites.modules and sites.adapter: {sites_spec.adapter} both "
                            "choose the sites; give one of them")
        return ListedModulesAdapter(modules)
    return select_adapter(pm, model, arch, sites_spec.adapter)
