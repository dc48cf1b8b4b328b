"""The light ViT-RoI head (pvit's own, NOT GPT4RoI's module): RoIAlign on each listed layer, concat, flatten, optional MLP."""

from __future__ import annotations

import torch
from torch import nn

from .rois import pool, rois_on_map


class LightRoIHead(nn.Module):
    """RoIAlign every box on every level's (B, C, gh, gw) map -> concat channels -> flatten -> [MLP].

    Without ``out_dim`` the head has no parameters and returns the flattened pooled features,
    ``L * C * s * s`` wide (the tiny run's design, docs/reproduce.md: pair it with a projector using
    ``input_norm: batch``). With ``out_dim`` a Linear-GELU-Linear MLP maps them to ``out_dim``.
    """

    def __init__(self, channels: int, num_levels: int, output_size: int, sampling_ratio: int, out_dim: int | None):
        super().__init__()
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.pooled_dim = num_levels * channels * output_size * output_size
        self.mlp = None
        if out_dim is not None:
            self.mlp = nn.Sequential(nn.Linear(self.pooled_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self.out_dim = self.pooled_dim if out_dim is None else out_dim

    def forward(
        self, maps: list[torch.Tensor], image_idx: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Maps [(B, C, gh, gw)] per level, boxes (R, 4) normalised -> (R, out_dim)."""
        pooled = [
            pool(m, rois_on_map(image_idx, boxes, image_size, tuple(m.shape[-2:])), self.output_size, self.sampling_ratio)
            for m in maps
        ]  # each (R, C, s, s)
        x = torch.cat(pooled, dim=1).flatten(1)  # (R, L * C * s * s)
        if self.mlp is None:
            return x.to(maps[0].dtype)
        return self.mlp(x.to(self.mlp[0].weight.dtype))  # (R, out_dim)
