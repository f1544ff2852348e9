"""Layer scale and the random baseline.

timm ConvNeXt (V1) blocks start with layer-scale gammas of ``ls_init_value = 1e-6``: a
freshly built block adds 1e-6 x its branch to the shortcut, so each block is the identity
to about six digits and the pooled ``post_add`` activations of the blocks of a stage are
equal (same histogram bins, identical MI). mi-probe's spec has no field for timm
constructor arguments, so this module registers, with timm, one architecture
``<arch>_ls1`` per ConvNeXt V1 architecture ``<arch>``: the same model built with
``ls_init_value=1.0``. Built from the same seed it has exactly the same weights as
``<arch>`` except that every gamma is 1.0 (gammas take no random numbers), so

    model: {arch: convnext_nano_ls1, weights: random}

gives a random baseline whose blocks are not the identity (the ConvNeXt analogue of the
ResNet ``zero_init_last: false`` default). The choice is part of the model: with
``weights: train`` the network is trained from that initialisation.

The registration runs as soon as both the plugin module and timm are imported: at once
when the plugin is imported after timm, else right after ``import timm`` completes
(:func:`register_when_timm_loads`; mi-probe imports plugins before it builds a model,
also in executor workers). So importing the plugin, e.g. for ``mi-probe plugins``, does
not import timm or torch. It is idempotent, and the variants refuse pretrained weights
(there are none for these names).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    from torch import nn

SUFFIX = "_ls1"
#: ``ls_init_value`` of the ``<arch>_ls1`` architectures
LS1 = 1.0


def base_architectures() -> list[str]:
    """timm's ConvNeXt V1 architectures (those with layer scale by default). ConvNeXt V2
    (``convnextv2_*``) has no layer scale (GRN instead) and gets no variant."""
    import timm

    return [name for name in timm.list_models(module="convnext")
            if not name.startswith("convnextv2") and not name.endswith(SUFFIX)]


def _entrypoint(base: str):
    def create(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        import timm

        if pretrained:
            raise ValueError(f"{base}{SUFFIX} has no pretrained weights (it exists for random "
                             f"initialisation); use {base} for pretrained weights")
        kwargs.setdefault("ls_init_value", LS1)
        return timm.create_model(base, pretrained=False, **kwargs)

    create.__name__ = create.__qualname__ = f"{base}{SUFFIX}"
    create.__module__ = __name__
    create.__doc__ = f"timm {base} with layer-scale init {LS1} (mi-probe-convnext)."
    return create


def register_layer_scale_variants() -> list[str]:
    """Register ``<arch>_ls1`` with timm for every ConvNeXt V1 ``<arch>``; returns the
    names (already registered ones are kept as they are)."""
    import timm
    from timm.models import register_model

    names = []
    for base in base_architectures():
        name = f"{base}{SUFFIX}"
        if not timm.is_model(name):
            register_model(_entrypoint(base))
        names.append(name)
    return names


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """A one-shot import hook: finds timm as the other finders would and, once its
    ``__init__`` has run, registers the variants."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")  # the remaining finders' answer
        if spec is None or spec.loader is None:
            return spec
        loader, exec_module = spec.loader, spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            loader.exec_module = exec_module  # type: ignore[method-assign]  # one shot
            exec_module(module)
            register_layer_scale_variants()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def register_when_timm_loads() -> None:
    """Register the ``<arch>_ls1`` variants now if timm is imported, else right after it
    is (the plugin module calls this, so importing the plugin does not import timm)."""
    if "timm" in sys.modules:
        register_layer_scale_variants()
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())


def set_layer_scale(model: nn.Module, value: float = LS1) -> int:
    """Fill every ConvNeXt block's layer-scale ``gamma`` with ``value`` in place (for a
    model built outside a spec); returns how many blocks changed."""
    import torch

    changed = 0
    for module in model.modules():
        gamma = getattr(module, "gamma", None)
        if type(module).__name__ == "ConvNeXtBlock" and isinstance(gamma, torch.Tensor):
            with torch.no_grad():
                gamma.fill_(value)
            changed += 1
    return changed
