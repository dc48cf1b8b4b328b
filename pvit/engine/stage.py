"""Running one recipe stage on mmengine: trainable slots, data, optimiser and schedule, then the Runner."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmengine.optim import OptimWrapper
from mmengine.runner import FlexibleRunner, Runner
from mmengine.runner import runner as mm_runner
from torch import nn

from pvit.engine.adapter import PRECISIONS, param_groups, wrap_model
from pvit.engine.checkpointing import PvitCheckpointHook, RngStateHook
from pvit.engine.distributed import ddp_wrapper_cfg, dist_info
from pvit.engine.loop import PvitTrainLoop
from pvit.engine.patches import TRUSTED_PREFIX, patch_mmengine
from pvit.engine.progress import ProgressHook
from pvit.engine.sampling import make_loader
from pvit.engine.strategies import (deepspeed_strategy, fsdp_state_dict_cfg, fsdp_strategy, full_state_fsdp,
                                    release, resolve_strategy, warnings_off)
from pvit.errors import RecipeError
from pvit.model import PVITModel
from pvit.objectives import OBJECTIVES
from pvit.slots import frozen_components, set_trainable


@dataclass
class StageResult:
    name: str
    steps: int
    losses: list[tuple[int, float]]
    seconds: float
    trainable: dict[str, int]
    strategy: str = "single"
    world: int = 1
    flops: dict | None = None
    cache: dict | None = None  # frozen-feature cache use during the stage: components, hits, misses


def _check(stage: Any, strategy: str, where: str) -> None:
    optim = stage.optim
    if optim.precision not in PRECISIONS:
        raise RecipeError(f"{where}.optim.precision: {optim.precision!r} is not one of {', '.join(PRECISIONS)} "
                          "(bf16 runs under autocast on CPU and GPU)")
    if stage.objective not in OBJECTIVES:
        raise RecipeError(f"{where}.objective: {stage.objective!r} is not one of {', '.join(OBJECTIVES)}")
    if optim.schedule not in ("cosine", "constant"):
        raise RecipeError(f"{where}.optim.schedule: {optim.schedule!r} is not one of cosine, constant")
    if strategy == "fsdp" and "new_token_embeddings" in stage.trainable and "llm" not in stage.trainable:
        raise RecipeError(
            f"{where}.trainable: new_token_embeddings trains only the added rows through a gradient hook on the "
            "embedding matrix, which FSDP's flattened parameters bypass; run this stage with engine.strategy=ddp "
            "(as PVIT's stage 1 does) or train the whole llm")


def _warn_batchnorm(model: nn.Module, trainable: list[str], where: str) -> None:
    """Under DDP/FSDP a BatchNorm in a trained slot normalises with per-rank statistics (no SyncBN on CPU)."""
    names = [f"{s}.{n}" for s in trainable if isinstance(getattr(model, s, None), nn.Module)
             for n, m in getattr(model, s).named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if names:
        logging.getLogger("pvit").warning(
            "%s: %s normalise with per-process batch statistics under data parallelism, so losses differ "
            "slightly from one process with the same global batch (a LayerNorm input norm avoids this)", where,
            ", ".join(names))


def _schedule(optim: Any, iters: int) -> list[dict]:
    """Linear warmup then cosine (or constant). Workaround 13: mmengine's ``LinearLR`` over a single iteration
    never leaves its start factor, so a one-step warmup becomes two steps (or none)."""
    warmup = int(round(optim.warmup_ratio * iters))
    if warmup == 1:
        warmup = 2 if iters > 2 else 0
    schedulers = []
    if warmup > 0:
        schedulers.append(dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=warmup))
    if optim.schedule == "cosine":
        schedulers.append(dict(type="CosineAnnealingLR", eta_min=optim.lr * optim.min_lr_ratio, by_epoch=False,
                               begin=warmup, end=iters, T_max=max(1, iters - warmup)))
    return schedulers


@contextlib.contextmanager
def _runner_device(device: torch.device | None):
    """Workaround 14: mmengine's Runner moves the model to its own choice of device (CUDA whenever available);
    while the runner is built, that choice is the recipe's ``engine.device``."""
    if device is None:
        yield
        return
    original = mm_runner.get_device
    mm_runner.get_device = lambda: str(device)
    try:
        yield
    finally:
        mm_runner.get_device = original


