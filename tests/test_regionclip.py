"""Tests of the regionclip region encoder: RoI geometry, preprocessing, freezing and checkpoint safety."""

from __future__ import annotations

import builtins
from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.ops.misc import FrozenBatchNorm2d

import pvit
from pvit.errors import CheckpointError, ComponentOptionError, InvalidRegionError
from pvit.interfaces import REGION_END, REGION_PATCH_TOKEN, REGION_START, RegionEncoder, RegionInputs, Regions
from pvit_regionclip import regionclip
from pvit_regionclip.checkpoint import convert_to_safetensors
from pvit_regionclip.config import resolve_config
from pvit_regionclip.preprocess import CLIP_MEAN, CLIP_STD, resize_shape

#: Same structure and geometry as RN50x4 at its 288 px input (res4 18x18 -> RoI 18x18 -> layer4 9x9 -> 82
#: positional rows), but width 16 and one block per stage, so a forward takes milliseconds instead of ~20 s.
GEOM288 = {"layers": [1, 1, 1, 1], "width": 16, "image_size": 288, "output_dim": 32}


@torch.no_grad()
def randomize_weights(module: torch.nn.Module, seed: int) -> None:
    """Random weights whose features depend on the input, so equality checks can fail.

    BN affine params and stats are randomised as on docs/regions.md, "RegionCLIP, as PVIT uses it" (open_clip
    zero-inits the bn3 gammas, which kills the residual branches); convs get He-normal weights, because with
    PyTorch's default conv init the signal shrinks layer by layer and every region's feature is the same constant
    to ~1e-4.
    """
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=g)
        if isinstance(m, FrozenBatchNorm2d):
            n = m.weight.numel()
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def make_encoder(model=GEOM288, seed=0, **kw):
    enc = regionclip(model=model, seed=seed, **kw)
    randomize_weights(enc.visual, seed + 100)
    return enc


def test_full_image_box_equals_clip_image_embedding():
    """(a) The full-image box on a 288x288 input gives the model's own image embedding ``visual(img)``.

    Uses GEOM288 (see its comment) rather than RN50x4, which needs ~20 s on 2 cores for the same check. RoIAlign
    reproduces res4 bit for bit; the features (magnitude ~10 with these weights) agree to fp32 rounding.
    """
    enc = make_encoder()
    img = torch.randn(1, 3, 288, 288, generator=torch.Generator().manual_seed(0))
    inputs = RegionInputs(pixels=img, sizes=torch.tensor([[288, 288]]))
    out = enc(inputs, Regions.from_per_image([torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])]))
    assert out.shape == (2, 1, 32)
    with torch.no_grad():
        res4 = enc.res4(img)  # (1, 256, 18, 18)
        assert torch.equal(enc.roi_features(res4, torch.tensor([[0.0, 0.0, 0.0, 288.0, 288.0]])), res4)
        ref = enc.visual(img)  # (1, 32)
    scale = ref.abs().max().item()
    assert torch.allclose(out[0, 0], ref[0], atol=1e-5 * max(1.0, scale), rtol=0)
    assert (out[1, 0] - ref[0]).abs().max() > 0.01 * scale  # a different box gives a different feature


