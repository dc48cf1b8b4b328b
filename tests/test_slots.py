"""Trainable slots: one owner for what a stage trains, counts that the plan and the stage agree on, and a
parameter group declared by a throwaway plugin's component that trains with no core edit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import pvit
from pvit import plugins
from pvit.compose import build_model
from pvit.errors import RecipeError
from pvit.plan import plan_model
from pvit.run import run_recipe
from pvit.slots import (SLOTS, count, depends_on_regions, frozen_components, model_slots, select, set_trainable,
                        state_names)

MICRO = Path(__file__).parent / "recipes" / "micro.yaml"


class GatedProjector(nn.Module):
    """A linear projector with a learnable output gate, offered as its own slot ``<component>.gate``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.linear = nn.Linear(in_dim, out_dim)
        self.gate = nn.Parameter(torch.full((out_dim,), 0.5))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"gate": [self.gate]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.to(self.linear.weight.dtype)) * self.gate  # (..., out_dim)


class GatedPlugin:
    @pvit.hookimpl
    def pvit_register_projectors(self, register):
        register("gated-linear", lambda in_dim, out_dim: GatedProjector(in_dim, out_dim))


@pytest.fixture
def gated():
    plugins.register_plugin(GatedPlugin(), "test-gated-projector")
    yield
    plugins.unregister_plugin("test-gated-projector")


def _recipe(tmp_path, trainable: str) -> Path:
    path = tmp_path / "gated.yaml"
    path.write_text(f"""\
base: {MICRO}
run_dir: {tmp_path / 'run'}
model:
  region_projector: {{name: gated-linear}}
stages:
  - name: gate-only
    data: {{name: synth-regions, options: {{split: train, size: 32, task: region-caption, image_size: 32}}}}
    trainable: {trainable}
    optim: {{lr: 5.0e-2, max_steps: 4, batch_size: 4}}
eval: []
engine: {{tensorboard: false}}
""")
    return path


def test_a_component_declared_group_trains_alone_and_is_exported(gated, tmp_path):
    loaded = pvit.load_recipe(_recipe(tmp_path, "[region_projector.gate]"))
    torch.manual_seed(loaded.cfg.seed)
    before = {k: v.clone() for k, v in build_model(loaded.cfg).state_dict().items()}
    summary = run_recipe(loaded, log=lambda *_: None)
    assert summary["plan"]["stages"][0]["trainable"] == {"region_projector.gate": 32}
    assert summary["stages"][0]["trainable"] == {"region_projector.gate": 32}
    export = tmp_path / "run" / "stages" / "1-gate-only" / "export" / "weights.safetensors"
    state = load_file(str(export))
    assert list(state) == ["region_projector.gate"]
    assert not torch.equal(state["region_projector.gate"], before["region_projector.gate"])
    # the export holds the trained values, and nothing else of the model moved: load it into a fresh model
    fresh = build_model(loaded.cfg)
    fresh.load_state_dict(before)
    from pvit.checkpoints import load_export

    assert load_export(fresh, export) == ["region_projector.gate"]
    assert torch.equal(fresh.region_projector.gate, state["region_projector.gate"])


def test_unknown_slot_lists_declared_groups_with_a_suggestion(gated, tmp_path):
    loaded = pvit.load_recipe(_recipe(tmp_path, "[region_projector.gat]"))
    model = build_model(loaded.cfg)
    assert "region_projector.gate" in model_slots(model)
    with pytest.raises(RecipeError, match=r"unknown slot 'region_projector.gat'; did you mean 'region_projector.gate'"):
        select(model, ["region_projector.gat"], where="stages[0]")
    with pytest.raises(RecipeError, match="region_projector.gate"):
        plan_model(model, loaded.cfg)


def test_group_slot_freezes_everything_else_and_keeps_other_components_in_eval_mode(gated, tmp_path):
    loaded = pvit.load_recipe(_recipe(tmp_path, "[region_projector.gate]"))
    model = build_model(loaded.cfg)
    state = set_trainable(model, ["region_projector.gate"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["region_projector.gate"] and state.counts == {"region_projector.gate": 32}
    assert "region_projector" not in frozen_components(model, ["region_projector.gate"])
    assert frozen_components(model, ["region_projector.gate"]) == ["image_encoder", "region_encoder", "projector",
                                                                   "llm", "bbox_embed"]
    assert depends_on_regions(["region_projector.gate"]) and not depends_on_regions(["projector", "llm"])
    assert state_names(model, select(model, ["region_projector.gate", "projector"])) == [
        "region_projector.gate", "projector."]


def test_plan_and_stage_count_the_same_parameters_for_every_micro_stage():
    loaded = pvit.load_recipe(MICRO)
    model = build_model(loaded.cfg)
    plan = plan_model(model, loaded.cfg)
    for i, st in enumerate(loaded.cfg.stages):
        state = set_trainable(model, list(st.trainable), where=f"stages[{i}]")
        state.remove()
        assert plan.stages[i]["trainable"] == state.counts
        assert state.total == sum(p.numel() for p in model.parameters() if p.requires_grad) - (
            # new_token_embeddings trains rows of whole matrices: requires_grad covers the matrix, counts the rows
            0 if "new_token_embeddings" not in st.trainable else
            sum(w.numel() for w in model_slots(model)["new_token_embeddings"].params)
            - state.counts["new_token_embeddings"])
    assert set(SLOTS) <= set(model_slots(model))


def test_new_token_rows_are_not_counted_twice_when_the_llm_trains_whole():
    model = build_model(pvit.load_recipe(MICRO).cfg)
    counts = count(select(model, ["llm", "new_token_embeddings"]))
    assert counts["new_token_embeddings"] == 0
    assert counts["llm"] == sum(p.numel() for p in model.llm.parameters())