def _stop_workers(runner) -> None:
    """Shut the stage's persistent loader workers down now, in this process.

    Left to the garbage collector, a finished stage's loader iterator can be collected inside a worker forked
    for the next stage, whose ``__del__`` then fails with "can only test a child process".
    """
    import gc

    it = getattr(getattr(runner, "train_loop", None), "dataloader_iterator", None)
    inner = getattr(it, "_iterator", None)
    if inner is not None and hasattr(inner, "_shutdown_workers"):
        inner._shutdown_workers()
    gc.collect()


def run_stage(model: PVITModel, stage: Any, *, dataset, collator, work_dir: Path, engine_cfg: Any, seed: int,
              resume_from: str | None = None, extra_hooks: tuple = (),
              device: torch.device | None = None) -> StageResult:
    """Train ``model`` for one recipe stage on mmengine; returns the per-step losses (global means).

    ``optim.batch_size`` is per process; one optimiser step sees ``batch_size x processes x grad_accum``
    samples. ``resume_from`` is an engine checkpoint of this stage (trusted: inside our run directory).
    ``device``: where the model trains (default: mmengine's choice, CUDA when available).
    """
    patch_mmengine()
    optim, where, info = stage.optim, f"stages[{stage.name}]", dist_info()
    strategy = resolve_strategy(engine_cfg.strategy, info.world)
    _check(stage, strategy, where)
    state = set_trainable(model, list(stage.trainable), where=where)
    cached = model.cache_frozen(frozen_components(model, list(stage.trainable)))
    model.objective = stage.objective
    before = model.feature_cache.stats() if cached else None
    if info.world > 1:
        _warn_batchnorm(model, list(stage.trainable), where)
    per_step = optim.batch_size * info.world * optim.grad_accum
    if optim.max_steps:
        opt_steps = int(optim.max_steps)
    else:
        opt_steps = max(1, math.ceil(len(dataset) * float(optim.epochs or 1) / per_step))
    iters = opt_steps * optim.grad_accum
    loader = make_loader(dataset, collator, batch_size=optim.batch_size, seed=seed,
                         num_workers=engine_cfg.num_workers, info=info)
    trainer = wrap_model(model, optim.precision, list(stage.trainable), info.world)
    optimizer = torch.optim.AdamW(param_groups(trainer, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas))
    clip = dict(max_norm=float(optim.clip_grad)) if optim.clip_grad else None
    losses: list[tuple[int, float]] = []
    flops: dict | None = {} if getattr(engine_cfg, "measure_flops", False) else None
    hooks = [ProgressHook(stage.name, iters, engine_cfg.log_every, engine_cfg.progress, losses,
                          optim.batch_size * info.world, flops), RngStateHook(), *extra_hooks]
    vis = None
    if engine_cfg.tensorboard:
        vis = dict(type="Visualizer", vis_backends=[dict(type="TensorboardVisBackend")],
                   name=f"pvit-{stage.name}-{id(model)}-{time.time_ns()}")
    common = dict(
        model=trainer,
        work_dir=str(work_dir),
        train_dataloader=loader,
        param_scheduler=_schedule(optim, iters) or None,
        train_cfg=dict(type=PvitTrainLoop, max_iters=iters, val_interval=iters + 1),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=max(1, engine_cfg.log_every), log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=PvitCheckpointHook(interval=engine_cfg.checkpoint_every, by_epoch=False,
                                          max_keep_ckpts=engine_cfg.keep_checkpoints, save_last=True),
        ),
        custom_hooks=hooks,
        randomness=dict(seed=seed, deterministic=engine_cfg.deterministic),
        visualizer=vis,
        resume=resume_from is not None,
        load_from=(TRUSTED_PREFIX + str(resume_from)) if resume_from else None,
        log_level="ERROR",  # mmengine's deprecation chatter; pvit reports what matters itself
        default_scope="mmengine",
        experiment_name=f"{stage.name}_{os.getpid()}_{time.time_ns()}",
    )
    with _runner_device(device):
        if strategy in ("single", "ddp"):
            runner = Runner(
                optim_wrapper=OptimWrapper(optimizer=optimizer, accumulative_counts=optim.grad_accum, clip_grad=clip),
                launcher="pytorch" if strategy == "ddp" else "none",
                cfg=dict(model_wrapper_cfg=ddp_wrapper_cfg()) if strategy == "ddp" else None,
                **common,
            )
        elif strategy == "fsdp":
            fsdp_strategy()
            strat = dict(type="PvitFSDPStrategy", state_dict_cfg=fsdp_state_dict_cfg(),
                         model_wrapper=dict(type="MMFullyShardedDataParallel", use_orig_params=True))
            wrapper = OptimWrapper(optimizer=optimizer, accumulative_counts=optim.grad_accum, clip_grad=clip)
            runner = FlexibleRunner(optim_wrapper=wrapper, strategy=strat, launcher="pytorch", **common)
        else:
            deepspeed_strategy()
            strat = dict(type="PvitDeepSpeedStrategy", zero_optimization=dict(stage=2),
                         gradient_accumulation_steps=optim.grad_accum,
                         gradient_clipping=float(optim.clip_grad) if optim.clip_grad else 0.0,
                         train_micro_batch_size_per_gpu=optim.batch_size)
            runner = FlexibleRunner(optim_wrapper=dict(type="DeepSpeedOptimWrapper", optimizer=optimizer),
                                    strategy=strat, launcher="pytorch", **common)
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    t0 = time.time()
    try:
        with warnings_off() if strategy == "fsdp" else contextlib.nullcontext():
            runner.train()
        if strategy == "fsdp":
            release(trainer, full_state_fsdp(runner.model))
        elif strategy == "deepspeed":
            release(trainer)
        seconds = time.time() - t0
        if flops is not None:
            flops["flops_per_step"] = count_step_flops(model, dataset, collator, optim)
    finally:
        state.remove()
        cache = _cache_use(model, cached, before)
        model.cache_frozen([])
        model.objective = "lm"
        _stop_workers(runner)
    if flops:
        flops = utilisation(flops, next(model.llm.parameters()).device, optim.precision)
    return StageResult(stage.name, iters, losses, seconds, state.counts, strategy, info.world, flops, cache)


