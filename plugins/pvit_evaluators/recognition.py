"""region-recognition evaluator: category accuracy with an exact matcher and a COCO synonym matcher."""

from __future__ import annotations

from pvit.errors import ComponentOptionError
from pvit_evaluators.base import BaseEvaluator, check_records, grouped_accuracy
from pvit_evaluators.normalize import exact_match
from pvit_evaluators.synonyms import synonym_match


def category_of(record: dict) -> str:
    """The reference category: ``meta["category"]`` when present, else the ``answer``."""
    meta = record.get("meta") or {}
    return str(meta.get("category") or record["answer"])


class RegionRecognitionEvaluator(BaseEvaluator):
    """Scores "what is in <region>?" generations against the region's category.

    Matchers: ``exact`` (normalised prediction equals the category) and ``synonym`` (a synonym or plural of
    the category, or a sentence naming that category and no other; see
    [pvit_evaluators.synonyms.synonym_match][]). Metrics: ``accuracy/exact``, ``accuracy/synonym``, and the
    same per category (``accuracy/exact/<category>``, ``accuracy/synonym/<category>``, ``count/<category>``);
    ``accuracy`` repeats the primary matcher's figure.
    """

    matcher = "exact-normalised and synonym (COCO synonyms + plurals, maximal phrase, one category named)"

    def __init__(self, name: str, data: dict, max_new_tokens: int, primary: str = "synonym") -> None:
        super().__init__(name, data, max_new_tokens)
        if primary not in ("exact", "synonym"):
            raise ComponentOptionError(f"evaluator {name!r}: primary={primary!r}; choose 'exact' or 'synonym'")
        self.primary = primary

    def score(self, records: list[dict]) -> dict:
        """``records`` (``id``, ``prediction``, ``answer`` or ``meta.category``) -> metrics, records, protocol."""
        records = check_records(records, self.name)

        def judge(r):
            cat = category_of(r)
            return {"category": cat, "correct_exact": exact_match(r["prediction"], cat),
                    "correct_synonym": synonym_match(r["prediction"], cat)}

        scored = self._scored(records, judge)
        for r in scored:
            r["correct"] = r[f"correct_{self.primary}"]
        cats = [r["category"] for r in scored]
        metrics = {}
        for m in ("exact", "synonym"):
            metrics.update(grouped_accuracy([r[f"correct_{m}"] for r in scored], cats, prefix=f"accuracy/{m}"))
        metrics["accuracy"] = metrics[f"accuracy/{self.primary}"]
        metrics["count"] = float(len(scored))
        return {"metrics": metrics, "records": scored, "protocol": self.protocol(primary_matcher=self.primary)}
