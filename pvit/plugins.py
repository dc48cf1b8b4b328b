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

#: Hook name -> the argument names pvit calls it with.
HOOKS = {
    n: tuple(inspect.signature(f).parameters)
    for n, f in vars(hookspecs).items()
    if n.startswith("pvit_") and callable(f)
}


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
        self.conflicts: dict[str, dict[str, list[str]]] = {}
        self.lock = threading.RLock()


_state = _State()


def _warn(msg: str) -> None:
    warnings.warn(msg, PluginWarning, stacklevel=3)


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
            guess = difflib.get_close_matches(attr, list(HOOKS), n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
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
    with _state.lock:
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
                _warn(f"pvit plugin {ep.name!r} (distribution {dist} {version}) not loaded: {info.error}")
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
                _warn(f"pvit plugin {ep.name!r} (distribution {dist} {version}) failed to load: {error}")
        if allowed:
            unknown = sorted(allowed - seen_names)
            if unknown:
                _warn(f"PVIT_LOAD_PLUGINS names {', '.join(map(repr, unknown))}, which no installed distribution "
                      f"provides; installed plugins: {', '.join(sorted(i.name for i in _state.infos.values()))}")
        _state.pm = pm
        return pm


def register_plugin(plugin: Any, name: str, distribution: str = "(registered at run time)") -> None:
    """Register a plugin object (module or instance with hookimpls) at run time, e.g. from a test.

    Raises PluginError for a misspelt hook, a wrong hook argument or another plugin API version,
    naming plugin and hook.
    """
    with _state.lock:
        pm = get_plugin_manager()
        if name in _state.infos:
            raise PluginError(f"a plugin named {name!r} is already loaded (distribution "
                              f"{_state.infos[name].distribution}); choose another name")
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
        _state.conflicts = {}


def _fail(info: PluginInfo | None, plugin: str, error: str) -> None:
    if info is not None:
        info.status, info.error = "failed", error
    _warn(f"pvit plugin {plugin!r}"
          + (f" (distribution {info.distribution} {info.version})" if info is not None else "")
          + f" registered nothing from that hook: {error}")


def _run_hook(impl: Any, kind: str) -> list[tuple[str, Callable[..., Any]]]:
    """The (name, factory) pairs one hook implementation registers; raises PluginError on bad input."""
    out: list[tuple[str, Callable[..., Any]]] = []

    def register(name: str, factory: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise PluginError(f"{kind} name {name!r} is not lower-case kebab-case such as 'mlp2x-gelu'")
        if not callable(factory):
            raise PluginError(f"{kind} {name!r} was registered with a non-callable factory {factory!r}")
        out.append((name, factory))

    try:
        impl.function(register=register)
    except PluginError:
        raise
    except Exception as e:
        raise PluginError(f"{impl.function.__name__} raised {type(e).__name__}: {e}") from None
    return out


def _build_registry() -> dict[str, dict[str, Component]]:
    pm = get_plugin_manager()
    for info in _state.infos.values():
        info.components = {}
        info.status, info.error = info._load_status
    registry: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
    owners: dict[str, dict[str, list[str]]] = {k: {} for k in KINDS}
    for kind in KINDS:
        caller = getattr(pm.hook, f"pvit_register_{kind}s")
        for impl in caller.get_hookimpls():  # registration order
            info = _state.infos.get(impl.plugin_name)
            try:
                pairs = _run_hook(impl, kind)
            except PluginError as e:
                _fail(info, impl.plugin_name, f"{impl.function.__name__}: {e}")
                continue
            for name, factory in pairs:
                owners[kind].setdefault(name, []).append(impl.plugin_name)
                registry[kind].setdefault(name, Component(kind, name, factory, impl.plugin_name))
                if info is not None:
                    info.components.setdefault(kind, []).append(name)
    conflicts: dict[str, dict[str, list[str]]] = {k: {} for k in KINDS}
    for kind in KINDS:
        for name, plugins in owners[kind].items():
            if len(plugins) < 2:
                continue
            conflicts[kind][name] = plugins
            registry[kind].pop(name, None)
            msg = _conflict_message(kind, name, plugins)
            for p in dict.fromkeys(plugins):
                info = _state.infos.get(p)
                if info is not None and info.status == "ok":
                    info.status, info.error = "conflict", msg
            _warn(msg)
    _state.conflicts = conflicts
    return registry


def _describe(plugin: str) -> str:
    info = _state.infos.get(plugin)
    return f"{plugin!r} (distribution {info.distribution})" if info is not None else repr(plugin)


def _conflict_message(kind: str, name: str, plugins: list[str]) -> str:
    who = " and by ".join(_describe(p) for p in plugins)
    return (f"{kind} {name!r} is registered by more than one plugin: by {who}; it cannot be used until one of "
            "them is uninstalled or left out with PVIT_LOAD_PLUGINS")


def registry() -> dict[str, dict[str, Component]]:
    """All usable registered components: ``{kind: {name: Component}}`` (names two plugins claim are left out)."""
    with _state.lock:
        if _state.registry is None:
            _state.registry = _build_registry()
        return _state.registry


def plugin_infos() -> list[PluginInfo]:
    """Every plugin seen (loaded, failed, skipped or in conflict), with the names each registers."""
    with _state.lock:
        get_plugin_manager()
        registry()
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
    """Look a component up.

    An unknown name raises UnknownComponentError listing the installed names of ``kind`` and the plugins that
    failed to load or were skipped; a name two plugins register raises PluginError naming both.
    """
    _check_kind(kind)
    reg = registry()[kind]
    if name in reg:
        return reg[name]
    where_s = f" at {where}" if where else ""
    clash = _state.conflicts.get(kind, {}).get(name)
    if clash:
        raise PluginError(f"{_conflict_message(kind, name, clash)} (asked for{where_s or ' by name'})")
    installed = ", ".join(sorted(reg)) or "none"
    guess = difflib.get_close_matches(name, list(reg), n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    notes = ""
    failed = [i for i in _state.infos.values() if i.status == "failed"]
    if failed:
        notes += "; plugins that failed to load (one may provide it): " + "; ".join(
            f"{i.name} (distribution {i.distribution}): {i.error}" for i in failed
        )
    skipped = [i.name for i in _state.infos.values() if i.status == "skipped"]
    if skipped:
        notes += f"; plugins not loaded because of PVIT_LOAD_PLUGINS: {', '.join(sorted(skipped))}"
    raise UnknownComponentError(f"unknown {kind} {name!r}{where_s}{hint}; installed {kind}s: {installed}{notes}")


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
    """Problems with ``options`` for component ``name`` of ``kind`` (empty when they fit its factory).

    An unknown option comes with a "did you mean" and the accepted names; an option the core wires
    (``in_dim``/``out_dim`` of a projector, ``image_encoder`` of a region encoder) may not be set.
    """
    comp = get_component(kind, name, where)
    names, required, var_kw = accepted_options(comp.factory)
    core = WIRED_OPTIONS.get(kind, ())
    prefix = f"{where}.options: " if where else ""
    problems = []
    user_names = [n for n in names if n not in core]
    for key in options:
        if key in core:
            problems.append(f"{prefix}option {key!r} of {kind} {name!r} is wired by pvit (from the encoders and the "
                            "LLM) and cannot be set in a recipe")
        elif key not in names and not var_kw:
            guess = difflib.get_close_matches(str(key), user_names, n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            problems.append(
                f"{prefix}unknown option {key!r} for {kind} {name!r}{hint}; accepted: {', '.join(user_names) or 'none'}"
            )
    for key in required:
        if key not in options and key not in core and key not in wired:
            problems.append(f"{prefix}{kind} {name!r} needs option {key!r}")
    return problems


def build(kind: str, name: str, *, where: str | None = None, **options: Any) -> Any:
    """Build one component by name with its options checked against the factory's signature.

    Wired options (``in_dim``/``out_dim`` for projectors, ``image_encoder`` for region encoders) are passed
    here by the core; a factory that does not take them does not receive them.
    """
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
