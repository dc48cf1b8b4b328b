"""Module-level mmengine patches: the trusted ``pvit-run://`` loader for our own resume checkpoints
(workaround 1) and atomic checkpoint saves (workaround 8)."""

from __future__ import annotations

import os

import torch
from mmengine.runner import checkpoint as ck
from mmengine.runner import runner as rn

from pvit.atomic import atomic_path
from pvit.errors import CheckpointError

#: Prefix of checkpoint paths loaded unrestricted: only ever our own run directory's resume checkpoints.
TRUSTED_PREFIX = "pvit-run://"


def load_from_pvit_run_dir(filename: str, map_location=None):
    """Workaround 1: ``torch.load`` defaults to ``weights_only=True`` and refuses mmengine's resume checkpoints
    (they pickle the message hub); ``pvit-run://PATH`` loads them with ``weights_only=False``."""
    path = filename[len(TRUSTED_PREFIX):]
    if not os.path.isfile(path):
        raise CheckpointError(f"resume checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or garbage file
        raise CheckpointError(f"resume checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None


def atomic_checkpoint_save(original):
    """Wrap mmengine's ``save_checkpoint``: write ``NAME.tmp-PID``, fsync, rename; remove the temp file on error.

    A kill during the save leaves only the temp file (cleaned at the next start), never a half-written
    file under a checkpoint's name.
    """
    if getattr(original, "_pvit_atomic", False):
        return original

    def save(checkpoint, filename, file_client_args=None, backend_args=None):
        with atomic_path(str(filename), hidden=False) as tmp:
            original(checkpoint, tmp, file_client_args=file_client_args, backend_args=backend_args)

    save._pvit_atomic = True  # type: ignore[attr-defined]
    return save


def patch_mmengine() -> None:
    """Apply the module-level workarounds once (trusted loader scheme, atomic saves)."""
    if getattr(ck, "_pvit_patched", False):
        return
    ck.CheckpointLoader.register_scheme(prefixes=TRUSTED_PREFIX, loader=load_from_pvit_run_dir, force=True)
    rn.save_checkpoint = atomic_checkpoint_save(rn.save_checkpoint)  # Runner.save_checkpoint
    ck.save_checkpoint = atomic_checkpoint_save(ck.save_checkpoint)  # strategies import it at call time
    ck._pvit_patched = True
