"""Tests for the vit-roi region encoder (light and GPT4RoI variants) on tiny image encoders."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pvit
from pvit.errors import ComponentOptionError, InvalidRegionError
from pvit.interfaces import REGION_END, REGION_PATCH_TOKEN, REGION_START, RegionInputs, Regions
from pvit.testing import check_region_encoder
from pvit_vision.tiny import TINY_OPTIONS
from pvit_vit_roi.encoder import gpt4roi_layers
from pvit_vit_roi.gpt4roi import MultiLevelFuse

ENCODERS = sorted(TINY_OPTIONS)


@pytest.fixture(scope="module")
def image_encoders():
    return {name: pvit.build("image_encoder", name, **TINY_OPTIONS[name]) for name in ENCODERS}


@pytest.fixture(scope="module")
def vit(image_encoders):
    return image_encoders["openclip-vit"]


def _roi(image_encoder, **options):
    return pvit.build("region_encoder", "vit-roi", image_encoder=image_encoder, **options)


def _inputs(vit, layers, pixels):
    _, maps = vit.forward_with_maps(pixels, layers)
    return RegionInputs(image_maps=maps, image_size=vit.image_size)


PIXELS = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # (B, 3, H, W)
PER_IMAGE = [torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.3, 0.3, 0.9, 0.7]])]
BOXES = Regions.from_per_image(PER_IMAGE)  # 3 regions: 2 on image 0, 1 on image 1


def test_attributes_and_text(vit):
    enc = _roi(vit)
    assert enc.tokens_per_region == 1 and enc.uses_own_pixels is False
    assert enc.special_tokens == [REGION_START, REGION_END]
    assert enc.region_text((0.1, 0.2, 0.3, 0.4)) == f"{REGION_START}{REGION_PATCH_TOKEN}{REGION_END}"
    assert enc.prepare(None) is None and isinstance(enc.collate([None, None]), RegionInputs)
    assert enc.image_layers == [-2] and enc.output_size == 2 and enc.sampling_ratio == 0
    assert enc.out_dim == 64 * 2 * 2 and sum(p.numel() for p in enc.parameters()) == 0  # light: no parameters
    assert not any(m is vit or m is vit.backbone for m in enc.modules())  # the core owns the image encoder
    assert (enc.in_channels, enc.grid_size, enc.image_size) == (64, (8, 8), (64, 64))


@pytest.mark.parametrize("sampling_ratio", [1, 0])
def test_full_box_with_grid_output_returns_the_grid(vit, sampling_ratio):
    enc = _roi(vit, output_size=8, sampling_ratio=sampling_ratio, layers=[-1])
    inputs = _inputs(vit, [-1], PIXELS)
    full = Regions.from_per_image([torch.tensor([[0.0, 0.0, 1.0, 1.0]])] * 2)
    out = enc(inputs, full)  # (2, 1, C * 8 * 8)
    assert out.shape == (2, 1, 64 * 64)
    assert torch.equal(out.reshape(2, 64, 8, 8), inputs.image_maps[0])


@settings(max_examples=20, deadline=None)
@given(x=st.integers(0, 7), y=st.integers(0, 7), size=st.integers(1, 8))
def test_grid_aligned_box_returns_the_crop(vit, x, y, size):
    """A box on patch boundaries with one bin per patch gives exactly those patches (aligned=True)."""
    s = min(size, 8 - x, 8 - y)
    maps = [torch.randn(1, 64, 8, 8)]
    box = torch.tensor([[x / 8, y / 8, (x + s) / 8, (y + s) / 8]])
    enc = _roi(vit, output_size=s, sampling_ratio=1)
    out = enc(RegionInputs(image_maps=maps, image_size=(64, 64)), Regions.from_per_image([box])).reshape(64, s, s)
    assert torch.equal(out, maps[0][0, :, y : y + s, x : x + s])


def test_boxes_are_scaled_by_the_squashed_input_size(vit):
    """Normalised boxes map to the same cells whatever ``image_size`` is, including non-square maps."""
    enc = _roi(vit, output_size=2, sampling_ratio=1)
    maps = [torch.randn(1, 64, 4, 8)]  # gh=4, gw=8
    box = Regions.from_per_image([torch.tensor([[0.5, 0.5, 0.75, 1.0]])])  # cells x 4..6, y 2..4
    for size in ((64, 64), (32, 128)):
        out = enc(RegionInputs(image_maps=maps, image_size=size), box).reshape(64, 2, 2)
        assert torch.allclose(out, maps[0][0, :, 2:4, 4:6], atol=1e-6)


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("variant", ["light", "gpt4roi"])
def test_contract_and_shapes_per_image_encoder(image_encoders, name, variant):
    vit = image_encoders[name]
    options = {"output_size": 4} if variant == "gpt4roi" else {}
    enc = _roi(vit, variant=variant, **options)
    summary = check_region_encoder(enc, image_encoder=vit)
    assert summary["output_shape"][1:] == (1, enc.out_dim)
    out = enc(_inputs(vit, enc.image_layers, PIXELS), BOXES)
    assert out.shape == (3, 1, enc.out_dim)
    assert enc(_inputs(vit, enc.image_layers, PIXELS), Regions.empty(2)).shape == (0, 1, enc.out_dim)


def test_light_mlp_and_multi_level(vit):
    enc = _roi(vit, layers=[0, -1], out_dim=32)
    assert [type(m) for m in enc.head.mlp] == [nn.Linear, nn.GELU, nn.Linear]
    assert enc.head.mlp[0].in_features == 2 * 64 * 2 * 2
    out = enc(_inputs(vit, [0, -1], PIXELS), BOXES)
    assert out.shape == (3, 1, 32)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())  # every weight is used


def test_layer_selection(vit):
    """Each listed layer's map is pooled, in order: a full box with one bin per patch returns those maps."""
    enc = _roi(vit, layers=[0, -1, 1], output_size=8, sampling_ratio=1)
    assert enc.image_layers == [0, -1, 1]
    inputs = _inputs(vit, enc.image_layers, PIXELS)
    out = enc(inputs, Regions.from_per_image([torch.tensor([[0.0, 0.0, 1.0, 1.0]])] * 2)).reshape(2, 3, 64, 8, 8)
    for i, layer in enumerate([0, -1, 1]):
        assert torch.equal(out[:, i], vit.forward_with_maps(PIXELS, [layer])[1][0])
    assert not torch.equal(out[:, 0], out[:, 1])
    with pytest.raises(ComponentOptionError, match="valid: 0 \\(embeddings\\) .. 2"):
        _roi(vit, layers=[5])
    with pytest.raises(ValueError, match="expected 3 image maps"):
        enc(RegionInputs(image_maps=inputs.image_maps[:1]), BOXES)


