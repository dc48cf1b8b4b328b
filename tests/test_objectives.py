"""Stage objectives: the region-contrastive loss, its targets from the collator, and what a run does with it."""

from __future__ import annotations

import pytest
import torch

import pvit
from pvit.errors import DataError, RecipeError
from pvit.objectives import TEMPERATURE, region_contrastive
from pvit.run import run_recipe
from helpers import MICRO, stage_setup

BOX = "<Region><L100><L100><L400><L400></Region>"
BOX2 = "<Region><L500><L500><L900><L900></Region>"


def _sample(turns, sid="s"):
    from PIL import Image

    conv = [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]
    return {"id": sid, "image": Image.new("RGB", (32, 32)), "conversations": conv}


def _micro_stage1(overrides=()):
    loaded = pvit.load_recipe(MICRO, ["stages.1.objective=region-contrastive", "stages.1.data.options.questions_per_sample=3",
                                      *overrides])
    return stage_setup(loaded, 1)


def test_collator_pairs_each_region_with_the_reply_to_a_question_about_it_alone():
    model, _, _, col = _micro_stage1()
    batch = col([
        _sample([f"Describe {BOX} .", "a red circle", f"Is {BOX} left of {BOX2} ?", "yes", f"And {BOX2} ?", "a cross"]),
        _sample([f"Describe {BOX2} .", "a blue square"], sid="t"),
    ])
    assert len(batch["regions"]) == 5
    # regions in image order, then mention order; the two-region question gives its boxes no target
    assert batch["region_targets"] == ["a red circle", None, None, "a cross", "a blue square"]


def test_loss_is_the_cross_entropy_of_each_region_against_the_batch_replies():
    model, _, ds, col = _micro_stage1()
    model.objective = "region-contrastive"
    batch = col([ds[i] for i in range(4)])
    out = model(batch)
    targets = batch["region_targets"]
    assert all(targets) and len(targets) == len(batch["regions"]) == 12
    names = sorted(set(targets))
    assert out.logits.shape == (12, len(names))
    # recomputed by hand from the pieces: projected features against mean word embeddings
    z = model.region_features(batch).float().mean(1)
    tok = model.llm.tokenizer
    text = torch.stack([model.llm.embed(torch.tensor(tok(t, add_special_tokens=False)["input_ids"])).float().mean(0)
                        for t in names])
    logits = torch.nn.functional.normalize(z, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T / TEMPERATURE
    labels = torch.tensor([names.index(t) for t in targets])
    assert torch.allclose(out.logits, logits, atol=1e-5)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(logits, labels), atol=1e-5)


def test_gradient_reaches_the_region_side_and_never_the_word_embeddings():
    model, _, ds, col = _micro_stage1(["model.region_encoder.options.frozen=false"])
    model.objective = "region-contrastive"
    model.train()
    batch = col([ds[i] for i in range(4)])
    model(batch).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.region_projector.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.region_encoder.parameters())
    assert model.llm.model.get_input_embeddings().weight.grad is None


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model, _, ds, col = _micro_stage1()
    model.objective = "region-contrastive"
    model.train()
    batch = col([ds[i] for i in range(8)])
    params = list(model.region_projector.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    first = float(model(batch).loss.detach())
    for _ in range(30):
        opt.zero_grad()
        model(batch).loss.backward()
        opt.step()
    assert float(model(batch).loss.detach()) < 0.5 * first


def test_a_batch_without_single_region_replies_says_what_data_is_needed():
    model, _, _, col = _micro_stage1()
    batch = col([_sample([f"Is {BOX} left of {BOX2} ?", "yes"])])
    with pytest.raises(DataError, match="region-caption data"):
        region_contrastive(model, batch)


def test_unknown_objective_is_a_recipe_error(tmp_path):
    loaded = pvit.load_recipe(MICRO, [f"run_dir={tmp_path / 'r'}", "stages.1.objective=contrastive", "eval=[]"])
    with pytest.raises(RecipeError, match=r"stages\[stage1\]\.objective: 'contrastive' is not one of lm, "
                                          "region-contrastive"):
        run_recipe(loaded, overwrite=True, log=lambda s: None)


def test_a_run_trains_the_region_encoder_and_a_model_without_region_features_skips_the_stage(tmp_path):
    common = ["eval=[]", "stages.1.objective=region-contrastive", "stages.1.data.options.questions_per_sample=2",
              "stages.1.trainable=[region_encoder, region_projector]"]
    out = run_recipe(pvit.load_recipe(MICRO, [f"run_dir={tmp_path / 'rc'}", "model.region_encoder.options.frozen=false",
                                              *common]), overwrite=True, log=lambda s: None)
    stage = out["stages"][1]
    assert stage["steps"] == 6 and len(stage["losses"]) == 6 and stage["trainable"]["region_encoder"] > 0
    logs: list[str] = []
    out = run_recipe(pvit.load_recipe(MICRO, [f"run_dir={tmp_path / 'tc'}", "model.region_encoder={name: text-coords}",
                                              *common]), overwrite=True, log=logs.append)
    assert out["stages"][1]["steps"] == 0 and out["stages"][2]["steps"] == 6
    assert any("stage 2/3 stage1: skipped; its objective region-contrastive needs region features" in s for s in logs)
