"""Forward hooks that pool activations on the fly, and interventions applied as hooks.

Capture pools each site's output inside the hook (memory O(N·C) per site), stores a
detached copy that no later in-place op can overwrite, and removes every hook in a
``finally`` (also when the forward pass raises). With a :class:`SiteReduction` other
than ``mean`` (the spec's ``sites.reduce``) it keeps each site whole instead: the
flattened C·H·W values, or a seeded random Gaussian projection of them, within a stated
memory budget checked before anything is stored. Each site's pooled rows are copied into
one preallocated (N, C) tensor as the batches arrive (``_Rows``), so a capture holds one
allocation per site, not one small tensor per site and batch interleaved on the heap
with the (much larger, short-lived) activations, and needs no second copy to join them.
A ``sink`` (the activation store's ``CaptureWriter``) receives each batch's new rows as
the batch completes; ``halt_after_sites`` stops each forward pass once every site has its
output (no logits then).
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol, Sequence

import torch
from torch import nn

from mi_probe.errors import DataError, ModelError, NonFiniteActivationError, SiteError
from mi_probe.interfaces import Captured, Intervention, Site
from mi_probe._core.sites import flatten, get_module, pool, replace_output, site_output


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def pooled_copy(output: torch.Tensor, site: Site) -> torch.Tensor:
    """(N, C) float32 pooled copy of a site output, never sharing its storage."""
    pooled = pool(output, site.layout, site.tokens, site.prefix_tokens).to(torch.float32)
    if pooled.data_ptr() == output.data_ptr():
        pooled = pooled.clone()
    return pooled


@dataclass(frozen=True)
class SiteReduction:
    """How capture keeps each site's output (the spec's ``sites.reduce``): ``mean``
    (global average pool per channel: (N, C), the default), ``none`` (every value,
    flattened channel-major by ``sites.flatten``: (N, C·H·W)) or ``project`` (that
    flattened vector times a (D, ``dims``) matrix of N(0, 1/dims) entries: (N, dims),
    which keeps squared norms in expectation and distances approximately, but loses
    information where dims < D). The matrix of a site is drawn on the CPU from
    ``seed`` and the site's name, so it is the same for every model state, model seed
    and device. The kept values of all sites together, plus the matrices, may use at
    most ``max_bytes``; ``dtype`` is their storage type (float32, or float16 when
    declared)."""

    mode: str = "mean"
    dims: int | None = None
    seed: int = 0
    max_bytes: int = 4096 * 2**20
    dtype: torch.dtype = torch.float32

    @classmethod
    def of(cls, reduce: Any) -> SiteReduction:
        """From ``sites.reduce``: ``"mean"``, ``"none"`` or a mapping-like object with
        ``project``, ``seed``, ``max_mb`` and ``dtype`` (``spec.SiteReduceSpec``)."""
        if isinstance(reduce, SiteReduction):
            return reduce
        if reduce in (None, "mean"):
            return cls()
        if reduce == "none":
            return cls(mode="none")
        project = getattr(reduce, "project", None)
        return cls(mode="none" if project is None else "project", dims=project,
                   seed=int(getattr(reduce, "seed", 0)),
                   max_bytes=int(getattr(reduce, "max_mb", 4096)) * 2**20,
                   dtype=getattr(torch, str(getattr(reduce, "dtype", "float32"))))

    @property
    def pooled(self) -> bool:
        return self.mode == "mean"

    def describe(self) -> str:
        if self.mode == "project":
            return f"project to {self.dims} dims (random Gaussian, seed {self.seed})"
        return self.mode

    def projection(self, site: Site, in_dims: int, device: torch.device) -> torch.Tensor:
        """The (in_dims, dims) float32 projection matrix of ``site``."""
        assert self.dims is not None
        name_key = zlib.crc32(site.name.encode())
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + name_key) % 2**63)
        matrix = torch.randn(in_dims, self.dims, generator=gen) / self.dims ** 0.5
        return matrix.to(device)


#: the largest magnitude float16 holds
_FLOAT16_MAX = 65504.0


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.4g} MiB ({nbytes:,} bytes)"


class _Keeper:
    """Reduces one site's batches as ``reduction`` says (not ``mean``) and charges the
    memory of the whole capture against the budget before a site stores anything."""

    def __init__(self, reduction: SiteReduction, rows_hint: int | None):
        self.reduction, self.rows_hint = reduction, rows_hint
        self.charged: dict[str, int] = {}
        self.matrices: dict[str, torch.Tensor] = {}

    def _charge(self, site: Site, rows: int, in_dims: int, out_dims: int) -> None:
        red = self.reduction
        size = torch.empty((), dtype=red.dtype).element_size()
        need = rows * out_dims * size + (in_dims * out_dims * 4 if red.mode == "project" else 0)
        if need <= self.charged.get(site.name, 0):
            return
        self.charged[site.name] = need
        total = sum(self.charged.values())
        if total > red.max_bytes:
            shape = (f"{rows} samples x {out_dims} dims" + (
                f" (projected from {in_dims}; the matrix adds {_mib(in_dims * out_dims * 4)})"
                if red.mode == "project" else f" (C·H·W = {in_dims})"))
            raise SiteError(
                f"sites.reduce {red.describe()!r}: site {site.name!r} keeps {shape} in "
                f"{str(red.dtype).removeprefix('torch.')}, {_mib(need)}; the selected sites "
                f"so far need {_mib(total)}, over the budget of {_mib(red.max_bytes)} "
                "(sites.reduce.max_mb); select fewer sites, project to fewer dims "
                "({project: <dims>}), declare dtype: float16, or raise max_mb")

    def __call__(self, output: torch.Tensor, site: Site) -> torch.Tensor:
        red = self.reduction
        flat = flatten(output, site.layout, site.tokens, site.prefix_tokens).to(torch.float32)
        in_dims = flat.shape[1]
        out_dims = red.dims if red.mode == "project" and red.dims is not None else in_dims
        rows = max(self.rows_hint or 0, flat.shape[0])
        self._charge(site, rows, in_dims, out_dims)
        if red.mode == "project":
            matrix = self.matrices.get(site.name)
            if matrix is None or matrix.shape[0] != in_dims:
                matrix = self.matrices[site.name] = red.projection(site, in_dims, flat.device)
            flat = flat @ matrix
        if red.dtype == torch.float16:
            top = float(flat.abs().amax()) if flat.numel() else 0.0
            if top > _FLOAT16_MAX:
                raise SiteError(f"sites.reduce dtype float16: site {site.name!r} has values up "
                                f"to {top:.3g}, beyond float16's ±{_FLOAT16_MAX:g}; use "
                                "dtype: float32")
        return flat.to(red.dtype)

    def grow(self, site: Site, rows: int, dims: int) -> None:
        """Charge more rows than the loader said it holds (a loader without a length)."""
        in_dims = dims if self.reduction.mode != "project" else self.matrices[site.name].shape[0]
        self._charge(site, rows, in_dims, dims)


class CaptureSink(Protocol):
    """Where :func:`capture` hands each batch's rows (the store's ``CaptureWriter``)."""

    def append(self, site: str, rows: torch.Tensor) -> None: ...

    def append_outputs(self, labels: torch.Tensor, logits: torch.Tensor | None) -> None: ...


class _HaltForward(Exception):
    """Raised by the hook of the last site to fire in a batch (``halt_after_sites``):
    the rest of the forward pass is not needed. Private: the batch loop catches it."""


#: the order the sites fired in the first batch of the latest halting capture
last_fire_order: list[str] = []


class _Halter:
    """Stops a forward pass once every site has fired in it. The sites that fire in the
    first batch are recorded in order (``order``): the last of them is the deepest
    requested site as the model actually runs, whatever order the site list has."""

    __slots__ = ("names", "seen", "order", "first")

    def __init__(self, sites: Sequence[Site]) -> None:
        self.names = {site.name for site in sites}
        self.seen: set[str] = set()
        self.order: list[str] = []
        self.first = True

    def start(self) -> None:
        if self.seen:
            self.first = False
        self.seen = set()

    def fired(self, name: str) -> None:
        if self.first and name not in self.seen:
            self.order.append(name)
        self.seen.add(name)
        if len(self.seen) == len(self.names):
            raise _HaltForward(name)


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
                      detach: bool = True, keep: _Keeper | None = None,
                      halt: _Halter | None = None) -> list:
    """Append each site's pooled output per batch to ``store[site.name]`` (with ``keep``,
    the site's output reduced by it instead of pooled). With ``halt``, each hook then
    tells it the site fired (it raises :class:`_HaltForward` once all sites have).

    Returns the hook handles; if a site's module cannot be found, the hooks already
    registered are removed before the error propagates (nothing is left behind)."""
    handles = []
    try:
        for site in sites:
            module = get_module(model, site.module)
            store.setdefault(site.name, [])

            def hook(_m, _inp, out, _site=site):
                tensor = site_output(out, _site.index)
                pooled = pooled_copy(tensor, _site) if keep is None else keep(tensor, _site)
                store[_site.name].append(pooled.detach() if detach else pooled)
                if halt is not None:
                    halt.fired(_site.name)

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

    @property
    def total(self) -> int:
        """Rows that arrived in all."""
        return self.rows

    def result(self) -> torch.Tensor:
        if self.buffer is None:
            return torch.cat([])  # no part: the error torch.cat of no parts gives
        if self.rows == self.buffer.shape[0]:
            return self.buffer
        return self.buffer[:self.rows].clone()


class _Window(_Rows):
    """``_Rows`` that holds only the rows since the last :meth:`flush` (one batch): a
    capture that hands every batch to a sink and keeps nothing (``keep_rows=False``)."""

    __slots__ = ("flushed",)

    def __init__(self) -> None:
        super().__init__()
        self.flushed = 0

    @property
    def total(self) -> int:
        return self.flushed + self.rows

    def flush(self) -> None:
        self.flushed += self.rows
        self.rows = 0


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


class _KeptRows(_Rows):
    """``_Rows`` that charges rows beyond the loader's stated size against the budget."""

    __slots__ = ("keep", "site")

    def __init__(self, keep: _Keeper, site: Site, rows_hint: int | None,
                 batches_hint: int | None) -> None:
        super().__init__(rows_hint, batches_hint)
        self.keep, self.site = keep, site

    def append(self, part: torch.Tensor) -> None:
        if self.rows + part.shape[0] > (self.keep.rows_hint or 0):
            self.keep.grow(self.site, self.rows + part.shape[0], part.shape[1])
        super().append(part)


