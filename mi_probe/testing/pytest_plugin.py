"""pytest plugin (entry point ``pytest11: mi_probe``): every spec file is a test.

``pytest specs/`` collects each spec (a YAML file under a ``specs`` folder, or with a
top-level ``experiment:`` key) as one item per stage: ``validate``, ``sites``,
``run-tiny`` and ``checks`` (see mi_probe/testing/stages.py). A failure names the spec
and the stage and shows mi-probe's located message, not a traceback; a stage after a
failed one is skipped.

Options: ``--mi-probe-profile`` (default ``tiny``), ``--mi-probe-stages``,
``--mi-probe-claims-as-warnings`` (failed claims become warnings: tiny models need not
show the paper's effects). Trained tiny models are shared by every spec of a session.
Imports of torch and the engine happen only when a spec item runs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

STAGE_NAMES = ("validate", "sites", "run-tiny", "checks")


def pytest_addoption(parser):
    group = parser.getgroup("mi-probe", "mi-probe spec files")
    group.addoption("--mi-probe-profile", default="tiny", choices=["tiny"],
                    help="run profile applied to every collected spec (default: tiny)")
    group.addoption("--mi-probe-stages", default=",".join(STAGE_NAMES),
                    help="comma-separated stages to collect per spec")
    group.addoption("--mi-probe-claims-as-warnings", action="store_true",
                    help="failed claims warn instead of failing")
    group.addoption("--mi-probe-no-specs", action="store_true",
                    help="do not collect YAML spec files")


class ClaimWarning(UserWarning):
    """A spec's claim failed on the tiny profile (with --mi-probe-claims-as-warnings)."""


def pytest_collect_file(file_path: Path, parent):
    if parent.config.getoption("--mi-probe-no-specs"):
        return None
    from mi_probe.testing.stages import looks_like_spec

    if looks_like_spec(Path(file_path)):
        return SpecFile.from_parent(parent, path=file_path)
    return None


class SpecFile(pytest.File):
    def collect(self):
        from mi_probe.testing.stages import SpecState

        self.state = SpecState(Path(self.path))
        stages = [s.strip() for s in self.config.getoption("--mi-probe-stages").split(",")
                  if s.strip()]
        for stage in stages:
            yield SpecItem.from_parent(self, name=stage, stage=stage)


def _session_dirs(config) -> tuple[Path, Path]:
    cached = getattr(config, "_mi_probe_dirs", None)
    if cached is None:
        base = config._tmp_path_factory.mktemp("mi_probe_specs")
        cached = (base, base / ".cache")
        config._mi_probe_dirs = cached
    return cached


def _plugin_manager(config):
    pm = getattr(config, "_mi_probe_pm", None)
    if pm is None:
        from mi_probe._core.plugins import get_plugin_manager

        pm = get_plugin_manager()
        config._mi_probe_pm = pm
    return pm


class SpecItem(pytest.Item):
    def __init__(self, *, stage: str, **kwargs):
        super().__init__(**kwargs)
        self.stage = stage

    def runtest(self):
        from mi_probe.errors import MiProbeError
        from mi_probe.testing.stages import StageFailure, run_stage

        state = self.parent.state
        if state.failed is not None:
            pytest.skip(f"stage {state.failed!r} of this spec failed")
        workdir, cache = _session_dirs(self.config)
        try:
            run_stage(self.stage, state, _plugin_manager(self.config),
                      self.config.getoption("--mi-probe-profile"), workdir, cache)
        except StageFailure as exc:
            if self.stage == "checks" and self.config.getoption("--mi-probe-claims-as-warnings"):
                warnings.warn(ClaimWarning(f"{self.path}: {exc}"))
                return
            raise
        except MiProbeError as exc:  # pragma: no cover - run_stage converts these
            raise StageFailure(str(exc)) from None

    def repr_failure(self, excinfo, style=None):
        from mi_probe.testing.stages import StageFailure

        if isinstance(excinfo.value, StageFailure):
            return f"{self.path} [{self.stage}]\n{excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.path.name}::{self.stage}"
