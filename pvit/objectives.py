"""Training objectives a stage can choose besides the LM loss (``stages[i].objective``).

``lm`` (the default) is the model's own next-token loss on the assistant turns.

``region-contrastive`` aligns region features with text, as RegionCLIP's pretraining aligns region features with
concept embeddings: every region whose question mentions it alone (a region-caption turn, "Describe <region>")
is paired with the reply to that question. The reply's text embedding is the mean of the LLM's input embeddings
of its tokens (held fixed: no gradient reaches the LLM). Each region's projected feature (the region projector's
output, the box embedding left out) is scored against every distinct reply of the batch by cosine similarity over
a temperature, and the loss is the cross-entropy of its own reply. What trains is whatever the stage lists (for
instance ``region_encoder`` and ``region_projector``): a stand-in, inside a recipe, for a region encoder that was
pretrained on region-concept pairs before PVIT uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pvit.errors import DataError

#: Softmax temperature of region-contrastive (CLIP's initial 0.07).
TEMPERATURE = 0.07


@dataclass
class ObjectiveOutput:
    """What ``PVITModel.forward`` returns under an objective other than ``lm``."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None  # (R', C) region x distinct-reply scores


def needs_region_features(objective: str) -> bool:
    return objective == "region-contrastive"


def objective_loss(model, batch: dict) -> ObjectiveOutput:
    """The loss of ``model.objective`` (any objective but ``lm``) on a collated batch."""
    return LOSSES[model.objective](model, batch)


def _text_embeddings(model, texts: list[str], device: torch.device) -> torch.Tensor:
    """Mean input embedding of each text's tokens, (C, D), without gradient."""
    tok = model.llm.tokenizer
    rows = [list(tok(t, add_special_tokens=False)["input_ids"]) or [tok.eos_token_id] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)  # (C, L)
    mask = torch.zeros(len(rows), width, 1)  # (C, L, 1)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    with torch.no_grad():
        emb = model.llm.embed(ids.to(device)).float()  # (C, L, D)
    mask = mask.to(device)
    return (emb * mask).sum(1) / mask.sum(1)  # (C, D)


def region_contrastive(model, batch: dict) -> ObjectiveOutput:
    """The region-contrastive loss of a collated batch (see the module docstring)."""
    if model.tokens_per_region == 0:
        raise DataError("region-contrastive: the model's region encoder gives no region features "
                        f"({type(model.region_encoder).__name__}); this objective needs one that does")
    targets = batch.get("region_targets") or []
    keep = [i for i, t in enumerate(targets) if t]
    if not keep:
        raise DataError(
            "region-contrastive: no region of this batch has a reply of its own (a question that mentions exactly "
            f"one region, answered in the next turn); batch ids {', '.join(map(str, batch.get('ids', [])[:8]))}; "
            "use region-caption data for this stage")
    z = model.region_features(batch).float().mean(1)  # (R, D)
    idx = torch.tensor(keep, device=z.device)
    z = z.index_select(0, idx)  # (R', D)
    names = sorted({targets[i] for i in keep})
    where = {t: j for j, t in enumerate(names)}
    labels = torch.tensor([where[targets[i]] for i in keep], device=z.device)  # (R',)
    text = _text_embeddings(model, names, z.device)  # (C, D)
    logits = F.normalize(z, dim=-1) @ F.normalize(text, dim=-1).T / TEMPERATURE  # (R', C)
    return ObjectiveOutput(loss=F.cross_entropy(logits, labels), logits=logits)


#: The objectives besides ``lm``, by name: ``loss(model, batch) -> ObjectiveOutput``.
LOSSES = {"region-contrastive": region_contrastive}
OBJECTIVES = ("lm", *LOSSES)
