"""region-qa evaluator: exact match after GQA-style normalisation, overall and per question group."""

from __future__ import annotations

from pvit_evaluators.base import BaseEvaluator, check_records, grouped_accuracy
from pvit_evaluators.normalize import exact_match


class RegionQAEvaluator(BaseEvaluator):
    """Scores free-form region questions (GQA with regions): correct when the normalised prediction equals
    the normalised answer (lower case, punctuation and articles removed, number words as digits).

    Metrics: ``accuracy``, ``count``, and ``accuracy/<group>``/``count/<group>`` for records whose
    ``meta[group_by]`` is set (GQA's question types, or a dataset's ``task``).
    """

    matcher = "exact-normalised GQA-style (lower case, no punctuation, no articles a/an/the, number words as digits)"

    def __init__(self, name: str, data: dict, max_new_tokens: int, group_by: str = "task") -> None:
        super().__init__(name, data, max_new_tokens)
        self.group_by = group_by

    def score(self, records: list[dict]) -> dict:
        """``records`` (``id``, ``prediction``, ``answer``, optional ``meta[group_by]``) -> metrics, records,
        protocol."""
        records = check_records(records, self.name)
        scored = self._scored(records, lambda r: {"correct": exact_match(r["prediction"], r["answer"])})
        groups = [str((r.get("meta") or {}).get(self.group_by, "")) for r in scored]
        flags = [r["correct"] for r in scored]
        grouped = [(f, g) for f, g in zip(flags, groups) if g]  # records without a group count only overall
        metrics = grouped_accuracy([f for f, _ in grouped], [g for _, g in grouped]) if grouped else {}
        metrics["accuracy"] = sum(flags) / len(flags) if flags else 0.0
        metrics["count"] = float(len(scored))
        return {"metrics": metrics, "records": scored, "protocol": self.protocol(group_by=self.group_by)}
