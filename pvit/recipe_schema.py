"""The recipe schema: the OmegaConf dataclasses a recipe follows, and the check of plain YAML data against them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union, get_args, get_origin, get_type_hints

from omegaconf import MISSING

from pvit.errors import did_you_mean


@dataclass
class Component:
    """A component by registered name, with its factory's keyword arguments."""

    name: str = MISSING
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Optim:
    """Optimiser and schedule of one stage (AdamW, warmup then cosine or constant)."""

    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    epochs: Optional[float] = 1.0
    max_steps: Optional[int] = None
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    clip_grad: Optional[float] = 1.0
    precision: str = "fp32"


@dataclass
class Stage:
    """One training stage: data, which model slots train, where its weights start, and its optimiser."""

    name: str = MISSING
    data: Component = MISSING
    trainable: List[str] = field(default_factory=list)
    init_from: Optional[str] = None
    optim: Optim = field(default_factory=Optim)
    objective: str = "lm"


@dataclass
class Model:
    """The components of a PVIT model. ``in_dim``/``out_dim`` of projectors are wired, never written here."""

    llm: Component = MISSING
    image_encoder: Optional[Component] = None
    region_encoder: Optional[Component] = None
    projector: Component = field(default_factory=lambda: Component(name="mlp2x-gelu"))
    region_projector: Component = field(default_factory=lambda: Component(name="linear"))
    bbox_embed: bool = False
    template: str = "auto"
    max_length: int = 2048
    region_policy: str = "error"


@dataclass
class FeatureCacheOptions:
    """Frozen-feature cache (``pvit.feature_cache``): frozen encoders' outputs per image, computed once."""

    enabled: bool = True
    max_memory_mb: float = 1024.0
    dir: Optional[str] = None


@dataclass
class Engine:
    """How stages run: strategy, devices, logging, checkpoints."""

    strategy: str = "auto"
    device: str = "auto"
    num_workers: int = 2
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    tensorboard: bool = True
    progress: bool = True
    deterministic: bool = False
    measure_flops: bool = True
    feature_cache: FeatureCacheOptions = field(default_factory=FeatureCacheOptions)


@dataclass
class Recipe:
    """A whole recipe: model, stages, evaluations, engine settings."""

    name: str = "pvit"
    description: str = ""
    seed: int = 0
    run_dir: str = "runs/${name}"
    paths: Dict[str, Any] = field(default_factory=dict)
    model: Model = MISSING
    stages: List[Stage] = field(default_factory=list)
    eval: List[Component] = field(default_factory=list)
    engine: Engine = field(default_factory=Engine)


# ----------------------------------------------------------------------------------------- validation


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def schema_errors(tp: Any, value: Any, path: str, errors: list[str]) -> None:
    """Append to ``errors`` every schema problem of plain ``value`` against type ``tp`` (a schema dataclass,
    a typing generic or a scalar type), each message starting with its key path (``path`` is that of ``value``).

    Unknown keys come with a "did you mean" and the valid keys; interpolations (``${...}``) are not checked
    here, since they are resolved after the schema merge.
    """
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if not optional and tp is not Any:
            errors.append(f"{path}: may not be null")
        return
    if isinstance(value, str) and value == "???":
        errors.append(f"{path}: missing mandatory value")
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping ({tp.__name__}), got {value!r}")
            return
        hints = get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        for k, v in value.items():
            key = f"{path}.{k}" if path else str(k)
            if k not in hints:
                errors.append(f"{key}: unknown key{did_you_mean(k, names)} (valid keys: {', '.join(names)})")
                continue
            schema_errors(hints[k], v, key, errors)
        for f in dataclasses.fields(tp):
            if f.default is MISSING and f.default_factory is dataclasses.MISSING and f.name not in value:
                errors.append(f"{path + '.' if path else ''}{f.name}: missing mandatory value")
        return
    origin = get_origin(tp)
    if origin in (list, List):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {value!r}")
            return
        (item_tp,) = get_args(tp) or (Any,)
        for i, v in enumerate(value):
            schema_errors(item_tp, v, f"{path}[{i}]", errors)
        return
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {value!r}")
        return
    if tp is Any:
        return
    if isinstance(value, str) and "${" in value:
        return  # interpolations are checked after resolution
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, (str, int, float)) and not isinstance(value, bool),
    }.get(tp, True)
    if not ok:
        errors.append(f"{path}: expected {tp.__name__}, got {value!r}")
