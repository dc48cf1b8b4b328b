"""PVITModel: the splice, the count check, assistant-only labels, and training with several LLM architectures."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import pvit
from pvit.collate import Collator
from pvit.templates import get_template
from pvit.errors import SpliceError
from pvit.interfaces import IGNORE_INDEX, IMAGE_PATCH_TOKEN, REGION_PATCH_TOKEN, Regions
from pvit.compose import build_model
from pvit.model import PVITModel

WORDS = ["what", "is", "the", "object", "in", "a", "red", "blue", "circle", "square", "color", "of", "image"]

LLM_CONFIGS = {
    "llama": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256},
    "qwen2": {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256},
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256},
}
IMAGE_ENCODER = {"name": "openclip-vit",
                 "options": {"model": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16}}}
REGION_ENCODER = {"name": "regionclip",
                  "options": {"model": {"layers": [1, 1, 1, 1], "width": 8, "image_size": 64, "output_dim": 32},
                              "min_size": 64, "max_size": 64}}


def model_cfg(arch="llama", region=REGION_ENCODER, image=IMAGE_ENCODER, bbox_embed=False):
    return OmegaConf.create({
        "llm": {"name": "hf-causal-lm", "options": {"config": LLM_CONFIGS[arch], "tokenizer": {"words": WORDS}}},
        "image_encoder": image, "region_encoder": region,
        "projector": {"name": "mlp2x-gelu", "options": {}},
        "region_projector": {"name": "linear", "options": {"input_norm": "batch"}},
        "bbox_embed": bbox_embed,
    })


def sample(i, box=(0.1, 0.2, 0.5, 0.6), color="red"):
    from PIL import Image

    img = Image.new("RGB", (48, 40), (i * 20 % 255, 30, 60))
    region = pvit.regions.format_pvit(box)
    return {"id": f"s{i}", "image": img, "conversations": [
        {"from": "human", "value": f"<image>\nwhat is the color of {region} ?"},
        {"from": "gpt", "value": color}]}


def collator_for(model, generate=False):
    return Collator(model.llm.tokenizer, get_template("plain", model.llm.tokenizer),
                    image_transform=model.image_encoder.transform, num_image_tokens=model.num_image_tokens,
                    region_encoder=model.region_encoder, max_length=128, generate=generate)


@pytest.fixture(scope="module")
def llama_model():
    torch.manual_seed(0)
    return build_model(model_cfg("llama", bbox_embed=True))


def test_projector_dimensions_are_wired(llama_model):
    m = llama_model
    assert m.projector(torch.zeros(2, m.image_encoder.out_dim)).shape == (2, m.llm.hidden_size)
    assert m.region_projector(torch.zeros(3, 1, m.region_encoder.out_dim)).shape == (3, 1, m.llm.hidden_size)
    vocab = m.llm.tokenizer.get_vocab()
    for t in (IMAGE_PATCH_TOKEN, REGION_PATCH_TOKEN, "<Region>", "</Region>"):
        assert t in vocab
    assert sorted(m.new_token_ids) == sorted(vocab[t] for t in (IMAGE_PATCH_TOKEN, REGION_PATCH_TOKEN, "<Region>", "</Region>"))


def test_labels_only_on_assistant_tokens(llama_model):
    col = collator_for(llama_model)
    batch = col([sample(0), sample(1, color="blue")])
    tok = llama_model.llm.tokenizer
    for b in range(2):
        labelled = batch["labels"][b][batch["labels"][b] != IGNORE_INDEX].tolist()
        want = tok(["red", "blue"][b], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert labelled == want
    assert (batch["input_ids"] == llama_model.image_patch_id).sum(1).tolist() == [llama_model.num_image_tokens] * 2
    assert (batch["input_ids"] == llama_model.region_patch_id).sum(1).tolist() == [1, 1]


def test_splice_places_features_at_placeholders(llama_model):
    m = llama_model.eval()
    batch = collator_for(m)([sample(0), sample(1, box=(0.5, 0.5, 0.9, 0.9))])
    embeds = m.embed_inputs(batch)
    plain = m.llm.embed(batch["input_ids"])
    img_feats = m.projector(m.image_encoder(batch["pixels"]))  # (B, N, D)
    mask = batch["input_ids"] == m.image_patch_id
    assert torch.allclose(embeds[mask], img_feats.reshape(-1, img_feats.shape[-1]), atol=1e-6)
    regions = batch["regions"]
    assert torch.equal(regions.boxes, torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 0.9, 0.9]]))
    assert regions.image_index.tolist() == [0, 1] and regions.sample_index.tolist() == [0, 1]
    reg = m.region_projector(m.region_encoder(batch["region_inputs"], regions))  # (R, 1, D)
    reg = reg + m.bbox_embed(regions.boxes).unsqueeze(1)
    rmask = batch["input_ids"] == m.region_patch_id
    assert torch.allclose(embeds[rmask], reg.reshape(-1, reg.shape[-1]), atol=1e-6)
    other = ~(mask | rmask)
    assert torch.equal(embeds[other], plain[other])


def test_count_mismatch_names_sample_and_counts(llama_model):
    batch = collator_for(llama_model)([sample(0), sample(1)])
    regions = batch["regions"]  # one box per sample; give sample s1 a second one
    batch["regions"] = Regions.from_per_image([regions.boxes[:1], regions.boxes[1:].repeat(2, 1)], [0, 1])
    with pytest.raises(SpliceError, match=r"sample s1: 1 region placeholder tokens in the text but 2"):
        llama_model.embed_inputs(batch)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_tiny_model_trains_and_loss_falls(arch):
    """A PVIT model (image + region encoder + projectors + LLM) fits a tiny batch with each architecture."""
    torch.manual_seed(0)
    m = build_model(model_cfg(arch))
    m.train()
    batch = collator_for(m)([sample(i, color=["red", "blue"][i % 2]) for i in range(4)])
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(25):
        loss = m(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_llava_style_model_without_region_encoder_trains():
    """Image encoder + projector + LLM only: the alignment stage's model."""
    torch.manual_seed(0)
    m = build_model(model_cfg("llama", region=None))
    assert m.region_projector is None and m.tokens_per_region == 0
    col = collator_for(m)
    data = [{"id": str(i), "image": sample(i)["image"], "conversations": [
        {"from": "human", "value": "<image>\nwhat is in the image ?"}, {"from": "gpt", "value": "a red circle"}]}
        for i in range(4)]
    batch = col(data)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(25):
        loss = m(batch).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_batched_generation_matches_one_by_one(llama_model):
    m = llama_model.eval()
    col = collator_for(m, generate=True)
    samples = [sample(0), sample(1, box=(0.3, 0.3, 0.4, 0.9)), sample(2, box=(0.0, 0.0, 1.0, 1.0))]
    samples[1]["conversations"][0]["value"] += " what is the object in the image ?"  # a longer prompt
    batched = m.generate(col(samples), max_new_tokens=5)
    single = [m.generate(col([s]), max_new_tokens=5)[0] for s in samples]
    assert batched == single
    assert col(samples)["attention_mask"][0, 0] == 0  # left padding
