"""BoxStatsEncoder: area-weighted RGB mean/std inside each box of a small thumbnail, plus the box geometry."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from pvit.interfaces import REGION_END, REGION_PATCH_TOKEN, REGION_START, RegionInputs, Regions


def coverage(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    """Fraction of each of ``n`` equal cells of [0, 1] covered by [lo, hi]: (R,) x2 -> (R, n)."""
    edges = torch.arange(n + 1, dtype=lo.dtype, device=lo.device) / n  # (n + 1,)
    left = torch.maximum(edges[:-1].unsqueeze(0), lo.unsqueeze(1))  # (R, n)
    right = torch.minimum(edges[1:].unsqueeze(0), hi.unsqueeze(1))  # (R, n)
    return (right - left).clamp(min=0) * n  # (R, n), 1 for a fully covered cell


class BoxStatsEncoder(nn.Module):
    """A region encoder with its own (trivial) preprocessing and no weights.

    Each image is squashed to ``resolution`` x ``resolution`` (the box coordinates are fractions of the
    image, so squashing keeps them valid). A box's feature is the mean and standard deviation of R, G
    and B over the thumbnail pixels it covers, each pixel weighted by the fraction of it inside the box,
    so even a box smaller than one pixel gets a feature. With ``geometry`` the box and its width and
    height follow. One token per region: ``tokens_per_region = 1``, ``out_dim = 6 (+ 6)``.
    """

    def __init__(self, resolution: int = 32, geometry: bool = True):
        super().__init__()
        if int(resolution) < 1:
            raise ValueError(f"box-stats: resolution must be >= 1, got {resolution!r}")
        self.resolution = int(resolution)
        self.geometry = bool(geometry)
        # the attributes pvit reads (see pvit.interfaces.RegionEncoder)
        self.tokens_per_region = 1
        self.out_dim = 12 if self.geometry else 6
        self.special_tokens = [REGION_START, REGION_END]
        self.image_layers: list[int] = []  # no image-encoder feature maps needed
        self.uses_own_pixels = True  # prepare() returns pixels

    def region_text(self, box: Sequence[float]) -> str:
        """One feature slot per mention, whatever the box: ``<Region><region_patch></Region>``."""
        return REGION_START + REGION_PATCH_TOKEN + REGION_END

    def prepare(self, image) -> torch.Tensor:
        """PIL image -> (3, r, r) float32 in [0, 1], r = ``resolution`` (bilinear resize)."""
        from PIL import Image

        thumb = image.convert("RGB").resize((self.resolution, self.resolution), Image.BILINEAR)
        arr = np.asarray(thumb, dtype=np.float32) / 255.0  # (r, r, 3)
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, r, r)

    def collate(self, prepared: list) -> RegionInputs:
        """Stack thumbnails: ``pixels`` (B, 3, r, r) and ``sizes`` (B, 2), all equal to (r, r)."""
        pixels = torch.stack(prepared)  # (B, 3, r, r)
        sizes = torch.tensor([[p.shape[1], p.shape[2]] for p in prepared], dtype=torch.long)  # (B, 2)
        return RegionInputs(pixels=pixels, sizes=sizes)

    def forward(self, inputs: RegionInputs, regions: Regions) -> torch.Tensor:
        """The batch's regions (boxes xyxy in [0, 1], checked by pvit) -> (R, 1, out_dim), in their order."""
        pixels = inputs.pixels  # (B, 3, r, r)
        if pixels is None or len(regions.counts) != pixels.shape[0]:
            raise ValueError(
                f"box-stats: got regions of {len(regions.counts)} images and pixels "
                f"{None if pixels is None else tuple(pixels.shape)}; pass the RegionInputs of its own collate()"
            )
        n = self.resolution
        feats = []
        for img, bx in zip(pixels, regions.per_image()):  # one (R_b, 4) tensor per image
            bx = bx.to(device=img.device, dtype=torch.float32)  # (R_b, 4)
            wx = coverage(bx[:, 0], bx[:, 2], n)  # (R_b, r) weight of each column
            wy = coverage(bx[:, 1], bx[:, 3], n)  # (R_b, r) weight of each row
            w = wy.unsqueeze(2) * wx.unsqueeze(1)  # (R_b, r, r)
            w = w / w.sum(dim=(1, 2), keepdim=True).clamp(min=1e-12)  # (R_b, r, r), sums to 1
            x = img.float().unsqueeze(0)  # (1, 3, r, r)
            mean = (w.unsqueeze(1) * x).sum(dim=(2, 3))  # (R_b, 3)
            var = (w.unsqueeze(1) * (x - mean[:, :, None, None]) ** 2).sum(dim=(2, 3))  # (R_b, 3)
            parts = [mean, var.clamp(min=0).sqrt()]
            if self.geometry:
                size = torch.stack([bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]], dim=1)  # (R_b, 2)
                parts += [bx, size]
            feats.append(torch.cat(parts, dim=1))  # (R_b, out_dim)
        if not feats:
            return torch.zeros(0, 1, self.out_dim)  # (0, 1, D)
        return torch.cat(feats).unsqueeze(1)  # (R, 1, out_dim)
