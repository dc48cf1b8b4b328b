"""Optional component attributes: what the core reads when a component has them, and what happens when not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _has_counts(v: Any) -> bool:
    return all(hasattr(v, a) for a in ("clipped", "dropped", "examples"))


@dataclass(frozen=True)
class OptionalAttribute:
    """One optional attribute.

    Attributes:
        name: the attribute (a method when ``method``).
        type: its type, as the docs show it.
        default: the value the core uses when it is absent (None: the feature is off).
        absent: what the core does when the component lacks it.
        method: the attribute is a method the core calls.
        check: a predicate its value satisfies when present (methods: callable).
    """

    name: str
    type: str
    default: Any
    absent: str
    method: bool = False
    check: Callable[[Any], bool] = callable


_GROUPS = OptionalAttribute(
    "parameter_groups", "() -> dict[str, list[Parameter]]", None,
    "only the whole component is a trainable slot; when present each group is also offered as slot "
    "`<component>.<group>` (see pvit.slots)", method=True)
_FROZEN = OptionalAttribute(
    "frozen", "bool", False, "treated as not frozen: a stage may list the slot in `trainable`; when True the "
    "engine refuses to train the whole slot", check=_is_bool)

_EXPORT = OptionalAttribute(
    "export_options", "dict", None, "`pvit export` drops the component's file options and rebuilds it from the "
    "remaining ones; when present these options (which must need no file) are added, for components whose shape "
    "comes from a file (see docs/pretrained.md)", check=lambda v: isinstance(v, dict))

#: Optional attributes per component kind, as the core reads them (with ``getattr``/``hasattr``).
OPTIONAL_ATTRIBUTES: dict[str, tuple[OptionalAttribute, ...]] = {
    "image_encoder": (
        _FROZEN,
        OptionalAttribute("num_layers", "int", None, "region encoders that pool its hidden states (vit-roi) "
                          "cannot check layer indices and fall back to fixed default layers", check=_is_int),
        _EXPORT,
        _GROUPS,
    ),
    "region_encoder": (
        _FROZEN,
        OptionalAttribute("carries_box", "bool", True, "assumed True: with K = 0 the contract check "
                          "(pvit.testing) asks different boxes to render different text", check=_is_bool),
        OptionalAttribute("image_features", "(pixels: Tensor) -> Tensor", None, "the frozen-feature cache keeps "
                          "nothing of the encoder; when present it is the box-independent part, per image row, that "
                          "the cache keeps and `forward` reads back from `RegionInputs.features`", method=True),
        _EXPORT,
        _GROUPS,
    ),
    "projector": (
        OptionalAttribute("in_dim", "int", None, "the contract check (pvit.testing) does not compare it with "
                          "the width it was built for", check=_is_int),
        OptionalAttribute("out_dim", "int", None, "as for in_dim", check=_is_int),
        _EXPORT,
        _GROUPS,
    ),
    "llm": (
        _GROUPS,
        OptionalAttribute("merge_adapters", "() -> int", None, "`pvit export` writes the LLM as it is; when "
                          "present it is called first, to fold adapters (LoRA) into the weights", method=True),
    ),
    "dataset": (
        OptionalAttribute("set_epoch", "(epoch: int) -> None", None, "samples do not depend on the epoch; when "
                          "present it is called at the start of every training epoch (box jitter)", method=True),
        OptionalAttribute("metainfo", "dict", {}, "the engine's dataset wrapper reports `{}`",
                          check=lambda v: isinstance(v, dict)),
        OptionalAttribute("region_stats", "RegionStats", None, "`pvit data check` counts only the collator's "
                          "clipped and dropped boxes", check=_has_counts),
        OptionalAttribute("report", "() -> dict", None, "`pvit data check` counts no images skipped by the "
                          "dataset's own `image_policy: skip` (read from `report()['images']['skipped']`)",
                          method=True),
    ),
    "generator": (
        OptionalAttribute("describe", "() -> dict", None, "the manifest records the generator's registered name only",
                          method=True),
    ),
    "evaluator": (
        OptionalAttribute("generation", "dict", {}, "decoding options come from attributes of the same name, "
                          "else the defaults (pvit.evaluate.GENERATION_DEFAULTS)",
                          check=lambda v: isinstance(v, dict)),
        OptionalAttribute("do_sample", "bool", False, "greedy decoding", check=_is_bool),
        OptionalAttribute("temperature", "float", 1.0, "1.0", check=_is_number),
        OptionalAttribute("top_p", "float", 1.0, "1.0", check=_is_number),
        OptionalAttribute("seed", "int | None", None, "no generation seed",
                          check=lambda v: v is None or _is_int(v)),
        OptionalAttribute("batch_size", "int", 16, "16 samples per generation batch", check=_is_int),
        OptionalAttribute("write", "(records: list[dict], path: Path) -> None", None, "per-sample records are "
                          "written as `<key>.jsonl` only; when present and `score` returns "
                          "`protocol['output_file']`, the evaluator writes that file in its own format", method=True),
    ),
}


def optional_attributes(kind: str) -> dict[str, OptionalAttribute]:
    """``{name: OptionalAttribute}`` of the optional attributes the core reads on components of ``kind``."""
    return {a.name: a for a in OPTIONAL_ATTRIBUTES.get(kind, ())}
