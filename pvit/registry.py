"""The component registry built from the plugins' hooks: look-up by kind and name, option checks and ``build``."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable

from pvit.errors import ComponentOptionError, PluginError, UnknownComponentError, did_you_mean
from pvit.plugins import LOCK, PluginInfo, generation, get_plugin_manager, known_plugins, warn

KINDS = ("image_encoder", "region_encoder", "projector", "llm", "dataset", "evaluator", "generator")
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")

#: Options the core fills in for a kind; a recipe may not set them.
WIRED_OPTIONS = {
    "projector": ("in_dim", "out_dim"),
    "region_encoder": ("image_encoder",),
}


@dataclass(frozen=True)
class Component:
    """A registered component: its kind, name, factory and the plugin that registered it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str


class _Cache:
    def __init__(self) -> None:
        self.generation: int | None = None  # the plugins' generation the registry was built for
        self.registry: dict[str, dict[str, Component]] = {}
        self.conflicts: dict[str, dict[str, list[str]]] = {}


_cache = _Cache()


def _fail(info: PluginInfo | None, plugin: str, error: str) -> None:
    if info is not None:
        info.status, info.error = "failed", error
    warn(f"pvit plugin {plugin!r}"
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


def _build() -> tuple[dict[str, dict[str, Component]], dict[str, dict[str, list[str]]]]:
    """(registry, conflicts) from every loaded plugin's hooks; updates each plugin's components and status."""
    pm = get_plugin_manager()
    infos = known_plugins()
    for info in infos.values():
        info.restart()
    registry: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
    owners: dict[str, dict[str, list[str]]] = {k: {} for k in KINDS}
    for kind in KINDS:
        caller = getattr(pm.hook, f"pvit_register_{kind}s")
        for impl in caller.get_hookimpls():  # registration order
            info = infos.get(impl.plugin_name)
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
                info = infos.get(p)
                if info is not None and info.status == "ok":
                    info.status, info.error = "conflict", msg
            warn(msg)
    return registry, conflicts


def _describe(plugin: str) -> str:
    info = known_plugins().get(plugin)
    return f"{plugin!r} (distribution {info.distribution})" if info is not None else repr(plugin)


def _conflict_message(kind: str, name: str, plugins: list[str]) -> str:
    who = " and by ".join(_describe(p) for p in plugins)
    return (f"{kind} {name!r} is registered by more than one plugin: by {who}; it cannot be used until one of "
            "them is uninstalled or left out with PVIT_LOAD_PLUGINS")


def registry() -> dict[str, dict[str, Component]]:
    """All usable registered components: ``{kind: {name: Component}}`` (names two plugins claim are left out)."""
    with LOCK:
        current = generation()
        if _cache.generation != current:
            _cache.registry, _cache.conflicts = _build()
            _cache.generation = current
        return _cache.registry


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        hint = did_you_mean(kind, KINDS, " (did you mean {!r}?)")
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
    clash = _cache.conflicts.get(kind, {}).get(name)
    if clash:
        raise PluginError(f"{_conflict_message(kind, name, clash)} (asked for{where_s or ' by name'})")
    installed = ", ".join(sorted(reg)) or "none"
    hint = did_you_mean(name, reg, " (did you mean {!r}?)")
    notes = ""
    infos = known_plugins().values()
    failed = [i for i in infos if i.status == "failed"]
    if failed:
        notes += "; plugins that failed to load (one may provide it): " + "; ".join(
            f"{i.name} (distribution {i.distribution}): {i.error}" for i in failed
        )
    skipped = [i.name for i in infos if i.status == "skipped"]
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
            hint = did_you_mean(key, user_names, " (did you mean {!r}?)")
            problems.append(
                f"{prefix}unknown option {key!r} for {kind} {name!r}{hint}; accepted: {', '.join(user_names) or 'none'}"
            )
    for key in required:
        if key not in options and key not in core and key not in wired:
            problems.append(f"{prefix}{kind} {name!r} needs option {key!r}")
    return problems


def build(kind: str, spec: Any, *, where: str | None = None, **options: Any) -> Any:
    """Build one component, its options checked against the factory's signature.

    ``spec`` is a component's name, or a recipe component (``{name, options}``, as in a recipe's ``model``
    section), whose options are used. Wired options (``in_dim``/``out_dim`` for projectors, ``image_encoder``
    for region encoders) are passed here by the core; a factory that does not take them does not receive them.
    """
    if isinstance(spec, str):
        name = spec
    else:
        from pvit.recipe import options_of  # recipes need OmegaConf, which a plain build by name does not

        name, options = str(spec.name), {**options_of(spec), **options}
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
