"""Tests for the text-coords region encoder plugin (coordinate text, no features)."""

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pvit
from pvit import regions
from pvit.errors import InvalidRegionError
from pvit.interfaces import REGION_END, REGION_START, RegionEncoder, RegionInputs, Regions
from pvit.testing import check_region_encoder

BOX = (0.204, 0.469, 0.81, 0.96)


@pytest.fixture(params=["pvit", "shikra"])
def encoder(request):
    return pvit.build("region_encoder", "text-coords", style=request.param)


def test_registered_and_declares_a_text_only_encoder(encoder):
    assert "text-coords" in pvit.components("region_encoder")
    assert isinstance(encoder, torch.nn.Module) and isinstance(encoder, RegionEncoder)
    assert encoder.tokens_per_region == 0 and encoder.out_dim == 0
    assert encoder.image_layers == [] and encoder.uses_own_pixels is False
    assert list(encoder.parameters()) == []


def test_special_tokens_per_style():
    p = pvit.build("region_encoder", "text-coords")  # default style is pvit
    assert p.style == "pvit"
    assert p.special_tokens[:2] == [REGION_START, REGION_END] and p.special_tokens[2:] == regions.LOC_TOKENS
    assert len(p.special_tokens) == 1002
    assert pvit.build("region_encoder", "text-coords", style="shikra").special_tokens == []


def test_unknown_style_names_the_valid_ones():
    with pytest.raises(ValueError, match="pvit, shikra"):
        pvit.build("region_encoder", "text-coords", style="kosmos")
    with pytest.raises(ValueError, match=r"style 'shikr' \(did you mean 'shikra'\?\); valid styles: pvit, shikra"):
        pvit.build("region_encoder", "text-coords", style="shikr")


def test_region_text_renders_with_pvit_regions(encoder):
    want = regions.format_pvit(BOX) if encoder.style == "pvit" else regions.format_shikra(BOX)
    assert encoder.region_text(BOX) == want
    with pytest.raises(InvalidRegionError):
        encoder.region_text((0.5, 0.5, 0.4, 0.6))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 998), st.integers(0, 998)), min_size=1, max_size=4), st.sampled_from(["pvit", "shikra"]))
def test_decode_inverts_region_text(corners, style):
    enc = pvit.build("region_encoder", "text-coords", style=style)
    boxes = [(a / 1000, b / 1000, (a + 1) / 1000, min(999, b + 7) / 1000) for a, b in corners]
    text = "Answer: " + " and ".join(enc.region_text(b) for b in boxes) + "."
    assert enc.decode(text) == boxes


def test_decode_drops_malformed_generations_and_counts_them(encoder):
    bad = "<Region><L5><L1><L3></Region>" if encoder.style == "pvit" else "[0.5,0.1,0.3]"
    text = f"{encoder.region_text(BOX)} then {bad}"
    stats = regions.RegionStats()
    assert encoder.decode(text, stats=stats) == [BOX]
    assert (stats.total, stats.dropped) == (2, 1)
    with pytest.raises(InvalidRegionError):
        encoder.decode(text, policy="error")


def test_prepare_collate_forward(encoder):
    assert encoder.prepare(object()) is None
    inputs = encoder.collate([None, None])
    assert isinstance(inputs, RegionInputs) and inputs.pixels is None and inputs.image_maps == []
    boxes = [torch.rand(2, 4), torch.zeros(0, 4), torch.rand(3, 4)]
    out = encoder(inputs, Regions.from_per_image(boxes))
    assert out.shape == (5, 0, 0) and out.dtype == torch.float32
    assert encoder(inputs, Regions.empty(2)).shape == (0, 0, 0)
    with pytest.raises(ValueError, match=r"image 1 .*\(3,\).*\(R_b, 4\)"):  # shapes are checked once, in Regions
        Regions.from_per_image([torch.rand(1, 4), torch.rand(3)])


def test_passes_the_region_encoder_contract(encoder):
    summary = check_region_encoder(encoder, n_images=3)
    assert summary["output_shape"] == (7, 0, 0) and summary["backward"] is False
    assert summary["region_text"] == encoder.region_text(BOX)  # BOX is the typical box the check renders


def test_plugin_module_imports_no_heavy_library():
    code = "import sys, pvit_text_coords; bad = {'torch', 'PIL', 'transformers'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
