"""Projectors from encoder features to the LLM width: `linear` and LLaVA-1.5's `mlp2x-gelu`."""

from __future__ import annotations

import torch
from torch import nn

from pvit.errors import ComponentOptionError

from .norm import make_input_norm


class Projector(nn.Module):
    """``input_norm`` then ``body``: (..., in_dim) -> (..., out_dim).

    Inputs are cast to the projector's parameter dtype first, so a bf16 frozen encoder can feed an fp32 projector.

    Attributes:
        in_dim, out_dim: feature widths.
        input_norm: 'none' | 'layer' | 'batch'.
    """

    def __init__(self, name: str, in_dim: int, out_dim: int, body: nn.Module, input_norm: str = "none") -> None:
        super().__init__()
        self.name = name
        self.in_dim = int(in_dim)
        self.out_dim = int(out_dim)
        self.input_norm = input_norm
        self.norm = make_input_norm(input_norm, self.in_dim, name)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim); e.g. image (B, N, D_v) or regions (R, K, D_r)."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"{self.name} projector: expected inputs (..., {self.in_dim}), got {tuple(x.shape)}")
        x = x.to(self.body_dtype())
        return self.body(self.norm(x))  # (..., out_dim)

    def body_dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, input_norm={self.input_norm!r}"


def check_dims(name: str, in_dim, out_dim) -> None:
    """Both widths must be positive ints (they are wired by the core)."""
    for key, val in (("in_dim", in_dim), ("out_dim", out_dim)):
        if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
            raise ComponentOptionError(f"{name} projector: {key} must be a positive int, got {val!r}")


def linear(in_dim: int, out_dim: int, input_norm: str = "none", bias: bool = True) -> Projector:
    """norm -> Linear(in_dim, out_dim) (PVIT's ``prompt_projector`` / ``mm_projector``)."""
    check_dims("linear", in_dim, out_dim)
    return Projector("linear", in_dim, out_dim, nn.Linear(in_dim, out_dim, bias=bias), input_norm)


def mlp2x_gelu(in_dim: int, out_dim: int, input_norm: str = "none", hidden_dim: int | None = None) -> Projector:
    """norm -> Linear(in_dim, hidden) -> GELU -> Linear(hidden, out_dim); hidden defaults to out_dim (LLaVA-1.5)."""
    check_dims("mlp2x-gelu", in_dim, out_dim)
    hidden = out_dim if hidden_dim is None else hidden_dim
    check_dims("mlp2x-gelu", in_dim, hidden)
    body = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    return Projector("mlp2x-gelu", in_dim, out_dim, body, input_norm)


def load_projector_weights(projector: Projector, checkpoint: str, prefix: str = "") -> None:
    """Load a LLaVA-style projector file (``mm_projector.bin`` / ``.safetensors``) into ``projector.body``.

    Keys are taken under ``prefix`` (LLaVA: ``model.mm_projector.``), e.g. ``weight``/``bias`` for ``linear`` and
    ``0.weight``/``2.weight`` for ``mlp2x-gelu``. Read with ``weights_only=True`` or safetensors: nothing executes.
    """
    import os

    from pvit.errors import CheckpointError, MissingWeightsError
    from pvit.runtime import is_planning

    if is_planning():
        return
    if not os.path.isfile(checkpoint):
        raise MissingWeightsError(f"{projector.name} projector: checkpoint {checkpoint} does not exist")
    try:
        if checkpoint.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(checkpoint)
        else:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{projector.name} projector: cannot read {checkpoint} safely ({type(e).__name__}: {e})") from None
    body = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = projector.body.state_dict()
    if set(body) != set(own):
        raise CheckpointError(
            f"{projector.name} projector: {checkpoint} under prefix {prefix!r} has keys {sorted(body)[:6]}, "
            f"expected {sorted(own)}"
        )
    bad = [k for k in own if own[k].shape != body[k].shape]
    if bad:
        raise CheckpointError(f"{projector.name} projector: {checkpoint}: shape mismatch for {bad} "
                              f"({[tuple(body[k].shape) for k in bad]} vs {[tuple(own[k].shape) for k in bad]})")
    projector.body.load_state_dict(body)
