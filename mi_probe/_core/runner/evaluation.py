"""Forward passes over the evaluation set, with interventions at sites.

An intervention at a single site whose adapter offers a suffix (``HasSuffix``) starts
from that site's full output instead of the input: the network is run once to the site,
then only the rest of it per intervention (the knockout sweeps' hot path). The site's
output comes from the activation store when the engine has one (written by one forward
pass for every site a sweep names, read by later runs), else from a forward pass kept
in memory under ``eval.site_cache_mb``.

:meth:`Evaluator.evaluate_points` is the sweeps' path: many interventions at one site,
each scored on its own rows, several stacked into one suffix pass (``eval.sweep_pass_rows``),
optionally stopped early by a paired sequential rule.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch import nn

from mi_probe._core import capture as capture_mod
from mi_probe._core.data import make_loader
from torch.utils.data import Dataset

from mi_probe.interfaces import (Adapter, Captured, HasSuffix, Intervention, PointResult, Site,
                                 SweepPoint)
from mi_probe._core.sites import get_module, site_output

if TYPE_CHECKING:
    from mi_probe._core.spec import SpecBase
    from mi_probe._core.store import StoredRows
    from mi_probe.functional.sequential import SequentialRule


class SiteOutputs:
    """A site's full evaluation-set output (N, ...) and the labels, read by rows: held
    in memory, or read from the activation store chunk by chunk (memory bounded by the
    rows asked for, not by N)."""

    def __init__(self, labels: torch.Tensor, device: torch.device,
                 tensor: torch.Tensor | None = None, stored: StoredRows | None = None):
        assert (tensor is None) != (stored is None)
        self.labels = labels
        self.device = device
        self.tensor = tensor
        self.stored = stored
        self.n = int(labels.numel())
        self._last: tuple[int, torch.Tensor] | None = None  # the chunk read last

    def _chunk(self, number: int) -> torch.Tensor:
        if self._last is None or self._last[0] != number:
            assert self.stored is not None
            chunk = self.stored.chunk_rows
            self._last = (number, self.stored.rows(number * chunk,
                                                   min((number + 1) * chunk, self.n)))
        return self._last[1]

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` (any order) on the device."""
        if self.tensor is not None:
            return self.tensor.index_select(0, index.to(self.tensor.device))
        assert self.stored is not None
        rows = index.cpu().long()
        chunk = self.stored.chunk_rows
        order = torch.argsort(rows)
        ordered = rows[order]
        parts, start = [], 0
        while start < ordered.numel():  # one read per stored chunk the rows touch
            first = int(ordered[start]) // chunk
            end = int(torch.searchsorted(ordered, (first + 1) * chunk))
            block = self._chunk(first)
            parts.append(block.index_select(0, ordered[start:end] - first * chunk))
            start = end
        out = torch.empty((rows.numel(), *parts[0].shape[1:]), dtype=parts[0].dtype) \
            if parts else torch.empty((0, *self.stored.shape[1:]))
        if parts:
            out[order] = torch.cat(parts)
        return out.to(self.device)


def row_wise(intervention: Intervention) -> bool:
    """Whether an intervention changes each image's output from that image alone, with
    no randomness and no calibration (knockouts): then any subset and any stacking of
    images gives each image the same result, and a sweep may score only the rows it needs
    and stack several interventions into one pass."""
    return bool(getattr(intervention, "row_wise", False)) and not intervention.needs_calibration


def model_fingerprint(model: nn.Module) -> tuple:
    """Changes when any parameter or buffer is modified in place or a hook is added, so
    cached site outputs are never reused for a changed model."""
    versions = tuple(t._version for t in model.parameters()) + tuple(
        t._version for t in model.buffers())
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return versions + (hooks,)


class _TooBig(Exception):
    """A site's full evaluation-set output exceeds eval.site_cache_mb."""


