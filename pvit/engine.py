"""The mmengine adapter: runs one training stage on mmengine's Runner and handles its known issues here."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pvit.errors import CheckpointError, RecipeError
from pvit.model import SLOTS, PVITModel, batch_to

TRUSTED_PREFIX = "pvit-run://"


# ------------------------------------------------------------------------------------- mmengine workarounds
def _patch_mmengine() -> None:
    """Known mmengine 0.10.x issues with torch >= 2.6, fixed in one place.

    * ``torch.load`` defaults to ``weights_only=True`` and refuses mmengine's own resume checkpoints
      (they pickle the message hub); we register a ``pvit-run://`` scheme used only for checkpoints
      inside our own run directories (trusted), and keep every other load safe.
    * checkpoint saves are made atomic (temp file in the same folder, then rename).
    """
    from mmengine.runner import checkpoint as ck
    from mmengine.runner import runner as rn

    if getattr(ck, "_pvit_patched", False):
        return

    def load_trusted(filename: str, map_location=None):
        path = filename[len(TRUSTED_PREFIX):]
        if not os.path.isfile(path):
            raise CheckpointError(f"resume checkpoint {path} does not exist")
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:  # truncated or garbage file
            raise CheckpointError(f"resume checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None

    ck.CheckpointLoader.register_scheme(prefixes=TRUSTED_PREFIX, loader=load_trusted, force=True)
    original_save = ck.save_checkpoint

    def atomic_save(checkpoint, filename, file_client_args=None, backend_args=None):
        filename = str(filename)
        tmp = f"{filename}.tmp-{os.getpid()}"
        original_save(checkpoint, tmp, file_client_args=file_client_args, backend_args=backend_args)
        os.replace(tmp, filename)

    rn.save_checkpoint = atomic_save
    ck._pvit_patched = True


# ------------------------------------------------------------------------------------- freezing
@dataclass
class TrainableState:
    """Which parameters a stage trains, and the gradient hooks that restrict embedding rows."""

    names: list[str]
    counts: dict[str, int]
    hooks: list[Any] = field(default_factory=list)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()


def set_trainable(model: PVITModel, slots: list[str], where: str = "stage") -> TrainableState:
    """Freeze everything, then unfreeze ``slots``. ``new_token_embeddings`` trains only the rows of the
    tokens the model added (a gradient hook zeroes the other rows), unless ``llm`` trains too."""
    errors = []
    for s in slots:
        if s not in SLOTS:
            import difflib

            guess = difflib.get_close_matches(s, SLOTS, n=1)
            errors.append(f"{where}.trainable: unknown slot {s!r}" + (f"; did you mean {guess[0]!r}?" if guess else "")
                          + f" (slots: {', '.join(SLOTS)})")
        elif s in ("image_encoder", "region_encoder") and getattr(getattr(model, s), "frozen", False):
            errors.append(f"{where}.trainable: {s} was built frozen; set model.{s}.options.frozen=false to train it")
    if errors:
        raise RecipeError(errors)
    model.requires_grad_(False)
    counts: dict[str, int] = {}
    state = TrainableState(names=list(slots), counts=counts)
    for s in slots:
        if s == "new_token_embeddings":
            continue
        params = model.slot_parameters(s)
        for p in params:
            p.requires_grad_(True)
        counts[s] = sum(p.numel() for p in params)
    if "new_token_embeddings" in slots:
        rows = torch.tensor(model.new_token_ids, dtype=torch.long)
        n = 0
        for w in model.slot_parameters("new_token_embeddings"):
            if w.requires_grad:  # the whole LLM trains already
                continue
            w.requires_grad_(True)
            mask = torch.zeros(w.shape[0], 1, dtype=w.dtype, device=w.device)
            mask[rows] = 1
            state.hooks.append(w.register_hook(lambda g, m=mask: g * m.to(g.dtype)))
            n += len(rows) * w.shape[1]
        counts["new_token_embeddings"] = n
    return state


# ------------------------------------------------------------------------------------- mmengine model
def _wrap(model: PVITModel, precision: str, trainable: list[str]):
    from mmengine.model import BaseModel

    frozen = [s for s in ("projector", "region_projector", "llm", "bbox_embed", "image_encoder", "region_encoder")
              if s not in trainable and getattr(model, s, None) is not None]

    class _Trainer(BaseModel):
        """mmengine's view of a PVITModel: ``forward(**batch, mode='loss') -> {'loss': ...}``."""

        def __init__(self):
            super().__init__()
            self.pvit = model

        def train(self, mode: bool = True):
            """Frozen slots stay in eval mode (no BatchNorm statistics updates, no dropout)."""
            super().train(mode)
            for slot in frozen:
                getattr(self.pvit, slot).eval()
            return self

        def forward(self, mode: str = "loss", **batch):
            device = next(self.pvit.llm.parameters()).device
            batch = batch_to(batch, device)
            ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                   else contextlib.nullcontext())
            with ctx:
                out = self.pvit(batch)
            return {"loss": out.loss.float()}

    return _Trainer()