def test_grid_aligned_box_equals_feature_map_crop():
    """(b) A 288x288 box on the 16 px grid pools exactly the res4 crop, in a padded batch of 2 image sizes."""
    enc = make_encoder()
    g = torch.Generator().manual_seed(1)
    sizes = [(416, 608), (352, 480)]  # (h, w)
    pixels = torch.zeros(2, 3, 416, 608)
    for i, (h, w) in enumerate(sizes):
        pixels[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
    inputs = RegionInputs(pixels=pixels, sizes=torch.tensor(sizes))
    cells = [(10, 4), (5, 2)]  # (a, b): box x1 = 16a, y1 = 16b
    boxes = Regions.from_per_image([
        torch.tensor([[16 * a / w, 16 * b / h, (16 * a + 288) / w, (16 * b + 288) / h]])
        for (a, b), (h, w) in zip(cells, sizes)
    ])
    out = enc(inputs, boxes)  # (2, 1, 32)
    with torch.no_grad():
        res4 = enc.res4(pixels)  # (2, 256, 26, 38)
        for i, (a, b) in enumerate(cells):
            crop = res4[i : i + 1, :, b : b + 18, a : a + 18]  # (1, 256, 18, 18)
            roi = torch.tensor([[float(i), 16.0 * a, 16.0 * b, 16.0 * a + 288, 16.0 * b + 288]])
            assert torch.equal(enc.roi_features(res4, roi), crop)
            ref = enc.visual.attnpool(enc.visual.layer4(crop))  # (1, 32)
            scale = ref.abs().max().item()
            assert torch.allclose(out[i, 0], ref[0], atol=1e-5 * max(1.0, scale), rtol=0)
    assert (out[0] - out[1]).abs().max() > 0.01 * scale


def test_images_without_boxes_are_skipped_and_order_is_kept():
    enc = make_encoder(model="tiny")
    pixels = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    inputs = RegionInputs(pixels=pixels, sizes=torch.tensor([[64, 96], [64, 96], [60, 80]]))
    b0 = torch.tensor([[0.1, 0.1, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0]])
    b2 = torch.tensor([[0.2, 0.3, 0.7, 0.8]])
    full = enc(inputs, Regions.from_per_image([b0, torch.zeros(0, 4), b2]))  # (3, 1, 64)
    assert full.shape == (3, 1, enc.out_dim)
    alone = enc(RegionInputs(pixels=pixels[2:], sizes=inputs.sizes[2:]), Regions.from_per_image([b2]))
    assert torch.allclose(full[2], alone[0], rtol=1e-5, atol=1e-5 * alone.abs().max().item())
    assert enc(inputs, Regions.empty(3)).shape == (0, 1, enc.out_dim)
    with pytest.raises(InvalidRegionError, match="regions of 2 images but the batch has 3 images"):
        enc(inputs, Regions.from_per_image([b0, b2]))


def test_mean_query_attnpool_equals_clip_attnpool():
    from pvit_regionclip.attnpool import mean_query_attnpool

    enc = make_encoder()
    x = torch.randn(3, 512, 9, 9, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = enc.visual.attnpool(x)  # (3, 32)
        assert torch.allclose(mean_query_attnpool(enc.visual.attnpool, x), ref, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_runs_and_stays_close():
    enc = make_encoder(model="tiny")
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    inputs = RegionInputs(pixels=pixels, sizes=torch.tensor([[64, 64]]))
    boxes = Regions.from_per_image([torch.tensor([[0.1, 0.2, 0.9, 0.7]])])
    ref = enc(inputs, boxes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = enc(inputs, boxes)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert torch.allclose(low.float(), ref, atol=0.05 * ref.abs().max().item())


def test_interface_and_registration():
    enc = pvit.build("region_encoder", "regionclip", model="tiny", seed=0)
    assert isinstance(enc, RegionEncoder)
    assert (enc.tokens_per_region, enc.out_dim, enc.image_layers, enc.uses_own_pixels) == (1, 64, [], True)
    assert enc.special_tokens == [REGION_START, REGION_END]
    assert enc.region_text([0.1, 0.2, 0.3, 0.4]) == REGION_START + REGION_PATCH_TOKEN + REGION_END
    assert enc.roi_size == 4  # tiny: 64 px -> 2x2 attnpool grid
    a = regionclip(model="tiny", seed=5).visual.conv1.weight
    b = regionclip(model="tiny", seed=5).visual.conv1.weight
    assert torch.equal(a, b)


@pytest.mark.parametrize("frozen", [True, False])
def test_region_encoder_contract(frozen):
    from pvit.testing import check_region_encoder

    enc = regionclip(model="tiny", seed=0, min_size=64, max_size=128, frozen=frozen)
    report = check_region_encoder(enc)
    assert report["regions"] == 5 and report["output_shape"] == (5, 1, 64)
    assert report["backward"] is (not frozen)


def test_rn50x4_architecture_matches_regionclip_layout():
    cfg = resolve_config("RN50x4")
    assert (cfg.layers, cfg.width, cfg.heads, cfg.output_dim, cfg.roi_size) == ((4, 6, 10, 6), 80, 40, 640, 18)
    enc = regionclip(model="RN50x4", seed=0)
    sd = enc.visual.state_dict()
    assert len(sd) == 434 and not any(k.endswith("num_batches_tracked") for k in sd)
    assert sd["attnpool.positional_embedding"].shape == (82, 2560)
    assert sd["attnpool.c_proj.weight"].shape == (640, 2560)
    assert sd["layer3.9.conv3.weight"].shape == (1280, 320, 1, 1)
    assert sd["layer4.0.downsample.0.weight"].shape == (2560, 1280, 1, 1)
    assert enc.out_dim == 640


def test_option_errors():
    with pytest.raises(ComponentOptionError, match="output_size=14.*18"):
        regionclip(model=GEOM288, output_size=14)
    assert regionclip(model=GEOM288, output_size=18, seed=0).roi_size == 18
    with pytest.raises(ComponentOptionError, match=r"model='RN50x5' .* preset \(did you mean 'RN50x4'\?\)"):
        regionclip(model="RN50x5")
    with pytest.raises(ComponentOptionError, match="ViT"):
        regionclip(model="ViT-B-32")
    with pytest.raises(ComponentOptionError, match="unknown keys \\['depth'\\]"):
        regionclip(model={**GEOM288, "depth": 3})
    with pytest.raises(ComponentOptionError, match="output_size"):
        pvit.build("region_encoder", "regionclip", model="tiny", ouput_size=4)


# ---- freezing ---------------------------------------------------------------------------------------------


def test_frozen_encoder_stays_eval_and_never_changes():
    """(d) BN statistics never change and two forwards in train mode are identical."""
    enc = make_encoder(model="tiny")
    parent = torch.nn.ModuleDict({"enc": enc})
    parent.train()
    assert not enc.training and not enc.visual.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4), requires_grad=True)
    inputs = RegionInputs(pixels=pixels, sizes=torch.tensor([[64, 64], [64, 48]]))
    boxes = Regions.from_per_image([torch.tensor([[0.1, 0.1, 0.5, 0.5]]), torch.tensor([[0.0, 0.2, 1.0, 0.9]])])
    a, b = enc(inputs, boxes), enc(inputs, boxes)
    assert torch.equal(a, b) and not a.requires_grad
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_unfrozen_encoder_trains_conv_weights_but_not_bn():
    enc = make_encoder(model="tiny", frozen=False)
    enc.train()
    assert enc.training
    bn_before = {k: v.clone() for k, v in enc.state_dict().items() if "bn" in k or "downsample.1" in k}
    inputs = RegionInputs(pixels=torch.randn(1, 3, 64, 64), sizes=torch.tensor([[64, 64]]))
    boxes = Regions.from_per_image([torch.tensor([[0.1, 0.1, 0.9, 0.9]])])
    a = enc(inputs, boxes)
    a.sum().backward()
    assert enc.visual.conv1.weight.grad is not None and enc.visual.conv1.weight.grad.abs().sum() > 0
    assert torch.equal(a.detach(), enc(inputs, boxes).detach())
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in bn_before.items())


# ---- preprocessing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wh, expected_hw",
    [((640, 480), (800, 1067)), ((480, 640), (1067, 800)), ((2000, 500), (333, 1333)), ((800, 800), (800, 800)),
     ((100, 50), (667, 1333)), ((1333, 800), (800, 1333)), ((2667, 1), (1, 1333))],
)
def test_resize_rule(wh, expected_hw):
    """(e) detectron2 ResizeShortestEdge(800, 1333) with int(x + 0.5) rounding."""
    assert resize_shape(wh[1], wh[0]) == expected_hw


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000))
def test_resize_rule_properties(h, w):
    nh, nw = resize_shape(h, w)
    assert 1 <= min(nh, nw) and max(nh, nw) <= 1333
    assert min(nh, nw) == 800 or max(nh, nw) == 1333
    if min(nh, nw) > 1:  # aspect kept up to the two roundings (a side of 1 may be clamped up from < 0.5)
        assert abs(nh - nw * h / w) <= 0.5 + 0.5 * h / w + 1e-9


