"""Preflight's file check, driven by the factories' file-option markers, finds exactly what the former
key-name walk found in every shipped recipe (that walk is kept below as the reference)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import pvit
from pvit.options import file_option_values
from pvit.preflight import component_entries, missing_files
from pvit.recipe import options_of

ROOT = Path(__file__).resolve().parents[1]
# training recipes only: recipes/generate/ holds `pvit generate` recipes (tests/test_generate_recipes.py)
RECIPES = sorted(p.relative_to(ROOT).as_posix() for p in [*(ROOT / "recipes").rglob("*.yaml"),
                                                          *(ROOT / "tests/recipes").glob("*.yaml")]
                 if not p.relative_to(ROOT).as_posix().startswith("recipes/generate/"))

# ---- the former walk: option keys by name, recursing into every nested dict and list
FILE_KEYS = {"path", "checkpoint", "pretrained", "annotations", "image_folder", "questions", "scene_graphs",
             "instructions", "images", "root"}
_WEIGHT_EXT = (".pt", ".pth", ".bin", ".safetensors", ".json", ".jsonl", ".yaml")


def _walk_files(node: Any, path: str, out: list[tuple[str, str]]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{path}.{k}"
            if k in FILE_KEYS and isinstance(v, str) and v:
                out.append((key, v))
            elif k == "image_roots" and isinstance(v, dict):
                out += [(f"{key}.{s}", d) for s, d in v.items() if isinstance(d, str)]
            else:
                _walk_files(v, key, out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk_files(v, f"{path}[{i}]", out)


def _old_found(cfg) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for where, _kind, comp in component_entries(cfg):
        _walk_files(options_of(comp), f"{where}.options", found)
    return found


def _old_missing(cfg, offline: bool) -> list[tuple[str, str]]:
    missing = []
    for key, value in _old_found(cfg):
        if Path(os.path.expanduser(value)).exists():
            continue
        hub_id = value.count("/") == 1 and not value.startswith((".", "/", "~")) and not value.endswith(_WEIGHT_EXT)
        if hub_id and not offline:
            continue
        if key.endswith(".pretrained") and "/" not in value and not value.endswith(_WEIGHT_EXT):
            continue
        missing.append((key, value))
    return missing


def _new_found(cfg) -> list[tuple[str, str]]:
    return [(k, v) for where, kind, comp in component_entries(cfg)
            for k, v, _m in file_option_values(kind, comp.name, options_of(comp), where=where)]


def test_recipes_are_found():
    assert "recipes/pvit_full.yaml" in RECIPES and "tests/recipes/micro.yaml" in RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_markers_find_what_the_key_walk_found(recipe, monkeypatch):
    cfg = pvit.load_recipe(ROOT / recipe).cfg
    assert _new_found(cfg) == _old_found(cfg)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert missing_files(cfg) == _old_missing(cfg, offline=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    # online, a value like "org/name" is taken for a hub id only where the option accepts one (LLM and CLIP
    # paths); a plain file option that names nothing is missing either way
    online = missing_files(cfg)
    assert set(_old_missing(cfg, offline=False)) <= set(online)
    hub_keys = {"model.llm.options.path", "model.image_encoder.options.path"}
    assert not [k for k, v in online if k in hub_keys and (k, v) not in _old_missing(cfg, offline=False)]


def test_paper_recipe_paths_and_tags(monkeypatch, tmp_path):
    monkeypatch.setenv("PVIT_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    over = ["model.llm.options.path=lmsys/vicuna-7b", "model.image_encoder.name=openclip-vit",
            "model.image_encoder.options={model: ViT-L-14-quickgelu, pretrained: openai}"]
    cfg = pvit.load_recipe(ROOT / "recipes/pvit_full.yaml", over).cfg
    keys = [k for k, _ in missing_files(cfg)]
    assert "model.llm.options.path" not in keys  # a hub id, online
    assert "model.image_encoder.options.pretrained" not in keys  # an open_clip tag, not a file
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "model.llm.options.path" in [k for k, _ in missing_files(cfg)]
