"""mmengine's view of a PVITModel: the loss step under autocast, global token normalisation across ranks, and
frozen components kept in eval mode (workarounds 5 and 12)."""

from __future__ import annotations


import torch
from mmengine.model import BaseDataPreprocessor, BaseModel
from torch import nn

from pvit.device import autocast  # noqa: F401 - the engine's name for it (workaround 5)
from pvit.interfaces import IGNORE_INDEX
from pvit.model import PVITModel, batch_to
from pvit.slots import frozen_components

PRECISIONS = ("fp32", "bf16")


class AsIs(BaseDataPreprocessor):
    """Workaround 12: mmengine's default preprocessor walks every element of every list in the batch
    (~1.3 ms a step for a tiny model); ``Trainer.forward`` moves the batch to the device itself."""

    def forward(self, data, training: bool = False):
        return data


class Trainer(BaseModel):
    """``forward(**batch, mode='loss') -> {'loss', 'ce'}`` for mmengine.

    With several processes the loss is normalised by the global number of target tokens (one ``all_reduce`` of
    two numbers per step), so the averaged gradient equals that of one process running the whole global batch;
    ``ce`` is that global mean, what one process would report.
    """

    def __init__(self, model: PVITModel, precision: str, frozen: list[str], world: int):
        super().__init__(data_preprocessor=AsIs())
        self.pvit = model
        self.precision, self.frozen, self.world = precision, list(frozen), world

    def train(self, mode: bool = True):
        """Frozen components stay in eval mode (no BatchNorm statistics updates, no dropout)."""
        super().train(mode)
        for slot in self.frozen:
            getattr(self.pvit, slot).eval()
        return self

    def forward(self, mode: str = "loss", **batch):
        device = next(self.pvit.llm.parameters()).device
        batch = batch_to(batch, device)
        with autocast(self.precision, device):
            out = self.pvit(batch)
        loss = out.loss.float()
        if self.world == 1:
            return {"loss": loss, "ce": loss.detach()}
        import torch.distributed as dist

        labels = batch.get("labels")
        n = ((labels[:, 1:] != IGNORE_INDEX).sum() if labels is not None else torch.ones((), device=device))
        n = n.to(device=loss.device, dtype=torch.float32)
        stats = torch.stack([loss.detach() * n, n])  # (2,)
        dist.all_reduce(stats)
        total = stats[1].clamp_min(1.0)
        return {"loss": loss * (n * self.world / total), "ce": stats[0] / total}


def wrap_model(model: PVITModel, precision: str, trainable: list[str], world: int) -> Trainer:
    """The mmengine model that trains the slots ``trainable`` of ``model``."""
    return Trainer(model, precision, frozen_components(model, trainable), world)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups of the trainable parameters: weight decay on matrices, none on biases, norms, embeddings."""
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
