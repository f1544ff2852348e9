"""Forward passes over the evaluation set, with interventions at sites.

An intervention at a single site whose adapter offers a suffix (``HasSuffix``) starts
from that site's cached full output instead of the input: the network is run once to
the site, then only the rest of it per intervention (the knockout sweeps' hot path).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch import nn

from mi_probe._core import capture as capture_mod
from mi_probe._core.data import make_loader
from torch.utils.data import Dataset

from mi_probe.interfaces import Adapter, Captured, HasSuffix, Intervention, Site
from mi_probe._core.sites import get_module, site_output

if TYPE_CHECKING:
    from mi_probe._core.spec import SpecBase


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
                 adapter: Callable[[nn.Module], Adapter]) -> None:
        self.spec = spec
        self.device = device
        self.eval_set = eval_set
        self.loader = loader
        self.adapter = adapter
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

    def _suffix_evaluate(self, model, site, interventions, subset, generator
                         ) -> Captured | None:
        adapter = self.adapter(model)
        suffix = adapter.suffix(model, site) if isinstance(adapter, HasSuffix) else None
        if suffix is None or self.spec.eval.site_cache_mb == 0:
            return None
        cached = self.site_outputs(model, site)
        if cached is None:
            return None
        outputs, labels = cached
        if subset is not None:
            index = torch.as_tensor(subset, device=outputs.device, dtype=torch.long)
            outputs, labels = outputs.index_select(0, index), labels.index_select(0, index)
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
                        ch = channels.to(outputs.device)
                        for start in range(0, outputs.shape[0], batch):
                            iv.calibrate(outputs[start:start + batch], site, ch, start)
                for start in range(0, outputs.shape[0], batch):
                    x = outputs[start:start + batch]
                    for _, iv, channels in interventions:
                        x = iv(x, site, channels.to(x.device), start)
                    logits.append(suffix(x).float())
        finally:
            model.train(was_training)
        return Captured(acts={}, labels=labels, logits=torch.cat(logits), sites=[])
