"""What kind of model a spec's ``model.arch`` names, without importing torch (the spec
validates it; ``models`` builds it)."""

from __future__ import annotations

import re

#: ``model.arch`` of a model handed to ``mi_probe.run(model=...)``: ``python:<name>``
PYTHON_PREFIX = "python:"
#: ``model.arch`` naming a factory in the user's code: ``package.module:function``
FACTORY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:"
                             r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def is_custom_arch(arch: str) -> bool:
    """``arch`` names the user's own model (not a timm name): ``python:<name>`` or
    ``package.module:function``."""
    return arch.startswith(PYTHON_PREFIX) or FACTORY_PATTERN.fullmatch(arch) is not None
