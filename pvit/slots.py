"""Trainable slots: the named parameter groups a stage lists in ``trainable``; the one place that knows them.

A slot is one of

* a **component** of the model (``image_encoder``, ``region_encoder``, ``projector``, ``region_projector``,
  ``llm``, ``bbox_embed``): all its parameters; its exports carry its buffers too;
* ``new_token_embeddings``: the rows of the LLM's input (and untied output) embeddings that belong to the tokens
  the model added (region tags, location tokens); a gradient mask keeps the other rows fixed;
* a **declared group** ``<component>.<group>``: a component that defines ``parameter_groups()`` (returning
  ``{group: parameters}``) offers each group as a slot, e.g. ``llm.lora`` or ``region_projector.gate``. A
  plugin adds a trainable group this way with no change to the core.

The run's plan, the engine's freezing, the exports and ``pvit ablate`` all read slots from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pvit.errors import RecipeError, did_you_mean

#: The model's components, in plan order.
COMPONENTS = ("image_encoder", "region_encoder", "projector", "region_projector", "llm", "bbox_embed")
NEW_TOKEN_EMBEDDINGS = "new_token_embeddings"
#: Slots every PVITModel offers (those of absent components are empty), besides declared groups.
SLOTS = ("image_encoder", "region_encoder", "projector", "region_projector", "llm", NEW_TOKEN_EMBEDDINGS,
         "bbox_embed")
#: Slots (and the components whose declared groups) make a stage depend on the region encoder.
REGION_SLOTS = ("region_encoder", "region_projector", NEW_TOKEN_EMBEDDINGS, "bbox_embed")


@dataclass
class Slot:
    """One trainable group: its parameters, the component it belongs to, and (embeddings) the rows it trains."""

    name: str
    component: str
    params: list[nn.Parameter]
    whole: bool = False  # the whole component (exported with its buffers)
    rows: list[int] | None = None


def _embedding_matrices(model) -> list[nn.Parameter]:
    emb = [model.llm.model.get_input_embeddings().weight]
    out = model.llm.model.get_output_embeddings()
    if out is not None and out.weight is not emb[0]:
        emb.append(out.weight)
    return emb


def model_slots(model) -> dict[str, Slot]:
    """Every slot ``model`` offers, by name: components, ``new_token_embeddings``, then declared groups."""
    out: dict[str, Slot] = {}
    for name in SLOTS:
        if name == NEW_TOKEN_EMBEDDINGS:
            out[name] = Slot(name, "llm", _embedding_matrices(model), rows=list(model.trainable_token_ids))
            continue
        module = getattr(model, name, None)
        out[name] = Slot(name, name, list(module.parameters()) if module is not None else [], whole=True)
    for comp in COMPONENTS:
        module = getattr(model, comp, None)
        declare = getattr(module, "parameter_groups", None)
        if module is None or not callable(declare):
            continue
        for group, params in dict(declare()).items():
            out[f"{comp}.{group}"] = Slot(f"{comp}.{group}", comp, list(params))
    return out


def select(model, names: list[str], where: str = "stage") -> list[Slot]:
    """The slots named by a stage's ``trainable`` list, in that order; all problems raised together."""
    slots = model_slots(model)
    errors, chosen = [], []
    for s in names:
        slot = slots.get(s)
        if slot is None:
            errors.append(f"{where}.trainable: unknown slot {s!r}{did_you_mean(s, slots)} (slots of this model: "
                          f"{', '.join(slots)})")
        elif slot.component in ("image_encoder", "region_encoder") and getattr(getattr(model, slot.component),
                                                                               "frozen", False):
            errors.append(f"{where}.trainable: {s} belongs to {slot.component}, which was built frozen; set "
                          f"model.{slot.component}.options.frozen=false to train it")
        else:
            chosen.append(slot)
    if errors:
        raise RecipeError(errors)
    return chosen


def count(chosen: list[Slot]) -> dict[str, int]:
    """Trainable parameters per slot, shared parameters counted once (embedding rows: rows x width for each
    matrix that no other chosen slot trains whole)."""
    counts: dict[str, int] = {}
    seen: set[int] = set()
    for slot in chosen:
        if slot.rows is None:
            params = [p for p in slot.params if id(p) not in seen]
            seen.update(id(p) for p in params)
            counts[slot.name] = sum(p.numel() for p in params)
    for slot in chosen:
        if slot.rows is not None:
            counts[slot.name] = sum(len(slot.rows) * w.shape[1] for w in slot.params if id(w) not in seen)
    return counts


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


def set_trainable(model, names: list[str], where: str = "stage") -> TrainableState:
    """Freeze everything, then unfreeze the slots ``names``. ``new_token_embeddings`` trains only the rows of
    the added tokens (a gradient hook zeroes the others), unless another chosen slot trains the matrix whole."""
    chosen = select(model, names, where)
    model.requires_grad_(False)
    state = TrainableState(names=list(names), counts=count(chosen))
    for slot in chosen:
        if slot.rows is None:
            for p in slot.params:
                p.requires_grad_(True)
    for slot in chosen:
        if slot.rows is None:
            continue
        rows = torch.tensor(slot.rows, dtype=torch.long)
        for w in slot.params:
            if w.requires_grad:  # trained whole by another slot (the llm)
                continue
            w.requires_grad_(True)
            mask = torch.zeros(w.shape[0], 1, dtype=w.dtype, device=w.device)
            mask[rows] = 1
            state.hooks.append(w.register_hook(lambda g, m=mask: g * m.to(g.device, g.dtype)))
    return state


def frozen_components(model, names: list[str]) -> list[str]:
    """Components none of whose slots a stage trains: kept in eval mode (no BatchNorm updates, no dropout)."""
    return [c for c in COMPONENTS if getattr(model, c, None) is not None and c not in names
            and not any(n.startswith(c + ".") for n in names)]


def depends_on_regions(names: list[str]) -> bool:
    """Whether training these slots involves the region encoder's path (``pvit ablate`` reruns such stages)."""
    return any(n in REGION_SLOTS or n.split(".")[0] in REGION_SLOTS for n in names)


def state_names(model, chosen: list[Slot]) -> list[str]:
    """State-dict prefixes (``component.``) and exact names (embeddings, declared groups) the chosen slots
    cover: what an export of the stage holds."""
    names: list[str] = []
    by_id = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), n)
    for slot in chosen:
        if slot.whole:
            if getattr(model, slot.component, None) is not None:
                names.append(slot.component + ".")
        else:
            names += [by_id[id(p)] for p in slot.params if id(p) in by_id]
    return names
