"""Recipes: the OmegaConf dataclass schema, ``base:`` layering, CLI overrides and all-at-once validation."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union, get_args, get_origin, get_type_hints

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from pvit.errors import RecipeError

#: Keys that would make a recipe import or run arbitrary code; rejected anywhere in a recipe.
FORBIDDEN_KEYS = {
    "_target_": "import paths are not allowed; name a registered component instead",
    "_partial_": "import paths are not allowed",
    "class_path": "import paths are not allowed; name a registered component instead",
    "type": "'type:' import paths are not allowed; name a registered component with 'name:'",
    "trust_remote_code": "trust_remote_code is not allowed: only installed, registered code runs",
}
#: A secret-looking environment variable or key: a whole ``_``/``-``-separated word such as ``HF_TOKEN``,
#: ``WANDB_API_KEY``, ``hub_token`` or ``use_auth_token`` (not ``max_new_tokens`` or ``tokenizer``).
_SECRET_RE = re.compile(
    r"(?:^|[_\-])(?:token|secret|password|passwd|passphrase|api[_\-]?key|access[_\-]?key|private[_\-]?key|auth|"
    r"credentials?)(?:$|[_\-])",
    re.IGNORECASE,
)
_ENV_RE = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)")
_MIN_SECRET_LEN = 6  # shorter values are only redacted where they were interpolated, not searched for elsewhere


@dataclass
class Component:
    """A component by registered name, with its factory's keyword arguments."""

    name: str = MISSING
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Optim:
    """Optimiser and schedule of one stage (AdamW, warmup then cosine or constant)."""

    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    epochs: Optional[float] = 1.0
    max_steps: Optional[int] = None
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    clip_grad: Optional[float] = 1.0
    precision: str = "fp32"


@dataclass
class Stage:
    """One training stage: data, which model slots train, where its weights start, and its optimiser."""

    name: str = MISSING
    data: Component = MISSING
    trainable: List[str] = field(default_factory=list)
    init_from: Optional[str] = None
    optim: Optim = field(default_factory=Optim)


@dataclass
class Model:
    """The components of a PVIT model. ``in_dim``/``out_dim`` of projectors are wired, never written here."""

    llm: Component = MISSING
    image_encoder: Optional[Component] = None
    region_encoder: Optional[Component] = None
    projector: Component = field(default_factory=lambda: Component(name="mlp2x-gelu"))
    region_projector: Component = field(default_factory=lambda: Component(name="linear"))
    bbox_embed: bool = False
    template: str = "auto"
    max_length: int = 2048
    region_policy: str = "error"


@dataclass
class Engine:
    """How stages run: strategy, devices, logging, checkpoints."""

    strategy: str = "auto"
    device: str = "auto"
    num_workers: int = 2
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    tensorboard: bool = True
    progress: bool = True
    deterministic: bool = False


@dataclass
class Recipe:
    """A whole recipe: model, stages, evaluations, engine settings."""

    name: str = "pvit"
    description: str = ""
    seed: int = 0
    run_dir: str = "runs/${name}"
    paths: Dict[str, Any] = field(default_factory=dict)
    model: Model = MISSING
    stages: List[Stage] = field(default_factory=list)
    eval: List[Component] = field(default_factory=list)
    engine: Engine = field(default_factory=Engine)


# ----------------------------------------------------------------------------------------- loading


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


def _yaml_load(text: str) -> Any:
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
        data = _yaml_load(text)
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


def _layers(path: Path, errors: list[str], seen: tuple[Path, ...] = (), via: str = "") -> list[tuple[Path, dict]]:
    """The layers of ``path``, base first: each ``base:`` (a path or list, relative to the file) before it."""
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
            out += _layers(path.parent / b, errors, seen + (path,), via=f" (named by 'base: {b}' in {path})")
    out.append((path, data))
    return out


def _merge(base: Any, top: Any) -> Any:
    """Deep-merge plain containers; lists replace; a component whose ``name`` changes drops its old options."""
    if isinstance(base, dict) and isinstance(top, dict):
        out = dict(base)
        renamed = "name" in top and "name" in base and top["name"] != base["name"]
        if renamed and "options" in out and "options" not in top:
            out.pop("options")
        elif renamed and "options" in top:
            out.pop("options", None)
        for k, v in top.items():
            out[k] = _merge(out[k], v) if k in out else v
        return out
    return top


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
        value = _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _renames(kv: tuple[str, Any]) -> bool:
    key, value = kv
    return key.split(".")[-1] == "name" or (isinstance(value, dict) and "name" in value)


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
                node[idx] = _merge(node[idx], value)
                return
            node = node[idx]
        elif isinstance(node, dict):
            if last:
                if part == "name" and "options" in node and node.get("name") != value:
                    node.pop("options")  # a renamed component does not inherit the old one's options
                node[part] = _merge(node[part], value) if part in node else value
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