def test_prepare_matches_pil_bilinear_and_collate_pads_with_zeros():
    enc = regionclip(model="tiny", seed=0, min_size=40, max_size=70)
    rng = np.random.default_rng(0)
    img_a = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))  # w 50, h 30 -> (40, 67)
    img_b = Image.fromarray(rng.integers(0, 256, (60, 45), dtype=np.uint8))  # grey, w 45, h 60 -> (53, 40)
    xa, xb = enc.prepare(img_a), enc.prepare(img_b)
    assert xa.shape == (3, 40, 67) and xb.shape == (3, 53, 40)
    manual = np.asarray(img_a.resize((67, 40), Image.BILINEAR), dtype=np.float32) / 255.0
    manual = (manual - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    assert np.allclose(xa.permute(1, 2, 0).numpy(), manual, atol=1e-6)
    batch = enc.collate([xa, xb])
    assert batch.pixels.shape == (2, 3, 53, 67)
    assert batch.sizes.tolist() == [[40, 67], [53, 40]]
    assert torch.equal(batch.pixels[0, :, :40, :67], xa) and torch.equal(batch.pixels[1, :, :53, :40], xb)
    assert batch.pixels[0, :, 40:].abs().sum() == 0 and batch.pixels[1, :, :, 40:].abs().sum() == 0


# ---- checkpoints ------------------------------------------------------------------------------------------


def regionclip_layout(visual_sd: dict, decoy_seed: int = 9, prefix: str = "") -> OrderedDict:
    """A state dict in RegionCLIP's layout: backbone.* plus same-shape teacher_backbone.* decoys and a text tower."""
    g = torch.Generator().manual_seed(decoy_seed)
    out = OrderedDict()
    for k, v in visual_sd.items():
        out[f"{prefix}backbone.{k}"] = v.clone()
        out[f"{prefix}teacher_backbone.{k}"] = torch.randn(v.shape, generator=g)
    out[f"{prefix}lang_encoder.token_embedding.weight"] = torch.randn(10, 4, generator=g)
    return out


@pytest.mark.parametrize("prefix", ["", "module."])
def test_regionclip_checkpoint_loads_backbone_only(tmp_path, prefix):
    """(c) A RegionCLIP-layout .pth reproduces the source model exactly; teacher_backbone decoys never load."""
    src = make_encoder(model="tiny", seed=1)
    path = tmp_path / "regionclip.pth"
    ckpt = regionclip_layout(src.visual.state_dict(), prefix=prefix)
    torch.save({"model": ckpt, "iteration": 100}, path)
    enc = regionclip(model="tiny", seed=2, checkpoint=str(path))
    for k, v in src.visual.state_dict().items():
        assert torch.equal(enc.visual.state_dict()[k], v), k
    assert not torch.equal(enc.visual.conv1.weight, ckpt[f"{prefix}teacher_backbone.conv1.weight"])
    pixels = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(5))
    inputs = RegionInputs(pixels=pixels, sizes=torch.tensor([[64, 80]]))
    boxes = Regions.from_per_image([torch.tensor([[0.1, 0.0, 0.8, 0.9], [0.5, 0.5, 1.0, 1.0]])])
    assert torch.equal(enc(inputs, boxes), src(inputs, boxes))

    st_path = convert_to_safetensors(path, tmp_path / "visual.safetensors")
    from_st = regionclip(model="tiny", seed=3, checkpoint=str(st_path))
    assert torch.equal(from_st(inputs, boxes), src(inputs, boxes))


