"""fine-eval evaluator: no accuracy; turns generations into PVIT's released output format for human/GPT review."""

from __future__ import annotations

import json
from pathlib import Path

from pvit.interfaces import IMAGE_TOKEN
from pvit_evaluators.base import BaseEvaluator, check_records

OUTPUT_FIELDS = ("image", "instruction", "output")


def instruction_of(record: dict) -> str:
    """``meta["instruction"]`` when present, else the prompt without its leading ``<image>`` line."""
    meta = record.get("meta") or {}
    if meta.get("instruction") is not None:
        return str(meta["instruction"])
    prompt = str(record.get("prompt") or "")
    if prompt.startswith(IMAGE_TOKEN):
        prompt = prompt[len(IMAGE_TOKEN):].lstrip("\n")
    return prompt.replace(IMAGE_TOKEN, "").strip()


def write_jsonl(records: list[dict], path) -> Path:
    """Write ``records`` (``image``, ``instruction``, ``output``) as JSON Lines to ``path``, atomically.

    One object per line, keys in that order, non-ASCII kept as is: the format of PVIT's
    ``fine_eval/{pvit,llava,shikra,gpt4roi}.jsonl``.
    """
    from pvit.atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, "".join(json.dumps({k: rec[k] for k in OUTPUT_FIELDS}, ensure_ascii=False) + "\n"
                                    for rec in records))
    return path


class FineEvalEvaluator(BaseEvaluator):
    """Collects free-form answers to PVIT's fine-grained instructions; nothing is scored automatically.

    ``score`` returns ``records`` already in the output format (``{"image", "instruction", "output"}`` per
    sample, in input order) and ``metrics`` with counts only (``count``, ``empty``, ``mean_output_words``).
    The core writes the records with [write_jsonl][pvit_evaluators.fine_eval.write_jsonl] (also available as
    the evaluator's ``write`` method) to the file named by ``protocol["output_file"]`` in its eval folder.
    The image name comes from ``meta["image"]`` (else the record's ``image``, else its ``id``).
    """

    matcher = "none (outputs are collected for human or GPT-4 review)"

    def __init__(self, name: str, data: dict, max_new_tokens: int, output_name: str = "pvit") -> None:
        super().__init__(name, data, max_new_tokens)
        self.output_name = output_name

    def score(self, records: list[dict]) -> dict:
        """``records`` (``id``, ``prediction``, ``meta.image``, ``meta.instruction`` or ``prompt``) -> counts and
        output records."""
        records = check_records(records, self.name, required=("id", "prediction"))
        out = []
        for r in records:
            meta = r.get("meta") or {}
            image = meta.get("image") or r.get("image") or r["id"]
            out.append({"image": str(image), "instruction": instruction_of(r),
                        "output": "" if r["prediction"] is None else str(r["prediction"]).strip()})
        words = [len(o["output"].split()) for o in out]
        metrics = {
            "count": float(len(out)),
            "empty": float(sum(1 for w in words if w == 0)),
            "mean_output_words": (sum(words) / len(words)) if words else 0.0,
        }
        return {"metrics": metrics, "records": out, "protocol": self.protocol(
            output_file=f"{self.output_name}.jsonl", output_format="jsonl: {image, instruction, output} per line"
        )}

    @staticmethod
    def write(records: list[dict], path) -> Path:
        """Write the ``records`` of a ``score`` result as PVIT fine-eval JSONL; see [write_jsonl][]."""
        return write_jsonl(records, path)
