"""Site resolution and the site helpers.

An adapter lists the sites of a model family (name, hooked module, kind); the built-in
ones are plugins in ``mi_probe/builtin/adapters/`` (this module never imports them).
Resolution picks the adapter (forced by name, else the first that claims the model
through the ``mi_probe_resolve_adapter`` hook), filters sites by fnmatch patterns and
measures each site's channel count and layout with one probe forward pass.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Sequence

import torch
from torch import nn

from mi_probe.errors import SiteError
from mi_probe.interfaces import Adapter, Site, SiteRef


def get_module(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise SiteError(f"site module {path!r} does not exist in {type(model).__name__}") from None


def select_adapter(pm: Any, model: nn.Module, arch: str, name: str = "auto") -> Adapter:
    """The adapter named ``name`` from the registry, or the first that claims the model."""
    if name != "auto":
        entry = pm.registry.get("adapters", name)
        adapter = entry.factory(entry.params_model())
        if not adapter.claims(model, arch):
            raise SiteError(f"adapter {name!r} does not understand {arch} "
                            f"({type(model).__name__}); use adapter: auto")
        return adapter
    adapter = pm.hook.mi_probe_resolve_adapter(model=model, arch=arch)
    if adapter is None:
        raise SiteError(f"no site adapter claims {arch} ({type(model).__name__})")
    return adapter


def _layout(shape: torch.Size, channels: int | None) -> tuple[str, int]:
    if len(shape) == 4:
        if channels is None or shape[1] == channels:
            return "nchw", int(shape[1])
        if shape[-1] == channels:
            return "nhwc", int(shape[-1])
    elif len(shape) == 3:
        if channels is None or shape[-1] == channels:
            return "nlc", int(shape[-1])
        if shape[1] == channels:
            return "ncl", int(shape[1])
    elif len(shape) == 2:
        return "nc", int(shape[1])
    raise SiteError(f"cannot tell the channel axis of an output of shape {tuple(shape)}"
                    f" (adapter says {channels} channels)")


def pool(output: torch.Tensor, layout: str) -> torch.Tensor:
    """Global average pool to (N, C): over H x W for images, over tokens for sequences."""
    if layout == "nchw":
        return output.mean(dim=(2, 3))
    if layout == "nhwc":
        return output.mean(dim=(1, 2))
    if layout == "nlc":
        return output.mean(dim=1)
    if layout == "ncl":
        return output.mean(dim=2)
    if layout == "nc":
        return output
    raise SiteError(f"unknown layout {layout!r}")


def probe_sites(model: nn.Module, refs: Sequence[SiteRef], probe_input: torch.Tensor) -> list[Site]:
    """Run one forward pass to learn each site's channel count and layout."""
    shapes: dict[str, torch.Size] = {}
    handles = []
    try:
        for ref in refs:
            module = get_module(model, ref.module)

            def hook(_m, _inp, out, _name=ref.name):
                if isinstance(out, (tuple, list)):
                    out = out[0]
                shapes.setdefault(_name, out.shape)

            handles.append(module.register_forward_hook(hook))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(probe_input)
        finally:
            model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    sites = []
    for ref in refs:
        if ref.name not in shapes:
            raise SiteError(f"site {ref.name!r} (module {ref.module!r}) was not reached by a "
                            "forward pass")
        layout, channels = _layout(shapes[ref.name], ref.channels)
        sites.append(Site(ref.name, ref.module, ref.kind, channels, len(sites), layout))
    return sites


def filter_refs(refs: Sequence[SiteRef], include: Sequence[str], exclude: Sequence[str],
                arch: str = "") -> list[SiteRef]:
    """Sites whose name or kind matches an include pattern and no exclude pattern.

    Patterns are fnmatch globs over the site name (``layer4.*``) or ``*.<kind>`` over the
    name with its kind appended (``*.post_add``), so both spellings select by kind.
    """
    def matches(ref: SiteRef, pattern: str) -> bool:
        return (fnmatch.fnmatchcase(ref.name, pattern)
                or fnmatch.fnmatchcase(f"{ref.name}.{ref.kind}", pattern)
                or fnmatch.fnmatchcase(ref.kind, pattern))

    unmatched = [p for p in include if not any(matches(r, p) for r in refs)]
    if unmatched:
        kinds = sorted({r.kind for r in refs})
        raise SiteError(f"site pattern(s) {unmatched} match no site of {arch or 'the model'}; "
                        f"its site kinds are {kinds}, e.g. names {[r.name for r in refs[:3]]} "
                        f"(run `mi-probe sites {arch or 'ARCH'}` to list them)")
    chosen = [r for r in refs if any(matches(r, p) for p in include)
              and not any(matches(r, p) for p in exclude)]
    if not chosen:
        raise SiteError(f"include {list(include)} minus exclude {list(exclude)} leaves no site")
    return chosen


def resolve_sites(model: nn.Module, adapter: Adapter, probe_input: torch.Tensor,
                  include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
                  arch: str = "") -> list[Site]:
    refs = adapter.site_refs(model)
    if not refs:
        raise SiteError(f"adapter {adapter.name!r} found no sites in {arch or type(model).__name__}")
    return probe_sites(model, filter_refs(refs, include, exclude, arch), probe_input)


def channel_axis(layout: str) -> int:
    """The channel dimension of an output with the given layout."""
    axes = {"nchw": 1, "ncl": 1, "nc": 1, "nhwc": -1, "nlc": -1}
    if layout not in axes:
        raise SiteError(f"unknown layout {layout!r}")
    return axes[layout]
