"""Shared parts of the built-in evaluators: record checks, grouped accuracy and the protocol block."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

from pvit.errors import DataError

#: How regions are written in the prompts of every built-in evaluator's data (the region encoder then
#: renders each mention with its own ``region_text``).
COORDINATE_FORMAT = "pvit: <Region><Lx1><Ly1><Lx2><Ly2></Region>, min(999, round(v * 1000)) of the original image size"
REQUIRED_FIELDS = ("id", "prediction", "answer")


def check_records(records, evaluator: str, required: Iterable[str] = REQUIRED_FIELDS) -> list[dict]:
    """The records as a list, after checking each is a dict with ``required`` fields.

    Raises DataError naming the evaluator, the record (index and id) and the missing field.
    """
    out = list(records)
    for i, rec in enumerate(out):
        if not isinstance(rec, dict):
            raise DataError(f"evaluator {evaluator!r}: record {i} is a {type(rec).__name__}, expected a dict")
        missing = [f for f in required if f not in rec]
        if missing:
            raise DataError(
                f"evaluator {evaluator!r}: record {i} (id {rec.get('id', '?')!r}) lacks {', '.join(missing)}; "
                f"records need {', '.join(required)} and may carry prompt and meta"
            )
    return out


def grouped_accuracy(flags: list[bool], groups: list[str], prefix: str = "accuracy") -> dict[str, float]:
    """``{prefix: overall, prefix/<group>: per group, count/<group>: n}`` from parallel lists.

    An empty list gives ``{prefix: 0.0}`` plus ``count: 0``.
    """
    metrics: dict[str, float] = {prefix: (sum(flags) / len(flags)) if flags else 0.0}
    by: dict[str, list[bool]] = defaultdict(list)
    for flag, group in zip(flags, groups):
        by[group].append(flag)
    for group in sorted(by):
        metrics[f"{prefix}/{group}"] = sum(by[group]) / len(by[group])
        metrics.setdefault(f"count/{group}", float(len(by[group])))
    return metrics


def plain(value):
    """Recipe containers (OmegaConf DictConfig/ListConfig included) -> plain dicts and lists, recursively."""
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        return [plain(v) for v in value]
    return value


class BaseEvaluator:
    """Holds ``name``, ``data`` and ``max_new_tokens`` and builds the ``protocol`` of a result."""

    matcher: str = "exact"

    def __init__(self, name: str, data: dict, max_new_tokens: int) -> None:
        if int(max_new_tokens) < 1:
            raise DataError(f"evaluator {name!r}: max_new_tokens must be >= 1, got {max_new_tokens!r}")
        self.name = name
        self.data = {"name": data["name"], "options": plain(data.get("options") or {})}
        self.max_new_tokens = int(max_new_tokens)

    def protocol(self, **extra) -> dict:
        """``template`` is None here: the core fills in the conversation template it used."""
        return {
            "template": None,
            "coordinate_format": COORDINATE_FORMAT,
            "matcher": self.matcher,
            "evaluator": self.name,
            "data": self.data,
            "max_new_tokens": self.max_new_tokens,
            **extra,
        }

    def _scored(self, records: list[dict], judge: Callable[[dict], dict]) -> list[dict]:
        """Copies of ``records`` with the fields ``judge(record)`` returns added (e.g. ``correct``)."""
        return [{**rec, **judge(rec)} for rec in records]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, data={self.data!r}, max_new_tokens={self.max_new_tokens})"
