"""FSDP and DeepSpeed on mmengine's FlexibleRunner (workarounds 4 and 11), strategy names, and handing the
trained weights back as plain parameters after a sharded stage."""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from typing import Any

import torch
from mmengine._strategy import DeepSpeedStrategy, FSDPStrategy
from mmengine._strategy import deepspeed as ds_module
from mmengine.optim import BaseOptimWrapper, OptimWrapper
from mmengine.registry import STRATEGIES as REGISTRY
from torch import nn
from torch.distributed.fsdp import FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from pvit.engine.distributed import barrier, dist_info, init_distributed
from pvit.engine.patches import TRUSTED_PREFIX
from pvit.errors import RecipeError, did_you_mean

STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed")


def resolve_strategy(name: str, world: int) -> str:
    """Recipe ``engine.strategy`` -> ``single`` | ``ddp`` | ``fsdp`` | ``deepspeed``."""
    if name not in STRATEGIES:
        raise RecipeError(f"engine.strategy: {name!r} is not one of {', '.join(STRATEGIES)}"
                          + did_you_mean(name, STRATEGIES))
    if name in ("auto", "ddp"):
        return "ddp" if world > 1 else "single"
    return name


@contextlib.contextmanager
def warnings_off():
    """Silence warnings (FSDP's deprecation notices) inside the block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


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
    """FSDP on CPU (gloo) and GPU with torch >= 2.1 (workaround 4)."""

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


class PvitDeepSpeedStrategy(DeepSpeedStrategy):
    """mmengine's DeepSpeed strategy that adopts an existing process group (workaround 2 again: its own
    ``_setup_distributed`` always calls ``init_dist``), resumes from the plain path, and writes checkpoint
    folders atomically (workaround 11)."""

    def _setup_distributed(self, launcher=None, backend="nccl", **kwargs):
        import deepspeed
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


def fsdp_strategy():
    """Register ``PvitFSDPStrategy`` with mmengine (idempotent) and return it."""
    REGISTRY.register_module(name="PvitFSDPStrategy", module=PvitFSDPStrategy, force=True)
    return PvitFSDPStrategy


_register_ds_optimizers = ds_module.register_deepspeed_optimizers


def _register_available_ds_optimizers():
    """mmengine registers DeepSpeed's 1-bit optimizers, which newer DeepSpeed moved; pvit passes a built
    optimizer, so a failed registration does not matter (workaround 11)."""
    with contextlib.suppress(ImportError):
        _register_ds_optimizers()


def deepspeed_strategy():
    """Register ``PvitDeepSpeedStrategy`` with mmengine and return it; a clear error without deepspeed."""
    try:
        import deepspeed  # noqa: F401
    except ImportError as e:
        raise RecipeError(f"engine.strategy: 'deepspeed' needs the deepspeed package, which is not installed "
                          f"({e}); pip install deepspeed, or use strategy ddp or fsdp") from None
    ds_module.register_deepspeed_optimizers = _register_available_ds_optimizers
    REGISTRY.register_module(name="PvitDeepSpeedStrategy", module=PvitDeepSpeedStrategy, force=True)
    return PvitDeepSpeedStrategy


def fsdp_state_dict_cfg() -> dict:
    """Full (rank 0) state dicts, so an FSDP checkpoint is one file like the others. mmengine's ``'full'`` sets
    ``offload_to_cpu=True``, which on CPU hands back tensors whose storage FSDP then frees (``.cpu()`` of a CPU
    tensor is the tensor itself): the optimizer state in the checkpoint is garbage. Offload only from a GPU."""
    gpu = torch.cuda.is_available()
    return dict(state_dict_type="FULL_STATE_DICT",
                state_dict_config=dict(type="FullStateDictConfig", rank0_only=True, offload_to_cpu=gpu),
                optim_state_dict_config=dict(type="FullOptimStateDictConfig", rank0_only=True, offload_to_cpu=gpu))


def full_state_fsdp(wrapped) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights of an FSDP-wrapped trainer, on every rank."""
    with warnings_off(), FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT,
                                              FullStateDictConfig(offload_to_cpu=False, rank0_only=False)):
        return wrapped.state_dict()


def release(trainer: nn.Module, full: dict[str, torch.Tensor] | None = None) -> None:
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
