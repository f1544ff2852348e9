"""The params model and the hook pair of a built-in adapter (none has options); not a
plugin."""

from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict


def _params(name: str) -> type[BaseModel]:
    return type(f"{name.title()}AdapterParams", (BaseModel,), {
        "__annotations__": {"kind": Literal[name]},
        "kind": name,
        "model_config": ConfigDict(extra="forbid"),
        "__doc__": f"The built-in {name} site adapter (no options).",
    })


def adapter_hooks(name: str, factory: Callable[[], Any], trylast: bool = False
                  ) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The two hooks every built-in adapter module defines: register ``name`` (so a
    spec can force it) and claim the models ``factory()``'s adapter ``claims``
    (``trylast``: after every other answer). Assign them to the module's
    ``mi_probe_register_adapters`` and ``mi_probe_resolve_adapter``."""
    from mi_probe.plugin import hookimpl

    def build(_params: Any) -> Any:
        return factory()

    build.__module__ = factory.__module__  # `mi-probe plugins` names the adapter's module

    @hookimpl(specname="mi_probe_register_adapters")
    def register_adapter(register: Any) -> None:
        register(name, build, _params(name))

    @hookimpl(specname="mi_probe_resolve_adapter", trylast=trylast)
    def resolve_adapter(model: Any, arch: str) -> Any:
        adapter = factory()
        return adapter if adapter.claims(model, arch) else None

    return register_adapter, resolve_adapter
