"""Tests for the built-in image encoders (hf-clip, openclip-vit, timm-vit) at tiny, random-init scale."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import pvit
from pvit.errors import CheckpointError, ComponentOptionError, MissingWeightsError
from pvit.testing import check_image_encoder
from pvit_vision.tiny import TINY_OPTIONS
from pvit_vision.transform import CLIP_MEAN, CLIP_STD

NAMES = sorted(TINY_OPTIONS)


def _build(name, **over):
    return pvit.build("image_encoder", name, **{**TINY_OPTIONS[name], **over})


@pytest.fixture(scope="module")
def encoders():
    return {name: _build(name) for name in NAMES}


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # (B, 3, H, W)


def test_registered_and_light_import():
    assert set(NAMES) <= set(pvit.components("image_encoder"))
    code = "import sys, pvit_vision, pvit_projectors, pvit_vit_roi; print([m for m in ('torch', 'transformers', 'open_clip', 'timm', 'PIL') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", NAMES)
def test_contract_and_shapes(encoders, pixels, name):
    enc = encoders[name]
    summary = check_image_encoder(enc, layers=(0, -1, -2))
    assert summary["map_channels"] == [64, 64, 64]
    assert (enc.out_dim, enc.num_tokens, enc.grid_size, enc.image_size, enc.num_layers) == (64, 64, (8, 8), (64, 64), 2)
    tokens = enc(pixels)
    assert tokens.shape == (2, 64, 64)  # CLS dropped: N == gh * gw


@pytest.mark.parametrize("name", NAMES)
def test_maps_equal_tokens_of_that_layer(encoders, pixels, name):
    enc = encoders[name]
    tokens, maps = enc.forward_with_maps(pixels, [-2, 0, 2, -1])
    for layer, m in zip([-2, 0, 2, -1], maps):
        assert m.shape == (2, 64, 8, 8)
        flat = m.flatten(2).transpose(1, 2)  # (B, N, D), row-major patches
        enc.select_layer = layer
        try:
            assert torch.equal(flat, enc(pixels))
        finally:
            enc.select_layer = -2
    assert torch.equal(maps[0].flatten(2).transpose(1, 2), tokens)  # select_layer -2
    assert torch.equal(maps[2], maps[3])  # index 2 == -1 for 2 blocks
    assert not torch.equal(maps[0], maps[1]) and not torch.equal(maps[0], maps[3])


def _native_last_block(enc, pixels):
    """The last block's patch tokens through each library's own API."""
    bb = enc.backbone
    if enc.name == "hf-clip":
        out = bb(pixel_values=pixels, output_hidden_states=True)
        return out.last_hidden_state[:, 1:], out.hidden_states[0][:, 1:]
    if enc.name == "openclip-vit":
        inter = bb.forward_intermediates(pixels, indices=1, output_fmt="NLC", intermediates_only=True)
        return inter["image_intermediates"][0], bb._embeds(pixels)[:, 1:]
    inter = bb.forward_intermediates(pixels, indices=1, output_fmt="NLC", intermediates_only=True)
    emb = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(pixels))))
    return inter[0], emb[:, bb.num_prefix_tokens:]


@pytest.mark.parametrize("name", NAMES)
def test_layer_semantics_against_native_api(encoders, pixels, name):
    enc = encoders[name]
    _, (emb, last) = enc.forward_with_maps(pixels, [0, -1])
    with torch.no_grad():
        native_last, native_emb = _native_last_block(enc, pixels)
    assert torch.allclose(last.flatten(2).transpose(1, 2), native_last, atol=1e-6)
    assert torch.allclose(emb.flatten(2).transpose(1, 2), native_emb, atol=1e-6)


def _hf_to_openclip(sd: dict, layers: int) -> dict:
    """HF CLIPVisionModel keys -> open_clip VisionTransformer keys (with the full-model 'visual.' prefix)."""
    out = {
        "conv1.weight": sd["embeddings.patch_embedding.weight"],
        "class_embedding": sd["embeddings.class_embedding"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_pre.weight": sd["pre_layrnorm.weight"], "ln_pre.bias": sd["pre_layrnorm.bias"],
        "ln_post.weight": sd["post_layernorm.weight"], "ln_post.bias": sd["post_layernorm.bias"],
    }
    for i in range(layers):
        h, o = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for t in ("weight", "bias"):
            out[o + f"attn.in_proj_{t}"] = torch.cat([sd[h + f"self_attn.{p}_proj.{t}"] for p in "qkv"])
            out[o + f"attn.out_proj.{t}"] = sd[h + f"self_attn.out_proj.{t}"]
            out[o + f"ln_1.{t}"] = sd[h + f"layer_norm1.{t}"]
            out[o + f"ln_2.{t}"] = sd[h + f"layer_norm2.{t}"]
            out[o + f"mlp.c_fc.{t}"] = sd[h + f"mlp.fc1.{t}"]
            out[o + f"mlp.c_proj.{t}"] = sd[h + f"mlp.fc2.{t}"]
    return out


def _hf_to_timm(sd: dict, layers: int) -> dict:
    """HF CLIPVisionModel keys -> timm VisionTransformer (CLIP flavour, pre_norm) keys."""
    out = {
        "cls_token": sd["embeddings.class_embedding"].view(1, 1, -1),
        "pos_embed": sd["embeddings.position_embedding.weight"].unsqueeze(0),
        "patch_embed.proj.weight": sd["embeddings.patch_embedding.weight"],
        "norm_pre.weight": sd["pre_layrnorm.weight"], "norm_pre.bias": sd["pre_layrnorm.bias"],
        "norm.weight": sd["post_layernorm.weight"], "norm.bias": sd["post_layernorm.bias"],
    }
    for i in range(layers):
        h, o = f"encoder.layers.{i}.", f"blocks.{i}."
        for t in ("weight", "bias"):
            out[o + f"attn.qkv.{t}"] = torch.cat([sd[h + f"self_attn.{p}_proj.{t}"] for p in "qkv"])
            out[o + f"attn.proj.{t}"] = sd[h + f"self_attn.out_proj.{t}"]
            out[o + f"norm1.{t}"] = sd[h + f"layer_norm1.{t}"]
            out[o + f"norm2.{t}"] = sd[h + f"layer_norm2.{t}"]
            out[o + f"mlp.fc1.{t}"] = sd[h + f"mlp.fc1.{t}"]
            out[o + f"mlp.fc2.{t}"] = sd[h + f"mlp.fc2.{t}"]
    return out


def test_three_libraries_agree_on_layer_indices(tmp_path, pixels):
    """One set of CLIP weights loaded through all three encoders: hidden states 0, 1, -1, -2 coincide.

    Also exercises the real loading paths: HF ``from_pretrained`` of a full CLIPModel directory, an open_clip
    full-model safetensors file (``visual.`` keys) and a timm ``.pth`` through ``torch.load(weights_only=True)``.
    """
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    vision = dict(TINY_OPTIONS["hf-clip"]["config"])
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 99}
    torch.manual_seed(1)
    clip = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)).eval()
    clip.save_pretrained(tmp_path / "hf")
    sd = clip.vision_model.state_dict()

    oc = {f"visual.{k}": v.contiguous() for k, v in _hf_to_openclip(sd, 2).items()}
    ref_visual = _build("openclip-vit").backbone.state_dict()  # proj is not part of the HF vision tower
    oc["visual.proj"] = ref_visual["proj"]
    save_file(oc, str(tmp_path / "oc.safetensors"))
    torch.save(_hf_to_timm(sd, 2), tmp_path / "timm.pth")

    hf = pvit.build("image_encoder", "hf-clip", path=str(tmp_path / "hf"))
    oc_model = dict(TINY_OPTIONS["openclip-vit"]["model"], quick_gelu=True)
    ocv = pvit.build("image_encoder", "openclip-vit", model=oc_model, pretrained=str(tmp_path / "oc.safetensors"))
    tm = pvit.build(
        "image_encoder", "timm-vit", model="vit_base_patch16_clip_quickgelu_224",
        options=TINY_OPTIONS["timm-vit"]["options"], checkpoint=str(tmp_path / "timm.pth"),
    )
    layers = [0, 1, -1, -2]
    ref_tokens, ref_maps = hf.forward_with_maps(pixels, layers)
    with torch.no_grad():
        hs = clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    for layer, m in zip(layers, ref_maps):
        assert torch.allclose(m.flatten(2).transpose(1, 2), hs[layer][:, 1:], atol=1e-6)
    for other in (ocv, tm):
        tokens, maps = other.forward_with_maps(pixels, layers)
        assert torch.allclose(tokens, ref_tokens, atol=1e-5)
        for a, b in zip(maps, ref_maps):
            assert torch.allclose(a, b, atol=1e-5)
    assert tm.mean == CLIP_MEAN  # timm takes the CLIP model's own normalisation


@pytest.mark.parametrize("name", NAMES)
def test_frozen_behaviour(encoders, pixels, name):
    enc = encoders[name]
    assert all(not p.requires_grad for p in enc.parameters())
    parent = nn.ModuleDict({"enc": enc, "head": nn.Linear(64, 2)})
    parent.train()
    assert parent.head.training and not enc.training
    assert not any(m.training for m in enc.modules())
    x = pixels.clone().requires_grad_(True)
    tokens, maps = enc.forward_with_maps(x, [0])
    assert not tokens.requires_grad and not maps[0].requires_grad
    parent.eval()


@pytest.mark.parametrize("name", NAMES)
def test_trainable_when_not_frozen(name, pixels):
    enc = _build(name, frozen=False)
    enc.train()
    assert enc.training and enc.backbone.training
    assert all(p.requires_grad for p in enc.parameters())
    enc(pixels).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_layer_index_validation(encoders, pixels, name):
    with pytest.raises(ComponentOptionError, match="valid: 0 .. 2|valid: 0 \\(embeddings\\) .. 2"):
        _build(name, select_layer=3)
    with pytest.raises(ComponentOptionError, match="-3"):
        encoders[name].forward_with_maps(pixels, [-4])
    assert encoders[name].layer_index(-3) == 0 and encoders[name].layer_index(-1) == 2
    with pytest.raises(ValueError, match="expected pixels"):
        encoders[name](torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("name", NAMES)
def test_seeded_random_init_is_reproducible(name):
    state = torch.random.get_rng_state()
    a, b, c = _build(name), _build(name), _build(name, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    pa, pb, pc = (torch.cat([p.flatten() for p in e.parameters()]) for e in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_transform_squashes_and_normalises(encoders):
    enc = encoders["hf-clip"]
    color = (200, 30, 90)
    img = Image.new("RGB", (100, 40), color)  # wide image: squashed, not cropped
    x = enc.transform(img)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    want = (torch.tensor(color) / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(x.mean((1, 2)), want, atol=1e-5) and torch.allclose(x.std((1, 2)), torch.zeros(3), atol=1e-5)
    # the left half of the original lands in the left half of the result (squash, no crop / pad)
    arr = np.zeros((40, 100, 3), dtype=np.uint8)
    arr[:, :50] = 255
    y = enc.transform(Image.fromarray(arr))
    assert (y[:, :, :30] > 1).all() and (y[:, :, 34:] < 0).all()
    assert encoders["timm-vit"].mean == (0.5, 0.5, 0.5)  # vit_tiny's own normalisation


def test_dtype_option(pixels):
    enc = _build("openclip-vit", dtype="bfloat16")
    assert enc(pixels).dtype == torch.bfloat16
    with pytest.raises(ComponentOptionError, match="float32, bfloat16, float16"):
        _build("openclip-vit", dtype="fp8")


def test_option_errors(tmp_path):
    with pytest.raises(ComponentOptionError, match="give 'path'"):
        pvit.build("image_encoder", "hf-clip")
    with pytest.raises(ComponentOptionError, match="hidden_sise"):
        pvit.build("image_encoder", "hf-clip", config={"hidden_sise": 3})
    with pytest.raises(MissingWeightsError, match="no/such/clip"):
        pvit.build("image_encoder", "hf-clip", path="no/such/clip")
    with pytest.raises(ComponentOptionError, match="did you mean 'ViT-L-14-quickgelu'"):
        pvit.build("image_encoder", "openclip-vit", model="ViT-L-14-quickgel")
    with pytest.raises(ComponentOptionError, match="not an open_clip VisionTransformer"):
        pvit.build("image_encoder", "openclip-vit", model="RN50")
    with pytest.raises(ComponentOptionError, match="not a timm model name"):
        pvit.build("image_encoder", "timm-vit", model="vit_tinyy_patch16_224")
    with pytest.raises(ComponentOptionError, match="not a timm VisionTransformer"):
        pvit.build("image_encoder", "timm-vit", model="resnet18")
    with pytest.raises(ComponentOptionError, match="pretrained"):
        pvit.build("image_encoder", "timm-vit", model="vit_tiny_patch16_224", options={"pretrained": True})


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weight_files_are_loaded_safely(tmp_path, capsys):
    opts = TINY_OPTIONS["openclip-vit"]
    with pytest.raises(MissingWeightsError, match="nope.pt"):
        pvit.build("image_encoder", "openclip-vit", pretrained=str(tmp_path / "nope.pt"), **opts)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"conv1.weight": _Evil()}))
    with pytest.raises(CheckpointError, match="weights_only"):
        pvit.build("image_encoder", "openclip-vit", pretrained=str(evil), **opts)
    assert "pwned" not in capsys.readouterr().out
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="missing"):
        pvit.build("image_encoder", "openclip-vit", pretrained=str(tmp_path / "wrong.pt"), **opts)


def test_planning_builds_on_meta_without_reading_weights(tmp_path):
    from pvit.runtime import planning

    with planning():
        enc = pvit.build("image_encoder", "openclip-vit", pretrained=str(tmp_path / "absent.pt"), **TINY_OPTIONS["openclip-vit"])
        hf = _build("hf-clip")
    assert all(p.is_meta for p in enc.parameters()) and all(p.is_meta for p in hf.parameters())
    assert enc.num_tokens == 64
