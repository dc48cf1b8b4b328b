"""The plan of a recipe: parameters per component and trainable parameters per stage, from the model's slots."""

from __future__ import annotations

from dataclasses import dataclass, field

from pvit.slots import COMPONENTS, count, select


@dataclass
class Plan:
    components: list[dict] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    total: int = 0

    def as_dict(self) -> dict:
        return {"components": self.components, "stages": self.stages, "total_parameters": self.total}


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def plan_model(model, cfg) -> Plan:
    """Parameters per component and trainable parameters per stage (as the stage will count them)."""
    plan = Plan()
    for slot in COMPONENTS:
        mod = getattr(model, slot, None)
        if mod is None:
            continue
        comp = cfg.model[slot] if slot in cfg.model and slot != "bbox_embed" else None
        plan.components.append({"slot": slot, "name": comp.name if comp is not None else "linear",
                                "parameters": _count(mod)})
    plan.total = _count(model)
    for i, st in enumerate(cfg.stages):
        per = count(select(model, list(st.trainable), where=f"stages[{i}]"))
        plan.stages.append({"name": st.name, "trainable": per, "trainable_total": sum(per.values()),
                            "data": st.data.name, "lr": st.optim.lr, "objective": st.objective})
    return plan


def make_plan(cfg) -> Plan:
    """Plan a recipe without reading any weights: components are built on the meta device."""
    from pvit.compose import build_model
    from pvit.runtime import planning

    with planning():
        model = build_model(cfg)
    return plan_model(model, cfg)
