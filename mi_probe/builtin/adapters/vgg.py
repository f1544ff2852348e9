"""Built-in adapter ``vgg``: the output of every activation that follows a conv
(post-ReLU in the paper's networks; post-tanh after an activation swap)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, cast

from mi_probe.builtin.adapters._params import adapter_hooks
from mi_probe.plugin import Site, SiteRef

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch
    from torch import nn


def activations() -> tuple[type[nn.Module], ...]:
    """The activation module types whose output is a ``post_act`` site (a function, not a
    constant, so that registering the adapter does not import torch)."""
    from torch import nn

    return (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)


class VGGAdapter:
    name = "vgg"

    def claims(self, model: nn.Module, arch: str) -> bool:
        from torch import nn

        return type(model).__name__ == "VGG" and isinstance(getattr(model, "features", None),
                                                            nn.Sequential)

    def site_refs(self, model: nn.Module) -> list[SiteRef]:
        from torch import nn

        refs = []
        seen_conv = False
        acts = activations()
        for idx, module in enumerate(cast(nn.Sequential, model.features)):
            if isinstance(module, nn.Conv2d):
                seen_conv = True
            elif isinstance(module, acts) and seen_conv:
                refs.append(SiteRef(f"features.{idx}", f"features.{idx}", "post_act"))
                seen_conv = False
        return refs

    def suffix(self, model: nn.Module, site: Site
               ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The rest of the network after a ``post_act`` site, as a function of its output."""
        import torch
        from torch import nn

        if site.kind != "post_act":
            return None
        idx = int(site.module.split(".")[1])
        rest = list(cast(nn.Sequential, model.features))[idx + 1:]

        def run(x: torch.Tensor) -> torch.Tensor:
            for module in rest:
                x = module(x)
            return cast(Callable[[torch.Tensor], torch.Tensor], model.forward_head)(x)

        return run

    def producers(self, model: nn.Module, site: Site) -> list[tuple[str, str]]:
        """Modules whose out-channel rows produce a ``post_act`` site's channels, as
        ``(module path, role)``: the nearest preceding conv (``conv``: weight and bias
        rows) and any BatchNorm between it and the activation (``norm``, ``*_bn``
        variants: weight, bias, running mean and variance entries). Other kinds: none."""
        from torch import nn

        if site.kind != "post_act":
            return []
        idx = int(site.module.split(".")[1])
        out: list[tuple[str, str]] = []
        for j in range(idx - 1, -1, -1):
            module = cast(nn.Sequential, model.features)[j]
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                out.insert(0, (f"features.{j}", "norm"))
            elif isinstance(module, nn.Conv2d):
                out.insert(0, (f"features.{j}", "conv"))
                return out
        return []


mi_probe_register_adapters, mi_probe_resolve_adapter = adapter_hooks("vgg", VGGAdapter)
