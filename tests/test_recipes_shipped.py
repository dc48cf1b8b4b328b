"""Every shipped recipe loads, names only installed components with valid options, and plans (meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest

import pvit
from pvit.errors import MissingWeightsError
from pvit.plan import make_plan
from pvit.preflight import check_components, missing_files
from pvit.run import run_recipe

ROOT = Path(__file__).resolve().parents[1]
# recipes/generate/ holds `pvit generate` recipes (a `generate:` section, not a training recipe); they are run by
# tests/test_generate_recipes.py.
RECIPES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("*.yaml")
                 if not p.relative_to(ROOT).as_posix().startswith("recipes/generate/"))


def test_recipes_are_found():
    assert "recipes/pvit_tiny.yaml" in RECIPES and "recipes/pvit_full.yaml" in RECIPES
    assert any(r.startswith("recipes/ablations/") for r in RECIPES)
    assert any(r.startswith("recipes/eval/") for r in RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_loads_and_plans(recipe):
    loaded = pvit.load_recipe(ROOT / recipe)
    check_components(loaded.cfg)
    plan = make_plan(loaded.cfg)
    assert plan.total > 0
    assert [s["name"] for s in plan.stages] == [s.name for s in loaded.cfg.stages]
    enc = loaded.cfg.model.region_encoder
    region_free = enc is None or enc.name in ("none", "text-coords")  # no region features (K = 0)
    for st in plan.stages:
        # only a model without region features may have a stage with nothing to train (it is skipped)
        assert st["trainable_total"] > 0 or region_free, st


def test_paper_plan_has_the_papers_sizes():
    plan = make_plan(pvit.load_recipe(ROOT / "recipes/pvit_full.yaml").cfg)
    params = {c["slot"]: c["parameters"] for c in plan.components}
    assert 6.6e9 < params["llm"] < 6.9e9  # LLaMA-7B
    assert 2.9e8 < params["image_encoder"] < 3.1e8  # CLIP ViT-L/14
    assert 8.5e7 < params["region_encoder"] < 8.9e7  # RegionCLIP RN50x4 visual
    stage1 = plan.stages[0]
    assert set(stage1["trainable"]) == {"region_projector", "new_token_embeddings"}
    assert stage1["trainable_total"] < 1e7


def test_paper_recipe_without_weights_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("PVIT_WEIGHTS", str(tmp_path / "no-weights"))
    monkeypatch.setenv("PVIT_DATA", str(tmp_path / "no-data"))
    loaded = pvit.load_recipe(ROOT / "recipes/pvit_full.yaml", [f"run_dir={tmp_path / 'run'}"])
    assert any(k == "model.llm.options.path" for k, _ in missing_files(loaded.cfg))
    with pytest.raises(MissingWeightsError) as e:
        run_recipe(loaded, log=lambda *_: None)
    msg = str(e.value)
    assert "llava-7b" in msg and "regionclip_pretrained-cc_rn50x4.pth" in msg and "pvit_tiny.yaml" in msg
    assert not (tmp_path / "run").exists()
