"""The llava-hf components: a transformers LLaVA checkpoint split into pvit's LLM, image encoder and projector gives
transformers' own logits, honours the config's feature layer, refuses what it cannot reproduce, and trains stage 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from llava_helpers import tiny_llava
from PIL import Image

import pvit
from pvit.collate import Collator
from pvit.compose import build_model
from pvit.errors import CheckpointError, ComponentOptionError, MissingWeightsError
from pvit.templates import get_template
from pvit_llava_hf.importer import llava_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_llava(tmp_path_factory.mktemp("llava") / "tiny")


def _image(w=56, h=40, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _logits_pvit_and_hf(folder: Path):
    from transformers import LlavaForConditionalGeneration

    model = build_model(llava_recipe(str(folder))).eval()
    hf = LlavaForConditionalGeneration.from_pretrained(str(folder)).eval()
    coll = Collator.for_model(model, get_template("plain", model.llm.tokenizer), 256)
    batch = coll([{"id": "a", "image": _image(), "conversations": [{"from": "human", "value": "what is this"},
                                                                     {"from": "gpt", "value": "a red square"}]}])
    ids = batch["input_ids"].clone()
    ids[ids == model.image_patch_id] = hf.config.image_token_id  # pvit's placeholder -> LLaVA's image token
    with torch.no_grad():
        ours = model(batch).logits
        theirs = hf(input_ids=ids, pixel_values=batch["pixels"], attention_mask=batch["attention_mask"]).logits
    return model, ours, theirs


@pytest.mark.parametrize("legacy,layer", [(False, -2), (True, -2), (False, [-2, -1])],
                         ids=["saved-layout", "hub-layout", "two-feature-layers"])
def test_pvit_gives_transformers_logits(tmp_path, legacy, layer):
    folder = tiny_llava(tmp_path / "ck", legacy=legacy, layer=layer)
    model, ours, theirs = _logits_pvit_and_hf(folder)
    assert model.image_encoder.out_dim == 32 * (1 if isinstance(layer, int) else len(layer))
    vocab = theirs.shape[-1]  # pvit added <im_patch> (one more row; its logit column has no counterpart)
    assert ours.shape[-1] == vocab + 1 and model.new_token_ids == [vocab]
    diff = (ours[..., :vocab] - theirs).abs().max().item()
    where = f"{'hub' if legacy else 'saved'} layout, layer {layer}"
    print(f"max abs logit difference pvit vs transformers ({where}): {diff:.3g}")
    assert diff <= 1e-4
    assert theirs.abs().max().item() > 1.0  # the comparison is not between near-zero logits


def test_pixels_match_the_checkpoint_processor(ckpt):
    """pvit's squash transform gives the pixels of a PIL-backend processor that resizes to the tower's size."""
    from transformers import AutoProcessor

    enc = pvit.build("image_encoder", "llava-hf", path=str(ckpt))
    proc = AutoProcessor.from_pretrained(str(ckpt), backend="pil")
    for img in (_image(), _image(32, 32, seed=1)):
        theirs = proc.image_processor(img, return_tensors="pt")["pixel_values"][0]
        assert torch.equal(enc.transform(img), theirs)


def test_components_honour_pvit_contracts(ckpt):
    from pvit.interfaces import PROTOCOLS
    from pvit.testing import check_image_encoder, check_projector

    enc = pvit.build("image_encoder", "llava-hf", path=str(ckpt))
    summary = check_image_encoder(enc)
    assert summary["num_tokens"] == 16 and summary["grid_size"] == (4, 4) and summary["out_dim"] == 32
    check_projector(pvit.build("projector", "llava-hf", path=str(ckpt), in_dim=32, out_dim=32), 32, 32)
    llm = pvit.build("llm", "llava-hf", path=str(ckpt))
    assert isinstance(llm, PROTOCOLS["llm"]) and isinstance(enc, PROTOCOLS["image_encoder"])
    assert llm.hidden_size == 32 and llm.tokenizer.convert_tokens_to_ids("<image>") == len(llm.tokenizer) - 1


def test_feature_layer_and_strategy_from_the_config(tmp_path):
    folder = tiny_llava(tmp_path / "ck", layer=-1)
    enc = pvit.build("image_encoder", "llava-hf", path=str(folder))
    assert enc.feature_layers == [-1] and enc.num_tokens == 16 and enc.out_dim == 32 and enc.frozen
    pixels = enc.transform(_image())[None]
    states = enc.backbone(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert torch.equal(enc(pixels), states[-1][:, 1:])
    multi = pvit.build("image_encoder", "llava-hf", config=_config(folder, vision_feature_layer=[-2, -1]))
    assert multi.out_dim == 64 and multi(pixels).shape == (1, 16, 64)
    with pytest.raises(ComponentOptionError, match="single layer"):
        multi.forward_with_maps(pixels, [-2])
    with pytest.raises(ComponentOptionError, match="vision_feature_select_strategy 'full'.*supported: 'default'"):
        pvit.build("image_encoder", "llava-hf", config=_config(folder, vision_feature_select_strategy="full"))


def _config(folder: Path, **changes) -> dict:
    import json

    return {**json.loads((folder / "config.json").read_text()), **changes}


def test_clear_errors(tmp_path, ckpt):
    with pytest.raises(MissingWeightsError, match="not a local llava-hf folder.*'config'"):
        pvit.build("llm", "llava-hf", path=str(tmp_path / "nowhere"))
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text('{"model_type": "clip_vision_model"}')
    with pytest.raises(CheckpointError, match="'clip_vision_model' checkpoint, not a LLaVA one.*hf-clip"):
        pvit.build("image_encoder", "llava-hf", path=str(tmp_path / "clip"))
    with pytest.raises(ComponentOptionError, match=r"maps 32 -> 32, but pvit wired 64 -> 32"):
        pvit.build("projector", "llava-hf", path=str(ckpt), in_dim=64, out_dim=32)


def test_stage1_trains_on_top_of_a_llava_hf_checkpoint(tmp_path, ckpt):
    from transformers import LlavaForConditionalGeneration

    from pvit.run import run_recipe

    loaded = pvit.load_recipe(ROOT / "tests/recipes/llava_hf_micro.yaml",
                              [f"paths.llava={ckpt}", f"run_dir={tmp_path / 'run'}"])
    summary = run_recipe(loaded, log=lambda s: None)
    stage = summary["stages"][0]
    assert stage["steps"] == 3 and np.isfinite(stage["final_loss"])
    assert set(stage["trainable"]) == {"region_projector", "new_token_embeddings"}
    from pvit.predict import Predictor

    pred = Predictor.from_run(tmp_path / "run")
    hf = LlavaForConditionalGeneration.from_pretrained(str(ckpt))
    # the frozen parts are the checkpoint's, unchanged by training
    assert torch.equal(pred.model.projector.body[0].weight, hf.model.multi_modal_projector.linear_1.weight)
    assert torch.equal(pred.model.image_encoder.backbone.encoder.layers[0].mlp.fc1.weight,
                       hf.model.vision_tower.encoder.layers[0].mlp.fc1.weight)
    old_rows = hf.lm_head.weight.shape[0]
    assert torch.equal(pred.model.llm.model.lm_head.weight[:old_rows], hf.lm_head.weight)
    reply = pred.predict(_image(), "what is <region1>?", boxes=[[4, 4, 30, 30]], max_new_tokens=4)
    assert isinstance(reply.text, str) and reply.completion_tokens <= 4


def test_shipped_recipe_without_the_checkpoint_stops_before_any_work(tmp_path, monkeypatch):
    """recipes/llava15_pvit.yaml offline without files: the missing checkpoint is listed (its plan is checked by
    tests/test_recipes_shipped.py) and a run stops before any work."""
    from pvit.preflight import missing_files
    from pvit.run import run_recipe

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PVIT_WEIGHTS", str(tmp_path / "w"))
    loaded = pvit.load_recipe(ROOT / "recipes/llava15_pvit.yaml", [f"run_dir={tmp_path / 'run'}"])
    missing = dict(missing_files(loaded.cfg))
    for key in ("model.llm.options.path", "model.image_encoder.options.path", "model.projector.options.path"):
        assert missing[key] == f"{tmp_path / 'w'}/llava-1.5-7b-hf"
    with pytest.raises(MissingWeightsError, match="llava-1.5-7b-hf"):
        run_recipe(loaded, log=lambda *_: None)
    assert not (tmp_path / "run").exists()
