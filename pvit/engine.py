"""The mmengine adapter: runs one training stage on mmengine's Runner or FlexibleRunner, and works around
mmengine 0.10.x's known issues with recent torch here, in one place (DESIGN.md section 6).

Strategies (recipe ``engine.strategy``; launch several processes with
``torchrun --nproc_per_node N -m pvit run RECIPE``; ``optim.batch_size`` is per process):

* ``auto`` / ``ddp``: one process -> mmengine ``Runner``; several -> DDP (gloo on CPU, nccl on GPU).
* ``fsdp``: ``FlexibleRunner`` + FSDP (full shard, ``use_orig_params``); checkpoints hold full state dicts
  written by rank 0; after the stage the full weights are gathered on every rank for the export and the next
  stage. A stage that trains ``new_token_embeddings`` without ``llm`` is refused (the row mask is a gradient
  hook, which FSDP's flat parameters bypass): run it with ``ddp``, as PVIT runs its stage 1.
* ``deepspeed``: ``FlexibleRunner`` + DeepSpeed ZeRO-2 (``pip install deepspeed``; CPU works over gloo);
  DeepSpeed does gradient accumulation and clipping; checkpoints are folders.

With several processes the loss is normalised by the global number of target tokens and the reported loss is
the global mean, so N processes with batch B give the losses of one process with batch N x B (to float
rounding; BatchNorm input norms excepted, which use per-process statistics).

Workarounds (each has a test that fails if it breaks: ``tests/test_engine_workarounds.py``, and end to end
``test_engine.py``'s kill-and-resume test and ``test_engine_distributed.py``'s torchrun tests):

1. ``torch.load`` defaults to ``weights_only=True`` and refuses mmengine's resume checkpoints (they pickle the
   message hub): a ``pvit-run://`` scheme loads them unrestricted, used only for checkpoints inside our own
   run directories; every other load stays safe. [`_register_trusted_loader`]
2. mmengine's ``init_dist`` calls ``torch.cuda.set_device`` before creating the process group, which fails on
   CPU: we create the group ourselves (gloo on CPU, nccl on GPU) and mmengine skips its own. [`init_distributed`]
3. mmengine wraps DDP with ``device_ids=[LOCAL_RANK]``, which DDP rejects for a CPU module: ``device_ids=None``
   on CPU. [`ddp_wrapper_cfg`]
4. FSDP: mmengine passes ``device_id=LOCAL_RANK`` (a CUDA index); calls ``FSDP.optim_state_dict_to_load``
   with torch < 2.1's argument order; rebuilds AdamW with an argument AdamW does not take; clips gradients by
   each rank's shard only; and its ``'full'`` state dicts offload to CPU, which on CPU corrupts the saved
   optimizer state. [`_fsdp_strategy`, `fsdp_state_dict_cfg`]
5. ``AmpOptimWrapper`` is GPU-only: bf16 runs under ``torch.autocast`` in the model wrapper, on CPU and GPU.
6. Exact resume: ``randomness=dict(seed=...)``, and the RNG states and the data position are saved in each
   checkpoint (mmengine saves neither; it replays the data loader instead, loading every skipped batch).
7. The process group is destroyed at exit (mmengine never does). [`distributed`]
8. Checkpoint writes are atomic; the ``last_checkpoint`` pointer is written after the checkpoint and atomically;
   old checkpoints are deleted only after the new one exists (mmengine deletes first). [`_checkpoint_hook`]
9. mmengine's iteration loop sleeps 2 s at every epoch boundary and never tells the dataset its epoch: the
   sampler here is an endless seeded stream of ``(epoch, index)`` keys. [`StageStream`]
10. mmengine's loop calls ``model.train()`` every step, a walk over every submodule (~2 ms for a small model,
    ~15% of a tiny step): once per stage here. [`_loop_class`]
12. mmengine's default data preprocessor walks every element of every list in a batch (~1.3 ms a step): the
    model wrapper moves the batch itself. [`_wrap`]
13. mmengine's ``LinearLR`` over a single iteration never leaves ``start_factor``: a one-step warmup becomes
    two steps (or none). [`run_stage`]
11. DeepSpeed (0.19): mmengine imports 1-bit optimizers DeepSpeed has moved, hands DeepSpeed our
    ``pvit-run://`` path on resume, and lets every rank write into the final checkpoint folder: tolerant
    registration, the plain path, a temp folder renamed when all ranks are done. [`_deepspeed_strategy`]
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import random
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from pvit.errors import CheckpointError, RecipeError
from pvit.model import SLOTS, PVITModel, batch_to

TRUSTED_PREFIX = "pvit-run://"
STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed")
PRECISIONS = ("fp32", "bf16")
IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    """Where this process sits in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank and world size of the current process group, or of the torchrun environment before it exists."""
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return DistInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), local)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(force: bool = False) -> DistInfo:
    """Create the default process group from torchrun's environment: gloo on CPU, nccl on GPU.

    Workaround 2: mmengine's ``init_dist`` calls ``torch.cuda.set_device(LOCAL_RANK)`` first, which raises on
    a machine without CUDA; mmengine leaves an existing group alone. ``force`` makes a one-process group when
    not launched by torchrun (FSDP and DeepSpeed need a group even alone).
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_initialized() or (world <= 1 and not force):
        return dist_info()
    if world <= 1:
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                           ("MASTER_PORT", str(_free_port()))):
            os.environ.setdefault(key, value)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    return dist_info()


