"""Models: timm backbones by name, your own ``nn.Module`` (a factory named
``package.module:function`` in a spec, or a module or factory handed to
``mi_probe.run(model=...)``), initialisation choices, activation swap, the paper's VGG
head, and safetensors weights with JSON metadata (nothing is unpickled)."""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import inspect
import json
import re
from pathlib import Path
from typing import Any, Callable, cast

import torch
from torch import nn

from mi_probe._core.archs import PYTHON_PREFIX, is_custom_arch
from mi_probe._core.files import atomic_path
from mi_probe.errors import CheckpointError, ModelError, UnknownModelError

#: Bumped when the model construction or training recipe changes in a way that
#: invalidates cached trained models.
RECIPE_VERSION = 3  # 3: per-item augmentation seeds and global-batch sampler (DDP-ready)
META_KEY = "mi_probe"

#: Activation modules an activation swap replaces (gates such as Sigmoid are kept).
SWAPPABLE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
             nn.Mish, nn.Tanh)
ACT_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True), "tanh": nn.Tanh}
#: Classifier heads ``build_model`` can attach (``timm``: the model's own).
HEADS = ("timm", "paper_vgg")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"device: {name!r} is not a device; expected auto, cpu, cuda or "
                         "cuda:<index>") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device: {name} was asked for but no CUDA device is available "
                             "(use device: auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"device: {name} was asked for but only "
                             f"{torch.cuda.device_count()} CUDA device(s) exist")
    return device


def register_tiny_models() -> None:
    """Register ``mi_probe_tiny_vgg`` with timm: a VGG with conv widths 8-16-32 and a
    128-wide pre-logits head, for the tiny test profile (timm's own VGG configurations
    carry a 4096-wide head of ~120 M parameters)."""
    import timm
    from timm.models import register_model

    if timm.is_model("mi_probe_tiny_vgg"):
        return

    def mi_probe_tiny_vgg(pretrained: bool = False, num_classes: int = 1000, **kwargs: Any):
        from timm.layers import ClassifierHead
        from timm.models.vgg import VGG, ConvMlp

        if pretrained:
            raise ModelError("mi_probe_tiny_vgg has no pretrained weights")
        model = VGG(cfg=[8, "M", 16, "M", 32, 32, "M"], num_classes=num_classes)
        model.pre_logits = ConvMlp(32, 128, kernel_size=1, drop_rate=0.0)
        model.num_features = model.head_hidden_size = 128
        model.head = ClassifierHead(128, num_classes, pool_type="avg")
        return model

    mi_probe_tiny_vgg.__module__ = __name__
    register_model(mi_probe_tiny_vgg)


# --------------------------------------------------------------------------- your own models

#: models handed to ``mi_probe.run(model=...)`` in this process, by their arch name
_PYTHON_MODELS: dict[str, Any] = {}


def register_python_model(model: Any, name: str | None = None) -> str:
    """Make ``model`` (an ``nn.Module``, or a callable returning one) buildable as
    ``model.arch: python:<name>`` in this process; returns that arch name. The name is
    the class (or function) name plus a fingerprint of the model, so two different
    models never share a name (nor a cached training)."""
    if not (isinstance(model, nn.Module) or callable(model)):
        raise ModelError(f"model=: expected a torch nn.Module or a function returning one, "
                         f"got {type(model).__name__}")
    base = str(name or (type(model).__name__ if isinstance(model, nn.Module)
                        else getattr(model, "__name__", type(model).__name__)))
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_") or "model"  # e.g. <lambda>
    arch = f"{PYTHON_PREFIX}{base}-{model_fingerprint(model)[:8]}"
    _PYTHON_MODELS[arch] = model
    return arch


