"""Built-in adapter ``resnet`` (timm ``ResNet`` with ``BasicBlock`` or ``Bottleneck``).

Each block gives two sites: ``<block>.pre_add`` is the residual branch output just
before the skip is added (after the last BatchNorm, and after SE when present);
``<block>.post_add`` is the block output after the add and its activation. The stem's
activation is one more site, kind ``stem``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, cast

from mi_probe.builtin.adapters._hooks import skip_gain_handles
from mi_probe.builtin.adapters._params import adapter_hooks
from mi_probe.plugin import Site, SiteRef

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch
    from torch import nn
    from torch.utils.hooks import RemovableHandle


def _residual_tail(block: nn.Module) -> str:
    """Name of the last module of the residual branch that runs before the add."""
    from torch import nn

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
    def _layers(model: nn.Module) -> list[tuple[str, nn.Sequential]]:
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

    def suffix(self, model: nn.Module, site: Site
               ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The rest of the network after a ``stem`` or ``post_add`` site, as a function of
        that site's output (None for ``pre_add``: the skip is still to be added)."""
        import torch
        from torch import nn

        layers = self._layers(model)
        if site.kind == "stem":
            blocks = [b for _, layer in layers for b in layer]
            first = [cast(nn.Module, model.maxpool)]
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
            return cast(Callable[[torch.Tensor], torch.Tensor], model.forward_head)(x)

        return run

    # ------------------------------------------------------------------ transplant / skip
    @staticmethod
    def _last(module: nn.Module, prefix: str, kinds: tuple[type, ...]) -> str | None:
        """Dotted path (under ``prefix``) of the last submodule of ``module`` (itself
        included) that is an instance of ``kinds``."""
        found = None
        for name, sub in module.named_modules():
            if isinstance(sub, kinds):
                found = f"{prefix}.{name}" if name else prefix
        return found

    @staticmethod
    def block_path(site: Site) -> str | None:
        """The block (``layer3.1``) a ``pre_add`` / ``post_add`` site belongs to."""
        if site.kind == "post_add":
            return site.module
        if site.kind == "pre_add":
            return site.name[: -len(".pre_add")] if site.name.endswith(".pre_add") else \
                site.module.rsplit(".", 1)[0]
        return None

    def producers(self, model: nn.Module, site: Site) -> list[tuple[str, str]]:
        """Modules whose out-channel rows produce the channels of ``site``, as
        ``(module path, role)`` with role ``conv`` or ``norm``, in forward order.

        * ``stem``: the stem's last conv and ``bn1``.
        * ``pre_add``: the residual branch's last conv and norm (``conv2``/``bn2`` or
          ``conv3``/``bn3``), plus the SE gate's expanding 1x1 conv (``se.fc2``) when the
          block has a timm ``SEModule``.
        * ``post_add``: the same plus the ``downsample`` conv and norm when the block has
          a projection shortcut (they write the shortcut half of the sum). An identity
          shortcut carries the previous block's channels, which are not transplanted.
        """
        from torch import nn

        norms = (nn.modules.batchnorm._BatchNorm,)
        if site.kind == "stem":
            if not hasattr(model, "conv1") or not hasattr(model, "bn1"):
                return []
            conv = self._last(cast(nn.Module, model.conv1), "conv1", (nn.Conv2d,))
            return [(conv, "conv"), ("bn1", "norm")] if conv else []
        path = self.block_path(site)
        if path is None:
            return []
        block = model.get_submodule(path)
        last = "3" if hasattr(block, "bn3") else "2"
        out = [(f"{path}.conv{last}", "conv"), (f"{path}.bn{last}", "norm")]
        se = getattr(block, "se", None)
        fc2 = getattr(se, "fc2", None) if se is not None else None
        channels = getattr(block, f"bn{last}").num_features
        if isinstance(fc2, nn.Conv2d) and fc2.out_channels == channels:
            out.append((f"{path}.se.fc2", "conv"))
        downsample = getattr(block, "downsample", None)
        has_projection = downsample is not None and not isinstance(downsample, nn.Identity)
        if site.kind == "post_add" and has_projection and downsample is not None:
            conv = self._last(downsample, f"{path}.downsample", (nn.Conv2d,))
            norm = self._last(downsample, f"{path}.downsample", norms)
            out += [(p, role) for p, role in ((conv, "conv"), (norm, "norm")) if p]
        return out

    def skip_gain_hooks(self, model: nn.Module, block_path: str, gain: float
                        ) -> list[RemovableHandle]:
        """Scale the skip connection of ``block_path`` by ``gain`` with forward hooks, so
        the block computes act(residual + gain · shortcut). Returns the hook handles; the
        caller must remove them (``handle.remove()``), e.g. in a ``finally``.

        With a projection shortcut a hook on ``downsample`` returns gain × its output.
        With an identity shortcut a forward pre-hook on the block keeps its input x and a
        hook on the residual branch's last module (the ``pre_add`` site's module) returns
        residual + (gain − 1) · x; the block's own ``x += shortcut`` then adds x once
        more. ``gain = 1`` leaves every number unchanged (adds exactly 0)."""
        from torch import nn

        from mi_probe.plugin import SiteError

        try:
            block = model.get_submodule(block_path)
        except AttributeError:
            raise SiteError(f"block {block_path!r} does not exist in "
                            f"{type(model).__name__}") from None
        if type(block).__name__ not in ("BasicBlock", "Bottleneck"):
            raise SiteError(f"{block_path!r} is a {type(block).__name__}, not a ResNet "
                            "BasicBlock/Bottleneck; skip gains need a residual block")
        downsample = getattr(block, "downsample", None)
        if downsample is not None and not isinstance(downsample, nn.Identity):
            return skip_gain_handles(gain, projection=downsample)
        return skip_gain_handles(gain, reader=block,
                                 branch=getattr(block, _residual_tail(block)))


mi_probe_register_adapters, mi_probe_resolve_adapter = adapter_hooks("resnet", ResNetAdapter)
