"""Shared behaviour of the ViT image encoders: layer indexing, CLS dropping, feature maps and freezing."""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from pvit.errors import ComponentOptionError

from .transform import squash_transform


class ViTImageEncoder(nn.Module):
    """Base class: a ViT backbone whose hidden states are indexed like Hugging Face ``hidden_states``.

    Index 0 is the embedding output (after the pre-norm, before block 1), index k the output of block k,
    negative indices count from the end (-1 = last block). Prefix tokens (CLS, registers, distillation)
    are dropped from every output.

    Subclasses set ``self.backbone`` and implement [_hidden_states][] for the absolute indices asked for.

    Attributes:
        out_dim: D, width of each token.
        num_tokens: N = gh * gw patch tokens per image.
        grid_size: (gh, gw) patch grid.
        image_size: (H, W) that ``transform`` produces and ``forward`` expects.
        num_layers: L, number of transformer blocks (so there are L + 1 hidden states).
        num_prefix_tokens: tokens before the patch tokens (1 for CLIP).
        select_layer: the index ``forward`` returns (as given; ``layer_index`` resolves it).
        frozen: True when parameters need no grad, the module stays in eval mode and runs under no_grad.
    """

    name = "vit"

    def __init__(
        self,
        *,
        backbone: nn.Module,
        out_dim: int,
        grid_size: tuple[int, int],
        image_size: tuple[int, int],
        num_layers: int,
        num_prefix_tokens: int,
        select_layer: int,
        mean: Sequence[float],
        std: Sequence[float],
        frozen: bool,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_dim = int(out_dim)
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_tokens = self.grid_size[0] * self.grid_size[1]
        self.num_layers = int(num_layers)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.frozen = bool(frozen)
        self.select_layer = int(select_layer)
        self.layer_index(self.select_layer, option="select_layer")  # validate now, not at the first forward
        if self.frozen:
            self.backbone.requires_grad_(False)
            super().train(False)

    # ------------------------------------------------------------------ interface
    def layer_index(self, layer: int, option: str = "layers") -> int:
        """Hugging Face hidden-state index (negative allowed) -> absolute index in [0, L]."""
        n = self.num_layers + 1
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
            raise ComponentOptionError(
                f"{self.name}: {option} {layer!r} is not a hidden-state index of this {self.num_layers}-block "
                f"encoder; valid: 0 (embeddings) .. {self.num_layers} (last block), or -1 .. -{n}"
            )
        return layer % n

    def transform(self, image) -> torch.Tensor:
        """PIL image -> (3, H, W): squash-resize to ``image_size`` (bicubic) and normalise with ``mean``/``std``."""
        return squash_transform(image, self.image_size, self.mean, self.std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, D) patch tokens of ``select_layer``, prefix tokens dropped."""
        return self.forward_with_maps(pixels, ())[0]

    def forward_with_maps(self, pixels: torch.Tensor, layers: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One backbone pass -> (tokens (B, N, D) of ``select_layer``, [maps (B, D, gh, gw) per entry of ``layers``])."""
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, *self.image_size):
            raise ValueError(
                f"{self.name}: expected pixels (B, 3, {self.image_size[0]}, {self.image_size[1]}), "
                f"got {tuple(pixels.shape)}; use this encoder's transform"
            )
        select = self.layer_index(self.select_layer, option="select_layer")
        wanted = [self.layer_index(layer) for layer in layers]
        dtype = self._param_dtype()
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            states = self._hidden_states(pixels.to(dtype), sorted({select, *wanted}))
            b = pixels.shape[0]
            gh, gw = self.grid_size
            tokens = self._patch_tokens(states[select])  # (B, N, D)
            maps = [
                self._patch_tokens(states[i]).reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous()  # (B, D, gh, gw)
                for i in wanted
            ]
        return tokens, maps

    def train(self, mode: bool = True) -> "ViTImageEncoder":
        """Like ``nn.Module.train``, except that a frozen encoder stays in eval mode."""
        return super().train(mode and not self.frozen)

    # ------------------------------------------------------------------ for subclasses
    def _hidden_states(self, pixels: torch.Tensor, indices: list[int]) -> dict[int, torch.Tensor]:
        """(B, 3, H, W) -> {absolute index: (B, P + N, D)} for each of the sorted ``indices``."""
        raise NotImplementedError

    def _patch_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, P + N, D) -> (B, N, D), checking N against the grid."""
        tokens = hidden[:, self.num_prefix_tokens :]  # (B, N, D)
        if tokens.shape[1] != self.num_tokens:
            raise RuntimeError(
                f"{self.name}: backbone gave {tokens.shape[1]} patch tokens, expected {self.num_tokens} "
                f"for grid {self.grid_size}"
            )
        return tokens

    def _param_dtype(self) -> torch.dtype:
        for p in self.backbone.parameters():
            return p.dtype
        return torch.float32

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, grid_size={self.grid_size}, out_dim={self.out_dim}, "
            f"num_layers={self.num_layers}, select_layer={self.select_layer}, frozen={self.frozen}"
        )


@contextlib.contextmanager
def seeded(seed: int | None):
    """Random init under ``torch.manual_seed(seed)`` without disturbing the global RNG (no-op for None)."""
    with torch.random.fork_rng(enabled=seed is not None, devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield
