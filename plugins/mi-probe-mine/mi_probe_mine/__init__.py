"""mi-probe-mine: neural MI lower bounds (MINE, InfoNCE) as mi-probe estimator plugins.

The plugin module is :mod:`mi_probe_mine.plugin` (entry point ``mine`` of group
``mi_probe``); the critics, bounds and training loop live in :mod:`mi_probe_mine.neural`.
"""

__version__ = "0.1.0"
