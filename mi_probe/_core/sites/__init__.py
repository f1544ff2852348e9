"""Site resolution and the site helpers.

An adapter lists the sites of a model family (name, hooked module, kind); the built-in
ones are plugins in ``mi_probe/builtin/adapters/`` (this module never imports them).
Resolution picks the adapter (forced by name, else the first that claims the model
through the ``mi_probe_resolve_adapter`` hook), filters sites by fnmatch patterns and
measures each site's channel count and layout with one probe forward pass.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from mi_probe.errors import SiteError
from mi_probe.interfaces import OUTPUT_KINDS, Adapter, Site, SiteRef


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
        if channels is None and shape[1] == shape[2] and shape[3] != shape[2]:
            return "nhwc", int(shape[-1])  # (N, H, W, C) grid, e.g. Swin's patch embedding
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


def site_output(output: Any, index: int = 0) -> torch.Tensor:
    """The site's tensor in a module output: element ``index`` of a tuple/list."""
    if isinstance(output, (tuple, list)):
        if index >= len(output) or not isinstance(output[index], torch.Tensor):
            raise SiteError(f"a site module returned a {type(output).__name__} of "
                            f"{len(output)} items, which has no tensor at index {index}")
        return output[index]
    return output


def replace_output(output: Any, index: int, tensor: torch.Tensor) -> Any:
    """``output`` with the site's tensor replaced (tuples rebuilt, lists copied)."""
    if isinstance(output, tuple):
        return (*output[:index], tensor, *output[index + 1:])
    if isinstance(output, list):
        return [*output[:index], tensor, *output[index + 1:]]
    return tensor


TOKEN_CHOICES = ("patch_mean", "cls")


def pool(output: torch.Tensor, layout: str, tokens: str = "patch_mean",
         prefix_tokens: int = 0) -> torch.Tensor:
    """Global average pool to (N, C): over H x W for images, over tokens for sequences.

    Token sequences (``nlc``/``ncl``) with ``prefix_tokens`` leading class or register
    tokens pool as ``tokens`` says: ``patch_mean`` averages the patch tokens only,
    ``cls`` takes the first token. The two are never mixed."""
    if layout == "nchw":
        return output.mean(dim=(2, 3))
    if layout == "nhwc":
        return output.mean(dim=(1, 2))
    if layout in ("nlc", "ncl"):
        seq = output if layout == "nlc" else output.transpose(1, 2)
        if tokens == "cls":
            if prefix_tokens < 1:
                raise SiteError("tokens: cls asks for a class token, but this site's output "
                                "has no prefix tokens; use tokens: patch_mean")
            return seq[:, 0]
        if tokens != "patch_mean":
            raise SiteError(f"unknown token pooling {tokens!r}; valid: "
                            f"{', '.join(TOKEN_CHOICES)}")
        return seq[:, prefix_tokens:].mean(dim=1) if prefix_tokens else seq.mean(dim=1)
    if layout == "nc":
        return output
    raise SiteError(f"unknown layout {layout!r}")


def flatten(output: torch.Tensor, layout: str, tokens: str = "patch_mean",
            prefix_tokens: int = 0) -> torch.Tensor:
    """(N, C·P) without pooling: every value :func:`pool` would average, channel-major
    (C, then the P positions in their own order), so ``flat.view(N, C, P).mean(-1)`` is
    the pooled site. Images: the C·H·W values; token sequences: the C·L patch tokens
    (prefix tokens left out), or the class token's C values with ``tokens: cls``."""
    n = output.shape[0]
    if layout == "nchw":
        return output.reshape(n, -1)
    if layout == "nhwc":
        return output.permute(0, 3, 1, 2).reshape(n, -1)
    if layout in ("nlc", "ncl"):
        seq = output if layout == "nlc" else output.transpose(1, 2)
        if tokens == "cls":
            return pool(output, layout, tokens, prefix_tokens)
        if tokens != "patch_mean":
            raise SiteError(f"unknown token pooling {tokens!r}; valid: "
                            f"{', '.join(TOKEN_CHOICES)}")
        return seq[:, prefix_tokens:].transpose(1, 2).reshape(n, -1)
    if layout == "nc":
        return output
    raise SiteError(f"unknown layout {layout!r}")