@contextlib.contextmanager
def distributed(force: bool = False) -> Iterator[DistInfo]:
    """``init_distributed()`` on entry and ``destroy_process_group()`` on exit (workaround 7: mmengine never
    destroys the group, and torch warns or hangs at interpreter exit). A group that existed before is left."""
    import torch.distributed as dist

    existed = dist.is_available() and dist.is_initialized()
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    info = init_distributed(force=force)
    try:
        yield info
    finally:
        if not existed and dist.is_initialized():
            dist.destroy_process_group()
        if not existed:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def ddp_wrapper_cfg() -> dict:
    """mmengine ``model_wrapper_cfg`` for DDP. Workaround 3: ``device_ids=None`` for a CPU module.

    ``find_unused_parameters`` is on because a batch may leave a trainable slot unused (text-only samples
    give the region projector nothing to do).
    """
    ids = [int(os.environ.get("LOCAL_RANK", "0"))] if torch.cuda.is_available() else None
    return dict(type="MMDistributedDataParallel", device_ids=ids, broadcast_buffers=False,
                find_unused_parameters=True)


# ------------------------------------------------------------------------------------- checkpoints
def _register_trusted_loader() -> None:
    """Workaround 1: ``pvit-run://PATH`` loads our own resume checkpoints with ``weights_only=False``."""
    from mmengine.runner import checkpoint as ck

    def load_from_pvit_run_dir(filename: str, map_location=None):
        path = filename[len(TRUSTED_PREFIX):]
        if not os.path.isfile(path):
            raise CheckpointError(f"resume checkpoint {path} does not exist")
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:  # truncated or garbage file
            raise CheckpointError(f"resume checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None

    ck.CheckpointLoader.register_scheme(prefixes=TRUSTED_PREFIX, loader=load_from_pvit_run_dir, force=True)


def atomic_checkpoint_save(original):
    """Wrap mmengine's ``save_checkpoint``: write ``NAME.tmp-PID``, fsync, rename; remove the temp file on error.

    A kill during the save leaves only the temp file (cleaned at the next start), never a half-written
    file under a checkpoint's name.
    """
    if getattr(original, "_pvit_atomic", False):
        return original

    def save(checkpoint, filename, file_client_args=None, backend_args=None):
        filename = str(filename)
        tmp = f"{filename}.tmp-{os.getpid()}"
        try:
            original(checkpoint, tmp, file_client_args=file_client_args, backend_args=backend_args)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, filename)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    save._pvit_atomic = True  # type: ignore[attr-defined]
    return save


