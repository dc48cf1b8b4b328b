"""Request planning: a context serialised with ``<Region>[x1, y1, x2, y2]</Region>`` boxes, prompt and seed files,
and the deterministic list of requests a seed gives."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from pvit.errors import DataError

from pvit_generate.sources import Context

#: Which regions a task is about (the context still lists every box, so answers can only cite real ones).
REPLY_FORMAT = ('Reply with JSON only: {"conversations": [{"question": "...", "answer": "..."}, ...]}. '
                "Write every box exactly as given, <Region>[x1, y1, x2, y2]</Region>.")


def region_text(box) -> str:
    """A box in the prompt format: ``<Region>[0.064, 0.345, 0.202, 0.599]</Region>`` (3 decimals)."""
    return "<Region>[" + ", ".join(f"{v:.3f}" for v in box) + "]</Region>"


def serialise(ctx: Context, task: str) -> str:
    """The user message for ``ctx``: captions, boxes grouped by category, region details and relations."""
    lines = [f"Task: {task}"]
    if ctx.captions:
        lines.append("Captions:")
        lines += [f"- {c}" for c in ctx.captions]
    groups: dict[str, list[str]] = {}
    for r in ctx.regions:
        if r.phrase is None:
            groups.setdefault(r.label, []).append(region_text(r.box))
    if groups:
        lines.append("Objects by category:")
        lines += [f"- {label}: {', '.join(boxes)}" for label, boxes in groups.items()]
    lines.append("Regions:")
    for r in ctx.regions:
        extra = [f"attributes: {', '.join(r.attributes)}"] if r.attributes else []
        if r.text:
            extra.append(f"text: {r.text}")
        if r.phrase:
            extra.append(f"description: {r.phrase}")
        lines.append(f"- {region_text(r.box)} {r.label}" + (f"; {'; '.join(extra)}" if extra else ""))
    if ctx.relations:
        lines.append("Relations:")
        lines += [f"- {region_text(ctx.regions[a].box)} {p} {region_text(ctx.regions[b].box)}"
                  for a, p, b in ctx.relations]
    return "\n".join(lines)


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Prompts:
    """The prompt files of a recipe: a system prompt per task and few-shot seeds; hashed for the manifest."""

    def __init__(self, spec: dict, root: Path, tasks: list[str]):
        self.system: dict[str, str] = {}
        self.hashes: dict[str, str] = {}
        for key, rel in (spec.get("system") or {}).items():
            self.system[key] = self._read(root / rel, f"generate.prompts.system.{key}")
            self.hashes[f"system.{key}"] = sha(self.system[key])
        missing = [t for t in tasks if t not in self.system and "default" not in self.system]
        if missing:
            raise DataError(f"generate.prompts.system: no prompt for tasks {missing} and no 'default' prompt")
        self.seeds: dict[str, list[dict]] = {}
        if spec.get("seeds"):
            text = self._read(root / spec["seeds"], "generate.prompts.seeds")
            try:
                self.seeds = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"generate.prompts.seeds {spec['seeds']!r} is not JSON: {e}") from None
            self.hashes["seeds"] = sha(text)
        self.shots = int(spec.get("shots", 1))

    @staticmethod
    def _read(path: Path, where: str) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except OSError as e:
            raise DataError(f"{where}: cannot read prompt file {str(path)!r}: {e.strerror}") from None

    def messages(self, ctx: Context, task: str, rng: random.Random) -> list[dict]:
        system = self.system.get(task, self.system.get("default", "")).strip() + "\n\n" + REPLY_FORMAT
        msgs = [{"role": "system", "content": system}]
        pool = self.seeds.get(task, [])
        for shot in rng.sample(pool, min(self.shots, len(pool))):
            msgs.append({"role": "user", "content": shot["context"]})
            msgs.append({"role": "assistant", "content": json.dumps(shot["reply"])})
        msgs.append({"role": "user", "content": serialise(ctx, task)})
        return msgs


@dataclass
class Request:
    """One planned request: a stable id, its task, the context it came from and the chat messages."""

    id: str
    task: str
    context: Context
    messages: list[dict]
    seed: int


def plan_requests(contexts, tasks: list[str], prompts: Prompts, seed: int, per_context: int = 1,
                  strategy: str = "task-specific") -> list[Request]:
    """The requests of a job, identical for the same inputs and seed.

    ``task-specific`` sends each context once per listed task (``per_context`` times); ``multi-turn`` draws
    one task per context from ``tasks`` with the seed.
    """
    out = []
    for ctx in contexts:
        if strategy == "multi-turn":
            chosen = [random.Random(f"{seed}/{ctx.id}").choice(tasks)]
        else:
            chosen = tasks
        for task in chosen:
            for k in range(per_context):
                rid = f"{ctx.id}/{task}/{k}"
                rng = random.Random(f"{seed}/{rid}")
                msgs = prompts.messages(ctx, task, rng)
                out.append(Request(rid, task, ctx, msgs, rng.randrange(2**31)))
    return out


def estimate_tokens(messages: list[dict]) -> int:
    """A rough prompt-token estimate (4 characters per token), used by ``--dry-run`` and before sending."""
    return sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)