def test_one_roi_align_call_per_level(vit, monkeypatch):
    import pvit_vit_roi.rois as rois

    calls = []
    real = rois.roi_align

    def counting(*args, **kwargs):
        calls.append(args[1].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(rois, "roi_align", counting)
    for variant, options in (("light", {"layers": [0, 1, 2]}), ("gpt4roi", {"layers": [0, 1, 2], "output_size": 3})):
        calls.clear()
        enc = _roi(vit, variant=variant, **options)
        enc(_inputs(vit, [0, 1, 2], PIXELS), BOXES)
        assert calls == [3, 3, 3]  # every box of the batch in one call per level


def test_output_rows_follow_image_then_mention_order(vit):
    enc = _roi(vit, variant="gpt4roi", output_size=3)
    inputs = _inputs(vit, enc.image_layers, PIXELS)
    out = enc(inputs, BOXES)
    one = RegionInputs(image_maps=[m[1:] for m in inputs.image_maps], image_size=inputs.image_size)
    assert torch.allclose(out[2], enc(one, Regions.from_per_image([PER_IMAGE[1]]))[0], atol=1e-5)


def test_gpt4roi_layers_rule_and_structure(vit):
    assert gpt4roi_layers(24) == [14, 17, 20, 23]  # CLIP ViT-L/14 as in GPT4RoI
    assert gpt4roi_layers(2) == [1]
    enc = _roi(vit, variant="gpt4roi")
    assert enc.image_layers == [1] and enc.output_size == 14 and enc.sampling_ratio == 2 and enc.out_dim == 64
    head = enc.head
    assert head.flatten_linear.in_features == 64 * 14 * 14
    assert [type(m) for m in head.pos_embed] == [nn.Linear, nn.ReLU, nn.LayerNorm, nn.Linear, nn.ReLU, nn.LayerNorm]
    assert len(head.fuse.rounds) == 5 and head.fuse.rounds[0][0].bias is None
    assert head.fuse.input_convs[0].in_channels == 66  # C + 2 coordinate channels
    four = _roi(vit, variant="gpt4roi", layers=[0, 1, 2, -1], output_size=2, out_dim=48)
    sizes = [tuple(m.shape[-2:]) for m in four.head.pyramid(_inputs(vit, four.image_layers, PIXELS).image_maps)]
    assert sizes == [(64, 64), (32, 32), (16, 16), (8, 8)]  # grid * 2**(L-1-i), finest first
    out = four(_inputs(vit, four.image_layers, PIXELS), BOXES)
    assert out.shape == (3, 1, 48)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in four.parameters())  # every weight is used


