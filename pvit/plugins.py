"""Plugin loading (entry points of group ``pvit``) and the component registry built from the hooks."""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from pvit import hookspecs
from pvit.errors import ComponentOptionError, PluginError, UnknownComponentError

ENTRY_POINT_GROUP = "pvit"
KINDS = ("image_encoder", "region_encoder", "projector", "llm", "dataset", "evaluator")
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")

#: Options the core fills in for a kind; a recipe may not set them.
WIRED_OPTIONS = {
    "projector": ("in_dim", "out_dim"),
    "region_encoder": ("image_encoder",),
}


@dataclass
class PluginInfo:
    """What ``pvit plugins`` shows about one plugin."""

    name: str
    distribution: str
    version: str
    status: str = "ok"  # ok | failed | skipped
    error: str | None = None
    components: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "components": self.components,
        }


@dataclass(frozen=True)
class Component:
    """A registered component: its kind, name, factory and the plugin that registered it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str


class _State:
    def __init__(self) -> None:
        self.pm: pluggy.PluginManager | None = None
        self.infos: dict[str, PluginInfo] = {}
        self.registry: dict[str, dict[str, Component]] | None = None
        self.lock = threading.RLock()


_state = _State()


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("pvit")
    pm.add_hookspecs(hookspecs)
    return pm


def _allowed() -> set[str] | None:
    raw = os.environ.get("PVIT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _validate_plugin(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Register ``plugin`` and check its hooks; raises PluginError naming plugin and hook."""
    api = getattr(plugin, "PVIT_PLUGIN_API", hookspecs.PLUGIN_API_VERSION)
    if api != hookspecs.PLUGIN_API_VERSION:
        raise PluginError(
            f"plugin {name!r} was built for pvit plugin API {api}, but this pvit provides API "
            f"{hookspecs.PLUGIN_API_VERSION}; upgrade the plugin or install a matching pvit"
        )
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as e:
        raise PluginError(f"plugin {name!r}: {e}") from None
    except ValueError as e:
        raise PluginError(f"plugin {name!r} could not be registered: {e}") from None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        pm.unregister(name=name)
        hooks = [n for n in dir(plugin) if n.startswith("pvit_") and not hasattr(pm.hook, n)]
        hook = f" hook {hooks[0]!r}" if hooks else ""
        known = ", ".join(sorted(n for n in dir(pm.hook) if n.startswith("pvit_")))
        guess = difflib.get_close_matches(hooks[0], dir(pm.hook), n=1) if hooks else []
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        raise PluginError(f"plugin {name!r} implements unknown{hook}{hint} (known hooks: {known}); {e}") from None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading entry points on first use.

    A plugin that fails to import or validate is recorded as failed (with the cause) and a warning
    names its distribution; the others still load.
    """
    with _state.lock:
        if _state.pm is not None:
            return _state.pm
        pm = _new_manager()
        allowed = _allowed()
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            info = PluginInfo(name=ep.name, distribution=dist, version=version)
            _state.infos[ep.name] = info
            if allowed is not None and ep.name not in allowed and dist not in allowed:
                info.status = "skipped"
                info.error = "not listed in PVIT_LOAD_PLUGINS"
                continue
            try:
                module = ep.load()
                _validate_plugin(pm, module, ep.name)
            except Exception as e:  # a broken plugin must not break the others
                info.status = "failed"
                info.error = str(e) if isinstance(e, PluginError) else f"{type(e).__name__}: {e}"
                warnings.warn(
                    f"pvit plugin {ep.name!r} (distribution {dist} {version}) failed to load: {info.error}",
                    stacklevel=2,
                )
        _state.pm = pm
        return pm


def register_plugin(plugin: Any, name: str, distribution: str = "(registered at run time)") -> None:
    """Register a plugin object (module or instance with hookimpls) at run time, e.g. from a test.

    Raises PluginError for a misspelt hook or a wrong hook argument, naming plugin and hook.
    """
    with _state.lock:
        pm = get_plugin_manager()
        _validate_plugin(pm, plugin, name)
        _state.infos[name] = PluginInfo(name=name, distribution=distribution, version="-")
        _state.registry = None


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with [register_plugin][pvit.plugins.register_plugin]."""
    with _state.lock:
        pm = get_plugin_manager()
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        _state.infos.pop(name, None)
        _state.registry = None


def reset() -> None:
    """Forget loaded plugins (they load again on next use), e.g. after changing PVIT_LOAD_PLUGINS."""
    with _state.lock:
        _state.pm = None
        _state.infos = {}
        _state.registry = None


