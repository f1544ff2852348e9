"""Built-in data source plugin: ``digits``, ``imagefolder`` and ``synthetic``."""

from __future__ import annotations

from mi_probe import data
from mi_probe.hookspecs import hookimpl
from mi_probe.interfaces import Register


@hookimpl
def mi_probe_register_datasets(register: Register) -> None:
    register("digits", data.DigitsSource, data.DigitsParams)
    register("imagefolder", data.ImageFolderSource, data.ImageFolderParams)
    register("synthetic", data.SyntheticSource, data.SyntheticParams)
