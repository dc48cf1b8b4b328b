"""The training data of a stage: an endless seeded stream of ``(epoch, index)`` keys sharded over ranks
(workaround 9), epochs passed on to the dataset, and the DataLoader built on them."""

from __future__ import annotations

import torch

from pvit.engine.distributed import DistInfo, dist_info
from pvit.errors import RecipeError


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
