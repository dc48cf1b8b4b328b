"""Tests for pvit.testing: correct fake components pass the contract checks, broken ones fail loudly."""

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import roi_align

import pvit
from pvit.interfaces import REGION_END, REGION_PATCH_TOKEN, REGION_START, RegionInputs, Regions
from pvit.testing import check_image_encoder, check_projector, check_region_encoder


def _to_tensor(img, size=None):
    if size is not None:
        img = img.resize(size)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()  # (3, H, W)


class FakeRegionCLIP(nn.Module):
    """K = 1, its own pixels and backbone (frozen conv), a trainable head: shaped like RegionCLIP."""

    tokens_per_region = 1
    out_dim = 8
    special_tokens: list = []
    image_layers: list = []
    uses_own_pixels = True

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 6, 3, stride=2, padding=1).requires_grad_(False)
        self.head = nn.Linear(6, self.out_dim)

    def region_text(self, box):
        return REGION_START + REGION_PATCH_TOKEN * self.tokens_per_region + REGION_END

    def prepare(self, image):
        w, h = image.size
        s = 24 / min(w, h)
        return _to_tensor(image, (round(w * s), round(h * s)))

    def collate(self, prepared):
        hmax = max(p.shape[1] for p in prepared)
        wmax = max(p.shape[2] for p in prepared)
        pixels = torch.zeros(len(prepared), 3, hmax, wmax)  # (B, 3, H, W)
        for i, p in enumerate(prepared):
            pixels[i, :, : p.shape[1], : p.shape[2]] = p
        sizes = torch.tensor([list(p.shape[1:]) for p in prepared])  # (B, 2)
        return RegionInputs(pixels=pixels, sizes=sizes)

    def features(self, inputs):
        return self.backbone(inputs.pixels)  # (B, 6, H/2, W/2)

    def forward(self, inputs, regions):
        feats = self.features(inputs)
        scale = [torch.stack([s[1], s[0], s[1], s[0]]).float() for s in inputs.sizes]
        rois = [bx * sc for bx, sc in zip(regions.per_image(), scale)]  # pixels of the resized image
        pooled = roi_align(feats, rois, output_size=2, spatial_scale=0.5, aligned=True)  # (R, 6, 2, 2)
        return self.head(pooled.mean((2, 3))).unsqueeze(1)  # (R, 1, D)


class FakeViT(nn.Module):
    """A tiny image encoder: 8x8 patches of a 32x32 image, two 1x1-conv blocks."""

    out_dim = 12
    num_tokens = 16
    grid_size = (4, 4)
    image_size = (32, 32)

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 12, 8, stride=8)
        self.blocks = nn.ModuleList([nn.Conv2d(12, 12, 1), nn.Conv2d(12, 12, 1)])

    def transform(self, image):
        return _to_tensor(image, (32, 32)) - 0.5

    def hidden_states(self, pixels):
        hs = [self.embed(pixels)]  # (B, C, gh, gw)
        for blk in self.blocks:
            hs.append(hs[-1] + torch.tanh(blk(hs[-1])))
        return hs

    def forward(self, pixels):
        return self.hidden_states(pixels)[-1].flatten(2).transpose(1, 2)  # (B, N, D)

    def forward_with_maps(self, pixels, layers):
        hs = self.hidden_states(pixels)
        return hs[-1].flatten(2).transpose(1, 2), [hs[i] for i in layers]


class FakeViTRoI(nn.Module):
    """K = 1, pools the image encoder's last map (no pixels of its own): shaped like ViT-RoI."""

    tokens_per_region = 1
    out_dim = 8
    special_tokens: list = []
    image_layers = [-1]
    uses_own_pixels = False

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(12, self.out_dim)

    region_text = FakeRegionCLIP.region_text

    def prepare(self, image):
        return None

    def collate(self, prepared):
        return RegionInputs()

    def forward(self, inputs, regions):
        fmap = inputs.image_maps[0]  # (B, C, gh, gw)
        gh, gw = fmap.shape[2:]
        rois = [bx * torch.tensor([gw, gh, gw, gh], dtype=bx.dtype) for bx in regions.per_image()]
        pooled = roi_align(fmap, rois, output_size=2, spatial_scale=1.0, aligned=True)  # (R, C, 2, 2)
        return self.head(pooled.mean((2, 3))).unsqueeze(1)  # (R, 1, D)


# -------------------------------------------------------------------------------------------- passing cases


def test_correct_own_pixel_encoder_passes_and_state_is_restored():
    enc = FakeRegionCLIP()
    enc.head.weight.grad = torch.full_like(enc.head.weight, 7.0)
    summary = check_region_encoder(enc, n_images=3)
    assert summary["output_shape"] == (7, 1, 8) and summary["backward"] is True
    assert summary["trainable_params"] == 6 * 8 + 8 and summary["frozen_params"] == 3 * 6 * 9 + 6
    assert enc.training and not enc.backbone.weight.requires_grad and enc.backbone.weight.grad is None
    assert torch.equal(enc.head.weight.grad, torch.full_like(enc.head.weight, 7.0))
    enc.eval()
    check_region_encoder(enc)
    assert not enc.training and not enc.head.training


def test_correct_pooling_encoder_passes_with_an_image_encoder_and_needs_one():
    vit = FakeViT()
    summary = check_image_encoder(vit, layers=(-1, 0))
    assert summary["map_channels"] == [12, 12] and summary["grid_size"] == (4, 4)
    assert check_region_encoder(FakeViTRoI(), vit)["output_shape"] == (5, 1, 8)
    with pytest.raises(TypeError, match=r"image_layers=\[-1\].*image_encoder"):
        check_region_encoder(FakeViTRoI())


