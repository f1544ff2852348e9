"""Find a model's blocks and their residual adds by watching one forward pass.

timm has 98 model families and no common block class, but every residual block ends
the same way: ``y = act(shortcut + branch)``, where the shortcut is the block's input
(or a projection of it, or the running sum of earlier residual updates of the same
block, as in pre-norm transformer blocks) and the branch is the output of a submodule.
:func:`trace_blocks` runs the model once under a ``TorchFunctionMode`` that records,
for every tensor produced, the torch function that produced it and that function's
tensor arguments, keyed by the tensor's identity and version (so in-place adds such as
timm's ``x += shortcut`` are seen). Forward hooks record each module's input, output,
call count and completion order. From that graph:

* a **unit** is a module called exactly once per forward pass, with a 3-D or 4-D
  output, that is the innermost composite module (two or more modules with
  parameters below it) directly under a container (``Sequential``, ``ModuleList``,
  ``ModuleDict``) or under the model root; heads (2-D outputs, the classifier and
  timm's head modules) and the root are never units;
* a unit is **residual** when its output is an add (optionally followed by an
  activation, dropout or normalisation) of a skip-like operand (the unit's input, a
  projection of it by one module call, a view or pooling of those, or an earlier add of
  them) and a branch that is the output of a submodule called once; the pre-add site
  is that submodule (the last to finish among those returning the branch tensor, e.g.
  ``drop_path`` after layer scale);
* the **stem** is the outermost module, outside every unit, whose output is the first
  unit's input.

The pass runs on whatever device the model is on, the ``meta`` device included (shapes
only), so preflight can trace a model without weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_ADDS = {"add", "add_", "__add__", "__radd__", "__iadd__"}
#: ops between the add and the block output that keep it a residual block
_AFTER_ADD = {"relu", "relu_", "gelu", "silu", "silu_", "hardswish", "hardswish_", "mish",
              "elu", "elu_", "leaky_relu", "leaky_relu_", "relu6", "hardtanh", "hardtanh_",
              "tanh", "tanh_", "sigmoid", "dropout", "layer_norm", "batch_norm",
              "group_norm", "contiguous", "clone", "to"}
#: ops that carry a skip tensor unchanged in meaning (views, pooling, padding)
_SKIP_VIEWS = {"__getitem__", "cat", "view", "reshape", "flatten", "permute", "transpose",
               "contiguous", "avg_pool2d", "adaptive_avg_pool2d", "max_pool2d", "pad",
               "interpolate", "repeat", "expand", "clone", "to", "narrow"}
#: top-level children that form timm's classifier head, never units
HEAD_NAMES = {"head", "fc", "classifier", "global_pool", "pre_logits", "head_drop",
              "fc_norm", "head_dist", "last_linear", "flatten", "attn_pool"}
_PARAM_VIEWS = {"expand", "repeat", "to", "view", "reshape", "__getitem__", "type_as",
                "expand_as", "contiguous", "clone", "tile"}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _key(t: torch.Tensor) -> tuple[int, int]:
    return (id(t), t._version)


class _Recorder(TorchFunctionMode):
    """Producer of every tensor made during the pass: key -> (function name, arg keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[tuple[int, int], tuple[str, list[tuple[int, int]]]] = {}
        self.alive: list[Any] = []  # keeps ids unique for the whole pass
        #: tensors made from parameters by views only (an expanded class token)
        self.from_params: set[tuple[int, int]] = set()
        #: (tokens after, leading parameter tokens) of each cat along dim 1 of 3-D tensors
        self.token_cats: list[tuple[int, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        for a in args:
            if isinstance(a, (list, tuple)):
                tensors += [t for t in a if isinstance(t, torch.Tensor)]
        in_keys = [_key(t) for t in tensors]
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name == "cat" and args and isinstance(args[0], (list, tuple)):
            self._note_cat(args[0], kwargs.get("dim", args[1] if len(args) > 1 else 0))
        param_view = bool(tensors) and (isinstance(tensors[0], nn.Parameter)
                                        or _key(tensors[0]) in self.from_params)
        for o in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(o, torch.Tensor):
                self.nodes[_key(o)] = (name, in_keys)
                self.alive.append(o)
                if param_view and name in _PARAM_VIEWS:
                    self.from_params.add(_key(o))
        self.alive += tensors
        return out

    def _note_cat(self, parts: Any, dim: Any) -> None:
        tensors = [t for t in parts if isinstance(t, torch.Tensor)]
        if not tensors or any(t.dim() != 3 for t in tensors) or dim not in (1, -2):
            return
        prefix = 0
        for t in tensors:
            if not (isinstance(t, nn.Parameter) or _key(t) in self.from_params):
                break
            prefix += int(t.shape[1])
        if 0 < prefix < sum(int(t.shape[1]) for t in tensors):
            self.token_cats.append((sum(int(t.shape[1]) for t in tensors), prefix))


@dataclass
class _Call:
    path: str
    module: nn.Module
    calls: int = 0
    in_key: tuple[int, int] | None = None
    #: keys of every tensor argument (a block may take a tuple of streams)
    in_keys: set[tuple[int, int]] = field(default_factory=set)
    #: every tensor element of the output: (key, shape)
    outs: list[tuple[tuple[int, int], tuple[int, ...]]] = field(default_factory=list)
    finished: int = -1
    started: int = -1
    alive: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Unit:
    """One block of the main stream, in forward order."""

    path: str
    #: output shape of the probe pass
    shape: tuple[int, ...]
    #: element of a tuple/list output that carries the stream (0 for plain tensors)
    index: int = 0
    #: channel width (the last parametrised layer's) or None when it cannot be told
    channels: int | None = None
    #: leading non-patch tokens (class, distillation, register) of a token output
    prefix_tokens: int = 0
    #: the output is ``skip + branch`` (then an activation or normalisation at most)
    residual: bool = False
    #: residual branch module (the pre-add site); None when the branch is not one
    #: module's output (e.g. layer scale applied inline)
    branch: str | None = None
    #: where the skip operand of the final add comes from: ``input`` (the unit's input),
    #: ``module:<path>`` (a projection's output), ``input_of:<path>`` (an earlier sum
    #: that a submodule reads) or ``tensor``
    skip: str | None = None
    #: shape of the branch module's output
    branch_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class BlockTrace:
    units: list[Unit]
    stem: str | None
    stem_shape: tuple[int, ...] | None
    #: token count -> leading prefix tokens, for every token stream with a class token
    token_prefix: dict[int, int] = field(default_factory=dict)

    def prefix_for(self, shape: tuple[int, ...] | None, channels: int | None) -> int:
        """Prefix tokens of an output of ``shape`` ((N, L, C) token streams only)."""
        if shape is None or len(shape) != 3 or (channels is not None and shape[1] == channels
                                                 and shape[2] != channels):
            return 0
        return self.token_prefix.get(int(shape[1]), 0)


def _tensors_of(value: Any) -> list[tuple[int, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [(0, value)]
    if isinstance(value, (tuple, list)):
        return [(i, v) for i, v in enumerate(value) if isinstance(v, torch.Tensor)]
    return []


def head_paths(model: nn.Module) -> set[str]:
    """Top-level children that form the classifier head (never sites)."""
    heads = {name for name, _ in model.named_children() if name in HEAD_NAMES}
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    for name in ([classifier] if isinstance(classifier, str) else list(classifier or ())):
        heads.add(name.split(".")[0])
    return heads


def _is_stem_name(name: str) -> bool:
    return name.startswith("stem") or name in ("patch_embed", "conv_stem")


def _composite(module: nn.Module) -> bool:
    with_params = sum(1 for m in module.modules()
                      if m is not module and any(True for _ in m.parameters(recurse=False)))
    return with_params >= 2


def _width(module: nn.Module) -> int | None:
    """Output width of a layer with parameters (conv, linear, norm), else None."""
    for attr in ("out_channels", "out_features", "num_features"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and len(shape) == 1:
        return int(shape[0])
    return None


def trace_blocks(model: nn.Module, probe: torch.Tensor) -> BlockTrace:
    """The units, residual structure and stem of ``model`` from one pass on ``probe``."""
    calls: dict[str, _Call] = {}
    order = [0]
    handles = []
    heads = head_paths(model)
    for path, module in model.named_modules():
        if not path:
            continue
        call = calls[path] = _Call(path, module)

        def pre(_m, args, _c=call):
            _c.calls += 1
            _c.started = order[0]
            order[0] += 1
            tensors = [t for _, t in _tensors_of(args)]
            if len(args) == 1 and isinstance(args[0], (tuple, list)):
                tensors = [t for _, t in _tensors_of(args[0])]
            if tensors:
                _c.in_key = _key(tensors[0])
                _c.in_keys = {_key(t) for t in tensors}
                _c.alive.append(tensors)

        def post(_m, _args, out, _c=call):
            _c.finished = order[0]
            order[0] += 1
            _c.outs = [(_key(t), tuple(t.shape)) for _, t in _tensors_of(out)]
            _c.alive.append(out)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    recorder = _Recorder()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recorder:
            out = model(probe)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    logits = _tensors_of(out)
    logits_key = _key(logits[0][1]) if logits else None
    return _analyse(calls, recorder, logits_key, int(probe.shape[0]), heads)


def _analyse(calls: dict[str, _Call], recorder: "_Recorder", logits_key, batch: int,
             heads: set[str]) -> BlockTrace:
    nodes = recorder.nodes
    once = {p: c for p, c in calls.items() if c.calls == 1 and c.outs}
    by_out: dict[tuple[int, int], list[_Call]] = {}
    for c in once.values():
        for key, _ in c.outs:
            by_out.setdefault(key, []).append(c)
    by_in: dict[tuple[int, int], list[_Call]] = {}
    for c in once.values():
        if c.in_key is not None:
            by_in.setdefault(c.in_key, []).append(c)

    def below(path: str, ancestor: str) -> bool:
        return path.startswith(ancestor + ".")

    def stream(c: _Call) -> tuple[int, tuple[int, int], tuple[int, ...]] | None:
        """(index, key, shape) of the output element that carries the batch."""
        for i, (key, shape) in enumerate(c.outs):
            if len(shape) in (3, 4) and shape[0] == batch:
                return i, key, shape
        return None

    def parent_is_container(path: str) -> bool:
        if "." not in path:
            return True
        parent = calls.get(path.rsplit(".", 1)[0])
        return parent is not None and isinstance(parent.module, _CONTAINERS)

    candidates: dict[str, tuple[_Call, int, tuple[int, int], tuple[int, ...]]] = {}
    for c in once.values():
        found = stream(c)
        if (found is None or found[1] == logits_key or not _composite(c.module)
                or c.path.split(".")[0] in heads
                or _is_stem_name(c.path.split(".")[0]) or not parent_is_container(c.path)):
            continue
        candidates[c.path] = (c, *found)

    def skip_like(key, unit: _Call, budget: int = 12) -> bool:
        if budget <= 0 or key is None:
            return False
        if key in unit.in_keys:
            return True
        for producer in by_out.get(key, []):
            if below(producer.path, unit.path) and producer.in_key in unit.in_keys:
                return True
        node = nodes.get(key)
        if node is None:
            return False
        name, args = node
        if name in _ADDS:
            return any(skip_like(a, unit, budget - 1) for a in args)
        if name in _SKIP_VIEWS and args:
            return skip_like(args[0], unit, budget - 1)
        return False

    def final_add(key, budget: int = 6):
        node = nodes.get(key)
        while node is not None and budget > 0:
            name, args = node
            if name in _ADDS and len(args) == 2:
                return args
            if (name in _AFTER_ADD or name in _SKIP_VIEWS) and args:
                node = nodes.get(args[0])
                budget -= 1
                continue
            return None
        return None

    residual: dict[str, tuple[str | None, str | None, tuple[int, ...] | None]] = {}
    for path, (c, _i, key, _shape) in candidates.items():
        operands = final_add(key)
        if operands is None:
            continue
        a, b = operands
        a_skip, b_skip = skip_like(a, c), skip_like(b, c)
        if a_skip and b_skip:  # both reach the input: the exact input is the skip
            a_skip, b_skip = a in c.in_keys, b in c.in_keys
        if a_skip == b_skip:
            continue
        skip_key, branch_key = (a, b) if a_skip else (b, a)
        producers = [p for p in by_out.get(branch_key, [])
                     if below(p.path, path) and p.outs[0][0] == branch_key]
        branch = max(producers, key=lambda p: p.finished) if producers else None
        residual[path] = (branch.path if branch else None,
                          _describe_skip(skip_key, c, by_out, by_in, below),
                          branch.outs[0][1] if branch else None)

    def feeds_stream(path: str) -> bool:
        """A plain block's output is read by a later module or is its parent's output;
        a parallel branch (summed into a re-parameterisable block) is neither."""
        key = candidates[path][2]
        readers = [c for c in by_in.get(key, []) if not below(c.path, path)]
        parents = [c for c in by_out.get(key, []) if below(path, c.path)]
        return bool(readers or parents)

    inner_res = [p for p in residual if not any(below(o, p) for o in residual)]
    plain = [p for p in candidates if p not in residual and feeds_stream(p)
             and not any(below(p, r) or below(r, p) for r in inner_res)]
    # a block's own pieces (children of a ModuleList it iterates) are not blocks; a
    # container (a stage) with blocks below it is not one either
    def iterated(path: str) -> bool:
        """Its container is looped over by the owning module, never called itself."""
        parent = calls.get(path.rsplit(".", 1)[0]) if "." in path else None
        return parent is not None and parent.calls == 0

    whole = [p for p in plain if not any(
        below(p, q) and iterated(p) and not isinstance(candidates[q][0].module, _CONTAINERS)
        for q in plain)]
    inner_plain = [p for p in whole if not any(below(o, p) for o in whole + inner_res)]
    chosen = sorted(inner_res + inner_plain, key=lambda p: candidates[p][0].finished)

    prefixes = _prefix_tokens(recorder)
    units = []
    for path in chosen:
        c, index, _key_, shape = candidates[path]
        inner = [o for o in calls.values() if below(o.path, path) and o.finished >= 0
                 and any(True for _ in o.module.parameters(recurse=False))]
        last = max(inner, key=lambda o: o.finished) if inner else None
        width = _width(last.module) if last is not None else None
        if width not in (shape[1], shape[-1]):
            width = None
        prefix = prefixes.get(int(shape[1]), 0) if len(shape) == 3 and width != shape[1] else 0
        branch_path, skip, branch_shape = residual.get(path, (None, None, None))
        units.append(Unit(path, shape, index, width, prefix, path in residual, branch_path,
                          skip, branch_shape))
    stem = stem_shape = None
    if chosen:
        first = candidates[chosen[0]][0]
        feeds = by_out.get(first.in_key, []) if first.in_key is not None else []
        outer = [c for c in feeds
                 if not any(below(u, c.path) or u == c.path for u in chosen)]
        named = [c for c in once.values() if "." not in c.path and _is_stem_name(c.path)
                 and c.finished < first.started]
        if outer or named:
            # the module that hands the first block its input; else timm's named stem
            pick = (min(outer, key=lambda c: (c.path.count("."), -c.finished)) if outer
                    else max(named, key=lambda c: c.finished))
            found = stream(pick)
            if found is not None:
                stem, stem_shape = pick.path, found[2]
    return BlockTrace(units, stem, stem_shape, prefixes)


def _prefix_tokens(recorder: "_Recorder") -> dict[int, int]:
    """Token count -> leading prefix tokens, from every ``cat`` along the token axis
    whose leading parts come from parameters (a class token, distillation or register
    tokens expanded to the batch)."""
    out: dict[int, int] = {}
    for total, prefix in recorder.token_cats:
        out.setdefault(total, prefix)
    return out


def _describe_skip(key, unit: _Call, by_out: dict, by_in: dict, below) -> str:
    if key == unit.in_key:
        return "input"
    for producer in by_out.get(key, []):
        if below(producer.path, unit.path):
            return f"module:{producer.path}"
    for reader in by_in.get(key, []):
        if below(reader.path, unit.path):
            return f"input_of:{reader.path}"
    return "tensor"


def probe_for(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """A zero input of the size the model was built for, on its device (``meta``
    included): ``model.mi_probe_input_size`` when mi-probe built it, else timm's
    ``pretrained_cfg['input_size']``, else 3 x 224 x 224."""
    size = getattr(model, "mi_probe_input_size", None)
    if size is None:
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(batch, *size, device=device, dtype=dtype)
