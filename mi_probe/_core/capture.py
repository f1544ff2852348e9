"""Forward hooks that pool activations on the fly, and interventions applied as hooks.

Capture pools each site's output inside the hook (memory O(N·C) per site), stores a
detached copy that no later in-place op can overwrite, and removes every hook in a
``finally`` (also when the forward pass raises). Each site's pooled rows are copied into
one preallocated (N, C) tensor as the batches arrive (``_Rows``), so a capture holds one
allocation per site, not one small tensor per site and batch interleaved on the heap
with the (much larger, short-lived) activations, and needs no second copy to join them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from mi_probe.errors import DataError, ModelError, NonFiniteActivationError, SiteError
from mi_probe.interfaces import Captured, Intervention, Site
from mi_probe._core.sites import get_module, pool, replace_output, site_output


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def pooled_copy(output: torch.Tensor, site: Site) -> torch.Tensor:
    """(N, C) float32 pooled copy of a site output, never sharing its storage."""
    pooled = pool(output, site.layout, site.tokens, site.prefix_tokens).to(torch.float32)
    if pooled.data_ptr() == output.data_ptr():
        pooled = pooled.clone()
    return pooled


@contextmanager
def removing(handles: list) -> Iterator[list]:
    """Yield ``handles`` and remove each of them on exit, whatever happens."""
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()
        handles.clear()


def add_intervention_hooks(model: nn.Module,
                           interventions: Iterable[tuple[Site, Intervention, torch.Tensor]],
                           handles: list, position: list[int], calibrate: bool = False) -> None:
    """Hook each intervention onto its site. With ``calibrate`` the hooks only show the
    unmodified output to ``intervention.calibrate``; otherwise they replace the output
    (registered before capture hooks, so captured activations are the intervened ones).
    ``position[0]`` is the evaluation index of the current batch's first sample."""
    for site, intervention, channels in interventions:
        if calibrate and not intervention.needs_calibration:
            continue

        def hook(_m, _inp, out, _site=site, _iv=intervention, _ch=channels):
            tensor = site_output(out, _site.index)
            ch = _ch.to(tensor.device)
            if calibrate:
                _iv.calibrate(tensor, _site, ch, position[0])
                return None
            return replace_output(out, _site.index, _iv(tensor, _site, ch, position[0]))

        handles.append(get_module(model, site.module).register_forward_hook(hook))


def add_pooling_hooks(model: nn.Module, sites: Sequence[Site], store: dict[str, Any],
                      detach: bool = True) -> list:
    """Append each site's pooled output per batch to ``store[site.name]``.

    Returns the hook handles; if a site's module cannot be found, the hooks already
    registered are removed before the error propagates (nothing is left behind)."""
    handles = []
    try:
        for site in sites:
            module = get_module(model, site.module)
            store.setdefault(site.name, [])

            def hook(_m, _inp, out, _site=site):
                pooled = pooled_copy(site_output(out, _site.index), _site)
                store[_site.name].append(pooled.detach() if detach else pooled)

            handles.append(module.register_forward_hook(hook))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles


class _Rows:
    """The pooled rows of one site, copied into one tensor as they arrive; a drop-in for
    the per-site list of ``add_pooling_hooks`` (it only calls ``append``).

    The tensor is allocated at the first part with ``rows_hint`` rows (the evaluation
    set's size when the loader tells it), else ``batches_hint`` times the first part's
    rows, else the first part's rows; it grows (to at least twice its size) only when
    more rows arrive. ``result()`` is the (rows, C) tensor, bit-identical to
    ``torch.cat`` of the parts; when fewer rows arrived than were allocated it is a
    compact copy, so the returned tensor never holds spare rows."""

    __slots__ = ("rows_hint", "batches_hint", "buffer", "rows", "calls")

    def __init__(self, rows_hint: int | None = None, batches_hint: int | None = None) -> None:
        self.rows_hint = rows_hint
        self.batches_hint = batches_hint
        self.buffer: torch.Tensor | None = None
        self.rows = 0
        self.calls = 0

    def append(self, part: torch.Tensor) -> None:
        self.calls += 1
        end = self.rows + part.shape[0]
        if self.buffer is None:
            capacity = self.rows_hint or (self.batches_hint or 1) * part.shape[0]
            self.buffer = torch.empty((max(capacity, end), *part.shape[1:]), dtype=part.dtype,
                                      device=part.device)
        elif part.shape[1:] != self.buffer.shape[1:]:
            torch.cat([self.buffer[:0], part])  # raises what torch.cat of the parts raised
        if end > self.buffer.shape[0]:
            grown = torch.empty((max(end, 2 * self.buffer.shape[0]), *self.buffer.shape[1:]),
                                dtype=self.buffer.dtype, device=self.buffer.device)
            grown[:self.rows].copy_(self.buffer[:self.rows])
            self.buffer = grown
        self.buffer[self.rows:end].copy_(part)
        self.rows = end

    def result(self) -> torch.Tensor:
        if self.buffer is None:
            return torch.cat([])  # no part: the error torch.cat of no parts gives
        if self.rows == self.buffer.shape[0]:
            return self.buffer
        return self.buffer[:self.rows].clone()


