"""The recipe's ``engine.device``: which device training and evaluation run on."""

from __future__ import annotations

import os
import re

from pvit.errors import RecipeError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def autocast(precision: str, device):
    """The autocast context of a precision, for training and inference alike: ``bf16`` runs under bf16 autocast
    (on CPU and GPU; mmengine's AmpOptimWrapper is GPU-only, engine workaround 5); anything else runs with
    autocast off, also inside an outer autocast."""
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def resolve_device(name: str, where: str = "engine.device"):
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` (this process's GPU: ``LOCAL_RANK`` under
    torchrun) or ``cuda:N`` -> a ``torch.device``; asking for CUDA where there is none is an error."""
    import torch

    name = str(name).strip().lower()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not m:
        raise RecipeError(f"{where}: {name!r} is not a device; use one of {', '.join(DEVICES)}")
    if not torch.cuda.is_available():
        raise RecipeError(f"{where}: {name!r} was asked for but this machine has no CUDA device visible to torch "
                          f"(torch {torch.__version__}, cuda build {torch.version.cuda}); use auto or cpu")
    index = int(m.group(1)) if m.group(1) is not None else local
    if index >= torch.cuda.device_count():
        raise RecipeError(f"{where}: {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(0..{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)
