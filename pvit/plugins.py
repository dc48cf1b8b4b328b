"""Plugin loading: entry points of group ``pvit``, hook checks, run-time registration and what is known of each plugin.

The components the plugins register are looked up and built in [pvit.registry][]; its names (``build``,
``components``, ``get_component``, ``check_options``, ...) stay importable from here.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from pvit import hookspecs
from pvit.errors import PluginError, did_you_mean

# The registry's names, importable from here too: loaded on first use by __getattr__ below, since pvit.registry
# imports this module. Listed for type checkers and the API docs (so references to pvit.plugins.build resolve).
if TYPE_CHECKING:
    from pvit.registry import (  # noqa: F401
        KINDS,
        WIRED_OPTIONS,
        Component,
        accepted_options,
        build,
        check_options,
        components,
        get_component,
        registry,
    )

ENTRY_POINT_GROUP = "pvit"

#: Hook name -> the argument names pvit calls it with.
HOOKS = {
    n: tuple(inspect.signature(f).parameters)
    for n, f in vars(hookspecs).items()
    if n.startswith("pvit_") and callable(f)
}

#: Guards the plugin manager, the plugin records and the registry built from them.
LOCK = threading.RLock()


class PluginWarning(UserWarning):
    """A plugin failed to load or to register its components; the others still work."""


@dataclass
class PluginInfo:
    """What ``pvit plugins`` shows about one plugin.

    ``status`` is ``ok``, ``failed`` (import, validation or a registration hook failed: ``error`` says why),
    ``skipped`` (excluded by ``PVIT_LOAD_PLUGINS``) or ``conflict`` (it registers a name another plugin also
    registers; that name cannot be used, the plugin's other components can).
    """

    name: str
    distribution: str
    version: str
    status: str = "ok"
    error: str | None = None
    components: dict[str, list[str]] = field(default_factory=dict)
    _load_status: tuple[str, str | None] = field(default=("ok", None), repr=False, compare=False)

    def as_dict(self) -> dict:
        """As plain data: what ``pvit plugins --json`` prints and a run directory's ``plugins.json`` holds."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "components": self.components,
        }

    def _set_load_status(self, status: str, error: str | None) -> None:
        self.status, self.error = status, error
        self._load_status = (status, error)

    def restart(self) -> None:
        """Back to the state right after loading, before the registry is built: no components, the load status."""
        self.components = {}
        self.status, self.error = self._load_status


class _State:
    def __init__(self) -> None:
        self.pm: pluggy.PluginManager | None = None
        self.infos: dict[str, PluginInfo] = {}
        self.generation = 0


_state = _State()


def warn(message: str) -> None:
    """Issue a [PluginWarning][pvit.plugins.PluginWarning] attributed to the caller's caller."""
    warnings.warn(message, PluginWarning, stacklevel=3)


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("pvit")
    pm.add_hookspecs(hookspecs)
    return pm