def _patch_mmengine() -> None:
    """Apply the module-level workarounds once (trusted loader scheme, atomic saves)."""
    from mmengine.runner import checkpoint as ck
    from mmengine.runner import runner as rn

    if getattr(ck, "_pvit_patched", False):
        return
    _register_trusted_loader()
    rn.save_checkpoint = atomic_checkpoint_save(rn.save_checkpoint)  # Runner.save_checkpoint
    ck.save_checkpoint = atomic_checkpoint_save(ck.save_checkpoint)  # strategies import it at call time
    ck._pvit_patched = True


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small text file via a temp file in the same folder and a rename."""
    from pvit.checkpoints import atomic_write_text as write

    write(Path(path), text)


def _checkpoint_hook(**kwargs):
    """mmengine's CheckpointHook, reordered (workaround 8): save the new checkpoint, then point
    ``last_checkpoint`` at it (atomically), then delete checkpoints beyond ``max_keep_ckpts``."""
    from mmengine.dist import is_main_process
    from mmengine.hooks import CheckpointHook

    class PvitCheckpointHook(CheckpointHook):
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

    return PvitCheckpointHook(**kwargs)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    with contextlib.suppress(ImportError):
        import numpy as np

        state["numpy"] = np.random.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------- FSDP / DeepSpeed
_STRATEGY_CLASSES: dict[str, Any] = {}


def _fsdp_strategy():
    """mmengine's ``FSDPStrategy`` with workaround 4, registered as ``PvitFSDPStrategy``."""
    if "fsdp" in _STRATEGY_CLASSES:
        return _STRATEGY_CLASSES["fsdp"]
    from mmengine._strategy import FSDPStrategy
    from mmengine.optim import BaseOptimWrapper, OptimWrapper
    from mmengine.registry import STRATEGIES as REGISTRY
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    class FSDPOptimWrapper(OptimWrapper):
        """Clips by the global gradient norm over all shards (``FSDP.clip_grad_norm_``, a collective that every
        rank calls, even one whose shard holds no trainable element)."""

        fsdp_root: Any = None

        def _clip_grad(self) -> None:
            if self.clip_grad_kwargs.get("type", "norm") != "norm" or self.fsdp_root is None:
                return super()._clip_grad()
            kwargs = {k: v for k, v in self.clip_grad_kwargs.items() if k != "type"}
            norm = self.fsdp_root.clip_grad_norm_(**kwargs)
            self.message_hub.update_scalar(f"train/{self.grad_name}", float(norm))

    class PvitFSDPStrategy(FSDPStrategy):
        """FSDP on CPU (gloo) and GPU with torch >= 2.1."""

        def _wrap_model(self, model):
            wrapper = dict(self.model_wrapper or {"type": "MMFullyShardedDataParallel"})
            if not torch.cuda.is_available():
                wrapper["device_id"] = torch.device("cpu")  # mmengine passes LOCAL_RANK, a CUDA index
            self.model_wrapper = wrapper
            return super()._wrap_model(model)

        def load_optim_state_dict(self, state_dict: dict) -> None:
            # torch >= 2.1: optim_state_dict_to_load(model, optim, optim_state_dict); mmengine passes the state first.
            state = FSDP.optim_state_dict_to_load(self.model, self.optim_wrapper.optimizer, state_dict)
            self.optim_wrapper.load_state_dict(state)

        def build_optim_wrapper(self, optim_wrapper, model=None):
            if not isinstance(optim_wrapper, BaseOptimWrapper):
                return super().build_optim_wrapper(optim_wrapper, model)
            # A built optimizer (param groups from the unwrapped model): rebuild it over the wrapped model's
            # parameters by name. mmengine does this through optim_state_dict_to_load in the old order.
            optimizer = optim_wrapper.optimizer
            if optimizer.state:
                raise RuntimeError("FSDP: the optimizer must be built without state")
            by_name = {n.replace("_fsdp_wrapped_module.", ""): p for n, p in model.named_parameters()}
            groups = []
            for g in optimizer.param_groups:
                group = {k: v for k, v in g.items() if k != "params"}
                group["params"] = [by_name[self.id_to_name[id(p)]] for p in g["params"]]
                groups.append(group)
            # only the constructor's own arguments (torch's AdamW keeps 'decoupled_weight_decay' in defaults
            # but does not accept it; mmengine's rebuild fails on that too)
            accepted = inspect.signature(optimizer.__class__.__init__).parameters
            defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted and k != "differentiable"}
            optim_wrapper.optimizer = optimizer.__class__(groups, **defaults)
            optim_wrapper.__class__ = FSDPOptimWrapper
            optim_wrapper.fsdp_root = model
            return optim_wrapper

    REGISTRY.register_module(name="PvitFSDPStrategy", module=PvitFSDPStrategy, force=True)
    _STRATEGY_CLASSES["fsdp"] = PvitFSDPStrategy
    return PvitFSDPStrategy