def _cache_use(model: PVITModel, cached: list[str], before: dict | None) -> dict | None:
    """Rows found in / added to the frozen-feature cache during a stage (the FLOP count step included)."""
    if not cached or before is None:
        return None
    now = model.feature_cache.stats()
    hits, misses = now["hits"] - before["hits"], now["misses"] - before["misses"]
    return {"components": cached, "hits": hits, "misses": misses,
            "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0, "memory_mb": now["memory_mb"]}


def count_step_flops(model: PVITModel, dataset, collator, optim: Any) -> int:
    """FLOPs of one training step (forward and backward; the optimiser's few per parameter are left out) on the
    stage's first ``batch_size`` samples, counted after the stage so that nothing it does can touch training:
    RNG state forked, BatchNorm statistics frozen (eval mode), gradients cleared afterwards. x ``grad_accum``."""
    from pvit.engine.adapter import autocast
    from pvit.flops import StepFlops
    from pvit.model import batch_to

    device = next(model.llm.parameters()).device
    batch = batch_to(collator([dataset[i] for i in range(min(optim.batch_size, len(dataset)))]), device)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    counter = StepFlops()
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
        counter.start()
        try:
            with autocast(optim.precision, device):
                loss = model(batch).loss
            loss.float().backward()
        finally:
            total = counter.stop()
    for p in model.parameters():
        p.grad = None
    for m, mode in modes.items():
        m.training = mode
    return total * int(optim.grad_accum)


def utilisation(flops: dict, device: torch.device, precision: str) -> dict:
    """Add achieved FLOP/s and MFU (against the measured matmul peak in the stage's precision) to ``flops``."""
    from pvit.flops import peak_flops

    if "flops_per_step" not in flops or "steps_per_s" not in flops:
        return flops
    peak = peak_flops(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    achieved = flops["flops_per_step"] * flops["steps_per_s"]
    return {**flops, "flops_per_s": achieved, "peak_flops_per_s": peak["flops"], "peak_probe": peak["key"],
            "mfu": achieved / peak["flops"]}
