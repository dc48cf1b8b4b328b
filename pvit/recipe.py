"""Loading a recipe: its ``base:`` layers and overrides merged, checked all at once, and its YAML without secrets.

The schema lives in [pvit.recipe_schema][], the YAML layering and overrides in [pvit.recipe_layers][] and the
redaction of secrets in [pvit.secrets][]; their names stay importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from pvit.errors import RecipeError
from pvit.recipe_layers import apply_overrides, merged_layers, parse_overrides, read_layers
from pvit.recipe_schema import Recipe, schema_errors
from pvit.secrets import redact, scrub, secret_env_values

# Names that moved out of this module, still importable from here.
from pvit.recipe_layers import FORBIDDEN_KEYS  # noqa: F401
from pvit.recipe_schema import Component, Engine, FeatureCacheOptions, Model, Optim, Stage  # noqa: F401

_scrub = scrub  # old private names, used by callers before pvit.secrets existed
_secret_env_values = secret_env_values


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
    layers = read_layers(path, errors)
    merged = merged_layers(layers)
    parsed = parse_overrides(overrides, errors)
    if errors:
        raise _error(errors, path, merged)
    apply_overrides(merged, parsed, errors)
    schema_errors(Recipe, merged, "", errors)
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


def _error(errors: list[str], path: Path, raw: Any) -> RecipeError:
    """A RecipeError whose messages carry no secret taken from the environment."""
    secrets = secret_env_values(raw)
    return RecipeError([scrub(e, secrets) for e in errors], source=str(path))


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
    """YAML of ``cfg`` with secrets from the environment redacted (see [redact][pvit.secrets.redact]).

    A value interpolated from a secret-looking environment variable (``${oc.env:HF_TOKEN}``) or under a
    secret-looking key (``hub_token: ${...}``) becomes ``<redacted: from $VAR>``, and so does any other string
    that contains such a secret (``run_dir: runs/${paths.token}``). Other environment values (data paths) stay.
    """
    raw = OmegaConf.to_container(cfg, resolve=False)
    data = OmegaConf.to_container(cfg, resolve=resolve) if resolve else raw
    return yaml.safe_dump(redact(raw, data), sort_keys=False)
