"""CLIP AttentionPool2d evaluated for the mean-token query only: the same output at about half the cost."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mean_query_attnpool(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip ``AttentionPool2d`` output for (R, C, h, w) features -> (R, out_dim).

    CLIP attends from all h*w+1 tokens but keeps only the first (the mean token) output; computing just that
    query row gives the same result (to float rounding) without the other h*w query projections and attention
    rows. Uses ``pool``'s weights: positional_embedding ((h*w+1), C), q/k/v_proj, c_proj, num_heads.
    """
    R, C = x.shape[:2]
    tokens = x.flatten(2).transpose(1, 2)  # (R, h*w, C)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (R, N, C), N = h*w + 1
    tokens = tokens + pool.positional_embedding.to(tokens.dtype)  # (R, N, C)
    heads = pool.num_heads
    q = F.linear(tokens[:, :1], pool.q_proj.weight, pool.q_proj.bias)  # (R, 1, C)
    k = F.linear(tokens, pool.k_proj.weight, pool.k_proj.bias)  # (R, N, C)
    v = F.linear(tokens, pool.v_proj.weight, pool.v_proj.bias)  # (R, N, C)
    q = q.view(R, 1, heads, C // heads).transpose(1, 2)  # (R, H, 1, C/H)
    k = k.view(R, -1, heads, C // heads).transpose(1, 2)  # (R, H, N, C/H)
    v = v.view(R, -1, heads, C // heads).transpose(1, 2)  # (R, H, N, C/H)
    out = F.scaled_dot_product_attention(q, k, v)  # (R, H, 1, C/H), scaled by 1/sqrt(C/H) as CLIP
    out = out.transpose(1, 2).reshape(R, C)  # (R, C)
    return F.linear(out, pool.c_proj.weight, pool.c_proj.bias)  # (R, out_dim)
