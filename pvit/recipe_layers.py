"""A recipe's plain YAML: safe loading, ``base:`` layering, the rename rule, overrides and forbidden import keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import yaml

#: Keys that would make a recipe import or run arbitrary code; rejected anywhere in a recipe.
FORBIDDEN_KEYS = {
    "_target_": "import paths are not allowed; name a registered component instead",
    "_partial_": "import paths are not allowed",
    "class_path": "import paths are not allowed; name a registered component instead",
    "type": "'type:' import paths are not allowed; name a registered component with 'name:'",
    "trust_remote_code": "trust_remote_code is not allowed: only installed, registered code runs",
}


class _Loader(yaml.SafeLoader):
    """Safe YAML that also reads ``1e-3`` (no dot) as a float, as OmegaConf does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"""
        r"""|\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Safe YAML load (no Python tags) with OmegaConf's float rules."""
    return yaml.load(text, Loader=_Loader)


def _read_yaml(path: Path, errors: list[str], via: str = "") -> dict | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        errors.append(f"{path}: recipe file not found{via}")
        return None
    except IsADirectoryError:
        errors.append(f"{path}: is a directory, not a recipe file{via}")
        return None
    except OSError as e:
        errors.append(f"{path}: cannot read ({e.strerror})")
        return None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as e:
        errors.append(f"{path}: invalid YAML: {e}")
        return None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{path}: a recipe must be a mapping at the top level, got {type(data).__name__}")
        return None
    return data


def _check_forbidden(node: Any, path: str, errors: list[str], source: str) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{path}.{k}" if path else str(k)
            if k in FORBIDDEN_KEYS and not (k == "trust_remote_code" and v is False):
                errors.append(f"{key} ({source}): {FORBIDDEN_KEYS[k]}")
            _check_forbidden(v, key, errors, source)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_forbidden(v, f"{path}[{i}]", errors, source)


def read_layers(path: Path, errors: list[str], seen: tuple[Path, ...] = (), via: str = "") -> list[tuple[Path, dict]]:
    """The layers of ``path``, base first: each ``base:`` (a path or list, relative to the file) before it.

    Problems (unreadable files, bad YAML, cycles, forbidden keys) are appended to ``errors``, each naming its file.
    """
    path = path.resolve()
    if path in seen:
        errors.append(f"{path}: 'base:' layers form a cycle: {' -> '.join(str(p) for p in seen + (path,))}")
        return []
    data = _read_yaml(path, errors, via)
    if data is None:
        return []
    _check_forbidden(data, "", errors, str(path))
    bases = data.pop("base", None)
    out: list[tuple[Path, dict]] = []
    if bases is not None:
        if not isinstance(bases, (str, list)):
            errors.append(f"base ({path}): expected a path or a list of paths, got {bases!r}")
            bases = []
        for b in [bases] if isinstance(bases, str) else bases:
            if not isinstance(b, str):
                errors.append(f"base ({path}): expected a path or a list of paths, got {b!r}")
                continue
            out += read_layers(path.parent / b, errors, seen + (path,), via=f" (named by 'base: {b}' in {path})")
    out.append((path, data))
    return out


def merged_layers(layers: list[tuple[Path, dict]]) -> dict:
    """The layers of ``read_layers`` merged, base first."""
    out: dict = {}
    for _, data in layers:
        out = merge(out, data)
    return out


def merge(base: Any, top: Any) -> Any:
    """Deep-merge plain containers; lists replace; a component whose ``name`` changes drops its old options."""
    if isinstance(base, dict) and isinstance(top, dict):
        out = dict(base)
        renamed = "name" in top and "name" in base and top["name"] != base["name"]
        if renamed and "options" in out and "options" not in top:
            out.pop("options")
        elif renamed and "options" in top:
            out.pop("options", None)
        for k, v in top.items():
            out[k] = merge(out[k], v) if k in out else v
        return out
    return top


def parse_overrides(items: Sequence[str], errors: list[str]) -> list[tuple[str, Any]]:
    """``KEY=VALUE`` strings -> ``(key, YAML value)`` pairs; each malformed one (and each that sets a forbidden
    key) is appended to ``errors`` instead."""
    out = []
    for item in items:
        parsed = _parse_override(item, errors)
        if parsed is not None:
            out.append(parsed)
    for key, value in out:
        _check_forbidden_override(key, value, errors)
    return out


def _parse_override(item: str, errors: list[str]) -> tuple[str, Any] | None:
    if "=" not in item:
        errors.append(f"override {item!r}: expected KEY=VALUE (e.g. stages.1.optim.lr=1e-5)")
        return None
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        errors.append(f"override {item!r}: empty key")
        return None
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _check_forbidden_override(key: str, value: Any, errors: list[str]) -> None:
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in FORBIDDEN_KEYS and not (part == "trust_remote_code" and i == len(parts) - 1 and value is False):
            errors.append(f"{key} (override): {FORBIDDEN_KEYS[part]}")
            return
    _check_forbidden(value, key, errors, "override")


def _renames(kv: tuple[str, Any]) -> bool:
    key, value = kv
    return key.split(".")[-1] == "name" or (isinstance(value, dict) and "name" in value)


def apply_overrides(data: dict, overrides: Sequence[tuple[str, Any]], errors: list[str]) -> None:
    """Apply parsed overrides to plain ``data`` in place, renames first, so that
    ``model.x.name=new model.x.options.k=v`` keeps ``k`` whatever the order on the command line."""
    for key, value in sorted(overrides, key=lambda kv: not _renames(kv)):
        _apply_override(data, key, value, errors)


def _apply_override(data: dict, key: str, value: Any, errors: list[str]) -> None:
    """Set ``key`` (dots; integers index lists) in plain ``data``; a missing list index is an error.

    Setting a component's ``name`` to another name drops the options it had (the rename rule).
    """
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit():
                errors.append(f"override {key}: {'.'.join(parts[:i])} is a list; index it with a number")
                return
            idx = int(part)
            if not -len(node) <= idx < len(node):
                errors.append(f"override {key}: {where}: index {idx} out of range (the list has {len(node)} items)")
                return
            if last:
                node[idx] = merge(node[idx], value)
                return
            node = node[idx]
        elif isinstance(node, dict):
            if last:
                if part == "name" and "options" in node and node.get("name") != value:
                    node.pop("options")  # a renamed component does not inherit the old one's options
                node[part] = merge(node[part], value) if part in node else value
                return
            if node.get(part) is None:
                if parts[i + 1].lstrip("-").isdigit():
                    errors.append(f"override {key}: {where} is not set in the recipe, so it has no item "
                                  f"{parts[i + 1]}; set the whole list instead, e.g. {where}=[...]")
                    return
                node[part] = {}
            node = node[part]
        else:
            errors.append(f"override {key}: {'.'.join(parts[:i])} is a value, not a mapping")
            return
