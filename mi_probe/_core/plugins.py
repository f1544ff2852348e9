"""The plugin manager factory and the registry of everything plugins registered.

Built-in plugins are registered first, then modules named in ``MI_PROBE_PLUGINS``
(comma-separated importable modules, like pytest's ``PYTEST_PLUGINS``) or passed as
``extra_plugins``, then setuptools entry points of group ``mi_probe`` unless
``MI_PROBE_DISABLE_PLUGIN_AUTOLOAD=1``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import types
from functools import cached_property
from typing import Any, Iterable, cast

import pluggy
from pydantic import BaseModel

from mi_probe import hookspecs
from mi_probe.errors import PluginError, UnknownPluginError
from mi_probe.interfaces import Entry

ENTRY_POINT_GROUP = "mi_probe"

#: The kinds of things plugins register, each with its ``mi_probe_register_<kind>`` hook.
KINDS = ("estimators", "adapters", "datasets", "experiments", "metrics", "interventions",
         "regularizers", "reports", "executors", "trackers")

#: Built-in plugin modules, registered before anything else: one per registered entry,
#: ``mi_probe.builtin.<kind>.<name>`` (the layout rule of :mod:`mi_probe.builtin`).
BUILTIN_PLUGINS = (
    "mi_probe.builtin.estimators.histogram",
    "mi_probe.builtin.adapters.vgg",
    "mi_probe.builtin.adapters.resnet",
    # before generic: both resolve trylast, and pluggy asks the later-registered first
    "mi_probe.builtin.adapters.blocks",
    "mi_probe.builtin.adapters.generic",
    "mi_probe.builtin.datasets.digits",
    "mi_probe.builtin.datasets.imagefolder",
    "mi_probe.builtin.datasets.imagenette",
    "mi_probe.builtin.datasets.synthetic",
    "mi_probe.builtin.experiments.layer_mi",
    "mi_probe.builtin.experiments.concentration",
    "mi_probe.builtin.experiments.knockout",
    "mi_probe.builtin.experiments.shuffle",
    "mi_probe.builtin.experiments.perturb",
    "mi_probe.builtin.experiments.semantic_knockout",
    "mi_probe.builtin.experiments.layer_pairs",
    "mi_probe.builtin.experiments.estimator_sweep",
    "mi_probe.builtin.experiments.transplant",
    "mi_probe.builtin.experiments.cover",
    "mi_probe.builtin.experiments.skip_gain",
    "mi_probe.builtin.experiments.hsic_compare",
    "mi_probe.builtin.experiments.dynamics",
    "mi_probe.builtin.experiments.unpooled_mi",
    "mi_probe.builtin.metrics.gini",
    "mi_probe.builtin.metrics.norm_entropy",
    "mi_probe.builtin.metrics.top_k_share",
    "mi_probe.builtin.interventions.knockout",
    "mi_probe.builtin.interventions.energy",
    "mi_probe.builtin.interventions.shuffle",
    "mi_probe.builtin.interventions.perturb",
    "mi_probe.builtin.regularizers.hsic",
    "mi_probe.builtin.regularizers.nhsic",
    "mi_probe.builtin.executors.local",
    "mi_probe.builtin.executors.ray",
    "mi_probe.builtin.trackers.tensorboard",
    "mi_probe.builtin.trackers.mlflow",
)


class Registry:
    """Named entries per kind, with the plugin that registered each."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, name: str, factory: Any, params_model: Any, plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind[:-1]} with name {name!r}; "
                              "expected a non-empty string")
        if not callable(factory):
            raise PluginError(f"plugin {plugin!r} registered {kind[:-1]} {name!r} with a "
                              f"factory that is not callable: {factory!r}")
        if not (isinstance(params_model, type) and issubclass(params_model, BaseModel)):
            raise PluginError(f"plugin {plugin!r} registered {kind[:-1]} {name!r} with params "
                              f"{params_model!r}; expected a pydantic BaseModel subclass")
        kind_field = params_model.model_fields.get("kind")
        if kind_field is None or kind_field.default != name:
            raise PluginError(f"plugin {plugin!r}: params model {params_model.__name__} of "
                              f"{kind[:-1]} {name!r} must declare kind: Literal[{name!r}] = "
                              f"{name!r}; found {kind_field and kind_field.default!r}")
        existing = self._entries[kind].get(name)
        if existing is not None:
            raise PluginError(f"{kind[:-1]} {name!r} is registered twice: by plugin "
                              f"{existing.plugin!r} and by plugin {plugin!r}")
        self._entries[kind][name] = Entry(kind, name, factory, params_model, plugin)

    def entries(self, kind: str) -> dict[str, Entry]:
        return dict(self._entries[kind])

    def get(self, kind: str, name: str) -> Entry:
        entries = self._entries[kind]
        if name not in entries:
            raise UnknownPluginError(unknown_name_message(kind[:-1], name, entries))
        return entries[name]

    def build(self, kind: str, params: BaseModel) -> Any:
        """Instantiate the entry named by ``params.kind`` from validated params."""
        # every plugin's params model has a ``kind`` field: the entry's name
        return self.get(kind, cast(Any, params).kind).factory(params)

    def validate_params(self, kind: str, params: Any) -> Any:
        """Params of an entry built at run time (an intervention an experiment applies,
        a regulariser it trains with), validated by the entry's model; a params object
        passes as it is. SpecError lists the problems, like a spec's."""
        from pydantic import ValidationError

        from mi_probe.errors import SpecError

        if isinstance(params, BaseModel):
            return params
        if not isinstance(params, dict) or "kind" not in params:
            raise SpecError(f"{kind[:-1]} parameters must be a mapping with 'kind'; got {params!r}")
        entry = self.get(kind, params["kind"])
        try:
            return entry.params_model(**params)
        except ValidationError as exc:
            problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
                        for e in exc.errors()]
            raise SpecError(f"invalid parameters for {kind[:-1]} {params['kind']!r}",
                            problems) from None


