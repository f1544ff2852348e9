"""Validate once: one pipeline from a spec to a :class:`Validated` run plan.

Text becomes a spec in :mod:`~mi_probe._core.spec` (pydantic: fields, plugin params,
located errors); this module takes the validated spec the rest of the way, building the
estimator, the experiment and the regularisers once and refusing, before any data,
model weights or training:

* what the spec alone rules out: the experiment's own ``check_spec``
  (``interfaces.ChecksSpec``) and a channel mass its estimator cannot give;
* what the file system rules out, from paths alone (no decoding): a weights file that
  is not there, and a data location its source refuses (``interfaces.ChecksSource``,
  e.g. an image folder ``data.root`` that is a file or lacks ``train/``);
* what the model's structure rules out (:mod:`~mi_probe._core.preflight`, on the meta
  device): the architecture, the input size, the site selection, every regulariser's
  sites, the claims' tables and columns.

``mi-probe validate``, ``mi-probe run``, :func:`mi_probe.run`, ``mi-probe check`` and
the spec collector all go through :func:`validate`; the engine takes the objects it
built instead of building them again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mi_probe._core.analysis import ChannelMassParams
from mi_probe.errors import CheckpointError
from mi_probe.interfaces import ChecksSource, ChecksSpec


@dataclass(frozen=True)
class Validated:
    """A spec that passed every refusal, with the plugins it names built once."""

    spec: Any
    estimator: Any
    experiment: Any
    regularizers: tuple[Any, ...]


def validate(spec: Any, pm: Any, structural: bool = True) -> Validated:
    """Build the spec's estimator, experiment and regularisers once and run every check
    that needs no data and no weights (``structural``: also those on the model's
    structure, about a second on the meta device)."""
    from mi_probe._core.preflight import preflight

    registry = pm.registry
    estimator = registry.build("estimators", spec.estimator)
    experiment = registry.build("experiments", spec.experiment)
    regularizers = tuple(registry.build("regularizers", p) for p in spec.model.train.regularizers)
    if isinstance(getattr(experiment, "params", None), ChannelMassParams):
        experiment.params.check_mass(estimator)
    if isinstance(experiment, ChecksSpec):
        experiment.check_spec(spec, estimator)
    check_weight_files(spec.model)
    source = registry.build("datasets", spec.data)
    if isinstance(source, ChecksSource):
        source.check_source()
    if structural:
        preflight(spec, pm, experiment)
    return Validated(spec, estimator, experiment, regularizers)


def check_weight_files(model: Any) -> None:
    """Refuse ``model.weights`` or ``model.pretrained_file`` naming a file that is not
    there: found now, not after the data is loaded (or, for a tag, after a download)."""
    files = [("model.weights", model.weights)] if model.weights.endswith(".safetensors") else []
    if model.pretrained_file is not None:
        files.append(("model.pretrained_file", model.pretrained_file))
    for field_name, value in files:
        path = Path(value).expanduser()
        if path.is_file():
            continue
        where = "" if path.is_absolute() else f" (relative to the working folder {Path.cwd()})"
        found = "is a folder" if path.is_dir() else "does not exist"
        raise CheckpointError(f"{field_name}: weights file {path}{where} {found}; expected a "
                              ".safetensors file")


def load_validated(path: str | Path, overrides: Sequence[str] = (), pm: Any = None,
                   profile: str | None = None, structural: bool = True) -> Validated:
    """``load_spec`` then :func:`validate`: a spec file to a validated run plan."""
    from mi_probe._core.plugins import get_plugin_manager
    from mi_probe._core.spec import load_spec

    pm = pm or get_plugin_manager()
    return validate(load_spec(path, list(overrides), pm, profile=profile), pm, structural)
