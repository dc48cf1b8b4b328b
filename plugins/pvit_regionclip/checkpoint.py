"""RegionCLIP weights: read a detectron2 ``.pth`` (``backbone.*`` keys) or a ``.safetensors`` visual state dict, safely."""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from pvit.errors import CheckpointError

log = logging.getLogger(__name__)

#: Prefix of the region backbone in RegionCLIP checkpoints. ``teacher_backbone.*`` (same shapes) must not load.
BACKBONE_PREFIX = "backbone."
#: detectron2 FrozenBatchNorm2d eps, used by its version < 3 state-dict upgrade.
_BN_EPS = 1e-5


def _numpy_array_globals() -> list:
    """The numpy globals a plain array needs to unpickle; allowlisted for ``weights_only=True`` loading."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    names = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
    return [_reconstruct, np.ndarray, np.dtype, *{type(np.dtype(n)) for n in names}]


def _unsafe_globals(path: Path) -> list[str]:
    """Names of the non-allowlisted globals a torch zip checkpoint would import (read, never executed)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return []


def _convert_hint(path: Path) -> str:
    return (
        "If you trust this file, convert it once to safetensors and use that file as `checkpoint`:\n"
        "  python -c \"from pvit_regionclip.checkpoint import convert_to_safetensors; "
        f"convert_to_safetensors('{path}', 'regionclip_visual.safetensors', trust_checkpoint=True)\"\n"
        "or set the regionclip option `trust_checkpoint: true` (unpickles the file with weights_only=False, which "
        "runs any code it contains: only for files you trust)."
    )


def _torch_load(path: Path, trust_checkpoint: bool) -> Any:
    """``torch.load`` with ``weights_only=True`` (numpy arrays allowed); unsafe content raises CheckpointError."""
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path)
        if not unsafe and "Unsupported global" not in str(e):
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {e}") from None
        if not trust_checkpoint:
            found = f" ({', '.join(unsafe[:8])})" if unsafe else ""
            raise CheckpointError(
                f"{path}: refused: the file holds pickled objects other than tensors{found}, so it cannot be "
                "loaded safely (torch.load weights_only=True). It was NOT loaded with weights_only=False, because "
                f"that would execute code stored in the file. {_convert_hint(path)}"
            ) from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {type(e).__name__}: {e}") from None
    warnings.warn(f"{path}: loading with weights_only=False because trust_checkpoint=True", stacklevel=3)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: could not be read even with trust_checkpoint=True: {type(e).__name__}: {e}") from None


def _strip_module(d: Mapping[str, Any]) -> dict[str, Any]:
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in d.items()}


def read_visual_state_dict(path: str | os.PathLike, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """The visual-tower weights in a RegionCLIP ``.pth`` or a ``.safetensors`` file, with open_clip key names.

    ``.pth``: ``ckpt.get("model", ckpt)``, a leading ``module.`` stripped, then only keys starting with exactly
    ``backbone.`` (prefix removed); a file without such keys is taken as a plain visual state dict. numpy arrays
    become tensors, ``*.num_batches_tracked`` are dropped, and detectron2's FrozenBatchNorm upgrade is replayed
    (``running_var -= 1e-5`` where the file's state-dict metadata says version < 3), as RegionCLIP loads it.
    ``.safetensors``: a plain visual state dict (our exports).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"regionclip checkpoint not found: {path} (option `checkpoint`; use null for random init)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Mapping[str, Any] = load_file(str(path), device="cpu")
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file: {type(e).__name__}: {e}") from None
        metadata: Mapping[str, Any] = {}
    else:
        ckpt = _torch_load(path, trust_checkpoint)
        if not isinstance(ckpt, Mapping):
            raise CheckpointError(f"{path}: expected a dict of weights (or {{'model': ...}}), got {type(ckpt).__name__}")
        inner = ckpt.get("model", ckpt)
        if not isinstance(inner, Mapping):
            raise CheckpointError(f"{path}: ckpt['model'] is a {type(inner).__name__}, expected a state dict")
        metadata = _strip_module(getattr(inner, "_metadata", None) or {})
        raw = _strip_module(inner)
        log.info("regionclip checkpoint %s: top-level key groups %s", path, sorted({k.split(".")[0] for k in raw}))
    prefix = BACKBONE_PREFIX if any(k.startswith(BACKBONE_PREFIX) for k in raw) else ""
    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not key.startswith(prefix) or key.endswith(".num_batches_tracked"):
            continue
        name = key[len(prefix) :]
        if not isinstance(value, torch.Tensor):
            try:
                value = torch.as_tensor(value)
            except Exception:
                raise CheckpointError(f"{path}: key {key!r} holds a {type(value).__name__}, not a tensor") from None
        out[name] = value
    for name in [n for n in out if n.endswith(".running_var")]:
        version = (metadata.get(prefix + name[: -len(".running_var")]) or {}).get("version")
        if version is not None and version < 3:
            out[name] = out[name] - _BN_EPS
    return out


def load_visual_weights(
    visual: torch.nn.Module, path: str | os.PathLike, trust_checkpoint: bool = False, model_name: str = "?"
) -> int:
    """Load a RegionCLIP checkpoint into ``visual`` (a ModifiedResNet with frozen BN); returns tensors loaded.

    Keys must match exactly (after the mapping of ``read_visual_state_dict``); otherwise CheckpointError with the
    missing / unexpected / mis-shaped counts and examples.
    """
    sd = read_visual_state_dict(path, trust_checkpoint)
    expected = {k: v for k, v in visual.state_dict().items() if not k.endswith(".num_batches_tracked")}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(sd) & set(expected)
        if tuple(sd[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{path}: weights do not fit regionclip model {model_name!r}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}), "
            f"{len(shapes)} shape mismatches (e.g. {shapes[:2]}); the model has {len(expected)} tensors. Expected "
            f"'{BACKBONE_PREFIX}<open_clip visual key>' in a RegionCLIP .pth or plain visual keys in a .safetensors; "
            "check that option `model` names the checkpoint's architecture (RegionCLIP RN50x4 -> 'RN50x4')."
        )
    visual.load_state_dict(sd, strict=True)
    return len(sd)


def convert_to_safetensors(
    src: str | os.PathLike, dst: str | os.PathLike, trust_checkpoint: bool = False
) -> Path:
    """Write the visual weights of RegionCLIP checkpoint ``src`` as a plain ``.safetensors`` state dict ``dst``.

    Run once on a file you trust (``trust_checkpoint=True`` if it holds non-tensor pickles); the result loads
    with no unpickling at all. The write is atomic (temp file in the same folder, then rename).
    """
    from safetensors.torch import save_file

    from pvit.atomic import atomic_path

    sd = read_visual_state_dict(src, trust_checkpoint)
    dst = Path(dst).expanduser()
    with atomic_path(dst) as tmp:
        save_file({k: v.detach().contiguous() for k, v in sd.items()}, tmp)
    return dst