# ----------------------------------------------------------------------------------------- validation


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _did_you_mean(key: str, options: Sequence[str]) -> str:
    guess = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f"; did you mean {guess[0]!r}?" if guess else ""


def _validate(tp: Any, value: Any, path: str, errors: list[str]) -> None:
    """Collect every schema problem of plain ``value`` against type ``tp`` at key ``path``."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if not optional and tp is not Any:
            errors.append(f"{path}: may not be null")
        return
    if isinstance(value, str) and value == "???":
        errors.append(f"{path}: missing mandatory value")
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping ({tp.__name__}), got {value!r}")
            return
        hints = get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        for k, v in value.items():
            key = f"{path}.{k}" if path else str(k)
            if k not in hints:
                errors.append(f"{key}: unknown key{_did_you_mean(str(k), names)} (valid keys: {', '.join(names)})")
                continue
            _validate(hints[k], v, key, errors)
        for f in dataclasses.fields(tp):
            if f.default is MISSING and f.default_factory is dataclasses.MISSING and f.name not in value:
                errors.append(f"{path + '.' if path else ''}{f.name}: missing mandatory value")
        return
    origin = get_origin(tp)
    if origin in (list, List):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {value!r}")
            return
        (item_tp,) = get_args(tp) or (Any,)
        for i, v in enumerate(value):
            _validate(item_tp, v, f"{path}[{i}]", errors)
        return
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {value!r}")
        return
    if tp is Any:
        return
    if isinstance(value, str) and "${" in value:
        return  # interpolations are checked after resolution
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, (str, int, float)) and not isinstance(value, bool),
    }.get(tp, True)
    if not ok:
        errors.append(f"{path}: expected {tp.__name__}, got {value!r}")


def _resolve_all(cfg: Any, path: str, errors: list[str]) -> None:
    """Resolve every node of ``cfg``, collecting one error per node that fails (missing values are skipped:
    the schema check reports them)."""
    if isinstance(cfg, DictConfig):
        items = [(k, f"{path}.{k}" if path else str(k)) for k in cfg.keys()]
    elif isinstance(cfg, ListConfig):
        items = [(i, f"{path}[{i}]") for i in range(len(cfg))]
    else:
        return
    for k, key in items:
        try:
            node = cfg[k]
        except MissingMandatoryValue:
            continue
        except OmegaConfBaseException as e:
            raw = OmegaConf.to_container(cfg, resolve=False)[k]
            shown = f" {raw!r}" if isinstance(raw, str) else ""
            errors.append(f"{key}: cannot resolve{shown}: {_short(e)}")
            continue
        _resolve_all(node, key, errors)


def _interpolation_errors(data: dict, errors: list[str]) -> None:
    """Broken interpolations of plain ``data`` (before the schema merge, so they come with schema errors)."""
    try:
        plain = OmegaConf.create(data)
    except OmegaConfBaseException:
        return  # the schema merge reports it
    _resolve_all(plain, "", errors)


def _short(e: Exception) -> str:
    return str(e).splitlines()[0]


# ----------------------------------------------------------------------------------------- API


@dataclass
class LoadedRecipe:
    """A validated recipe: ``cfg`` (typed, struct mode) plus where it came from."""

    cfg: DictConfig
    path: Path
    layers: list[Path]
    overrides: list[str]
    raw: dict

    def to_yaml(self, resolve: bool = True) -> str:
        """The recipe as YAML; secrets taken from environment variables are redacted."""
        return dump_yaml(self.cfg, resolve=resolve)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> LoadedRecipe:
    """Load ``path`` with its ``base:`` layers, apply ``KEY=VALUE`` overrides, validate against the schema.

    Every problem is collected and raised together as one [RecipeError][pvit.errors.RecipeError], each
    with its full key path. Import paths and ``trust_remote_code`` are rejected before anything is imported.
    """
    path = Path(path)
    errors: list[str] = []
    layers = _layers(path, errors)
    merged: dict = {}
    for _, data in layers:
        merged = _merge(merged, data)
    parsed = [p for p in (_parse_override(o, errors) for o in overrides) if p is not None]
    for key, value in parsed:
        _check_forbidden_override(key, value, errors)
    if errors:
        raise _error(errors, path, merged)
    # Renames first, so `model.x.name=new model.x.options.k=v` keeps k whatever the order on the command line.
    for key, value in sorted(parsed, key=lambda kv: not _renames(kv)):
        _apply_override(merged, key, value, errors)
    _validate(Recipe, merged, "", errors)
    _interpolation_errors(merged, errors)
    if errors:
        raise _error(errors, path, merged)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Recipe), merged)
    except OmegaConfBaseException as e:
        raise _error([_short(e)], path, merged) from None
    OmegaConf.set_struct(cfg, True)
    _resolve_all(cfg, "", errors)
    if not errors:
        errors += [f"{key}: missing mandatory value" for key in sorted(OmegaConf.missing_keys(cfg))]
    if errors:
        raise _error(errors, path, merged)
    return LoadedRecipe(cfg=cfg, path=path, layers=[p for p, _ in layers], overrides=list(overrides), raw=merged)


def _check_forbidden_override(key: str, value: Any, errors: list[str]) -> None:
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in FORBIDDEN_KEYS and not (part == "trust_remote_code" and i == len(parts) - 1 and value is False):
            errors.append(f"{key} (override): {FORBIDDEN_KEYS[part]}")
            return
    _check_forbidden(value, key, errors, "override")


def _error(errors: list[str], path: Path, raw: Any) -> RecipeError:
    """A RecipeError whose messages carry no secret taken from the environment."""
    secrets = _secret_env_values(raw)
    return RecipeError([_scrub(e, secrets) for e in errors], source=str(path))


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_RE.search(name))


def _secret_env_values(raw: Any, key: str = "", out: dict[str, str] | None = None) -> dict[str, str]:
    """Current values of the secret environment variables ``raw`` interpolates: value -> variable name.

    A variable is secret when its name looks like one (``HF_TOKEN``) or it sits under a secret-looking key.
    """
    out = {} if out is None else out
    if isinstance(raw, dict):
        for k, v in raw.items():
            _secret_env_values(v, str(k), out)
    elif isinstance(raw, list):
        for v in raw:
            _secret_env_values(v, key, out)
    elif isinstance(raw, str):
        for var in _ENV_RE.findall(raw):
            value = os.environ.get(var)
            if value and (_is_secret_name(var) or _is_secret_name(key)):
                out[value] = var
    return out


def _scrub(text: str, secrets: dict[str, str]) -> str:
    for value, var in sorted(secrets.items(), key=lambda kv: -len(kv[0])):
        if len(value) >= _MIN_SECRET_LEN:
            text = text.replace(value, f"<redacted: from ${var}>")
    return text


def options_of(component: Any) -> dict:
    """A recipe component's ``options`` as plain Python (dicts and lists, interpolations resolved): the keyword
    arguments its factory gets."""
    options = getattr(component, "options", None)
    if options is None:
        return {}
    if isinstance(options, (DictConfig, ListConfig)):
        return OmegaConf.to_container(options, resolve=True)
    return dict(options)


def dump_yaml(cfg: DictConfig, resolve: bool = True) -> str:
    """YAML of ``cfg`` with secrets from the environment redacted.

    A value interpolated from a secret-looking environment variable (``${oc.env:HF_TOKEN}``) or under a
    secret-looking key (``hub_token: ${...}``) becomes ``<redacted: from $VAR>``, and so does any other string
    that contains such a secret (``run_dir: runs/${paths.token}``). Other environment values (data paths) stay.
    """
    raw = OmegaConf.to_container(cfg, resolve=False)
    data = OmegaConf.to_container(cfg, resolve=resolve) if resolve else raw
    secrets = _secret_env_values(raw)

    def redact(r: Any, d: Any, key: str = "") -> Any:
        if isinstance(r, dict) and isinstance(d, dict):
            return {k: redact(r.get(k), v, str(k)) for k, v in d.items()}
        if isinstance(r, list) and isinstance(d, list):
            return [redact(a, b, key) for a, b in zip(r, d)]
        if isinstance(r, str) and "${" in r and d != r:
            env = _ENV_RE.findall(r)
            secret_vars = [v for v in env if _is_secret_name(v)]
            if secret_vars or _is_secret_name(key):
                var = (secret_vars or env or [None])[0]
                return f"<redacted: from ${var}>" if var else "<redacted>"
        if isinstance(d, str):
            scrubbed = _scrub(d, secrets)
            if scrubbed != d:
                return scrubbed
        return d

    return yaml.safe_dump(redact(raw, data), sort_keys=False)