def _deepspeed_strategy():
    """mmengine's ``DeepSpeedStrategy`` that adopts an existing process group (workaround 2 again: its own
    ``_setup_distributed`` always calls ``init_dist``, i.e. ``torch.cuda.set_device``)."""
    if "deepspeed" in _STRATEGY_CLASSES:
        return _STRATEGY_CLASSES["deepspeed"]
    try:
        import deepspeed
    except ImportError as e:
        raise RecipeError(f"engine.strategy: 'deepspeed' needs the deepspeed package, which is not installed "
                          f"({e}); pip install deepspeed, or use strategy ddp or fsdp") from None
    from mmengine._strategy import DeepSpeedStrategy
    from mmengine._strategy import deepspeed as ds_module
    from mmengine.registry import STRATEGIES as REGISTRY

    register = ds_module.register_deepspeed_optimizers

    def register_available():
        """mmengine registers DeepSpeed's 1-bit optimizers, which newer DeepSpeed moved; pvit passes a built
        optimizer, so a failed registration does not matter."""
        with contextlib.suppress(ImportError):
            register()

    ds_module.register_deepspeed_optimizers = register_available

    class PvitDeepSpeedStrategy(DeepSpeedStrategy):
        def _setup_distributed(self, launcher=None, backend="nccl", **kwargs):
            import torch.distributed as dist

            if not dist.is_initialized():
                init_distributed(force=True)
            deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)

        def save_checkpoint(self, filename, **kwargs):
            """Every rank writes its shards into ``NAME.tmp-ds``; rank 0 renames the folder when all are done."""
            tmp = f"{filename}.tmp-ds"
            super().save_checkpoint(tmp, **kwargs)
            barrier()
            if dist_info().main:
                os.replace(tmp, filename)
            barrier()

        def resume(self, filename, **kwargs):
            # DeepSpeed checkpoints are folders that DeepSpeed reads itself; it needs the plain path.
            if str(filename).startswith(TRUSTED_PREFIX):
                filename = str(filename)[len(TRUSTED_PREFIX):]
            return super().resume(filename, **kwargs)

    REGISTRY.register_module(name="PvitDeepSpeedStrategy", module=PvitDeepSpeedStrategy, force=True)
    _STRATEGY_CLASSES["deepspeed"] = PvitDeepSpeedStrategy
    return PvitDeepSpeedStrategy


def fsdp_state_dict_cfg() -> dict:
    """Full (rank 0) state dicts, so an FSDP checkpoint is one file like the others. mmengine's ``'full'`` sets
    ``offload_to_cpu=True``, which on CPU hands back tensors whose storage FSDP then frees (``.cpu()`` of a CPU
    tensor is the tensor itself): the optimizer state in the checkpoint is garbage. Offload only from a GPU."""
    gpu = torch.cuda.is_available()
    return dict(state_dict_type="FULL_STATE_DICT",
                state_dict_config=dict(type="FullStateDictConfig", rank0_only=True, offload_to_cpu=gpu),
                optim_state_dict_config=dict(type="FullOptimStateDictConfig", rank0_only=True, offload_to_cpu=gpu))


def resolve_strategy(name: str, world: int) -> str:
    """Recipe ``engine.strategy`` -> ``single`` | ``ddp`` | ``fsdp`` | ``deepspeed``."""
    if name not in STRATEGIES:
        import difflib

        guess = difflib.get_close_matches(name, STRATEGIES, n=1)
        raise RecipeError(f"engine.strategy: {name!r} is not one of {', '.join(STRATEGIES)}"
                          + (f"; did you mean {guess[0]!r}?" if guess else ""))
    if name in ("auto", "ddp"):
        return "ddp" if world > 1 else "single"
    return name