def test_every_installed_region_encoder_that_needs_no_weights_passes():
    enc = pvit.build("region_encoder", "text-coords")
    assert check_region_encoder(enc)["tokens_per_region"] == 0


# -------------------------------------------------------------------------------------------- broken cases


class WrongShape(FakeRegionCLIP):
    def forward(self, inputs, regions):
        return super().forward(inputs, regions)[..., :-1]


class WrongTokenCount(FakeRegionCLIP):
    def region_text(self, box):
        return REGION_START + REGION_PATCH_TOKEN * 2 + REGION_END


class UnlistedToken(FakeRegionCLIP):
    def region_text(self, box):
        return REGION_START + REGION_PATCH_TOKEN + "<obj>" + REGION_END


class NonFinite(FakeRegionCLIP):
    def forward(self, inputs, regions):
        out = super().forward(inputs, regions)
        return out * torch.tensor(float("nan"))


class SortsBoxes(FakeRegionCLIP):
    def forward(self, inputs, regions):
        return super().forward(inputs, Regions.from_per_image([bx[bx[:, 0].argsort()] for bx in regions.per_image()]))


class Unfreezes(FakeRegionCLIP):
    def forward(self, inputs, regions):
        self.backbone.requires_grad_(True)
        return super().forward(inputs, regions)


class WritesFrozenGrad(FakeRegionCLIP):
    def forward(self, inputs, regions):
        self.backbone.bias.grad = torch.ones_like(self.backbone.bias)
        return super().forward(inputs, regions)


class UpdatesFrozenBatchNorm(FakeRegionCLIP):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(6).requires_grad_(False)

    def features(self, inputs):
        return self.bn(super().features(inputs))


class Detached(FakeRegionCLIP):
    def forward(self, inputs, regions):
        return super().forward(inputs, regions).detach()


class StringK(FakeRegionCLIP):
    tokens_per_region = "1"


class BadSizes(FakeRegionCLIP):
    def collate(self, prepared):
        inputs = super().collate(prepared)
        inputs.sizes = inputs.sizes.flip(1)
        return inputs


class ConstantText(FakeRegionCLIP):
    tokens_per_region = 0
    out_dim = 0
    special_tokens = ["<box>"]

    def __init__(self):
        nn.Module.__init__(self)

    def region_text(self, box):
        return "<box>"

    def forward(self, inputs, regions):
        return torch.zeros(len(regions), 0, 0)


class DependsOnOtherImages(FakeRegionCLIP):
    def forward(self, inputs, regions):
        out = super().forward(inputs, regions)
        return out + out.mean(0, keepdim=True)


BROKEN = [
    (WrongShape, "forward shape", "(R, K, out_dim)"),
    (WrongTokenCount, "region_text", "holds 2 <region_patch>"),
    (UnlistedToken, "region_text", "<obj>"),
    (NonFinite, "forward shape", "non-finite"),
    (SortsBoxes, "mention order", "reversing the boxes"),
    (Unfreezes, "frozen parameters stay frozen", "backbone.weight"),
    (WritesFrozenGrad, "frozen parameters get no gradient", "backbone.bias"),
    (UpdatesFrozenBatchNorm, "frozen modules keep their buffers", "bn.running_mean"),
    (Detached, "gradient flow", "head.weight"),
    (StringK, "declared attributes", "tokens_per_region"),
    (BadSizes, "collate", "sizes[0]"),
    (ConstantText, "region_text", "render the same text"),
    (DependsOnOtherImages, "forward with an image without boxes", "changed the features"),
]


@pytest.mark.parametrize("cls, contract, detail", BROKEN, ids=[c[0].__name__ for c in BROKEN])
def test_broken_region_encoder_fails_naming_the_contract(cls, contract, detail):
    with pytest.raises(AssertionError) as e:
        check_region_encoder(cls())
    msg = str(e.value)
    assert cls.__name__ in msg and f"'{contract}'" in msg and detail in msg


class GridMismatch(FakeViT):
    num_tokens = 15


class WrongTransform(FakeViT):
    def transform(self, image):
        return _to_tensor(image, (30, 32))


class WrongMapGrid(FakeViT):
    def forward_with_maps(self, pixels, layers):
        tokens, maps = super().forward_with_maps(pixels, layers)
        return tokens, [m[..., :-1] for m in maps]


@pytest.mark.parametrize(
    "cls, fragment",
    [(GridMismatch, "num_tokens is 15"), (WrongTransform, "expected float (3, 32, 32)"), (WrongMapGrid, "(B=2, C, 4, 4)")],
)
def test_broken_image_encoder_fails(cls, fragment):
    with pytest.raises(AssertionError, match=cls.__name__) as e:
        check_image_encoder(cls())
    assert fragment in str(e.value)


class Proj(nn.Module):
    def __init__(self, in_dim, out_dim, unused=False):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, 16), nn.GELU(), nn.Linear(16, out_dim))
        if unused:
            self.extra = nn.Linear(2, 2)

    def forward(self, x):
        return self.net(x)


def test_projector_check():
    assert check_projector(Proj(8, 5), 8, 5)["trainable_params"] == 8 * 16 + 16 + 16 * 5 + 5
    with pytest.raises(AssertionError, match="out_dim is 5, built for 6"):
        check_projector(Proj(8, 5), 8, 6)
    p = Proj(8, 5)
    p.out_dim = 6
    with pytest.raises(AssertionError, match=r"expected \(2, 3, 6\)"):
        check_projector(p, 8, 6)
    with pytest.raises(AssertionError, match=r"extra.weight"):
        check_projector(Proj(8, 5, unused=True), 8, 5)
