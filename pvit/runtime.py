"""Run-time context shared by the core and plugins: planning mode (build on the meta device, read no weights)."""

from __future__ import annotations

import contextlib
import contextvars
import os

_planning: contextvars.ContextVar[bool] = contextvars.ContextVar("pvit_planning", default=False)


def is_planning() -> bool:
    """True while a recipe is being planned (``pvit run --dry-run``): factories must not read weight files,
    and parameters are created on the meta device."""
    return _planning.get()


@contextlib.contextmanager
def planning():
    """Build components for a plan only: on the meta device, without loading weights."""
    import torch

    token = _planning.set(True)
    try:
        with torch.device("meta"):
            yield
    finally:
        _planning.reset(token)


def offline() -> bool:
    """True when Hugging Face hub access is disabled (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