def model_fingerprint(target: Any) -> str:
    """What identifies a user's model for the model cache: for a module, its structure
    and its weights; for a factory, its qualified name and the source of the module
    that defines it (edit the code and the cached trainings no longer match)."""
    digest = hashlib.sha256()
    if isinstance(target, nn.Module):
        digest.update(repr(target).encode())
        for key, value in target.state_dict().items():
            digest.update(key.encode())
            if not value.is_meta:
                digest.update(value.detach().to("cpu").contiguous().numpy().tobytes())
        return digest.hexdigest()[:20]
    digest.update(f"{getattr(target, '__module__', '')}:{getattr(target, '__qualname__', '')}"
                  .encode())
    try:
        digest.update(inspect.getsource(inspect.getmodule(target) or target).encode())
    except (OSError, TypeError):  # defined in a notebook cell or C: the name alone
        pass
    return digest.hexdigest()[:20]


def custom_target(arch: str) -> Any:
    """The module or factory a custom ``arch`` names, with a clear error when it cannot
    be found (a ``python:`` model of another process; a module that does not import)."""
    if arch.startswith(PYTHON_PREFIX):
        if arch not in _PYTHON_MODELS:
            raise UnknownModelError(
                f"model.arch {arch!r} is a model handed to mi_probe.run(model=...) in "
                "another Python session; run it again from Python with the module, or "
                "name a factory in your code: arch: package.module:function")
        return _PYTHON_MODELS[arch]
    module_name, _, attr = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownModelError(f"model.arch {arch!r}: cannot import {module_name!r} "
                                f"({exc}); is its folder on PYTHONPATH, or the package "
                                "installed?") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UnknownModelError(f"model.arch {arch!r}: module {module_name!r} has no "
                                    f"{attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UnknownModelError(f"model.arch {arch!r}: {attr!r} is a "
                                f"{type(target).__name__}, not a function returning a model")
    return target


def custom_fingerprint(arch: str) -> str | None:
    """The model-cache fingerprint of a custom ``arch`` (None for timm names)."""
    return model_fingerprint(custom_target(arch)) if is_custom_arch(arch) else None


def _build_custom(arch: str, num_classes: int) -> nn.Module:
    """A fresh copy of the user's module, or the factory's model for ``num_classes``
    (the caller has seeded torch)."""
    target = custom_target(arch)
    if isinstance(target, nn.Module):
        model = copy.deepcopy(target)  # the given weights, the same for every seed
        here = torch.empty(0).device  # the device a `with torch.device(...)` asks for
        return model.to(here) if here.type == "meta" else model
    try:
        takes_classes = "num_classes" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        takes_classes = False
    try:
        model = target(num_classes=num_classes) if takes_classes else target()
    except Exception as exc:  # the user's code: report what it raised
        raise ModelError(f"model.arch {arch!r}: the factory raised {type(exc).__name__}: "
                         f"{exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.arch {arch!r}: the factory returned a "
                         f"{type(model).__name__}, not a torch nn.Module")
    return model


def check_arch(arch: str) -> None:
    import timm

    if is_custom_arch(arch):
        custom_target(arch)
        return
    register_tiny_models()
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(f"unknown model architecture {arch!r}: not a timm model name "
                            f"(see timm.list_models()){hint}")


def model_meta(arch: str, num_classes: int, act: str | None, head: str,
               zero_init_last: bool) -> dict[str, Any]:
    """What a weights file must match to be loaded into a model built from a spec."""
    return {"arch": arch, "num_classes": num_classes, "act": act, "head": head,
            "zero_init_last": zero_init_last}


