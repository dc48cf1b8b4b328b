"""Checks before any work starts: every component exists and takes its options, stage names and
``init_from`` make sense, and every file the recipe names is on this machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pvit.errors import MissingWeightsError, RecipeError
from pvit.options import FileOption, file_option_values
from pvit.recipe import options_of
from pvit.runtime import offline

_WEIGHT_EXT = (".pt", ".pth", ".bin", ".safetensors", ".json", ".jsonl", ".yaml")

def component_entries(cfg) -> list[tuple[str, str, Any]]:
    """(key path, kind, component config) of every component a recipe names."""
    out = []
    m = cfg.model
    for slot, kind in (("llm", "llm"), ("image_encoder", "image_encoder"), ("region_encoder", "region_encoder")):
        if m[slot] is not None:
            out.append((f"model.{slot}", kind, m[slot]))
    if m.image_encoder is not None:
        out.append(("model.projector", "projector", m.projector))
    if m.region_encoder is not None:
        out.append(("model.region_projector", "projector", m.region_projector))
    for i, st in enumerate(cfg.stages):
        out.append((f"stages[{i}].data", "dataset", st.data))
    for i, ev in enumerate(cfg.eval):
        out.append((f"eval[{i}]", "evaluator", ev))
    return out


def check_components(cfg) -> None:
    """Every component exists and its options fit its factory; all problems raised together."""
    from pvit.errors import UnknownComponentError
    from pvit.registry import check_options, get_component

    errors = []
    for where, kind, comp in component_entries(cfg):
        try:
            problems = check_options(kind, comp.name, options_of(comp), where=where)
        except UnknownComponentError as e:
            errors.append(str(e))
            continue
        errors += problems
        # A factory may carry ``preflight(options, where) -> [problems]`` for checks of option values that
        # need no weights (e.g. hf-causal-lm's QLoRA needs CUDA): they run here, before anything is built.
        hook = getattr(get_component(kind, comp.name).factory, "preflight", None)
        if not problems and callable(hook):
            errors += list(hook(options_of(comp), where))
    names = [s.name for s in cfg.stages]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        errors.append(f"stages: stage names must be unique; repeated: {', '.join(sorted(dup))}")
    for i, st in enumerate(cfg.stages):
        if st.init_from and st.init_from not in names[:i] and not _looks_like_path(st.init_from):
            errors.append(f"stages[{i}].init_from: {st.init_from!r} is neither an earlier stage ({', '.join(names[:i]) or 'none'}) "
                          "nor a path to an export")
    if errors:
        raise RecipeError(errors)


def _looks_like_path(v: str) -> bool:
    return "/" in v or v.endswith(_WEIGHT_EXT) or os.path.exists(v)


def _is_missing(value: str, marker: FileOption) -> bool:
    if Path(os.path.expanduser(value)).exists():
        return False
    if marker.hub:  # a hub id needs the hub: missing only when it is off
        hub_id = value.count("/") == 1 and not value.startswith((".", "/", "~")) and not value.endswith(_WEIGHT_EXT)
        if hub_id and not offline():
            return False
    if marker.tag and "/" not in value and not value.endswith(_WEIGHT_EXT):
        return False  # a named tag the library resolves itself
    return True


def missing_files(cfg) -> list[tuple[str, str]]:
    """(key path, value) of file options that name nothing on this machine (hub ids count as missing offline).

    File options are those the components' factories mark in their signatures (see [pvit.options][]).
    """
    found = []
    for where, kind, comp in component_entries(cfg):
        found += file_option_values(kind, comp.name, options_of(comp), where=where)
    return [(key, value) for key, value, marker in found if _is_missing(value, marker)]


def require_files(cfg, source: Any) -> None:
    """Raise MissingWeightsError listing every file option of the recipe that names nothing here."""
    missing = missing_files(cfg)
    if missing:
        lines = "\n".join(f"  - {k}: {v}" for k, v in missing)
        raise MissingWeightsError(
            f"{source} needs files that are not on this machine:\n{lines}\n"
            f"Get them as described in the comments of {source} (and docs/reproduce.md), point the recipe's "
            "paths at them (e.g. with environment variables or KEY=VALUE overrides), or run "
            "recipes/pvit_tiny.yaml, which runs anywhere."
        )
