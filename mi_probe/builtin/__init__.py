"""The built-in plugins. One file per registered entry: the entry NAME of kind KIND
lives in ``mi_probe/builtin/<KIND>/<NAME>.py`` (``experiments/shuffle.py`` registers the
experiment ``shuffle``), and that module is the pluggy plugin that registers it (its
own ``mi_probe_register_<KIND>`` hook implementation; it is named
``mi_probe.builtin.<KIND>.<NAME>`` and can be blocked with ``-p no:<KIND>.<NAME>``).
Machinery shared by several entries lives in the module of the main entry or in a
private ``_name.py`` module of the same folder, which is not a plugin. Every module in
this package is listed in :data:`mi_probe._core.plugins.BUILTIN_PLUGINS`."""