def _stream_size(shape: torch.Size, layout: str, prefix: int) -> int:
    """Spatial positions (or patch tokens) of an output: what stays equal in a stage."""
    if layout == "nchw":
        return int(shape[2] * shape[3])
    if layout == "nhwc":
        return int(shape[1] * shape[2])
    if layout == "nlc":
        return int(shape[1]) - prefix
    if layout == "ncl":
        return int(shape[2]) - prefix
    return 0


def block_of(ref: SiteRef) -> str | None:
    """The block a site belongs to (``None`` for the stem)."""
    if ref.block is not None:
        return ref.block
    if ref.kind == "stem":
        return None
    if ref.kind in ("pre_add", "post_add") and "." in ref.name:
        return ref.name.rsplit(".", 1)[0]
    return ref.name


def probe_sites(model: nn.Module, refs: Sequence[SiteRef], probe_input: torch.Tensor,
                tokens: str = "patch_mean", required: Iterable[str] | None = None
                ) -> list[Site]:
    """Run one forward pass to learn each site's channel count, layout, stage and
    position. Sites in ``required`` (default: all) must be reached by the pass; others
    that are not are left out."""
    shapes: dict[str, torch.Size] = {}
    handles = []
    try:
        for ref in refs:
            module = get_module(model, ref.module)

            def hook(_m, _inp, out, _ref=ref):
                tensor = site_output(out, _ref.index)
                shapes.setdefault(_ref.name, tensor.shape)

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
    need = set(r.name for r in refs) if required is None else set(required)
    for ref in refs:
        if ref.name not in shapes and ref.name in need:
            raise SiteError(f"site {ref.name!r} (module {ref.module!r}) was not reached by a "
                            "forward pass")
    reached = [r for r in refs if r.name in shapes]
    layouts = {r.name: _layout(shapes[r.name], r.channels) for r in reached}
    # stages: runs of consecutive blocks whose outputs have one spatial (token) size
    blocks: list[str] = []
    sizes: dict[str, int] = {}
    for ref in reached:
        block = block_of(ref)
        if block is None or block in sizes:
            continue
        blocks.append(block)
        sizes[block] = _stream_size(shapes[ref.name], layouts[ref.name][0], ref.prefix_tokens)
    stage_of: dict[str, int] = {}
    stage = 0
    for i, block in enumerate(blocks):
        if i and sizes[block] != sizes[blocks[i - 1]]:
            stage += 1
        stage_of[block] = stage
    last = max(len(blocks) - 1, 1)
    # depth: the index among every site the pass reached (the model's own numbering)
    deepest = max(len(reached) - 1, 1)
    sites: list[Site] = []
    for ref in reached:
        layout, channels = layouts[ref.name]
        block = block_of(ref)
        prefix = ref.prefix_tokens if layout in ("nlc", "ncl") else 0
        if tokens == "cls" and layout in ("nlc", "ncl") and prefix < 1:
            raise SiteError(f"sites.tokens: cls, but site {ref.name!r} has no class token "
                            f"(its output {tuple(shapes[ref.name])} has no prefix tokens); "
                            "use tokens: patch_mean")
        sites.append(Site(ref.name, ref.module, ref.kind, channels, len(sites), layout,
                          ref.index, prefix, tokens,
                          stage_of.get(block) if block is not None else None,
                          blocks.index(block) / last if block in stage_of else None,
                          len(sites) / deepest))
    return sites