def unknown_name_message(what: str, name: str, choices: Iterable[str]) -> str:
    choices = sorted(choices)
    msg = f"unknown {what} {name!r}; valid: {', '.join(choices) if choices else '(none registered)'}"
    close = difflib.get_close_matches(str(name), choices, n=1)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return msg


class MiProbePluginManager(pluggy.PluginManager):
    """A pluggy manager with the mi-probe registry built lazily from the register hooks.

    It remembers how it was built (``extra_modules``, ``autoload``), so a worker process
    on another machine can build the same one (see :meth:`recipe`)."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self.extra_modules: list[str] = []
        self.unshippable: list[str] = []
        self.autoload = False

    def recipe(self) -> dict[str, Any]:
        """Arguments of :func:`get_plugin_manager` that rebuild this manager elsewhere."""
        if self.unshippable:
            raise PluginError(f"plugin(s) {', '.join(self.unshippable)} were registered as "
                              "objects, not importable modules, so worker processes cannot "
                              "load them; pass them by module name (-p MODULE or "
                              "MI_PROBE_PLUGINS)")
        return {"extra_plugins": list(self.extra_modules), "autoload": self.autoload}

    @cached_property
    def registry(self) -> Registry:
        registry = Registry()
        for kind in KINDS:
            hook = getattr(self.hook, f"mi_probe_register_{kind}")
            # Call each implementation on its own, so every entry knows its plugin.
            for impl in hook.get_hookimpls():  # registration order
                def register(name, factory, params_model, _plugin=impl.plugin_name, _kind=kind):
                    registry.add(_kind, name, factory, params_model, _plugin)
                impl.function(register=register)
        return registry

    def plugin_versions(self) -> dict[str, str | None]:
        """Plugin name -> distribution version (None for modules outside a distribution)."""
        dists = {name: dist for name, dist in self.list_name_plugin()}
        versions: dict[str, str | None] = {}
        by_plugin = {id(p): d for p, d in self.list_plugin_distinfo()}
        for name, plugin in dists.items():
            dist = by_plugin.get(id(plugin))
            versions[name] = dist.version if dist is not None else None
        return versions

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        """Register ``plugin`` as pluggy does, except that registering the same object
        again (e.g. a module passed with ``-p MODULE`` that its setuptools entry point
        loads once more) keeps the first registration and returns its name, and a name
        already taken by another object is a :class:`PluginError` naming both."""
        if plugin is None:
            return super().register(plugin, name)
        plugin_name = name or self.get_canonical_name(plugin)
        if self.is_blocked(plugin_name):
            return None
        if self.is_registered(plugin):
            return self.get_name(plugin)
        taken = self.get_plugin(plugin_name)
        if taken is not None:
            raise PluginError(f"two different plugins are named {plugin_name!r}: "
                              f"{_describe(taken)} (registered first) and {_describe(plugin)}; "
                              "register only one of them under that name")
        return super().register(plugin, name)

    def check_pending(self) -> None:  # noqa: D102 - documented on pluggy
        try:
            super().check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {exc.plugin!r} implements a hook that mi-probe does "
                              f"not define: {exc}") from None


def _describe(plugin: Any) -> str:
    """A plugin object for messages: a module by its name and file, else its repr."""
    if isinstance(plugin, types.ModuleType):
        where = getattr(plugin, "__file__", None)
        return f"module {plugin.__name__}" + (f" ({where})" if where else "")
    return repr(plugin)


def _import_plugin(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import plugin module {module_name!r} "
                          f"(from MI_PROBE_PLUGINS or --plugin): {exc}") from None


def _check_blockable(name: str) -> None:
    """``no:NAME`` must name a built-in module or an installed plugin: a name that blocks
    nothing (e.g. ``no:knockout`` from before built-ins had one module per entry) is an
    error, not a silent no-op."""
    import importlib.metadata as md
    import importlib.util

    if name in BUILTIN_PLUGINS:
        return
    entry_points = {ep.name for ep in md.entry_points(group=ENTRY_POINT_GROUP)}
    if name in entry_points:
        return
    try:
        if importlib.util.find_spec(name) is not None:
            return  # an importable module given as a plugin elsewhere
    except (ImportError, ValueError):
        pass
    short = [b[len("mi_probe.builtin."):] for b in BUILTIN_PLUGINS]
    same_entry = [s for s in short if s.rsplit(".", 1)[-1] == name]
    close = same_entry or difflib.get_close_matches(name, short + sorted(entry_points), n=3)
    hint = f"; did you mean {', '.join('no:' + c for c in close)}?" if close else ""
    raise PluginError(f"-p no:{name} blocks nothing: no built-in plugin module "
                      f"(mi_probe.builtin.<kind>.<name>) or installed plugin is named "
                      f"{name!r}{hint}")


def get_plugin_manager(extra_plugins: Iterable[Any] = (), *, autoload: bool | None = None
                       ) -> MiProbePluginManager:
    """Build a fresh plugin manager: built-ins, then extra plugins, then entry points.

    ``extra_plugins`` may hold modules/objects or importable module names, and
    ``"no:NAME"`` entries (as pytest's ``-p no:NAME``) that block the plugin NAME: a
    built-in module (``mi_probe.builtin.experiments.knockout``, or just the part after
    ``mi_probe.builtin.``, ``experiments.knockout``) or an entry point's name, so that
    another plugin can register its entries instead. A module given here that an entry
    point loads again is registered once (under the name given here).
    ``autoload=None`` reads ``MI_PROBE_DISABLE_PLUGIN_AUTOLOAD``.
    """
    pm = MiProbePluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    extras = list(extra_plugins)
    env_plugins = os.environ.get("MI_PROBE_PLUGINS", "")
    extras += [m.strip() for m in env_plugins.split(",") if m.strip()]
    blocked = [p[3:] for p in extras if isinstance(p, str) and p.startswith("no:")]
    extras = [p for p in extras if not (isinstance(p, str) and p.startswith("no:"))]
    for name in blocked:
        full = f"mi_probe.builtin.{name}" if f"mi_probe.builtin.{name}" in BUILTIN_PLUGINS \
            else name
        _check_blockable(full)
        pm.set_blocked(full)
        pm.extra_modules.append(f"no:{name}")  # workers block it too
    for name in BUILTIN_PLUGINS:
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(name), name=name)
    for plugin in extras:
        if isinstance(plugin, str):
            if pm.get_plugin(plugin) is not None:
                continue
            pm.register(_import_plugin(plugin), name=plugin)
            pm.extra_modules.append(plugin)
        else:
            pm.register(plugin)
            module_name = getattr(plugin, "__name__", None)
            if isinstance(plugin, types.ModuleType) and module_name:
                pm.extra_modules.append(module_name)
            else:
                pm.unshippable.append(repr(plugin))
    if autoload is None:
        autoload = os.environ.get("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")
    pm.autoload = autoload
    if autoload:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm
