"""Process groups: rank and world size, creating and destroying the group, barriers, DDP wrapper settings.

Workarounds (see the catalogue in ``pvit/engine/__init__.py``): 2 (the group is made here, so mmengine's
``init_dist`` never calls ``torch.cuda.set_device`` on a CPU machine), 3 (``device_ids=None`` for a CPU DDP
module) and 7 (the group is destroyed at exit).
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


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
    existed = dist.is_available() and dist.is_initialized()
    saved = {k: os.environ.get(k) for k in _ENV}
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