def _make_hooks(stage_name: str, total: int, log_every: int, progress: bool, losses: list):
    from mmengine.hooks import Hook

    class PvitProgress(Hook):
        """Records the loss of every step and prints loss, lr and throughput on rank 0."""

        priority = "VERY_LOW"

        def before_train(self, runner):
            self.t0 = time.time()
            self.start = runner.iter

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            it = runner.iter + 1
            loss = float(outputs["loss"].detach()) if outputs else float("nan")
            losses.append((it, loss))
            if progress and runner.rank == 0 and (it % log_every == 0 or it == total):
                lr = runner.optim_wrapper.get_lr()["lr"][0]
                rate = (it - self.start) / max(time.time() - self.t0, 1e-9)
                print(f"  {stage_name} [{it:>5}/{total}] loss {loss:.4f} lr {lr:.2e} {rate:.1f} it/s", flush=True)

    return PvitProgress()


@dataclass
class StageResult:
    name: str
    steps: int
    losses: list[tuple[int, float]]
    seconds: float
    trainable: dict[str, int]


def _param_groups(model: nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in n or "norm" in n or "bias" in n else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def run_stage(
    model: PVITModel,
    stage: Any,
    *,
    dataset,
    collator,
    work_dir: Path,
    engine_cfg: Any,
    seed: int,
    resume_from: str | None = None,
) -> StageResult:
    """Train ``model`` for one recipe stage on mmengine's Runner; returns the per-step losses."""
    _patch_mmengine()
    from mmengine.dataset import DefaultSampler
    from mmengine.optim import OptimWrapper
    from mmengine.runner import Runner
    from torch.utils.data import DataLoader

    optim = stage.optim
    state = set_trainable(model, list(stage.trainable), where=f"stages[{stage.name}]")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = optim.batch_size * world * optim.grad_accum
    if optim.max_steps:
        opt_steps = int(optim.max_steps)
    else:
        opt_steps = max(1, math.ceil(len(dataset) * float(optim.epochs or 1) / per_step))
    iters = opt_steps * optim.grad_accum
    warmup = int(round(optim.warmup_ratio * iters))

    loader = DataLoader(
        dataset,
        batch_size=optim.batch_size,
        sampler=DefaultSampler(dataset, shuffle=True, seed=seed),
        collate_fn=collator,
        num_workers=engine_cfg.num_workers,
        persistent_workers=engine_cfg.num_workers > 0,
        drop_last=True,
    )
    trainer = _wrap(model, optim.precision, list(stage.trainable))
    optimizer = torch.optim.AdamW(_param_groups(trainer, optim.weight_decay), lr=optim.lr,
                                  betas=tuple(optim.betas))
    wrapper = OptimWrapper(
        optimizer=optimizer,
        accumulative_counts=optim.grad_accum,
        clip_grad=dict(max_norm=float(optim.clip_grad)) if optim.clip_grad else None,
    )
    schedulers = []
    if warmup > 0:
        schedulers.append(dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=warmup))
    if optim.schedule == "cosine":
        schedulers.append(dict(type="CosineAnnealingLR", eta_min=optim.lr * optim.min_lr_ratio, by_epoch=False,
                               begin=warmup, end=iters, T_max=max(1, iters - warmup)))
    elif optim.schedule != "constant":
        raise RecipeError(f"stages[{stage.name}].optim.schedule: {optim.schedule!r} is not one of cosine, constant")
    losses: list[tuple[int, float]] = []
    hooks = [_make_hooks(stage.name, iters, engine_cfg.log_every, engine_cfg.progress, losses)]
    vis = None
    if engine_cfg.tensorboard:
        vis = dict(type="Visualizer", vis_backends=[dict(type="TensorboardVisBackend")],
                   name=f"pvit-{stage.name}-{id(model)}-{time.time_ns()}")
    runner = Runner(
        model=trainer,
        work_dir=str(work_dir),
        train_dataloader=loader,
        optim_wrapper=wrapper,
        param_scheduler=schedulers or None,
        train_cfg=dict(by_epoch=False, max_iters=iters, val_interval=iters + 1),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=max(1, engine_cfg.log_every), log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", interval=engine_cfg.checkpoint_every, by_epoch=False,
                            max_keep_ckpts=engine_cfg.keep_checkpoints, save_last=True),
        ),
        custom_hooks=hooks,
        randomness=dict(seed=seed, deterministic=engine_cfg.deterministic),
        visualizer=vis,
        launcher="pytorch" if world > 1 else "none",
        resume=resume_from is not None,
        load_from=(TRUSTED_PREFIX + resume_from) if resume_from else None,
        log_level="WARNING",
        default_scope="mmengine",
        experiment_name=f"{stage.name}_{os.getpid()}_{time.time_ns()}",
    )
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    t0 = time.time()
    try:
        runner.train()
    finally:
        state.remove()
    return StageResult(stage.name, iters, losses, time.time() - t0, state.counts)
