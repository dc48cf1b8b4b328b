"""Optional normalisation of projector inputs: none, LayerNorm, or BatchNorm1d over every leading dimension."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pvit.errors import ComponentOptionError

INPUT_NORMS = ("none", "layer", "batch")


class TokenBatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` over all leading dims of (..., D): every token of the batch is one sample.

    In training mode a batch with fewer than two rows cannot give batch statistics; it is normalised
    with the running statistics instead (which are then left unchanged).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        flat = x.reshape(-1, x.shape[-1])  # (M, D)
        if self.training and flat.shape[0] < 2:
            y = F.batch_norm(flat, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        else:
            y = super().forward(flat)  # (M, D)
        return y.reshape(x.shape)  # (..., D)


def make_input_norm(kind: str, dim: int, where: str) -> nn.Module:
    """'none' | 'layer' | 'batch' -> a module mapping (..., dim) -> (..., dim)."""
    if kind == "none":
        return nn.Identity()
    if kind == "layer":
        return nn.LayerNorm(dim)
    if kind == "batch":
        return TokenBatchNorm(dim)
    raise ComponentOptionError(f"{where}: input_norm {kind!r} is not one of {', '.join(INPUT_NORMS)}")