def _full_state_fsdp(wrapped) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights of an FSDP-wrapped trainer, on every rank."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with warnings_off(), FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT,
                                              FullStateDictConfig(offload_to_cpu=False, rank0_only=False)):
        return wrapped.state_dict()


def _release(trainer: nn.Module, full: dict[str, torch.Tensor] | None = None) -> None:
    """After an FSDP or DeepSpeed stage: give every module new, plain Parameter objects (with ``full``'s values
    or their own), so that exports and the next stage see ordinary tensors. FSDP marks the parameters it
    flattened (a later wrap would skip them: no gradient sync) and DeepSpeed leaves gradient hooks on them.
    Shared (tied) parameters stay shared."""
    fresh: dict[int, nn.Parameter] = {}
    for name, p in trainer.named_parameters():
        value = full[name] if full is not None else p
        fresh[id(p)] = nn.Parameter(value.detach().clone(), requires_grad=p.requires_grad)
    for module in trainer.modules():
        for key, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[key] = fresh[id(p)]


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


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

    @property
    def total(self) -> int:
        return sum(self.counts.values())


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
    seen: set[int] = set()
    for s in slots:
        if s == "new_token_embeddings":
            continue
        params = [p for p in model.slot_parameters(s) if id(p) not in seen]
        seen.update(id(p) for p in params)
        for p in params:
            p.requires_grad_(True)
        counts[s] = sum(p.numel() for p in params)
    if "new_token_embeddings" in slots:
        rows = torch.tensor(model.trainable_token_ids, dtype=torch.long)
        n = 0
        for w in model.slot_parameters("new_token_embeddings"):
            if w.requires_grad:  # the whole LLM trains already
                continue
            w.requires_grad_(True)
            mask = torch.zeros(w.shape[0], 1, dtype=w.dtype, device=w.device)
            mask[rows] = 1
            state.hooks.append(w.register_hook(lambda g, m=mask: g * m.to(g.device, g.dtype)))
            n += len(rows) * w.shape[1]
        counts["new_token_embeddings"] = n
    return state


# ------------------------------------------------------------------------------------- data
class StageStream(torch.utils.data.Sampler):
    """Endless seeded stream of ``(epoch, index)`` keys, sharded over ranks (workaround 9).

    Epoch ``e`` is ``randperm(len(dataset))`` seeded with ``seed + e``; the global stream is the epochs one
    after another, and rank ``r`` of ``w`` takes its items ``start + r, start + r + w, ...``. One process with
    batch ``2B`` therefore sees, step by step, exactly the samples that two processes with batch ``B`` see
    together. ``start`` (a global position) lets a resumed stage continue without loading the skipped data.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1):
        if size <= 0:
            raise RecipeError("a training stage's dataset is empty")
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.start = 0

    def __len__(self) -> int:  # one epoch per rank (the stream itself never ends)
        return max(1, self.size // self.world)

    def __iter__(self):
        pos = self.start + self.rank
        g = torch.Generator()
        epoch, perm = -1, []
        while True:
            e, k = divmod(pos, self.size)
            if e != epoch:
                g.manual_seed(self.seed + e)
                perm = torch.randperm(self.size, generator=g).tolist()
                epoch = e
            yield e, perm[k]
            pos += self.world


class EpochKeyed(torch.utils.data.Dataset):
    """A dataset read with ``(epoch, index)`` keys; epoch changes reach ``dataset.set_epoch`` (box jitter),
    in the main process and in every loader worker alike."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def metainfo(self) -> dict:
        return dict(getattr(self.dataset, "metainfo", None) or {})

    def __getitem__(self, key):
        epoch, index = key
        if epoch != self.epoch:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            self.epoch = epoch
        return self.dataset[index]


def make_loader(dataset, collator, *, batch_size: int, seed: int, num_workers: int = 0,
                info: DistInfo | None = None):
    """The training DataLoader of a stage: a ``StageStream`` over ``dataset``; images load per batch."""
    from torch.utils.data import DataLoader

    info = info or dist_info()
    stream = StageStream(len(dataset), seed, info.rank, info.world)
    return DataLoader(
        EpochKeyed(dataset),
        batch_size=batch_size,
        sampler=stream,
        collate_fn=collator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=False,
        generator=torch.Generator().manual_seed(seed),  # worker seeds do not consume the global RNG
    )


