"""What importing a plugin loads: ``mi-probe plugins`` and ``schema`` import every
installed plugin, so a plugin that imports torch at module level makes them slow."""

from __future__ import annotations

import json
import subprocess
import sys


def modules_loaded_by_registering(module: str, hook: str) -> set[str]:
    """The top-level modules loaded, in a fresh interpreter, by importing ``module`` and
    calling its registration ``hook`` with a register that keeps nothing."""
    code = (f"import json, sys, importlib; m = importlib.import_module({module!r}); "
            f"getattr(m, {hook!r})(lambda *a, **k: None); "
            "print(json.dumps(sorted({n.partition('.')[0] for n in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))
