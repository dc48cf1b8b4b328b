"""Built-in projectors: `linear` and `mlp2x-gelu` (LLaVA-1.5), each with an optional input normalisation."""

from __future__ import annotations

import pvit
from pvit.options import LocalPath


def make_linear(in_dim: int, out_dim: int, input_norm: str = "none", bias: bool = True,
                checkpoint: LocalPath | None = None, prefix: str = ""):
    """``Linear(in_dim, out_dim)`` after an optional input normalisation: (..., in_dim) -> (..., out_dim).

    Options (``in_dim`` / ``out_dim`` are wired by pvit from the encoder and the LLM):
        input_norm: ``none`` (PVIT), ``layer`` (LayerNorm) or ``batch`` (BatchNorm1d over every token of the
            batch; the choice for frozen random encoders, whose features have a tiny per-dimension spread
            around a large common offset: see docs/reproduce.md "What the tiny run learns, and why").
        bias: bias of the linear layer.
        checkpoint: a LLaVA-style projector file (``mm_projector.bin`` or ``.safetensors``) to start from.
        prefix: the key prefix of the projector in that file (LLaVA: ``model.mm_projector.``).
    """
    from .projector import linear, load_projector_weights

    proj = linear(in_dim, out_dim, input_norm=input_norm, bias=bias)
    if checkpoint:
        load_projector_weights(proj, checkpoint, prefix)
    return proj


def make_mlp2x_gelu(in_dim: int, out_dim: int, input_norm: str = "none", hidden_dim: int | None = None,
                    checkpoint: LocalPath | None = None, prefix: str = ""):
    """LLaVA-1.5's ``Linear, GELU, Linear`` after an optional input normalisation: (..., in_dim) -> (..., out_dim).

    Options:
        input_norm: ``none`` | ``layer`` | ``batch`` (see ``linear``).
        hidden_dim: width of the hidden layer; default ``out_dim`` as in LLaVA-1.5.
        checkpoint, prefix: start from a LLaVA-1.5 ``mm_projector`` file (see ``linear``).
    """
    from .projector import load_projector_weights, mlp2x_gelu

    proj = mlp2x_gelu(in_dim, out_dim, input_norm=input_norm, hidden_dim=hidden_dim)
    if checkpoint:
        load_projector_weights(proj, checkpoint, prefix)
    return proj


@pvit.hookimpl
def pvit_register_projectors(register):
    register("linear", make_linear)
    register("mlp2x-gelu", make_mlp2x_gelu)
