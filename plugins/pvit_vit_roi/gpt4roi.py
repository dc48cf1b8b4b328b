"""GPT4RoI's multi-level RoI module (MLVLFuseModule + MlvlRoIExtractor), after docs/regions.md.

Pipeline for L levels (GPT4RoI: hidden states 14, 17, 20, 23 of CLIP ViT-L/14, a 16x16 grid):
1. level i is resized (bilinear, align_corners=True) to ``grid * 2**(L-1-i)`` (128, 64, 32, 16 for ViT-L);
2. fuse: 2 coordinate channels (x, y in [-1, 1]) are appended and a per-level 1x1 conv maps C+2 -> C; then
   ``fuse_rounds`` rounds in which every level keeps its channels [0, C/2), takes channels [3C/4, C) of the next
   (coarser) level and [C/2, 3C/4) of the previous (finer) level (clamped at the ends), both resized to its size
   (bilinear, align_corners=True), and applies the round's shared 3x3 conv (no bias) + GroupNorm + ReLU;
3. every box is pooled from every level: RoIAlign ``output_size`` (14), ``sampling_ratio`` 2, aligned=True;
4. per-level 3x3 conv (bias), summed over levels, ReLU, flatten, Linear(C * s * s, D);
5. plus a box position embedding of the normalised box: Linear(4, 256), ReLU, LN, Linear(256, D), ReLU, LN.
GPT4RoI's final ``updims`` Linear(1024, 4096) is the region projector in pvit (use the ``linear`` projector).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .rois import pool, rois_on_map

#: Width of the hidden layer of the box position embedding (GPT4RoI: 256).
POS_HIDDEN = 256


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _coordinates(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 2, h, w): x then y, each linspace(-1, 1) across the map."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
    return torch.stack([gx, gy]).unsqueeze(0).expand(b, -1, -1, -1)  # (B, 2, h, w)


class MultiLevelFuse(nn.Module):
    """GPT4RoI's ``MLVLFuseModule``: coordinate channels, per-level 1x1 conv, then channel-shuffling fuse rounds."""

    def __init__(self, channels: int, num_levels: int, rounds: int = 5, groups: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.num_levels = num_levels
        self.shuffle = channels // 4
        self.keep = channels - 2 * self.shuffle
        groups = math.gcd(64, channels) if groups is None else groups  # GPT4RoI: GroupNorm(64)
        self.input_convs = nn.ModuleList(nn.Conv2d(channels + 2, channels, 1) for _ in range(num_levels))
        self.rounds = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.GroupNorm(groups, channels),
                nn.ReLU(inplace=True),
            )
            for _ in range(rounds)
        )
        for block in self.rounds:  # mmcv ConvModule's init: kaiming normal (fan_out, relu)
            nn.init.kaiming_normal_(block[0].weight, mode="fan_out", nonlinearity="relu")

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """[(B, C, h_l, w_l)] -> [(B, C, h_l, w_l)], finest level first."""
        x = [conv(torch.cat([f, _coordinates(f)], dim=1)) for conv, f in zip(self.input_convs, levels)]  # (B, C, h_l, w_l)
        last = self.num_levels - 1
        k, s = self.keep, self.shuffle
        for block in self.rounds:
            mixed = []
            for lvl, own in enumerate(x):
                coarser, finer = x[min(lvl + 1, last)], x[max(lvl - 1, 0)]
                from_coarser = _resize(coarser[:, k + s :], own.shape[-2:])  # (B, C - k - s, h_l, w_l)
                from_finer = _resize(finer[:, k : k + s], own.shape[-2:])  # (B, s, h_l, w_l)
                mixed.append(torch.cat([own[:, :k], from_coarser, from_finer], dim=1))  # (B, C, h_l, w_l)
            x = [block(m) for m in mixed]
        return x


class GPT4RoIHead(nn.Module):
    """GPT4RoI's multi-level RoI feature: fuse -> RoIAlign per level -> 3x3 convs summed -> ReLU -> Linear + box embedding.

    Args:
        channels: C, width of the image encoder's hidden states.
        num_levels: L, number of hidden-state layers pooled.
        out_dim: D of the region feature (GPT4RoI: 1024, before its ``updims`` to the LLM).
        output_size: RoIAlign bins per side (GPT4RoI: 14).
        sampling_ratio: RoIAlign samples per bin side (GPT4RoI/mmcv: 2).
        fuse_rounds: fuse rounds (GPT4RoI: 5).
    """

    def __init__(
        self, channels: int, num_levels: int, out_dim: int, output_size: int = 14, sampling_ratio: int = 2,
        fuse_rounds: int = 5,
    ) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.out_dim = out_dim
        self.fuse = MultiLevelFuse(channels, num_levels, fuse_rounds)
        self.level_convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_levels))
        for conv in self.level_convs:  # GPT4RoI: normal_init(std=0.01), bias 0
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.flatten_linear = nn.Linear(channels * output_size * output_size, out_dim)
        self.pos_embed = nn.Sequential(
            nn.Linear(4, POS_HIDDEN),
            nn.ReLU(inplace=True),
            nn.LayerNorm(POS_HIDDEN),
            nn.Linear(POS_HIDDEN, out_dim),
            nn.ReLU(inplace=True),
            nn.LayerNorm(out_dim),
        )

    def pyramid(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """[(B, C, gh, gw)] in layer order -> level i resized to (gh, gw) * 2**(L-1-i)."""
        gh, gw = maps[0].shape[-2:]
        last = self.num_levels - 1
        return [_resize(m, (gh * 2 ** (last - i), gw * 2 ** (last - i))) for i, m in enumerate(maps)]

    def forward(
        self, maps: list[torch.Tensor], image_idx: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Maps [(B, C, gh, gw)] per level, boxes (R, 4) normalised -> (R, out_dim)."""
        dtype = self.flatten_linear.weight.dtype
        levels = self.fuse(self.pyramid([m.to(dtype) for m in maps]))  # [(B, C, h_l, w_l)]
        summed = 0
        for conv, level in zip(self.level_convs, levels):
            rois = rois_on_map(image_idx, boxes, image_size, tuple(level.shape[-2:]))  # (R, 5)
            pooled = pool(level, rois, self.output_size, self.sampling_ratio).to(dtype)  # (R, C, s, s)
            summed = summed + conv(pooled)  # (R, C, s, s)
        x = F.relu(summed).flatten(1)  # (R, C * s * s)
        return self.flatten_linear(x) + self.pos_embed(boxes.to(dtype))  # (R, out_dim)
