"""Checkpoint hooks: the reordered CheckpointHook (workaround 8) and the RNG state saved and restored with
every checkpoint (workaround 6, with the data position that ``pvit/engine/loop.py`` keeps)."""

from __future__ import annotations

import contextlib
import os
import random

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook

from pvit.atomic import atomic_write_text


class PvitCheckpointHook(CheckpointHook):
    """mmengine's CheckpointHook, reordered (workaround 8): save the new checkpoint, then point
    ``last_checkpoint`` at it (atomically), then delete checkpoints beyond ``max_keep_ckpts`` (mmengine deletes
    first, so a kill during the save can leave no checkpoint at all)."""

    def _save_checkpoint_with_step(self, runner, step, meta):
        name = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, name)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:  # a deque with maxlen: pop first
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))
        runner.save_checkpoint(self.out_dir, name, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta,
                               by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        atomic_write_text(os.path.join(runner.work_dir, "last_checkpoint"), self.last_ckpt)
        for old in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # DeepSpeed checkpoints are folders
                self.file_backend.rmtree(path)


def rng_state() -> dict:
    """The torch, Python, numpy (and CUDA) RNG states."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    with contextlib.suppress(ImportError):
        import numpy as np

        state["numpy"] = np.random.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned (CUDA states only onto as many devices as were saved)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class RngStateHook(Hook):
    """Saves the RNG state into every checkpoint and restores it before a resumed stage trains (workaround 6:
    mmengine saves none, so dropout and sampling after a resume would differ from an uninterrupted run)."""

    priority = "VERY_LOW"

    def __init__(self):
        self.pending = None

    def before_train(self, runner):
        if self.pending is not None:
            set_rng_state(self.pending)
            self.pending = None

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint.setdefault("meta", {})["pvit_rng"] = rng_state()

    def after_load_checkpoint(self, runner, checkpoint):
        self.pending = checkpoint.get("meta", {}).get("pvit_rng")