def capture(model: nn.Module, sites: Sequence[Site], loader: Iterable, device: torch.device,
            interventions: Iterable[tuple[Site, Intervention, torch.Tensor]] = (),
            progress: bool = False, desc: str = "capture",
            generator: torch.Generator | None = None, reduce: Any = "mean",
            sink: CaptureSink | None = None, halt_after_sites: bool = False,
            keep_rows: bool = True) -> Captured:
    """Run the evaluation set once (twice when an intervention needs calibration);
    pooled activations of ``sites``, labels and logits, all on ``device``.

    ``reduce`` (``sites.reduce``, or a :class:`SiteReduction`): ``mean`` pools; anything
    else keeps each site whole, (N, D) per site (see :class:`SiteReduction`).

    ``sink`` (the store's ``CaptureWriter``) receives each batch's new rows as soon as
    the batch is done: ``sink.append(site_name, rows)`` per site, then
    ``sink.append_outputs(labels, logits)``; the rows are also kept and returned, as
    without a sink. The caller commits or aborts it (an exception here leaves it open).

    ``halt_after_sites``: stop each forward pass as soon as every site has its output
    for the batch (the hook of the last site to fire raises :class:`_HaltForward`, which
    the batch loop catches), so the modules after the deepest site never run. The
    result then has no logits (``logits`` None: ``accuracy`` cannot be computed), and a
    site module that would run again after that point is not detected (it is without
    halting: its rows would not match the samples). The order the sites fired in the
    first batch is recorded in ``capture.last_fire_order`` (diagnostics, benchmarks).

    ``keep_rows=False`` (with a ``sink``): each batch's rows go to the sink and are then
    dropped, so memory holds one batch, not N rows; the result's ``acts`` is empty (the
    caller reads the sites back from the store, chunk by chunk)."""
    if not keep_rows and sink is None:
        raise ValueError("capture(keep_rows=False) needs a sink to hand the rows to")
    interventions = list(interventions)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    for _, intervention, _ in interventions:
        intervention.reset(generator)
    rows_hint, batches_hint = _size_hints(loader)
    reduction = SiteReduction.of(reduce)
    keep = None if reduction.pooled else _Keeper(reduction, rows_hint)
    store: dict[str, _Rows] = {
        site.name: (_Window() if not keep_rows else _Rows(rows_hint, batches_hint)
                    if keep is None else _KeptRows(keep, site, rows_hint, batches_hint))
        for site in sites}
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
            halt = _Halter(sites) if halt_after_sites else None
            handles.extend(add_pooling_hooks(model, sites, store, keep=keep, halt=halt))
            batches = loader
            if progress:
                from tqdm.auto import tqdm
                batches = tqdm(loader, desc=desc, leave=False, unit="batch")
            written = dict.fromkeys(store, 0)  # rows of each site handed to the sink
            with torch.no_grad():
                for x, y in batches:
                    if halt is None:
                        out = model(x.to(device, non_blocking=True))
                        full_logits = _first(out).float()
                        logits.append(full_logits)
                        batch_logits: torch.Tensor | None = full_logits
                    else:
                        halt.start()
                        try:
                            model(x.to(device, non_blocking=True))
                        except _HaltForward:
                            pass
                        batch_logits = None
                    batch_labels = y.to(device)
                    labels.append(batch_labels)
                    position[0] += len(x)
                    if sink is not None:
                        for name, parts in store.items():
                            if parts.buffer is not None and parts.rows > written[name]:
                                sink.append(name, parts.buffer[written[name]:parts.rows])
                                written[name] = parts.rows
                            if isinstance(parts, _Window):
                                parts.flush()
                                written[name] = 0
                        sink.append_outputs(batch_labels.long(), batch_logits)
            if halt is not None:
                global last_fire_order
                last_fire_order = list(halt.order)
    finally:
        model.train(was_training)
    if not labels:
        raise DataError("capture: the evaluation data yielded no batches (empty evaluation "
                        "set)")
    n = sum(len(y) for y in labels)
    acts = {}
    for site in sites:
        parts = store[site.name]
        if parts.total != n:
            raise SiteError(f"site {site.name!r} (module {site.module!r}) gave {parts.total} "
                            f"pooled rows for {n} samples: its module ran "
                            f"{'never' if not parts.calls else f'{parts.calls} times for {len(labels)} batches'}"
                            " (a site module must run exactly once per forward pass)")
        if keep_rows:
            acts[site.name] = parts.result()
    return Captured(acts=acts, labels=torch.cat(labels).long(),
                    logits=torch.cat(logits) if not halt_after_sites else None,
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


def nonfinite_warning(site: str, bad: int, total: int, on_nonfinite: str, where: str) -> str:
    """The warning for a site with ``bad`` non-finite values of ``total`` under
    ``eval.on_nonfinite: skip``; raises NonFiniteActivationError under ``error``."""
    message = (f"site {site!r} ({where}) has {bad} non-finite pooled values "
               f"of {total} (NaN/Inf activations: diverged or broken model)")
    if on_nonfinite == "error":
        raise NonFiniteActivationError(message + "; set eval.on_nonfinite: skip to leave "
                                       "such sites out")
    return message + "; left out of the tables"


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
        warnings.append(nonfinite_warning(site.name, bad, acts.numel(), on_nonfinite, where))
        del captured.acts[site.name]
    captured.sites = kept
    return warnings