def test_fuse_channel_routing():
    """Each round keeps [0, C/2) of a level, takes [3C/4, C) of the coarser and [C/2, 3C/4) of the finer one."""
    c = 8
    fuse = MultiLevelFuse(c, num_levels=3, rounds=1)
    with torch.no_grad():  # 1x1 input convs = identity on the C feature channels, coordinates ignored
        for conv in fuse.input_convs:
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[:, :c, 0, 0] = torch.eye(c)
    fuse.rounds = nn.ModuleList([nn.Identity()])
    levels = [torch.randn(1, c, 4 * 2 ** (2 - i), 4 * 2 ** (2 - i)) for i in range(3)]  # 16, 8, 4
    out = fuse(levels)

    def up(x, ref):
        return nn.functional.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)

    for lvl in range(3):
        coarser, finer = levels[min(lvl + 1, 2)], levels[max(lvl - 1, 0)]
        assert torch.allclose(out[lvl][:, :4], levels[lvl][:, :4], atol=1e-6)
        assert torch.allclose(out[lvl][:, 4:6], up(coarser[:, 6:8], levels[lvl]), atol=1e-6)
        assert torch.allclose(out[lvl][:, 6:8], up(finer[:, 4:6], levels[lvl]), atol=1e-6)


def test_errors(vit):
    with pytest.raises(ComponentOptionError, match="image_encoder"):
        pvit.build("region_encoder", "vit-roi")
    with pytest.raises(ComponentOptionError, match="is not one of light, gpt4roi; did you mean 'gpt4roi'"):
        _roi(vit, variant="gpt4")
    with pytest.raises(ComponentOptionError, match="output_size"):
        _roi(vit, output_size=0)
    enc = _roi(vit)
    inputs = _inputs(vit, [-2], PIXELS)
    with pytest.raises(InvalidRegionError, match="regions of 1 images but image maps for 2"):
        enc(inputs, Regions.from_per_image(PER_IMAGE[:1]))


def test_bf16_maps(vit):
    enc = _roi(vit, variant="gpt4roi", output_size=2)
    inputs = _inputs(vit, enc.image_layers, PIXELS)
    inputs.image_maps = [m.bfloat16() for m in inputs.image_maps]
    assert enc(inputs, BOXES).dtype == torch.float32
    light = _roi(vit)
    assert light(inputs, BOXES).dtype == torch.bfloat16
