"""What names a stored capture: the :class:`StoreKey` and the fingerprints it is made of.

A key must change whenever the stored numbers could: the model (structure and every
weight), the evaluation data (content, order, subset, labels), the input preprocessing
(image size, crop, normalisation), the site and its reduction, and the software and
device that computed it. Fingerprints are content hashes, never names: two models with
the same name and one changed weight get different keys. An object whose identity
cannot be hashed (a dataset of an unknown type, a lambda transform) gets no key, and its
captures are not stored: a miss costs one capture, a false hit a wrong result.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: the version of what a capture stores: bump it when pooling or the entry layout changes
#: meaning, so entries written before can never be read as a match
FORMAT = 1
#: the ``site`` of the entry holding a capture's labels and logits
OUTPUTS = "#outputs"
#: the ``site`` of the entry holding only the labels of a capture that halted after its
#: deepest site (no logits): never read as an :data:`OUTPUTS` entry, so a capture that
#: needs logits never gets one without them
LABELS = "#labels"
#: the reduction of a site's full output in its own layout (N, ...), as the module
#: returned it: what suffix evaluation starts from (knockout sweeps). No value of the
#: spec's ``sites.reduce`` has this text, so such an entry is never read as a capture
SITE_OUTPUT = "output"


@dataclass(frozen=True)
class StoreKey:
    """One stored array set: a site's reduced activations over an evaluation set, or
    (``site == OUTPUTS``) the labels and logits of that capture. Every field enters
    :attr:`digest`, which names the entry; all are also written into the entry, so
    ``mi-probe cache list`` shows them."""

    #: content hash of the model's structure (``repr``) and its state dict
    model: str
    #: content hash of the evaluation set: items in order, labels, subset
    data: str
    #: the input transform, as text (sizes, crop, normalisation, decoder)
    preprocessing: str
    #: the site's name, or :data:`OUTPUTS`
    site: str
    #: hash of every field of the resolved :class:`~mi_probe.interfaces.Site` (module,
    #: output index, layout, token pooling, ...); empty for :data:`OUTPUTS`
    site_def: str
    #: how each sample's site output is reduced (``mean``: global average pool;
    #: ``none``: unpooled); empty for :data:`OUTPUTS`
    reduction: str
    #: library versions, the device and the batch size (they change the last bits)
    runtime: str
    format: int = FORMAT

    @property
    def digest(self) -> str:
        """32 hex digits naming the entry."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_site(self, site: str, site_def: str, reduction: str) -> "StoreKey":
        return dataclasses.replace(self, site=site, site_def=site_def, reduction=reduction)


# ----------------------------------------------------------------------------- model