def _size_hints(loader: Iterable) -> tuple[int | None, int | None]:
    """(samples, batches) the loader says it yields, where it says it (a DataLoader: its
    dataset's length and its number of batches); only sizes the capture's allocation."""
    hints = []
    obj: Any  # len() may not apply: that is caught below
    for obj in (getattr(loader, "dataset", None), loader):
        try:
            hints.append(int(len(obj)) if obj is not None else None)
        except (TypeError, NotImplementedError):
            hints.append(None)
    return hints[0], hints[1]


def capture(model: nn.Module, sites: Sequence[Site], loader: Iterable, device: torch.device,
            interventions: Iterable[tuple[Site, Intervention, torch.Tensor]] = (),
            progress: bool = False, desc: str = "capture",
            generator: torch.Generator | None = None) -> Captured:
    """Run the evaluation set once (twice when an intervention needs calibration);
    pooled activations of ``sites``, labels and logits, all on ``device``."""
    interventions = list(interventions)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    for _, intervention, _ in interventions:
        intervention.reset(generator)
    rows_hint, batches_hint = _size_hints(loader)
    store: dict[str, _Rows] = {site.name: _Rows(rows_hint, batches_hint) for site in sites}
    labels, logits = [], []
    position = [0]
    was_training = model.training
    model.eval()
    handles: list = []
    try:
        if any(iv.needs_calibration for _, iv, _ in interventions):
            with removing(handles), torch.no_grad():
                add_intervention_hooks(model, interventions, handles, position, calibrate=True)
                for x, _y in loader:
                    model(x.to(device, non_blocking=True))
                    position[0] += len(x)
            position[0] = 0
        with removing(handles):
            add_intervention_hooks(model, interventions, handles, position)
            handles.extend(add_pooling_hooks(model, sites, store))
            batches = loader
            if progress:
                from tqdm.auto import tqdm
                batches = tqdm(loader, desc=desc, leave=False, unit="batch")
            with torch.no_grad():
                for x, y in batches:
                    out = model(x.to(device, non_blocking=True))
                    logits.append(_first(out).float())
                    labels.append(y.to(device))
                    position[0] += len(x)
    finally:
        model.train(was_training)
    if not labels:
        raise DataError("capture: the evaluation data yielded no batches (empty evaluation "
                        "set)")
    n = sum(len(y) for y in labels)
    acts = {}
    for site in sites:
        parts = store[site.name]
        if parts.rows != n:
            raise SiteError(f"site {site.name!r} (module {site.module!r}) gave {parts.rows} "
                            f"pooled rows for {n} samples: its module ran "
                            f"{'never' if not parts.calls else f'{parts.calls} times for {len(labels)} batches'}"
                            " (a site module must run exactly once per forward pass)")
        acts[site.name] = parts.result()
    return Captured(acts=acts, labels=torch.cat(labels).long(), logits=torch.cat(logits),
                    sites=list(sites))


def check_logits(captured: Captured, num_classes: int) -> None:
    """Refuse a model whose forward pass does not return (N, num_classes) logits (an
    encoder without a classification head): nothing could be scored."""
    logits = captured.logits
    if logits is not None and tuple(logits.shape) != (len(captured.labels), num_classes):
        raise ModelError(f"the model's forward pass returned {tuple(logits.shape)} for "
                         f"{len(captured.labels)} images, not ({len(captured.labels)}, "
                         f"{num_classes}) class logits: it has no classification head (an "
                         "encoder); use a classifier")


def check_finite(captured: Captured, on_nonfinite: str, where: str) -> list[str]:
    """Drop (``skip``) or refuse (``error``) sites holding NaN/Inf; returns warnings."""
    warnings = []
    kept = []
    for site in captured.sites:
        acts = captured.acts[site.name]
        bad = int((~torch.isfinite(acts)).sum().item())
        if bad == 0:
            kept.append(site)
            continue
        message = (f"site {site.name!r} ({where}) has {bad} non-finite pooled values "
                   f"of {acts.numel()} (NaN/Inf activations: diverged or broken model)")
        if on_nonfinite == "error":
            raise NonFiniteActivationError(message + "; set eval.on_nonfinite: skip to leave "
                                           "such sites out")
        warnings.append(message + "; left out of the tables")
        del captured.acts[site.name]
    captured.sites = kept
    return warnings
