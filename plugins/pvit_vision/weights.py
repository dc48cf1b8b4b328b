"""Safe loading of external weight files (safetensors, or ``torch.load(weights_only=True)``) and dtype names."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pvit.errors import CheckpointError, ComponentOptionError, MissingWeightsError

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")


def parse_dtype(name: str, where: str) -> "torch.dtype":
    """'float32' | 'bfloat16' | 'float16' -> torch dtype; anything else is a ComponentOptionError."""
    import torch

    if name not in DTYPES:
        raise ComponentOptionError(f"{where}: dtype {name!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def load_state_dict_file(path: str, where: str) -> dict:
    """Read a state dict from ``path`` without executing code.

    ``.safetensors`` files go through safetensors; anything else through ``torch.load(weights_only=True)``
    (a pickle that needs more than tensors and plain containers is refused). A top-level wrapper
    (``state_dict`` / ``model`` / ``module``) and a ``module.`` key prefix (DDP) are removed.
    """
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingWeightsError(f"{where}: weights file {path!r} does not exist (pvit never downloads weights)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            sd = load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own error types for truncated headers
            raise CheckpointError(f"{where}: {path!r} is not a readable safetensors file: {e}") from None
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"{where}: {path!r} could not be loaded with torch.load(weights_only=True) "
                f"(truncated, not a checkpoint, or a pickle that needs code to run, which pvit refuses): {e}"
            ) from None
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict) and not any(torch.is_tensor(v) for v in sd.values()):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{where}: {path!r} holds no state dict (got {type(sd).__name__})")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{where}: {path!r} has non-tensor entries, e.g. {bad[:3]}")
    return sd


def load_into(module: "torch.nn.Module", sd: dict, path: str, where: str) -> None:
    """``module.load_state_dict(sd, strict=True)``; a mismatch is a CheckpointError listing a few keys."""
    missing, unexpected = [], []
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {shapes[:2]})")
        raise CheckpointError(f"{where}: {path!r} does not match the model: " + "; ".join(parts))
    module.load_state_dict(sd, strict=True)