def _build_registry() -> dict[str, dict[str, Component]]:
    pm = get_plugin_manager()
    registry: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
    for kind in KINDS:
        caller = getattr(pm.hook, f"pvit_register_{kind}s")
        for impl in reversed(caller.get_hookimpls()):  # registration order
            plugin_name = impl.plugin_name
            info = _state.infos.get(plugin_name)

            def register(name: str, factory: Callable[..., Any], _plugin=plugin_name, _kind=kind) -> None:
                if not isinstance(name, str) or not _NAME_RE.match(name):
                    raise PluginError(
                        f"plugin {_plugin!r} registered {_kind} {name!r}: names are lower-case kebab-case "
                        "such as 'mlp2x-gelu'"
                    )
                if not callable(factory):
                    raise PluginError(f"plugin {_plugin!r} registered {_kind} {name!r} with a non-callable factory")
                if name in registry[_kind]:
                    other = registry[_kind][name].plugin
                    raise PluginError(
                        f"{_kind} {name!r} is registered twice: by plugin {other!r} and by plugin {_plugin!r}; "
                        "uninstall one of them or restrict loading with PVIT_LOAD_PLUGINS"
                    )
                registry[_kind][name] = Component(_kind, name, factory, _plugin)
                if info is not None:
                    info.components.setdefault(_kind, []).append(name)

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as e:
                if info is not None:
                    info.status = "failed"
                    info.error = f"{impl.function.__name__} raised {type(e).__name__}: {e}"
                warnings.warn(f"pvit plugin {plugin_name!r}: {impl.function.__name__} failed: {e}", stacklevel=2)
    return registry


def registry() -> dict[str, dict[str, Component]]:
    """All registered components: ``{kind: {name: Component}}``."""
    with _state.lock:
        if _state.registry is None:
            for info in _state.infos.values():
                info.components = {}
            _state.registry = _build_registry()
        return _state.registry


def plugin_infos() -> list[PluginInfo]:
    """Every plugin seen (loaded, failed or skipped), with the names each registers."""
    get_plugin_manager()
    try:
        registry()
    except PluginError:
        pass
    return sorted(_state.infos.values(), key=lambda i: i.name)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        guess = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        raise UnknownComponentError(f"unknown component kind {kind!r}{hint}; kinds are: {', '.join(KINDS)}")


def components(kind: str) -> dict[str, Callable[..., Any]]:
    """Name -> factory of the installed components of ``kind``."""
    _check_kind(kind)
    return {name: c.factory for name, c in sorted(registry()[kind].items())}


def get_component(kind: str, name: str, where: str | None = None) -> Component:
    """Look a component up; an unknown name lists the installed ones (and failed plugins)."""
    _check_kind(kind)
    reg = registry()[kind]
    if name in reg:
        return reg[name]
    where_s = f" (at {where})" if where else ""
    installed = ", ".join(sorted(reg)) or "none"
    guess = difflib.get_close_matches(name, list(reg), n=1)
    hint = f"; did you mean {guess[0]!r}?" if guess else ""
    failed = [i for i in _state.infos.values() if i.status == "failed"]
    failed_s = ""
    if failed:
        failed_s = "; plugins that failed to load (one may provide it): " + "; ".join(
            f"{i.name} ({i.distribution}): {i.error}" for i in failed
        )
    raise UnknownComponentError(f"unknown {kind} {name!r}{where_s}{hint}; installed: {installed}{failed_s}")


def accepted_options(factory: Callable[..., Any]) -> tuple[list[str], list[str], bool]:
    """(all keyword names, required names, accepts **kwargs) of a factory."""
    sig = inspect.signature(factory)
    names, required, var_kw = [], [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
    return names, required, var_kw


def check_options(kind: str, name: str, options: dict, where: str | None = None, wired: tuple[str, ...] = ()) -> list[str]:
    """Problems with ``options`` for component ``name`` of ``kind`` (empty when they fit its factory)."""
    comp = get_component(kind, name, where)
    names, required, var_kw = accepted_options(comp.factory)
    core = WIRED_OPTIONS.get(kind, ())
    prefix = f"{where}: " if where else ""
    problems = []
    user_names = [n for n in names if n not in core]
    for key in options:
        if key in core:
            problems.append(f"{prefix}option {key!r} of {kind} {name!r} is wired by pvit and cannot be set in a recipe")
        elif key not in names and not var_kw:
            guess = difflib.get_close_matches(key, user_names, n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            problems.append(
                f"{prefix}unknown option {key!r} for {kind} {name!r}{hint}; accepted: {', '.join(user_names) or 'none'}"
            )
    for key in required:
        if key not in options and key not in core and key not in wired:
            problems.append(f"{prefix}{kind} {name!r} needs option {key!r}")
    return problems


def build(kind: str, name: str, *, where: str | None = None, **options: Any) -> Any:
    """Build one component by name with its options checked against the factory's signature."""
    comp = get_component(kind, name, where)
    names, _required, var_kw = accepted_options(comp.factory)
    core = WIRED_OPTIONS.get(kind, ())
    user = {k: v for k, v in options.items() if k not in core}
    wired = {k: v for k, v in options.items() if k in core}
    problems = check_options(kind, name, user, where, wired=tuple(wired))
    if problems:
        raise ComponentOptionError("; ".join(problems))
    kwargs = dict(user)
    for k, v in wired.items():
        if k in names or var_kw:
            kwargs[k] = v
    return comp.factory(**kwargs)