def test_checkpoint_numpy_arrays_and_frozen_bn_version_quirk(tmp_path):
    src = make_encoder(model="tiny", seed=1)
    sd = OrderedDict((f"backbone.{k}", v.clone()) for k, v in src.visual.state_dict().items())
    sd["backbone.conv1.weight"] = sd["backbone.conv1.weight"].numpy()  # detectron2 may hold numpy arrays
    sd._metadata = OrderedDict([("backbone.bn1", {"version": 2}), ("backbone.bn2", {"version": 3})])
    path = tmp_path / "np.pth"
    torch.save({"model": sd}, path)
    enc = regionclip(model="tiny", seed=2, checkpoint=str(path))
    assert torch.equal(enc.visual.conv1.weight, src.visual.conv1.weight)
    # detectron2 FrozenBatchNorm2d upgrade: running_var -= eps for state dicts saved at version < 3
    assert torch.allclose(enc.visual.bn1.running_var, src.visual.bn1.running_var - 1e-5, atol=0, rtol=1e-7)
    assert not torch.equal(enc.visual.bn1.running_var, src.visual.bn1.running_var)
    assert torch.equal(enc.visual.bn2.running_var, src.visual.bn2.running_var)


def test_checkpoint_mismatch_missing_and_corrupt(tmp_path):
    other = regionclip(model={"layers": [1, 1, 1, 1], "width": 32, "image_size": 64, "output_dim": 64}, seed=0)
    path = tmp_path / "other.pth"
    sd = {f"backbone.{k}": v for k, v in other.visual.state_dict().items() if not k.startswith("attnpool.c_proj")}
    sd["backbone.extra.weight"] = torch.zeros(1)
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as err:
        regionclip(model="tiny", checkpoint=str(path))
    msg = str(err.value)
    assert str(path) in msg and "2 missing keys" in msg and "1 unexpected keys" in msg and "shape mismatches" in msg
    assert "attnpool.c_proj.weight" in msg

    teacher_only = tmp_path / "teacher.pth"
    tiny_sd = regionclip(model="tiny", seed=0).visual.state_dict()
    torch.save({"model": {f"teacher_backbone.{k}": v for k, v in tiny_sd.items()}}, teacher_only)
    with pytest.raises(CheckpointError, match="missing keys"):
        regionclip(model="tiny", checkpoint=str(teacher_only))

    with pytest.raises(CheckpointError, match="not found.*nope.pth"):
        regionclip(model="tiny", checkpoint=str(tmp_path / "nope.pth"))

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        regionclip(model="tiny", checkpoint=str(truncated))
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        regionclip(model="tiny", checkpoint=str(bad_st))