def _loop_class():
    """mmengine's IterBasedTrainLoop that starts a resumed stream at its saved position instead of
    loading and discarding every batch already trained on, and sets train mode once."""
    from mmengine.runner import IterBasedTrainLoop
    from mmengine.runner.loops import _InfiniteDataloaderIterator

    class PvitTrainLoop(IterBasedTrainLoop):
        def run(self):
            runner = self.runner
            stream = self.dataloader.sampler
            per_step = self.dataloader.batch_size * stream.world
            consumed = int(runner.message_hub.get_info("pvit_samples", self._iter * per_step))
            if self._iter > 0:
                stream.start = consumed
                self.dataloader_iterator = _InfiniteDataloaderIterator(self.dataloader)
            runner.call_hook("before_train")
            runner.call_hook("before_train_epoch")
            # once, not every step as mmengine does (a walk over every submodule, ~2 ms per step for a
            # small model); nothing switches to eval mode in between: stages run no validation loop
            runner.model.train()
            while self._iter < self._max_iters and not self.stop_training:
                batch = next(self.dataloader_iterator)
                consumed += per_step
                runner.message_hub.update_info("pvit_samples", consumed)  # saved with each checkpoint
                self.run_iter(batch)
            runner.call_hook("after_train_epoch")
            runner.call_hook("after_train")
            return runner.model

    return PvitTrainLoop


