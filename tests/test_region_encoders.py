"""Every installed region encoder: the contract check, and a tiny PVIT model with it learns (loss falls)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import pvit
from pvit.collate import Collator
from pvit.templates import get_template
from pvit.compose import build_model
from pvit.testing import check_region_encoder

TINY_IMAGE = {"name": "openclip-vit",
              "options": {"model": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16}}}
#: Small options for the built-in encoders; an encoder not listed here is checked with its defaults.
TINY_OPTIONS = {
    "regionclip": {"model": {"layers": [1, 1, 1, 1], "width": 8, "image_size": 64, "output_dim": 32},
                   "min_size": 64, "max_size": 64, "seed": 0},
    "vit-roi": {"variant": "light", "layers": [-2], "output_size": 2},
    "text-coords": {"style": "pvit"},
}
WORDS = ["what", "color", "is", "red", "blue", "green", "yellow"]


def _image_encoder():
    return pvit.build("image_encoder", TINY_IMAGE["name"], **TINY_IMAGE["options"])


def _options(name):
    return TINY_OPTIONS.get(name, {})


@pytest.mark.parametrize("name", sorted(pvit.components("region_encoder")))
def test_contract(name):
    image_encoder = _image_encoder()
    enc = pvit.build("region_encoder", name, image_encoder=image_encoder, **_options(name))
    summary = check_region_encoder(enc, image_encoder=image_encoder)
    assert summary["regions"] == 5  # 2 + 3 boxes on the check's 2 images
    assert summary["output_shape"] == (5, enc.tokens_per_region, enc.out_dim)


def test_contract_of_gpt4roi_variant():
    image_encoder = pvit.build("image_encoder", "openclip-vit",
                               model={"image_size": 32, "patch_size": 8, "width": 32, "layers": 4, "head_width": 16})
    enc = pvit.build("region_encoder", "vit-roi", image_encoder=image_encoder, variant="gpt4roi", layers=[1, 2, 3, 4])
    assert check_region_encoder(enc, image_encoder=image_encoder)["output_shape"] == (5, 1, enc.out_dim)


def _color_samples(n):
    """Two coloured squares per image; the question asks about one of them by region."""
    from PIL import Image, ImageDraw

    colors = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 40)}
    names = list(colors)
    out = []
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        a, b = torch.randperm(4, generator=g)[:2].tolist()
        img = Image.new("RGB", (32, 32), (10, 10, 10))
        d = ImageDraw.Draw(img)
        d.rectangle([2, 2, 13, 13], fill=colors[names[a]])
        d.rectangle([18, 18, 29, 29], fill=colors[names[b]])
        first = i % 2 == 0
        box = (2 / 32, 2 / 32, 14 / 32, 14 / 32) if first else (18 / 32, 18 / 32, 30 / 32, 30 / 32)
        out.append({"id": str(i), "image": img, "conversations": [
            {"from": "human", "value": f"<image>\nwhat color is {pvit.regions.format_pvit(box)} ?"},
            {"from": "gpt", "value": names[a] if first else names[b]}]})
    return out


@pytest.mark.parametrize("name", sorted(pvit.components("region_encoder")))
def test_tiny_model_with_each_encoder_learns(name):
    torch.manual_seed(0)
    cfg = OmegaConf.create({
        "llm": {"name": "hf-causal-lm", "options": {
            "config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 128},
            "tokenizer": {"words": WORDS}}},
        "image_encoder": TINY_IMAGE,
        "region_encoder": {"name": name, "options": _options(name)},
        "projector": {"name": "linear", "options": {}},
        "region_projector": {"name": "linear", "options": {"input_norm": "batch"}},
        "bbox_embed": False,
    })
    model = build_model(cfg)
    col = Collator(model.llm.tokenizer, get_template("plain", model.llm.tokenizer),
                   image_transform=model.image_encoder.transform, num_image_tokens=model.num_image_tokens,
                   region_encoder=model.region_encoder, max_length=1100)
    batch = col(_color_samples(8))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(15):
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
