"""ResNet adapter (timm ``ResNet`` with ``BasicBlock`` or ``Bottleneck``).

Each block gives two sites: ``<block>.pre_add`` is the residual branch output just
before the skip is added (after the last BatchNorm, and after SE when present);
``<block>.post_add`` is the block output after the add and its activation. The stem's
activation is one more site, kind ``stem``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mi_probe.interfaces import SiteRef


def _residual_tail(block: nn.Module) -> str:
    """Name of the last module of the residual branch that runs before the add."""
    for attr in ("drop_path", "se"):
        if getattr(block, attr, None) is not None and not isinstance(getattr(block, attr), nn.Identity):
            return attr
    return "bn3" if hasattr(block, "bn3") else "bn2"


class ResNetAdapter:
    name = "resnet"

    def claims(self, model: nn.Module, arch: str) -> bool:
        if type(model).__name__ != "ResNet" or not hasattr(model, "layer1"):
            return False
        return all(type(b).__name__ in ("BasicBlock", "Bottleneck")
                   for _, layer in self._layers(model) for b in layer)

    @staticmethod
    def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(name, getattr(model, name)) for name in ("layer1", "layer2", "layer3", "layer4")
                if hasattr(model, name)]

    def site_refs(self, model: nn.Module) -> list[SiteRef]:
        refs = [SiteRef("stem", "act1", "stem")] if hasattr(model, "act1") else []
        for layer_name, layer in self._layers(model):
            for idx, block in enumerate(layer):
                path = f"{layer_name}.{idx}"
                refs.append(SiteRef(f"{path}.pre_add", f"{path}.{_residual_tail(block)}", "pre_add"))
                refs.append(SiteRef(f"{path}.post_add", path, "post_add"))
        return refs

    def suffix(self, model: nn.Module, site) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The rest of the network after a ``stem`` or ``post_add`` site, as a function of
        that site's output (None for ``pre_add``: the skip is still to be added)."""
        layers = self._layers(model)
        if site.kind == "stem":
            blocks = [b for _, layer in layers for b in layer]
            first = [model.maxpool]
        elif site.kind == "post_add":
            layer_name, idx = site.module.split(".")
            names = [n for n, _ in layers]
            start = names.index(layer_name)
            blocks = list(layers[start][1])[int(idx) + 1:] + [
                b for _, layer in layers[start + 1:] for b in layer]
            first = []
        else:
            return None

        def run(x: torch.Tensor) -> torch.Tensor:
            for module in first + blocks:
                x = module(x)
            return model.forward_head(x)

        return run