# ------------------------------------------------------------------------------------- mmengine model
def autocast(precision: str, device: torch.device):
    """bf16 autocast on CPU and GPU (workaround 5: mmengine's AmpOptimWrapper is GPU-only); fp32: no-op."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _wrap(model: PVITModel, precision: str, trainable: list[str], world: int):
    from mmengine.model import BaseDataPreprocessor, BaseModel

    class _AsIs(BaseDataPreprocessor):
        """Workaround 12: mmengine's default preprocessor walks every element of every list in the batch
        (~1.3 ms a step for a tiny model); ``forward`` below moves the batch to the device itself."""

        def forward(self, data, training: bool = False):
            return data

    frozen = [s for s in ("projector", "region_projector", "llm", "bbox_embed", "image_encoder", "region_encoder")
              if s not in trainable and getattr(model, s, None) is not None]

    class _Trainer(BaseModel):
        """mmengine's view of a PVITModel: ``forward(**batch, mode='loss') -> {'loss', 'ce'}``.

        With several processes the loss is normalised by the global number of target tokens (one
        ``all_reduce`` of two numbers per step), so the averaged gradient equals that of one process running
        the whole global batch; ``ce`` is that global mean, what one process would report.
        """

        def __init__(self):
            super().__init__(data_preprocessor=_AsIs())
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
            with autocast(precision, device):
                out = self.pvit(batch)
            loss = out.loss.float()
            if world == 1:
                return {"loss": loss, "ce": loss.detach()}
            import torch.distributed as dist

            labels = batch.get("labels")
            n = ((labels[:, 1:] != IGNORE_INDEX).sum() if labels is not None else torch.ones((), device=device))
            n = n.to(device=loss.device, dtype=torch.float32)
            stats = torch.stack([loss.detach() * n, n])  # (2,)
            dist.all_reduce(stats)
            total = stats[1].clamp_min(1.0)
            return {"loss": loss * (n * world / total), "ce": stats[0] / total}

    return _Trainer()


# ------------------------------------------------------------------------------------- hooks
class _Display:
    """Rank 0's progress: a rich progress bar on a terminal, else a line every ``every`` steps."""

    def __init__(self, name: str, total: int, start: int, enabled: bool, every: int):
        self.name, self.total, self.every = name, total, max(1, every)
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(f"  {name}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task(name, total=total, completed=start, info="")

    def update(self, it: int, loss: float, lr: float, it_s: float, samples_s: float) -> None:
        info = f"loss {loss:.4f} lr {lr:.2e} {it_s:.2f} it/s {samples_s:.1f} samples/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=it, info=info)
        elif self.enabled and (it % self.every == 0 or it == self.total):
            print(f"  {self.name} [{it:>5}/{self.total}] {info}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _stage_hook(stage_name: str, total: int, log_every: int, progress: bool, losses: list, samples_per_step: int):
    from mmengine.hooks import Hook

    class PvitStageHook(Hook):
        """Records each step's loss; shows loss, lr and throughput on rank 0; saves and restores the RNG state
        with every checkpoint (workaround 6)."""

        priority = "VERY_LOW"

        def __init__(self):
            self.pending_rng = None
            self.display = None

        def before_train(self, runner):
            if self.pending_rng is not None:
                _set_rng_state(self.pending_rng)
                self.pending_rng = None
            self.t0, self.start = time.time(), runner.iter
            self.display = _Display(stage_name, total, runner.iter, progress and runner.rank == 0, log_every)

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            it = runner.iter + 1
            value = outputs.get("ce", outputs.get("loss")) if outputs else None
            loss = float(value) if value is not None else float("nan")
            losses.append((it, loss))
            if self.display is not None and self.display.enabled:
                lr = runner.optim_wrapper.get_lr()["lr"][0]
                dt = max(time.time() - self.t0, 1e-9)
                rate = (it - self.start) / dt
                self.display.update(it, loss, lr, rate, rate * samples_per_step)

        def after_train(self, runner):
            if self.display is not None:
                self.display.close()

        def before_save_checkpoint(self, runner, checkpoint):
            checkpoint.setdefault("meta", {})["pvit_rng"] = _rng_state()

        def after_load_checkpoint(self, runner, checkpoint):
            self.pending_rng = checkpoint.get("meta", {}).get("pvit_rng")

    return PvitStageHook()


# ------------------------------------------------------------------------------------- run a stage
@dataclass
class StageResult:
    name: str
    steps: int
    losses: list[tuple[int, float]]
    seconds: float
    trainable: dict[str, int]
    strategy: str = "single"
    world: int = 1


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


def _warn_batchnorm(model: nn.Module, trainable: list[str], where: str) -> None:
    """Under DDP/FSDP a BatchNorm in a trained slot normalises with per-rank statistics (no SyncBN on CPU)."""
    names = [f"{s}.{n}" for s in trainable if isinstance(getattr(model, s, None), nn.Module)
             for n, m in getattr(model, s).named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if names:
        logging.getLogger("pvit").warning(
            "%s: %s normalise with per-process batch statistics under data parallelism, so losses differ "
            "slightly from one process with the same global batch (input_norm: layer avoids this)", where,
            ", ".join(names))


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
    extra_hooks: tuple = (),
) -> StageResult:
    """Train ``model`` for one recipe stage on mmengine; returns the per-step losses (global means).

    ``optim.batch_size`` is per process; one optimiser step sees ``batch_size x processes x grad_accum``
    samples. ``resume_from`` is an engine checkpoint of this stage (trusted: inside our run directory).
    """
    _patch_mmengine()
    optim = stage.optim
    where = f"stages[{stage.name}]"
    info = dist_info()
    strategy = resolve_strategy(engine_cfg.strategy, info.world)
    if optim.precision not in PRECISIONS:
        raise RecipeError(f"{where}.optim.precision: {optim.precision!r} is not one of {', '.join(PRECISIONS)} "
                          "(bf16 runs under autocast on CPU and GPU)")
    if optim.schedule not in ("cosine", "constant"):
        raise RecipeError(f"{where}.optim.schedule: {optim.schedule!r} is not one of cosine, constant")
    if strategy == "fsdp" and "new_token_embeddings" in stage.trainable and "llm" not in stage.trainable:
        raise RecipeError(
            f"{where}.trainable: new_token_embeddings trains only the added rows through a gradient hook on the "
            "embedding matrix, which FSDP's flattened parameters bypass; run this stage with engine.strategy=ddp "
            "(as PVIT's stage 1 does) or train the whole llm")
    state = set_trainable(model, list(stage.trainable), where=where)
    if info.world > 1:
        _warn_batchnorm(model, list(stage.trainable), where)
    per_step = optim.batch_size * info.world * optim.grad_accum
    if optim.max_steps:
        opt_steps = int(optim.max_steps)
    else:
        opt_steps = max(1, math.ceil(len(dataset) * float(optim.epochs or 1) / per_step))
    iters = opt_steps * optim.grad_accum
    warmup = int(round(optim.warmup_ratio * iters))
    if warmup == 1:  # mmengine's LinearLR over a single iteration never leaves start_factor
        warmup = 2 if iters > 2 else 0

    loader = make_loader(dataset, collator, batch_size=optim.batch_size, seed=seed,
                         num_workers=engine_cfg.num_workers, info=info)
    trainer = _wrap(model, optim.precision, list(stage.trainable), info.world)
    optimizer = torch.optim.AdamW(_param_groups(trainer, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas))
    clip = dict(max_norm=float(optim.clip_grad)) if optim.clip_grad else None
    schedulers = []
    if warmup > 0:
        schedulers.append(dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=warmup))
    if optim.schedule == "cosine":
        schedulers.append(dict(type="CosineAnnealingLR", eta_min=optim.lr * optim.min_lr_ratio, by_epoch=False,
                               begin=warmup, end=iters, T_max=max(1, iters - warmup)))
    losses: list[tuple[int, float]] = []
    hooks = [_stage_hook(stage.name, iters, engine_cfg.log_every, engine_cfg.progress, losses,
                         optim.batch_size * info.world), *extra_hooks]
    vis = None
    if engine_cfg.tensorboard:
        vis = dict(type="Visualizer", vis_backends=[dict(type="TensorboardVisBackend")],
                   name=f"pvit-{stage.name}-{id(model)}-{time.time_ns()}")
    common = dict(
        model=trainer,
        work_dir=str(work_dir),
        train_dataloader=loader,
        param_scheduler=schedulers or None,
        train_cfg=dict(type=_loop_class(), max_iters=iters, val_interval=iters + 1),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=max(1, engine_cfg.log_every), log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=_checkpoint_hook(interval=engine_cfg.checkpoint_every, by_epoch=False,
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
    if strategy in ("single", "ddp"):
        from mmengine.optim import OptimWrapper
        from mmengine.runner import Runner

        runner = Runner(
            optim_wrapper=OptimWrapper(optimizer=optimizer, accumulative_counts=optim.grad_accum, clip_grad=clip),
            launcher="pytorch" if strategy == "ddp" else "none",
            cfg=dict(model_wrapper_cfg=ddp_wrapper_cfg()) if strategy == "ddp" else None,
            **common,
        )
    else:
        from mmengine.runner import FlexibleRunner

        if strategy == "fsdp":
            from mmengine.optim import OptimWrapper

            _fsdp_strategy()
            strat = dict(type="PvitFSDPStrategy", state_dict_cfg=fsdp_state_dict_cfg(),
                         model_wrapper=dict(type="MMFullyShardedDataParallel", use_orig_params=True))
            wrapper: Any = OptimWrapper(optimizer=optimizer, accumulative_counts=optim.grad_accum, clip_grad=clip)
        else:
            _deepspeed_strategy()
            strat = dict(type="PvitDeepSpeedStrategy", zero_optimization=dict(stage=2),
                         gradient_accumulation_steps=optim.grad_accum,
                         gradient_clipping=float(optim.clip_grad) if optim.clip_grad else 0.0,
                         train_micro_batch_size_per_gpu=optim.batch_size)
            wrapper = dict(type="DeepSpeedOptimWrapper", optimizer=optimizer)
        runner = FlexibleRunner(optim_wrapper=wrapper, strategy=strat, launcher="pytorch", **common)
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    t0 = time.time()
    try:
        with warnings_off() if strategy == "fsdp" else contextlib.nullcontext():
            runner.train()
        if strategy == "fsdp":
            _release(trainer, _full_state_fsdp(runner.model))
        elif strategy == "deepspeed":
            _release(trainer)
    finally:
        state.remove()
        _stop_workers(runner)
    return StageResult(stage.name, iters, losses, time.time() - t0, state.counts, strategy, info.world)


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