class PaperVGGHead(nn.Module):
    """The paper's VGG-16 head: global average pool, Linear(C, 4096), ReLU, Dropout(0.5),
    Linear(4096, num_classes). Replaces timm's ConvMlp pre-logits + classifier."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 4096, dropout: float = 0.5):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(self.pool(x).flatten(1))))
        return x if pre_logits else self.fc2(x)


def attach_paper_vgg_head(model: nn.Module, num_classes: int) -> None:
    if type(model).__name__ != "VGG" or not hasattr(model, "pre_logits"):
        raise ModelError(f"head: paper_vgg needs a timm VGG model; got {type(model).__name__}")
    convs = [m for m in cast(nn.Sequential, model.features) if isinstance(m, nn.Conv2d)]
    model.pre_logits = nn.Identity()
    model.head = PaperVGGHead(convs[-1].out_channels, num_classes)


def reset_zero_norm_weights(model: nn.Module) -> int:
    """Set normalisation weights that were initialised to exactly zero back to one
    (undoing timm's ``zero_init_last``); returns how many layers changed."""
    changed = 0
    norms = (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm)
    for module in model.modules():
        if isinstance(module, norms) and getattr(module, "weight", None) is not None:
            if module.weight.is_meta:  # a structural build (preflight): no values to read
                continue
            if torch.count_nonzero(module.weight) == 0:
                with torch.no_grad():
                    module.weight.fill_(1.0)
                changed += 1
    return changed


def swap_activations(model: nn.Module, act: str) -> int:
    """Replace every activation module with ``act`` (applied to the whole network)."""
    if act not in ACT_FACTORIES:
        raise ModelError(f"act: unknown activation {act!r}; valid: "
                         f"{', '.join(sorted(ACT_FACTORIES))}")
    factory = ACT_FACTORIES[act]
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SWAPPABLE):
                new = factory()
                # Never add an in-place op where the model had none: the replaced
                # activation's input may still be read afterwards (e.g. x + act(x)).
                if hasattr(new, "inplace"):
                    setattr(new, "inplace", bool(getattr(child, "inplace", False)))
                setattr(parent, name, new)
                count += 1
    if count == 0:
        raise ModelError(f"act: {act} was asked for but the model has no activation modules "
                         "to swap (it applies activations functionally)")
    return count


def default_input_size(arch: str) -> tuple[int, int, int] | None:
    """timm's default (C, H, W) input of ``arch`` (None when timm records none)."""
    from timm.models import get_pretrained_cfg

    if is_custom_arch(arch):
        return None
    cfg = get_pretrained_cfg(arch)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return cast("tuple[int, int, int]", tuple(int(v) for v in size)) if size else None


def fixes_input_size(arch: str) -> bool:
    """timm builds ``arch`` for one input size (position embeddings, windows)."""
    from timm.models import get_pretrained_cfg

    if is_custom_arch(arch):
        return False
    cfg = get_pretrained_cfg(arch)
    return bool(getattr(cfg, "fixed_input_size", False)) if cfg is not None else False


def _size_kwargs(arch: str, img_size: tuple[int, int] | None) -> dict[str, Any]:
    """timm's ``img_size`` for a model that fixes its input size, when the data's size
    differs from timm's default (so a 32 px spec builds a 32 px ViT)."""
    if img_size is None or not fixes_input_size(arch):
        return {}
    default = default_input_size(arch)
    if default is not None and tuple(default[1:]) == tuple(img_size):
        return {}
    return {"img_size": tuple(img_size)}


def _mark_input_size(model: nn.Module, arch: str, img_size: tuple[int, int] | None) -> None:
    """Remember the (C, H, W) input the model was built for (site tracing probes it)."""
    # setattr: a plain attribute, which nn.Module's typed __setattr__ does not describe
    if img_size is not None:
        setattr(model, "mi_probe_input_size", (3, *img_size))
    else:
        setattr(model, "mi_probe_input_size", default_input_size(arch) or (3, 224, 224))


