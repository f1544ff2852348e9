"""Built-in adapter ``blocks``: named block sites for any timm model, found from the
model's own structure by one traced forward pass (``mi_probe._core.sites.trace``).

Sites, in forward order:

* ``stem`` (kind ``stem``): the module that hands the first block its input.
* per residual block ``<path>.pre_add`` (kind ``pre_add``): the residual branch exactly
  as it is added, i.e. the output of the last module of the branch (``drop_path`` after
  layer scale in ConvNeXt, MetaFormer, ViT and Swin blocks; the last norm or SE gate in
  ResNet-like blocks). For pre-norm transformer blocks, which add two branches, it is
  the last one (the MLP). Offered only where the branch is one module's output.
* per residual block ``<path>.post_add`` (kind ``post_add``): the block output after
  the add (and the activation or norm that follows it, if any).
* per block without a residual add ``<path>`` (kind ``block``): its output.

Claims every model in which the trace finds blocks; runs after the family adapters
(``resnet``, ``vgg`` and plugins) and before the ``generic`` stage list. Skip gains
work for residual blocks whose shortcut is the block input, a projection module, or
a running sum that a submodule reads.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from mi_probe.builtin.adapters._hooks import skip_gain_handles
from mi_probe.builtin.adapters._params import adapter_hooks
from mi_probe.plugin import Site, SiteError, SiteRef

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    from torch import nn
    from torch.utils.hooks import RemovableHandle

    from mi_probe.plugin import BlockTrace, Unit


class BlocksAdapter:
    name = "blocks"

    def __init__(self) -> None:
        self._traces: dict[int, tuple[Any, BlockTrace]] = {}

    def trace(self, model: nn.Module) -> BlockTrace:
        from mi_probe.plugin import probe_for, trace_blocks

        cached = self._traces.get(id(model))
        if cached is not None and cached[0]() is model:
            return cached[1]
        found = trace_blocks(model, probe_for(model))
        self._traces[id(model)] = (weakref.ref(model), found)
        return found

    def claims(self, model: nn.Module, arch: str) -> bool:
        try:
            return bool(self.trace(model).units)
        except Exception:  # a model the probe pass cannot run: not ours to claim
            return False

    def site_refs(self, model: nn.Module) -> list[SiteRef]:
        found = self.trace(model)
        refs = []
        if found.stem is not None:
            refs.append(SiteRef("stem", found.stem, "stem", None, 0,
                                found.prefix_for(found.stem_shape, None)))
        for unit in found.units:
            prefix = found.prefix_for(unit.shape, unit.channels)
            if not unit.residual:
                refs.append(SiteRef(unit.path, unit.path, "block", unit.channels, unit.index,
                                    prefix, unit.path))
                continue
            if unit.branch is not None:
                shape = unit.branch_shape
                hint = unit.channels if shape and unit.channels in (shape[1], shape[-1]) else None
                refs.append(SiteRef(f"{unit.path}.pre_add", unit.branch, "pre_add", hint, 0,
                                    found.prefix_for(shape, hint), unit.path))
            refs.append(SiteRef(f"{unit.path}.post_add", unit.path, "post_add", unit.channels,
                                unit.index, prefix, unit.path))
        return refs

    # ------------------------------------------------------------------ skip gain
    @staticmethod
    def block_path(site: Site) -> str | None:
        """The block a ``pre_add`` / ``post_add`` site belongs to."""
        for suffix in (".pre_add", ".post_add"):
            if site.kind == suffix[1:] and site.name.endswith(suffix):
                return site.name[: -len(suffix)]
        return None

    def _unit(self, model: nn.Module, block_path: str) -> Unit:
        for unit in self.trace(model).units:
            if unit.path == block_path:
                return unit
        raise SiteError(f"block {block_path!r} is not a block of {type(model).__name__} "
                        "(run `mi-probe sites ARCH` to list them)")

    def skip_gain_hooks(self, model: nn.Module, block_path: str, gain: float
                        ) -> list[RemovableHandle]:
        """Hooks that make the block compute (act of) branch + gain · skip; the caller
        removes them. ``gain = 1`` adds exactly 0."""
        unit = self._unit(model, block_path)
        if not unit.residual or unit.branch is None or unit.skip in (None, "tensor"):
            raise SiteError(f"block {block_path!r} has no residual add whose branch and skip "
                            "mi-probe can reach with hooks, so its skip cannot be scaled")
        where = unit.skip.split(":", 1)[-1]
        if unit.skip.startswith("module:"):
            return skip_gain_handles(gain, projection=model.get_submodule(where))
        reader = model.get_submodule(block_path if unit.skip == "input" else where)
        return skip_gain_handles(gain, reader=reader, branch=model.get_submodule(unit.branch))


mi_probe_register_adapters, mi_probe_resolve_adapter = adapter_hooks("blocks", BlocksAdapter,
                                                                    trylast=True)
