"""synth-regions evaluator: exact-match accuracy per region task on the procedural benchmark."""

from __future__ import annotations

from collections import defaultdict

from pvit_evaluators.base import BaseEvaluator, check_records, grouped_accuracy
from pvit_evaluators.normalize import exact_match


class SynthRegionsEvaluator(BaseEvaluator):
    """Scores generations on ``synth-regions``: a record is correct when its normalised prediction equals the
    normalised reference. Metrics: ``accuracy`` (all records), ``accuracy_macro`` (mean over tasks),
    ``accuracy/<task>``, ``count/<task>`` and ``chance/<task>`` (mean 1/answer-space size, where known)."""

    matcher = "exact-normalised (lower case, no punctuation, no articles, number words as digits)"

    def score(self, records: list[dict]) -> dict:
        """``records`` (``id``, ``prediction``, ``answer``, ``meta.task``) -> metrics, scored records, protocol."""
        records = check_records(records, self.name)
        scored = self._scored(records, lambda r: {
            "task": (r.get("meta") or {}).get("task", "unknown"),
            "correct": exact_match(r["prediction"], r["answer"]),
        })
        metrics = grouped_accuracy([r["correct"] for r in scored], [r["task"] for r in scored])
        tasks = sorted({r["task"] for r in scored})
        if tasks:
            metrics["accuracy_macro"] = sum(metrics[f"accuracy/{t}"] for t in tasks) / len(tasks)
        chance: dict[str, list[float]] = defaultdict(list)
        for r in scored:
            k = (r.get("meta") or {}).get("num_choices") or 0
            if k > 0:
                chance[r["task"]].append(1.0 / k)
        for t, values in sorted(chance.items()):
            metrics[f"chance/{t}"] = sum(values) / len(values)
        metrics["count"] = float(len(scored))
        return {"metrics": metrics, "records": scored, "protocol": self.protocol()}