def model_fingerprint(model: nn.Module) -> str | None:
    """Hash of the module tree (``repr``: layer types, activations, shapes) and every
    state-dict tensor (name, dtype, shape, bytes). None for a model carrying forward
    hooks: a hook can change outputs without changing either."""
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return None
    digest = hashlib.sha256(type(model).__qualname__.encode() + b"\0" + repr(model).encode())
    for name, value in model.state_dict().items():
        if value.is_meta:
            return None
        digest.update(f"\0{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        if value.numel():  # the buffer itself: no copy of the bytes
            digest.update(value.detach().to("cpu").contiguous().view(-1).view(torch.uint8)
                          .numpy())
    return digest.hexdigest()[:32]


# ----------------------------------------------------------------------------- data

class _Unknown(Exception):
    """A dataset or transform whose identity cannot be hashed."""


def _tensor_bytes(digest: Any, tensor: torch.Tensor) -> None:
    t = tensor.detach().to("cpu").contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        digest.update(t.view(-1).view(torch.uint8).numpy())


def _transform_text(transform: Any) -> str:
    """A transform as one line of text; unknown when it names a memory address (a
    lambda, a plain function object: their text says nothing about what they do)."""
    if transform is None:
        return "none"
    text = re.sub(r"\s+", " ", repr(transform)).strip()
    if " at 0x" in text or re.search(r"object at|<function|<lambda", text):
        raise _Unknown(f"transform {type(transform).__name__} has no stable description")
    return text


def _describe(dataset: Any, digest: Any) -> str:
    """Feed ``dataset``'s identity into ``digest``; return its preprocessing text."""
    from torch.utils.data import Subset

    from mi_probe._core.data import ImageFileDataset, TensorImageDataset, UpsampledGrayDataset

    own = getattr(dataset, "fingerprint", None)
    if callable(own):  # a dataset that says what identifies it (third-party sources)
        text = own()
        if not isinstance(text, str) or not text:
            raise _Unknown(f"{type(dataset).__name__}.fingerprint() returned {text!r}")
        digest.update(b"own\0" + type(dataset).__qualname__.encode() + b"\0" + text.encode())
        return f"{type(dataset).__qualname__} (its own fingerprint)"
    if isinstance(dataset, Subset):
        inner = _describe(dataset.dataset, digest)
        digest.update(b"subset\0")
        _tensor_bytes(digest, torch.as_tensor(list(dataset.indices), dtype=torch.int64))
        return inner
    if isinstance(dataset, ImageFileDataset):
        digest.update(b"files\0")
        for path, label in dataset.samples:
            full = os.path.abspath(os.fspath(path))
            stat = os.stat(full)
            digest.update(f"{full}\0{stat.st_size}\0{stat.st_mtime_ns}\0{int(label)}\n"
                          .encode())
        import PIL

        return (f"files decoded by Pillow {PIL.__version__} to RGB; "
                f"{_transform_text(dataset.transform)}")
    if isinstance(dataset, UpsampledGrayDataset):
        digest.update(b"upsampled-gray\0")
        _tensor_bytes(digest, dataset.images)
        _tensor_bytes(digest, dataset.labels)
        tail = (_transform_text(dataset.transform) if dataset.transform is not None
                else "ImageNet normalisation" if dataset.normalise else "no normalisation")
        return (f"gray {tuple(dataset.images.shape[1:])} bilinear to "
                f"{dataset.size}x{dataset.size}, clamp [0, 1], 3 channels; {tail}")
    if isinstance(dataset, TensorImageDataset):
        digest.update(b"tensor-images\0")
        _tensor_bytes(digest, dataset.images)
        _tensor_bytes(digest, dataset.labels)
        return (f"tensor images {tuple(dataset.images.shape[1:])}; "
                f"{_transform_text(dataset.transform)}")
    raise _Unknown(f"dataset type {type(dataset).__qualname__} (give it a fingerprint() "
                   "method returning a string that changes with its content)")


def data_fingerprint(dataset: Any) -> tuple[str, str] | tuple[None, str]:
    """``(content digest, preprocessing text)`` of an evaluation set, or ``(None,
    why)`` when it cannot be identified.

    Image files count by absolute path, size and modification time (ns), in order, with
    their labels; tensor datasets by their bytes; a ``Subset`` adds its indices. A
    dataset of another type is identified only through its own ``fingerprint()``."""
    digest = hashlib.sha256(f"data-v{FORMAT}\0".encode())
    try:
        text = _describe(dataset, digest)
    except _Unknown as exc:
        return None, str(exc)
    except OSError as exc:  # a file vanished: nothing to store under
        return None, f"cannot stat an evaluation file: {exc}"
    return digest.hexdigest()[:32], text


# ----------------------------------------------------------------------------- sites

def site_definition(site: Any) -> str:
    """Hash of every field of a resolved site (dataclass), so a field added later (a
    reduction, a token rule) enters the key without a change here."""
    fields = (dataclasses.asdict(site) if dataclasses.is_dataclass(site)
              and not isinstance(site, type) else vars(site))
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


def reduction_text(reduce: Any) -> str:
    """The spec's ``sites.reduce`` as key text: ``mean``, ``none``, or its settings as
    JSON (projection dims, seed, dtype; the memory budget changes no value and is left
    out, so runs with other budgets share entries)."""
    if reduce is None or isinstance(reduce, str):
        return reduce or "mean"
    fields = reduce.model_dump() if hasattr(reduce, "model_dump") else dict(vars(reduce))
    fields.pop("max_mb", None)
    return json.dumps(fields, sort_keys=True, default=str)


def site_reduction(site: Any, default: str = "mean") -> str:
    """The site's reduction (its ``reduction`` field when sites carry one), else
    ``default`` (global average pooling, what capture does today)."""
    value = getattr(site, "reduction", None)
    return str(value) if value else default


# ----------------------------------------------------------------------------- runtime

@functools.lru_cache(maxsize=None)
def _versions() -> tuple[str, ...]:
    import importlib.metadata as md

    parts = [f"torch {torch.__version__}"]
    for dist in ("timm", "torchvision", "pillow"):
        try:
            parts.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            parts.append(f"{dist} none")
    return tuple(parts)


def runtime_fingerprint(device: torch.device, batch_size: int) -> str:
    """The software, device and batch size a capture ran with: another torch, timm or
    torchvision, another device type or GPU model, or another batch size can change
    activations in their last bits, so each is part of the key."""
    parts = list(_versions())
    name = device.type
    if device.type == "cuda" and torch.cuda.is_available():
        name += f" {torch.cuda.get_device_name(device)}"
    parts += [name, f"batch {batch_size}"]
    return "; ".join(parts)
