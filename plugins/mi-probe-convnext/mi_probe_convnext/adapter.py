"""Site adapter for timm ``ConvNeXt`` models (ConvNeXt V1 and V2, ``conv_mlp`` on or off).

Sites, in forward order:

* ``stem`` (kind ``stem``): the output of ``model.stem`` (patchify conv + norm).
* ``stages.<i>.blocks.<j>.pre_add`` (kind ``pre_add``): the residual branch exactly as it
  is added to the shortcut, i.e. ``drop_path(gamma * mlp(norm(conv_dw(x))))`` in NCHW.
  timm's ``ConvNeXtBlock.forward`` applies layer scale as ``x.mul(self.gamma)`` (a
  parameter, not a module), then calls ``self.drop_path(x)`` and adds the shortcut. The
  hooked module is that ``drop_path`` (``nn.Identity`` when ``drop_path_rate`` is 0,
  ``DropPath`` otherwise): a module every block has and calls once per forward, whose
  input is the branch after layer scale and whose output is precisely the tensor the
  add consumes. In eval mode (capture, interventions) ``DropPath`` is the identity; in
  training mode the site sees the stochastically dropped branch, which is what is added.
  An intervention's replacement output is therefore what the block adds.
* ``stages.<i>.blocks.<j>.post_add`` (kind ``post_add``): the block output
  ``drop_path(branch) + shortcut(x)`` (ConvNeXt has no activation after the add).

The stage ``downsample`` (norm + strided conv between stages) is not a site.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from mi_probe.plugin import SiteRef

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch
    from torch import nn


class ConvNeXtAdapter:
    name = "convnext"

    def claims(self, model: nn.Module, arch: str) -> bool:
        from torch import nn

        stages, stem = getattr(model, "stages", None), getattr(model, "stem", None)
        if (type(model).__name__ != "ConvNeXt" or not isinstance(stem, nn.Module)
                or not isinstance(stages, nn.Sequential) or len(stages) == 0
                or not all(isinstance(getattr(s, "blocks", None), nn.Sequential) for s in stages)):
            return False
        return all(type(block).__name__ == "ConvNeXtBlock"
                   and isinstance(getattr(block, "drop_path", None), nn.Module)
                   for _, block in self.blocks(model))

    @staticmethod
    def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
        """``(path, block)`` of every ConvNeXt block in forward order."""
        return [(f"stages.{i}.blocks.{j}", block)
                for i, stage in enumerate(model.stages) for j, block in enumerate(stage.blocks)]

    def site_refs(self, model: nn.Module) -> list[SiteRef]:
        refs = [SiteRef("stem", "stem", "stem")]
        for path, block in self.blocks(model):
            channels = getattr(block.conv_dw, "out_channels", None)
            refs.append(SiteRef(f"{path}.pre_add", f"{path}.drop_path", "pre_add", channels))
            refs.append(SiteRef(f"{path}.post_add", path, "post_add", channels))
        return refs

    def suffix(self, model: nn.Module, site) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The rest of the network after a ``stem`` or ``post_add`` site, as a function of
        that site's output (logits out); None for ``pre_add`` (the shortcut is still to
        be added). The engine uses it to evaluate interventions on a cached site output."""
        if site.kind == "stem":
            rest = list(model.stages)
        elif site.kind == "post_add":
            _, i, _, j = site.module.split(".")
            rest = list(model.stages[int(i)].blocks)[int(j) + 1:] + list(model.stages)[int(i) + 1:]
        else:
            return None

        def run(x: torch.Tensor) -> torch.Tensor:
            for module in rest:  # a whole stage runs its downsample, then its blocks
                x = module(x)
            return model.forward_head(model.norm_pre(x))

        return run
