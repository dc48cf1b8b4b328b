"""`vit-roi`: a region encoder that RoI-pools the image encoder's hidden states (no second backbone)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from pvit.errors import ComponentOptionError, InvalidRegionError, did_you_mean
from pvit.interfaces import REGION_END, REGION_PATCH_TOKEN, REGION_START, RegionInputs, Regions

from .gpt4roi import GPT4RoIHead
from .light import LightRoIHead

NAME = "vit-roi"
VARIANTS = ("light", "gpt4roi")
#: Layers GPT4RoI pools when the encoder's depth is unknown (= 14, 17, 20, 23 of a 24-block ViT-L/14).
GPT4ROI_FALLBACK_LAYERS = [-11, -8, -5, -2]


def gpt4roi_layers(num_layers: int) -> list[int]:
    """GPT4RoI's rule ``hidden_states[-2::-3][::-1][-4:]`` as absolute indices: [14, 17, 20, 23] for 24 blocks."""
    return list(range(num_layers + 1))[-2::-3][::-1][-4:]


def _positive_int(value: Any, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ComponentOptionError(f"{NAME}: option {option!r} must be a positive int, got {value!r}")
    return value


class ViTRoIEncoder(nn.Module):
    """One token per region, pooled from the image encoder's feature maps (``RegionInputs.image_maps``).

    The image encoder itself is not held (the core owns it); only its width, grid and input size are kept.

    Attributes:
        tokens_per_region: 1.
        out_dim: D_r of each region token.
        special_tokens: ``<Region>``, ``</Region>``.
        image_layers: hidden-state indices whose maps ``forward`` needs, in that order.
        uses_own_pixels: False (no preprocessing of its own).
        variant: 'light' | 'gpt4roi'.
        in_channels, grid_size, image_size: of the image encoder.
    """

    tokens_per_region = 1
    uses_own_pixels = False
    special_tokens = [REGION_START, REGION_END]

    def __init__(
        self,
        in_channels: int,
        grid_size: tuple[int, int],
        image_size: tuple[int, int],
        num_layers: int | None,
        variant: str = "light",
        layers: Sequence[int] | None = None,
        output_size: int | None = None,
        sampling_ratio: int | None = None,
        out_dim: int | None = None,
        fuse_rounds: int = 5,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ComponentOptionError(f"{NAME}: variant {variant!r} is not one of {', '.join(VARIANTS)}"
                                       + did_you_mean(variant, VARIANTS))
        self.variant = variant
        self.in_channels = int(in_channels)
        self.grid_size = tuple(int(g) for g in grid_size)
        self.image_size = tuple(int(s) for s in image_size)
        self.special_tokens = list(self.special_tokens)
        if layers is None:
            if variant == "light":
                layers = [-2]
            else:
                layers = gpt4roi_layers(num_layers) if num_layers else list(GPT4ROI_FALLBACK_LAYERS)
        if isinstance(layers, int) or not list(layers):
            raise ComponentOptionError(f"{NAME}: option 'layers' must be a non-empty list of hidden-state indices, got {layers!r}")
        self.image_layers = [int(x) for x in layers]
        if num_layers:
            n = num_layers + 1
            bad = [x for x in self.image_layers if not -n <= x < n]
            if bad:
                raise ComponentOptionError(
                    f"{NAME}: layers {bad} are not hidden-state indices of the {num_layers}-block image encoder; "
                    f"valid: 0 (embeddings) .. {num_layers} (last block), or -1 .. -{n}"
                )
        if sampling_ratio is None:
            sampling_ratio = 0 if variant == "light" else 2
        if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int) or sampling_ratio < 0:
            raise ComponentOptionError(f"{NAME}: sampling_ratio must be an int >= 0 (0 = adaptive), got {sampling_ratio!r}")
        if variant == "light":
            output_size = _positive_int(2 if output_size is None else output_size, "output_size")
            if out_dim is not None:
                _positive_int(out_dim, "out_dim")
            self.head = LightRoIHead(self.in_channels, len(self.image_layers), output_size, sampling_ratio, out_dim)
        else:
            output_size = _positive_int(14 if output_size is None else output_size, "output_size")
            out_dim = _positive_int(self.in_channels if out_dim is None else out_dim, "out_dim")
            self.head = GPT4RoIHead(
                self.in_channels, len(self.image_layers), out_dim, output_size, sampling_ratio,
                _positive_int(fuse_rounds, "fuse_rounds"),
            )
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.out_dim = int(self.head.out_dim)

    def region_text(self, box: Sequence[float]) -> str:
        """``<Region><region_patch></Region>`` for every box (the feature carries the position)."""
        return f"{REGION_START}{REGION_PATCH_TOKEN}{REGION_END}"

    def prepare(self, image) -> None:
        """No preprocessing of its own: the maps come from the image encoder."""
        return None

    def collate(self, prepared: list) -> RegionInputs:
        """Nothing to batch; the core fills ``image_maps`` and ``image_size``."""
        return RegionInputs()

    def forward(self, inputs: RegionInputs, regions: Regions) -> torch.Tensor:
        """Maps [(B_i, C, gh, gw)] per ``image_layers`` + the batch's Regions -> (R, 1, out_dim)."""
        maps = list(inputs.image_maps)
        if len(maps) != len(self.image_layers):
            raise ValueError(
                f"{NAME}: expected {len(self.image_layers)} image maps (layers {self.image_layers}), got {len(maps)}; "
                "the core must pass image_encoder.forward_with_maps(pixels, region_encoder.image_layers)[1]"
            )
        shape = tuple(maps[0].shape)
        for m in maps:
            if m.dim() != 4 or m.shape[1] != self.in_channels or tuple(m.shape) != shape:
                raise ValueError(
                    f"{NAME}: image maps must all be (B, {self.in_channels}, gh, gw); got {[tuple(x.shape) for x in maps]}"
                )
        image_size = tuple(inputs.image_size) if inputs.image_size is not None else self.image_size
        if len(regions.counts) != shape[0]:
            raise InvalidRegionError(f"{NAME}: got regions of {len(regions.counts)} images but image maps for "
                                     f"{shape[0]}; the maps need one row per image of the Regions")
        device = maps[0].device
        image_idx = regions.image_index.to(device=device, dtype=torch.float32)  # (R,)
        flat = regions.boxes.to(device=device, dtype=torch.float32)  # (R, 4)
        return self.head(maps, image_idx, flat, image_size).unsqueeze(1)  # (R, 1, out_dim)

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant!r}, image_layers={self.image_layers}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, out_dim={self.out_dim}"
        )