def _allowed() -> set[str] | None:
    raw = os.environ.get("PVIT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _hook_problems(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """Misspelt hooks and hook arguments pvit does not pass, found before the plugin is registered."""
    problems = []
    for attr in dir(plugin):
        try:
            opts = pm.parse_hookimpl_opts(plugin, attr)
        except Exception:  # an attribute that cannot be read is not a hook
            continue
        if opts is None:
            continue
        if attr not in HOOKS:
            if opts.get("optionalhook"):
                continue
            hint = did_you_mean(attr, HOOKS, " (did you mean {!r}?)")
            problems.append(f"hook {attr!r} is not a pvit hook{hint}; pvit hooks: {', '.join(sorted(HOOKS))}")
            continue
        fn = getattr(plugin, attr)
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            continue
        if params and params[0].name == "self" and not inspect.ismethod(fn):
            params = params[1:]
        extra = [p.name for p in params if p.default is p.empty
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in HOOKS[attr]]
        if extra:
            got = ", ".join(p.name for p in params)
            want = ", ".join(HOOKS[attr])
            problems.append(f"hook {attr!r} takes ({got}) but pvit calls it as {attr}({want}); "
                            f"rename {', '.join(repr(x) for x in extra)} to match")
    return problems


def _validate_plugin(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Register ``plugin`` and check its hooks; raises PluginError naming plugin and hook."""
    api = getattr(plugin, "PVIT_PLUGIN_API", hookspecs.PLUGIN_API_VERSION)
    if api != hookspecs.PLUGIN_API_VERSION:
        raise PluginError(
            f"plugin {name!r} was built for pvit plugin API {api!r}, but this pvit provides plugin API "
            f"{hookspecs.PLUGIN_API_VERSION}; install a version of the plugin made for plugin API "
            f"{hookspecs.PLUGIN_API_VERSION}, or a pvit that provides API {api!r}"
        )
    problems = _hook_problems(pm, plugin)
    if problems:
        raise PluginError(f"plugin {name!r}: " + "; ".join(problems))
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as e:
        raise PluginError(f"plugin {name!r}: {' '.join(str(e).split())}") from None
    except ValueError as e:
        raise PluginError(f"plugin {name!r} could not be registered: {e}") from None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        pm.unregister(name=name)
        raise PluginError(f"plugin {name!r}: {' '.join(str(e).split())}") from None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading entry points on first use.

    A plugin that fails to import or validate is recorded as failed (with the cause) and a
    [PluginWarning][pvit.plugins.PluginWarning] names its distribution; the others still load.
    ``PVIT_LOAD_PLUGINS`` (comma-separated plugin or distribution names) restricts which load.
    """
    with LOCK:
        if _state.pm is not None:
            return _state.pm
        pm = _new_manager()
        allowed = _allowed()
        seen_names: set[str] = set()
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            seen_names.update((ep.name, dist))
            key = ep.name
            if key in _state.infos:  # two distributions use the same entry-point name
                other = _state.infos[key].distribution
                key = f"{ep.name} ({dist})"
                info = PluginInfo(name=key, distribution=dist, version=version)
                info._set_load_status("failed", f"entry point name {ep.name!r} is also used by distribution {other}")
                _state.infos[key] = info
                warn(f"pvit plugin {ep.name!r} (distribution {dist} {version}) not loaded: {info.error}")
                continue
            info = PluginInfo(name=ep.name, distribution=dist, version=version)
            _state.infos[key] = info
            if allowed is not None and ep.name not in allowed and dist not in allowed:
                info._set_load_status("skipped", "not listed in PVIT_LOAD_PLUGINS")
                continue
            try:
                module = ep.load()
                _validate_plugin(pm, module, ep.name)
            except Exception as e:  # a broken plugin must not break the others
                error = str(e) if isinstance(e, PluginError) else f"{type(e).__name__}: {e}"
                info._set_load_status("failed", error)
                warn(f"pvit plugin {ep.name!r} (distribution {dist} {version}) failed to load: {error}")
        if allowed:
            unknown = sorted(allowed - seen_names)
            if unknown:
                warn(f"PVIT_LOAD_PLUGINS names {', '.join(map(repr, unknown))}, which no installed distribution "
                     f"provides; installed plugins: {', '.join(sorted(i.name for i in _state.infos.values()))}")
        _state.pm = pm
        return pm


def known_plugins() -> dict[str, PluginInfo]:
    """The live record of every plugin seen so far, by name (the registry fills in their components and
    conflicts); [plugin_infos][pvit.plugins.plugin_infos] is the complete, sorted view."""
    return _state.infos


def generation() -> int:
    """A number that changes whenever plugins are registered, unregistered or reset (so caches know to rebuild)."""
    return _state.generation


def register_plugin(plugin: Any, name: str, distribution: str = "(registered at run time)") -> None:
    """Register a plugin object (module or instance with hookimpls) at run time, e.g. from a test.

    Raises PluginError for a misspelt hook, a wrong hook argument or another plugin API version,
    naming plugin and hook.
    """
    with LOCK:
        pm = get_plugin_manager()
        if name in _state.infos:
            raise PluginError(f"a plugin named {name!r} is already loaded (distribution "
                              f"{_state.infos[name].distribution}); choose another name")
        _validate_plugin(pm, plugin, name)
        _state.infos[name] = PluginInfo(name=name, distribution=distribution, version="-")
        _state.generation += 1


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with [register_plugin][pvit.plugins.register_plugin]."""
    with LOCK:
        pm = get_plugin_manager()
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        _state.infos.pop(name, None)
        _state.generation += 1


def reset() -> None:
    """Forget loaded plugins (they load again on next use), e.g. after changing PVIT_LOAD_PLUGINS."""
    with LOCK:
        _state.pm = None
        _state.infos = {}
        _state.generation += 1


def plugin_infos() -> list[PluginInfo]:
    """Every plugin seen (loaded, failed, skipped or in conflict), with the names each registers."""
    from pvit.registry import registry  # building the registry fills in components and conflicts

    with LOCK:
        get_plugin_manager()
        registry()
        return sorted(_state.infos.values(), key=lambda i: i.name)


_REGISTRY_NAMES = frozenset(
    {"KINDS", "WIRED_OPTIONS", "Component", "accepted_options", "build", "check_options", "components",
     "get_component", "registry"}
)


def __getattr__(name: str) -> Any:
    if name in _REGISTRY_NAMES:
        from pvit import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'pvit.plugins' has no attribute {name!r}")