class Evaluator:
    """Evaluates models on a run's evaluation set. It gets what it needs as arguments:
    the spec (evaluation settings), the device, the evaluation set, a loader factory
    over it and the site adapter (for a site's suffix)."""

    def __init__(self, spec: SpecBase, device: torch.device, eval_set: Dataset,
                 loader: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                 adapter: Callable[[nn.Module], Adapter],
                 stored_outputs: Callable[[nn.Module, Site, Sequence[Site]],
                                          SiteOutputs | None] | None = None) -> None:
        """``stored_outputs(model, site, sites)``: the site's full output from the
        activation store (written for ``sites`` at once on a miss), or None when there
        is no store (the engine's)."""
        self.spec = spec
        self.device = device
        self.eval_set = eval_set
        self.loader = loader
        self.adapter = adapter
        self.stored_outputs = stored_outputs
        self._site_cache: dict[tuple[int, str], Any] = {}

    def clear(self) -> None:
        self._site_cache.clear()

    def evaluate(self, model: nn.Module,
                 interventions: Iterable[tuple[Site, Intervention, torch.Tensor]] = (),
                 subset: torch.Tensor | None = None, sites: Sequence[Site] = (),
                 generator: torch.Generator | None = None) -> Captured:
        interventions = list(interventions)
        targets = {site.name for site, _, _ in interventions}
        if len(targets) == 1 and not sites:
            site = interventions[0][0]
            fast = self._suffix_evaluate(model, site, interventions, subset, generator)
            if fast is not None:
                return fast
        data = self.eval_set if subset is None else torch.utils.data.Subset(
            self.eval_set, [int(i) for i in subset])
        loader = make_loader(data, self.spec.eval.batch_size, shuffle=False,
                             num_workers=self.spec.model.train.num_workers,
                             pin_memory=self.device.type == "cuda")
        cap = capture_mod.capture(model, list(sites), loader, self.device, interventions,
                                  generator=generator)
        if sites and self.spec.eval.on_nonfinite == "error":
            # activations an experiment will estimate on: refuse NaN/Inf naming the site
            # (with `skip` the estimator's own error still refuses them)
            where = "evaluation" + (" with interventions" if interventions else "")
            capture_mod.check_finite(cap, "error", where)
        return cap

    def site_outputs(self, model: nn.Module, site: Site
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The full (unpooled) evaluation-set output of ``site`` and the labels, cached per
        model; None when it would exceed ``eval.site_cache_mb``."""
        key = (id(model), site.name)
        fingerprint = model_fingerprint(model)
        entry = self._site_cache.get(key)
        if entry is not None and entry[0]() is model and entry[1] == fingerprint:
            return entry[2]
        budget = self.spec.eval.site_cache_mb * 2**20
        parts: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        n_total = len(self.eval_set)  # type: ignore[arg-type]  # map-style datasets are Sized

        def hook(_m, _inp, out):
            out = site_output(out, site.index)
            if out[0].numel() * out.element_size() * n_total > budget:
                raise _TooBig
            parts.append(out.detach().clone())

        handles = [get_module(model, site.module).register_forward_hook(hook)]
        try:
            with capture_mod.removing(handles), torch.no_grad():
                for x, y in self.loader():
                    model(x.to(self.device, non_blocking=True))
                    labels.append(y.to(self.device))
            result = (torch.cat(parts), torch.cat(labels).long())
        except _TooBig:
            result = None
        self._site_cache[key] = (weakref.ref(model), fingerprint, result)
        return result

    def site_source(self, model: nn.Module, site: Site, sites: Sequence[Site] = ()
                    ) -> SiteOutputs | None:
        """The full evaluation-set output of ``site``: from the activation store (on a
        miss, one forward pass writes every site of ``sites`` and ``site``), else held
        in memory under ``eval.site_cache_mb``; None when neither can hold it (0 turns
        both off: interventions then re-run the whole network)."""
        if self.spec.eval.site_cache_mb == 0:
            return None
        if self.stored_outputs is not None:
            stored = self.stored_outputs(model, site, sites)
            if stored is not None:
                return stored
        cached = self.site_outputs(model, site)
        if cached is None:
            return None
        return SiteOutputs(cached[1], self.device, tensor=cached[0])

    def suffix_of(self, model: nn.Module, site: Site) -> Callable[[torch.Tensor], torch.Tensor] | None:
        adapter = self.adapter(model)
        return adapter.suffix(model, site) if isinstance(adapter, HasSuffix) else None

    def _suffix_evaluate(self, model, site, interventions, subset, generator
                         ) -> Captured | None:
        suffix = self.suffix_of(model, site)
        if suffix is None:
            return None
        source = self.site_source(model, site)
        if source is None:
            return None
        index = (torch.arange(source.n) if subset is None
                 else torch.as_tensor(subset, dtype=torch.long).cpu())
        labels = source.labels.index_select(0, index.to(source.labels.device))
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        batch = self.spec.eval.batch_size
        for _, iv, _ in interventions:
            iv.reset(generator)
        was_training = model.training
        model.eval()
        logits = []
        try:
            with torch.no_grad():
                for _, iv, channels in interventions:
                    if iv.needs_calibration:
                        for start in range(0, index.numel(), batch):
                            x = source.gather(index[start:start + batch])
                            iv.calibrate(x, site, channels.to(x.device), start)
                for start in range(0, index.numel(), batch):
                    x = source.gather(index[start:start + batch])
                    for _, iv, channels in interventions:
                        x = iv(x, site, channels.to(x.device), start)
                    logits.append(suffix(x).float())
        finally:
            model.train(was_training)
        return Captured(acts={}, labels=labels, logits=torch.cat(logits), sites=[])

    def evaluate_points(self, model: nn.Module, site: Site, points: Sequence[SweepPoint], *,
                        sites: Sequence[Site] = (), correct_before: torch.Tensor | None = None,
                        rule: Callable[[int], SequentialRule] | None = None,
                        order: Callable[[torch.Tensor], torch.Tensor] | None = None
                        ) -> list[PointResult]:
        """Score every point at ``site`` (the sweeps' path). Points whose intervention
        is :func:`row_wise` are evaluated from the site's output through the suffix only,
        on their own score rows, several stacked into one pass
        (``eval.sweep_pass_rows``); other points (and every point when the site has
        no suffix or no output source) run one :meth:`evaluate` each, on the whole set,
        as before.

        With ``rule`` (called with a point's number of score rows) and
        ``correct_before`` (the unmodified model's correctness per row), each batched
        point's rows are visited in the order ``order(rows)`` gives and the point stops
        once ``rule(...).done`` says so; its result carries the paired interval."""
        results: list[PointResult | None] = [None] * len(points)
        suffix = self.suffix_of(model, site)
        source = (self.site_source(model, site, sites)
                  if suffix is not None and any(row_wise(p.intervention) for p in points)
                  else None)
        batched = [i for i, p in enumerate(points) if source is not None
                   and row_wise(p.intervention)]
        for i, point in enumerate(points):
            if i in batched:
                continue
            gen = point.generator
            result = self.evaluate(model, [(site, point.intervention, point.channels)],
                                   generator=gen)
            correct = result.logits.argmax(1) == result.labels  # type: ignore[union-attr]
            rows = (torch.arange(correct.numel()) if point.score is None
                    else point.score.cpu().long())
            results[i] = PointResult(rows=rows, correct=correct.cpu()[rows])
        if batched:
            assert source is not None and suffix is not None
            self._stacked(model, site, suffix, source, points, batched, results,
                          correct_before, rule, order)
        return [r for r in results if r is not None]

    def _masks_per_pass(self, batch: int) -> int:
        """How many interventions one suffix pass stacks: ``eval.sweep_pass_rows``
        rows' worth of batches (at least one)."""
        return max(1, self.spec.eval.sweep_pass_rows // max(1, batch))

    def _stacked(self, model, site, suffix, source, points, batched, results,
                 correct_before, rule, order) -> None:
        batch = self.spec.eval.batch_size
        stack = self._masks_per_pass(batch)
        # points sharing their score rows share the passes over those rows
        groups: dict[tuple, list[int]] = {}
        for i in batched:
            score = points[i].score
            key = ("all",) if score is None else tuple(score.cpu().tolist())
            groups.setdefault(key, []).append(i)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for members in groups.values():
                    score = points[members[0]].score
                    rows = (torch.arange(source.n) if score is None
                            else score.cpu().long())
                    if rule is not None and order is not None:
                        rows = order(rows)
                    stop = rule(int(rows.numel())) if rule is not None else None
                    seen: dict[int, list[torch.Tensor]] = {i: [] for i in members}
                    active = list(members)
                    for start in range(0, rows.numel(), batch):
                        if not active:
                            break
                        index = rows[start:start + batch]
                        x = source.gather(index)
                        for first in range(0, len(active), stack):
                            group = active[first:first + stack]
                            inputs = torch.cat([
                                points[i].intervention(x, site, points[i].channels.to(x.device),
                                                       start) for i in group])
                            predicted = suffix(inputs).float().argmax(1).cpu()
                            labels = source.labels.index_select(
                                0, index.to(source.labels.device)).cpu()
                            for k, i in enumerate(group):
                                part = predicted[k * index.numel():(k + 1) * index.numel()]
                                seen[i].append(part == labels)
                        if stop is not None and correct_before is not None:
                            end = min(start + batch, rows.numel())
                            before = correct_before.cpu()[rows[:end]]
                            active = [i for i in active
                                      if not stop.done(before, torch.cat(seen[i]))]
                    for i in members:
                        correct = torch.cat(seen[i]) if seen[i] else torch.zeros(0, dtype=torch.bool)
                        used = rows[:correct.numel()]
                        interval = None
                        if stop is not None and correct_before is not None:
                            interval = stop.interval(correct_before.cpu()[used], correct)
                        results[i] = PointResult(rows=used, correct=correct, interval=interval,
                                                 stopped_early=correct.numel() < rows.numel())
        finally:
            model.train(was_training)
