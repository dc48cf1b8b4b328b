"""The mmengine adapter: runs one training stage on mmengine's Runner or FlexibleRunner, and works around
mmengine 0.10.x's known issues with recent torch, each in one named place.

This package imports torch and mmengine: nothing that must stay light (``pvit --help``, recipe checks, the
plan) imports it; ``pvit.run`` imports it when a stage is about to train.

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
   run directories; every other load stays safe. [``patches.py``]
2. mmengine's ``init_dist`` calls ``torch.cuda.set_device`` before creating the process group, which fails on
   CPU: we create the group ourselves (gloo on CPU, nccl on GPU) and mmengine skips its own.
   [``distributed.py``; DeepSpeed's own setup: ``strategies.py``]
3. mmengine wraps DDP with ``device_ids=[LOCAL_RANK]``, which DDP rejects for a CPU module: ``device_ids=None``
   on CPU. [``distributed.py``]
4. FSDP: mmengine passes ``device_id=LOCAL_RANK`` (a CUDA index); calls ``FSDP.optim_state_dict_to_load``
   with torch < 2.1's argument order; rebuilds AdamW with an argument AdamW does not take; clips gradients by
   each rank's shard only; and its ``'full'`` state dicts offload to CPU, which on CPU corrupts the saved
   optimizer state. [``strategies.py``]
5. ``AmpOptimWrapper`` is GPU-only: bf16 runs under ``torch.autocast`` in the model adapter, on CPU and GPU.
   [``adapter.py``]
6. Exact resume: ``randomness=dict(seed=...)``, and the RNG states and the data position are saved in each
   checkpoint (mmengine saves neither; it replays the data loader instead, loading every skipped batch).
   [``checkpointing.py``, ``loop.py``]
7. The process group is destroyed at exit (mmengine never does). [``distributed.py``]
8. Checkpoint writes are atomic; the ``last_checkpoint`` pointer is written after the checkpoint and atomically;
   old checkpoints are deleted only after the new one exists (mmengine deletes first).
   [``patches.py``, ``checkpointing.py``]
9. mmengine's iteration loop sleeps 2 s at every epoch boundary and never tells the dataset its epoch: the
   sampler is an endless seeded stream of ``(epoch, index)`` keys. [``sampling.py``]
10. mmengine's loop calls ``model.train()`` every step, a walk over every submodule (~2 ms for a small model,
    ~15% of a tiny step): once per stage here. [``loop.py``]
11. DeepSpeed (0.19): mmengine imports 1-bit optimizers DeepSpeed has moved, hands DeepSpeed our
    ``pvit-run://`` path on resume, and lets every rank write into the final checkpoint folder: tolerant
    registration, the plain path, a temp folder renamed when all ranks are done. [``strategies.py``]
12. mmengine's default data preprocessor walks every element of every list in a batch (~1.3 ms a step): the
    model adapter moves the batch itself. [``adapter.py``]
13. mmengine's ``LinearLR`` over a single iteration never leaves ``start_factor``: a one-step warmup becomes
    two steps (or none). [``stage.py``]
14. mmengine's Runner moves the model to CUDA whenever CUDA is available, whatever the recipe asks: while the
    runner is built, its device is the recipe's ``engine.device``. [``stage.py``]
"""

from __future__ import annotations

from pvit.engine.adapter import IGNORE_INDEX, PRECISIONS, Trainer, autocast, param_groups, wrap_model
from pvit.engine.checkpointing import PvitCheckpointHook, RngStateHook, rng_state, set_rng_state
from pvit.engine.distributed import (DistInfo, barrier, ddp_wrapper_cfg, dist_info, distributed,
                                     init_distributed)
from pvit.engine.loop import PvitTrainLoop
from pvit.engine.patches import TRUSTED_PREFIX, atomic_checkpoint_save, patch_mmengine
from pvit.engine.progress import Display, ProgressHook
from pvit.engine.sampling import EpochKeyed, StageStream, make_loader
from pvit.engine.stage import StageResult, run_stage
from pvit.engine.strategies import (STRATEGIES, deepspeed_strategy, fsdp_state_dict_cfg, fsdp_strategy,
                                    resolve_strategy)
from pvit.slots import TrainableState, set_trainable

__all__ = [
    "IGNORE_INDEX", "PRECISIONS", "STRATEGIES", "TRUSTED_PREFIX", "DistInfo", "Display", "EpochKeyed",
    "ProgressHook", "PvitCheckpointHook", "PvitTrainLoop", "RngStateHook", "StageResult", "StageStream",
    "Trainer", "TrainableState", "atomic_checkpoint_save", "autocast", "barrier", "ddp_wrapper_cfg",
    "deepspeed_strategy", "dist_info", "distributed", "fsdp_state_dict_cfg", "fsdp_strategy", "init_distributed",
    "make_loader", "param_groups", "patch_mmengine", "resolve_strategy", "rng_state", "run_stage",
    "set_rng_state", "set_trainable", "wrap_model",
]