def build_model(arch: str, num_classes: int, seed: int, act: str | None = None,
                head: str = "timm", zero_init_last: bool = False,
                pretrained: str | None = None, pretrained_file: str | None = None,
                img_size: int | tuple[int, int] | None = None) -> nn.Module:
    """A timm model in eval mode: randomly initialised, deterministic in ``seed``; or,
    with ``pretrained`` (``""`` for timm's default tag, else a tag such as ``a1_in1k``),
    timm's pretrained weights (downloaded and cached by timm, or read from the local
    ``pretrained_file``) with a new head for ``num_classes``, initialised from ``seed``.

    ``img_size`` is the input the model will see: models that timm builds for one size
    (ViT, Swin, gMLP, LeViT...) are built for it; others just record it.

    A custom ``arch`` (see :func:`is_custom_arch`) builds the user's model instead: a
    factory is called with ``num_classes`` (when it takes it) under the seed; a module
    handed to ``mi_probe.run(model=...)`` is copied as it is, for every seed."""
    import timm

    check_arch(arch)
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    if pretrained is not None:
        if is_custom_arch(arch):
            raise ModelError(f"model.arch {arch!r} is your own model: timm's pretrained "
                             "weights are for timm names; give a .safetensors file as "
                             "model.weights, or weights: train")
        model = _pretrained_model(arch, num_classes, seed, act, head, pretrained,
                                  pretrained_file, img_size)
        _mark_input_size(model, arch, img_size)
        return model
    if head not in HEADS:
        raise ModelError(f"head: unknown head {head!r}; valid: {', '.join(HEADS)}")
    if act is not None and act not in ACT_FACTORIES:
        raise ModelError(f"act: unknown activation {act!r}; valid: "
                         f"{', '.join(sorted(ACT_FACTORIES))}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sized = _size_kwargs(arch, img_size)
        if is_custom_arch(arch):
            model = _build_custom(arch, num_classes)
        else:
            try:
                model = timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                          **sized)
            except Exception as exc:  # timm raises many types for unusable configurations
                raise ModelError(_build_failure(arch, num_classes, sized, exc)) from None
        if not zero_init_last and not arch.startswith(PYTHON_PREFIX):
            reset_zero_norm_weights(model)
        if head == "paper_vgg":
            attach_paper_vgg_head(model, num_classes)
        if act is not None:
            swap_activations(model, act)
    _mark_input_size(model, arch, img_size)
    return model.eval()


def _build_failure(arch: str, num_classes: int, sized: dict[str, Any], exc: Exception) -> str:
    default = default_input_size(arch)
    if sized:
        # sized only for a model with a timm pretrained cfg, which records an input size
        assert default is not None
        return (f"timm could not build {arch!r} for {sized['img_size'][0]}x"
                f"{sized['img_size'][1]} px images ({type(exc).__name__}: {exc}); it is "
                f"built for {default[1]} px by default: use data image_size: {default[1]}, "
                "or another size its patch and window sizes divide")
    return (f"timm could not build {arch!r} with num_classes={num_classes}: "
            f"{type(exc).__name__}: {exc}")