def filter_refs(refs: Sequence[SiteRef], include: Sequence[str], exclude: Sequence[str],
                arch: str = "", kinds: Sequence[str] = ()) -> list[SiteRef]:
    """Sites whose name or kind matches an include pattern and no exclude pattern, and
    whose kind is one of ``kinds`` (when given; ``output`` stands for every kind that is
    the main stream after a block: post_add, block, post_act, stage).

    Patterns are fnmatch globs over the site name (``layer4.*``) or ``*.<kind>`` over the
    name with its kind appended (``*.post_add``), so both spellings select by kind.
    """
    def matches(ref: SiteRef, pattern: str) -> bool:
        return (fnmatch.fnmatchcase(ref.name, pattern)
                or fnmatch.fnmatchcase(f"{ref.name}.{ref.kind}", pattern)
                or fnmatch.fnmatchcase(ref.kind, pattern))

    have = sorted({r.kind for r in refs})
    if kinds:
        wanted = {k for kind in kinds for k in (OUTPUT_KINDS if kind == "output" else (kind,))}
        missing = [k for k in kinds if k != "output" and k not in have]
        if missing or not any(r.kind in wanted for r in refs):
            raise SiteError(f"sites.kinds {list(kinds)}: {arch or 'the model'} has no site of "
                            f"kind {missing or list(kinds)}; its site kinds are {have} (run "
                            f"`mi-probe sites {arch or 'ARCH'}` to list them)")
        refs = [r for r in refs if r.kind in wanted]
    unmatched = [p for p in include if not any(matches(r, p) for r in refs)]
    if unmatched:
        raise SiteError(f"site pattern(s) {unmatched} match no site of {arch or 'the model'}"
                        f"{' of kinds ' + str(list(kinds)) if kinds else ''}; its site kinds "
                        f"are {have}, e.g. names {[r.name for r in refs[:3]]} "
                        f"(run `mi-probe sites {arch or 'ARCH'}` to list them)")
    chosen = [r for r in refs if any(matches(r, p) for p in include)
              and not any(matches(r, p) for p in exclude)]
    if not chosen:
        raise SiteError(f"include {list(include)} minus exclude {list(exclude)} leaves no site")
    return chosen


#: Where a site's block lies in the model (``sites.position``).
POSITIONS = ("all", "first_stage", "last_stage", "first_half", "last_half", "first_third",
             "middle_third", "last_third", "last")


def at_position(sites: Sequence[Site], position: str) -> list[Site]:
    """The sites whose block lies at ``position``; the stem only with ``all``."""
    if position not in POSITIONS:
        raise SiteError(f"unknown sites.position {position!r}; valid: {', '.join(POSITIONS)}")
    if position == "all":
        return list(sites)
    # (site, stage, position) of the sites that have both
    placed = [(s, s.stage, s.position) for s in sites
              if s.position is not None and s.stage is not None]
    if not placed:
        return []
    stages = [stage for _, stage, _ in placed]
    if position == "first_stage":
        return [s for s, stage, _ in placed if stage == min(stages)]
    if position == "last_stage":
        return [s for s, stage, _ in placed if stage == max(stages)]
    if position == "last":
        deepest = max(where for _, _, where in placed)
        return [s for s, _, where in placed if where == deepest]
    if position in ("first_half", "last_half"):
        half = position == "last_half"
        return [s for s, _, where in placed if (min(int(2 * where), 1) == 1) == half]
    third = {"first_third": 0, "middle_third": 1, "last_third": 2}[position]
    return [s for s, _, where in placed if min(int(3 * where), 2) == third
            or (third == 2 and where == 1.0)]


def resolve_sites(model: nn.Module, adapter: Adapter, probe_input: torch.Tensor,
                  include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
                  arch: str = "", kinds: Sequence[str] = (), position: str = "all",
                  tokens: str = "patch_mean") -> list[Site]:
    """The sites the spec selects: by name patterns and kinds, then by position (stage
    and relative depth, from one probe pass over every site of the adapter).

    Each keeps the ``depth`` and ``rel_depth`` it has among ALL the model's sites (the
    probe pass's forward order), not a renumbering of the selection: the same site has
    the same depth in every run of the model, so runs that select different sites can
    be compared. Experiments that need "how many selected sites apart" rank the
    selected sites themselves."""
    refs = adapter.site_refs(model)
    if not refs:
        raise SiteError(f"adapter {adapter.name!r} found no sites in {arch or type(model).__name__}")
    chosen = filter_refs(refs, include, exclude, arch, kinds)
    names = {r.name for r in chosen}
    probed = probe_sites(model, refs, probe_input, tokens, required=names)
    selected = at_position([s for s in probed if s.name in names], position)
    if not selected:
        raise SiteError(f"sites.position {position!r} leaves no site of {arch or 'the model'} "
                        f"among {sorted(names)[:6]}{'…' if len(names) > 6 else ''}")
    return selected


def channel_axis(layout: str) -> int:
    """The channel dimension of an output with the given layout."""
    axes = {"nchw": 1, "ncl": 1, "nc": 1, "nhwc": -1, "nlc": -1}
    if layout not in axes:
        raise SiteError(f"unknown layout {layout!r}")
    return axes[layout]
