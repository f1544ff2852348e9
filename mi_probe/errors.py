"""Typed errors. Every user mistake is one of these, with a message that names what
was expected and what was found; the CLI prints the message (no traceback) and exits
with ``exit_code``."""

from __future__ import annotations


class MiProbeError(Exception):
    """Base class of every error mi-probe raises on purpose."""

    exit_code = 1


class SpecError(MiProbeError):
    """A spec file (or a ``--set`` override) is malformed or invalid.

    ``problems`` holds one located message per problem, e.g.
    ``specs/x.yaml:7: estimator.bins: must be > 1 (got -3)``.
    """

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        super().__init__(message if not self.problems else message + "\n" + "\n".join(
            "  " + p for p in self.problems))


class UnknownPluginError(SpecError):
    """A spec or the CLI names a plugin entry (estimator, dataset, ...) nobody registered."""


class PluginError(MiProbeError):
    """A plugin is broken: duplicate names, a hook that does not exist, a bad factory."""


class ModelError(MiProbeError):
    """A model cannot be built as asked (unknown architecture, unsupported option)."""


class UnknownModelError(ModelError):
    """The architecture name is not a timm model."""


class CheckpointError(ModelError):
    """A weights file is missing, unreadable, or for another architecture / class count."""


class SiteError(MiProbeError):
    """Sites cannot be resolved: no adapter claims the model, or patterns match nothing."""


class DataError(MiProbeError):
    """A data source is missing, empty, inconsistent or holds an unreadable file."""


class NonFiniteActivationError(MiProbeError):
    """A captured site holds NaN or Inf values."""


class EstimatorError(MiProbeError):
    """An estimator was given input it cannot handle (wrong shapes, unsupported reduce)."""


class RunError(MiProbeError):
    """A run directory cannot be created, resumed or read."""


class UnitsFailedError(RunError):
    """Units of a run failed on an executor after its retries; finished units are kept.
    ``failures`` maps each failed unit's name to why it failed."""

    def __init__(self, message: str, failures: dict[str, str]):
        self.failures = dict(failures)
        super().__init__(message + "\n" + "\n".join(
            f"  {unit}: {why}" for unit, why in sorted(self.failures.items())))


class DistributedError(MiProbeError):
    """The torchrun environment is inconsistent, or a model cannot be trained with it."""
