"""Built-in adapter plugin: VGG, ResNet, and the generic fallback (``trylast``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from mi_probe.hookspecs import hookimpl
from mi_probe.sites.generic import GenericAdapter
from mi_probe.sites.resnet import ResNetAdapter
from mi_probe.sites.vgg import VGGAdapter


def _params(name: str) -> type[BaseModel]:
    return type(f"{name.title()}AdapterParams", (BaseModel,), {
        "__annotations__": {"kind": Literal[name]},
        "kind": name,
        "model_config": ConfigDict(extra="forbid"),
        "__doc__": f"The built-in {name} site adapter (no options).",
    })


ADAPTERS = {"vgg": VGGAdapter, "resnet": ResNetAdapter, "generic": GenericAdapter}


@hookimpl
def mi_probe_register_adapters(register):
    for name, cls in ADAPTERS.items():
        register(name, lambda _params, _cls=cls: _cls(), _params(name))


@hookimpl
def mi_probe_resolve_adapter(model, arch):
    for cls in (VGGAdapter, ResNetAdapter):
        adapter = cls()
        if adapter.claims(model, arch):
            return adapter
    return None


@hookimpl(specname="mi_probe_resolve_adapter", trylast=True)
def resolve_generic_adapter(model, arch):
    """Every model has sites: timm's feature contract, when nothing else claims it."""
    return GenericAdapter()