class Metadata:
    """A non-tensor object a checkpoint might carry (weights_only=True refuses it)."""

    def __init__(self, note: str = "x"):
        self.note = note


def test_non_tensor_pickle_needs_explicit_trust(tmp_path):
    src = make_encoder(model="tiny", seed=1)
    path = tmp_path / "meta.pth"
    torch.save({"model": regionclip_layout(src.visual.state_dict()), "meta": Metadata()}, path)
    with pytest.raises(CheckpointError, match="(?s)refused.*Metadata.*trust_checkpoint"):
        regionclip(model="tiny", checkpoint=str(path))
    with pytest.warns(UserWarning, match="weights_only=False"):
        enc = regionclip(model="tiny", checkpoint=str(path), trust_checkpoint=True)
    assert torch.equal(enc.visual.layer4[0].conv2.weight, src.visual.layer4[0].conv2.weight)


class Evil:
    """Unpickling this runs ``exec`` and writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    """(f) A RegionCLIP-style .pth whose pickle would run code is refused; the payload never executes."""
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"backbone.conv1.weight": Evil(str(marker))}}, path)
    with pytest.raises(CheckpointError, match="refused.*exec"):
        regionclip(model="tiny", checkpoint=str(path))
    with pytest.raises(CheckpointError, match="refused"):
        convert_to_safetensors(path, tmp_path / "out.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()
    torch.load(path, weights_only=False)  # the payload is live: unsafe loading would have run it
    assert marker.read_text() == "pwned"
