"""Option markers a factory puts in its signature: which options name local files (checked before a run)."""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable

__all__ = ["FileOption", "NestedOptions", "LocalPath", "LocalPaths", "HubPath", "TaggedPath", "file_options",
           "nested_options", "file_option_values"]


@dataclass(frozen=True)
class FileOption:
    """Marks an option whose string value names a local file or folder.

    Attributes:
        hub: the value may also be a Hugging Face hub id (``org/name``): such a value counts as missing only
            when the hub is off (``HF_HUB_OFFLINE=1``).
        tag: the value may also be a named tag (open_clip ``pretrained`` names): a bare name without ``/`` or
            a weight-file extension is not a file.
        mapping: the value is a dict ``{name: path}``; each path is checked, keyed ``<option>.<name>``.
    """

    hub: bool = False
    tag: bool = False
    mapping: bool = False


@dataclass(frozen=True)
class NestedOptions:
    """Marks an option that holds the options of another component, whose file options are checked too.

    Attributes:
        kind: that component's kind (e.g. ``"dataset"``).
        name: its name when fixed, else
        name_option: the sibling option that names it (its factory default when the recipe leaves it out).
        spec_key: the value is a dict whose ``[spec_key]`` is ``{"name": ..., "options": {...}}`` (a tokenizer
            built from a dataset's words) instead of the options themselves.
    """

    kind: str
    name: str | None = None
    name_option: str | None = None
    spec_key: str | None = None


#: A local file or folder.
LocalPath = Annotated[str, FileOption()]
#: ``{name: local folder or file}`` (e.g. one image folder per data source).
LocalPaths = Annotated[dict, FileOption(mapping=True)]
#: A local file or folder, or a Hugging Face hub id.
HubPath = Annotated[str, FileOption(hub=True)]
#: A local file, or a named tag of the library (open_clip ``pretrained`` names).
TaggedPath = Annotated[str, FileOption(tag=True)]


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    """Parameter annotations with their ``Annotated`` extras; one that cannot be resolved is left out."""
    if inspect.isclass(factory):
        target = factory.__init__
    elif inspect.isroutine(factory) or isinstance(factory, functools.partial):
        target = getattr(factory, "func", factory)
    else:
        target = type(factory).__call__
    target = inspect.unwrap(target)
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # one unresolvable annotation (a TYPE_CHECKING import): resolve them one by one
        pass
    out = {}
    module = sys.modules.get(getattr(target, "__module__", None) or "")
    ns = dict(vars(module)) if module is not None else {}
    for name, ann in (getattr(target, "__annotations__", None) or {}).items():
        try:
            out[name] = eval(ann, ns) if isinstance(ann, str) else ann  # noqa: S307 - the factory's own annotation
        except Exception:
            continue
    return out


def _markers(hint: Any, cls: type) -> list:
    """Instances of ``cls`` in the ``Annotated`` metadata of ``hint``, looking inside unions (``X | None``)."""
    found = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, cls)]
    for arg in typing.get_args(hint) if typing.get_origin(hint) is not Annotated else ():
        found += _markers(arg, cls)
    return found


def file_options(factory: Callable[..., Any]) -> dict[str, FileOption]:
    """``{option name: FileOption}`` of the options ``factory``'s signature marks as naming local files."""
    out = {}
    for name, hint in _hints(factory).items():
        marks = _markers(hint, FileOption)
        if marks and name != "return":
            out[name] = marks[0]
    return out


def nested_options(factory: Callable[..., Any]) -> dict[str, NestedOptions]:
    """``{option name: NestedOptions}`` of the options holding another component's options."""
    out = {}
    for name, hint in _hints(factory).items():
        marks = _markers(hint, NestedOptions)
        if marks and name != "return":
            out[name] = marks[0]
    return out


def _default(factory: Callable[..., Any], option: str) -> Any:
    try:
        p = inspect.signature(factory).parameters.get(option)
    except (TypeError, ValueError):
        return None
    return None if p is None or p.default is p.empty else p.default


def _walk(factory: Callable[..., Any], options: dict, prefix: str, out: list) -> None:
    files, nested = file_options(factory), nested_options(factory)
    for key, value in options.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        mark = files.get(key)
        if mark is not None and mark.mapping and isinstance(value, dict):
            out += [(f"{path}.{k}", v, mark) for k, v in value.items() if isinstance(v, str)]
        elif mark is not None and not mark.mapping and isinstance(value, str) and value:
            out.append((path, value, mark))
        elif key in nested and isinstance(value, dict):
            n = nested[key]
            name = n.name or (options.get(n.name_option) if n.name_option else None)
            if name is None and n.name_option:
                name = _default(factory, n.name_option)
            sub, sub_path = value, path
            if n.spec_key is not None:
                spec = value.get(n.spec_key)
                if not isinstance(spec, dict):
                    continue
                name, sub, sub_path = spec.get("name"), spec.get("options") or {}, f"{path}.{n.spec_key}.options"
            if isinstance(name, str) and isinstance(sub, dict):
                _component_values(n.kind, name, sub, sub_path, out)


def _component_values(kind: str, name: str, options: dict, prefix: str, out: list) -> None:
    from pvit.errors import PvitError
    from pvit.registry import get_component

    try:
        factory = get_component(kind, name).factory
    except PvitError:  # an unknown component: check_options reports it
        return
    _walk(factory, options, prefix, out)


def file_option_values(kind: str, name: str, options: dict, where: str | None = None) -> list[tuple[str, str, FileOption]]:
    """(key path, value, marker) of every file option set in ``options`` of component ``name`` of ``kind``.

    Key paths read ``<where>.options.<option>`` (``<option>`` alone without ``where``); a ``LocalPaths``
    option gives one entry per name, and options marked ``NestedOptions`` are followed into the component
    they configure. Empty values and options the recipe leaves out are skipped; an unknown component gives
    nothing (the option check reports it).
    """
    out: list[tuple[str, str, FileOption]] = []
    _component_values(kind, name, dict(options or {}), f"{where}.options" if where else "", out)
    return out