def _pretrained_model(arch: str, num_classes: int, seed: int, act: str | None, head: str,
                      tag: str, file: str | None,
                      img_size: tuple[int, int] | None = None) -> nn.Module:
    import timm

    name = f"{arch}.{tag}" if tag else arch
    overlay = None
    if file is not None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise CheckpointError(f"model.pretrained_file {path} does not exist")
        overlay = {"file": str(path)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the new head
        try:
            model = timm.create_model(name, pretrained=True, num_classes=num_classes,
                                      pretrained_cfg_overlay=overlay,
                                      **_size_kwargs(arch, img_size))
        except (OSError, ConnectionError) as exc:
            raise ModelError(f"could not get timm's pretrained weights {name!r}: "
                             f"{type(exc).__name__}: {exc}. They are downloaded once (timm "
                             "caches them); offline, give model.pretrained_file") from None
        except RuntimeError as exc:  # e.g. a file of another architecture
            raise CheckpointError(f"timm could not load pretrained weights {name!r}"
                                  + (f" from {file}" if file else "") + f": {exc}") from None
        except Exception as exc:  # unknown tags and the like
            raise ModelError(f"timm could not build {name!r} with pretrained weights: "
                             f"{type(exc).__name__}: {exc}") from None
        if file is not None:
            _check_pretrained_file(model, Path(file).expanduser(), name)
        if head == "paper_vgg":
            attach_paper_vgg_head(model, num_classes)
        if act is not None:
            swap_activations(model, act)
    return model.eval()


def _check_pretrained_file(model: nn.Module, path: Path, name: str) -> None:
    """timm loads a file non-strictly when the head is replaced, so weights of another
    architecture would leave layers silently random: every tensor of the model but its
    classifier must come from the file, with the same shape."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    pretrained_cfg = cast("dict[str, Any]", model.pretrained_cfg)  # timm models carry it
    classifiers = pretrained_cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)

    def is_head(key: str) -> bool:
        return any(key.startswith(c + ".") for c in classifiers)

    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not is_head(k)}
    missing = sorted(k for k in own if k not in shapes)
    unexpected = sorted(k for k in shapes if k not in own and not is_head(k))
    other = [k for k in own if k in shapes and shapes[k] != own[k]]
    if missing or unexpected or other:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the model's tensors are not in the file "
                         f"(e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors of the file are not in the model "
                         f"(e.g. {unexpected[:3]})")
        if other:
            parts.append(f"{len(other)} have other shapes (e.g. {other[0]}: file "
                         f"{shapes[other[0]]}, model {own[other[0]]})")
        raise CheckpointError(f"model.pretrained_file {path} does not hold {name} weights: "
                              + "; ".join(parts))


# --------------------------------------------------------------------------- weights


def save_weights(model: nn.Module, path: str | Path, meta: dict[str, Any]) -> None:
    """Atomically write a safetensors file whose header carries ``meta`` as JSON."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _unshared({k: v.detach().to("cpu").contiguous()
                         for k, v in model.state_dict().items()})
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One entry per storage: safetensors refuses tensors that share memory (tied
    weights, as in CoaT), so aliases are dropped here and filled from their twin on
    load (``safetensors.torch._remove_duplicate_names`` picks the name to keep)."""
    from safetensors.torch import _remove_duplicate_names

    aliased = {name for names in _remove_duplicate_names(tensors).values() for name in names}
    return {k: v for k, v in tensors.items() if k not in aliased}


def shared_names(model: nn.Module) -> dict[str, str]:
    """Each state-dict name that shares storage with another, mapped to the name that
    ``save_weights`` keeps for that storage."""
    from safetensors.torch import _remove_duplicate_names

    state = model.state_dict()
    out = {}
    for kept, removed in _remove_duplicate_names(state).items():
        for name in removed:
            out[name] = kept
    return out


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The mi-probe metadata of a safetensors file (None for foreign files)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: corrupt mi-probe metadata in the header") from None


def load_weights(model: nn.Module, path: str | Path, expected: dict[str, Any] | None = None) -> None:
    """Load a safetensors file into ``model``, refusing another architecture or shape.

    With mi-probe metadata in the file, ``expected`` (see :func:`model_meta`) is
    compared field by field; without, the parameter names and shapes must match.
    """
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    meta = read_meta(path)
    if meta is not None and expected is not None:
        diffs = [k for k in expected if k in meta and meta[k] != expected[k]]
        if diffs:
            found = ", ".join(f"{k}={meta[k]!r}" for k in diffs)
            want = ", ".join(f"{k}={expected[k]!r}" for k in diffs)
            raise CheckpointError(f"{path} holds a model with {found}; the spec asks for {want}")
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read tensors ({exc})") from None
    own = model.state_dict()
    for alias, kept in shared_names(model).items():
        if alias not in tensors and kept in tensors:
            tensors[alias] = tensors[kept]  # a tied tensor saved once
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shape = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or shape:
        arch = (expected or {}).get("arch", type(model).__name__)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} with other shapes (e.g. {k}: file "
                         f"{tuple(tensors[k].shape)}, model {tuple(own[k].shape)})")
        raise CheckpointError(f"{path} does not fit {arch}: tensors " + "; ".join(parts))
    model.load_state_dict(tensors)
