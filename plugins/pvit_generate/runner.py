"""Running a generation job: plan, send with bounded concurrency, retries and a hard budget, validate, journal
each finished sample, and write PVIT's folder format with rejected.jsonl and manifest.json."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from pvit_generate.config import load_generate_recipe
from pvit_generate.generators import GenerationError, RetryableError
from pvit_generate.output import Journal, finalise
from pvit_generate.prompting import Prompts, estimate_tokens, plan_requests
from pvit_generate.sources import build_source
from pvit_generate.validate import Deduper, Rejected, build_conversation, parse_reply


class Budget:
    """The hard limits: requests sent (every attempt counts) and tokens used; ``take()`` is False once spent."""

    def __init__(self, max_requests: int | None, max_tokens: int | None, used_requests: int = 0, used_tokens: int = 0):
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.requests, self.tokens, self.exhausted = used_requests, used_tokens, False
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if (self.max_requests is not None and self.requests >= self.max_requests) or (
                    self.max_tokens is not None and self.tokens >= self.max_tokens):
                self.exhausted = True
                return False
            self.requests += 1
            return True

    def spend(self, tokens: int) -> None:
        with self.lock:
            self.tokens += tokens


def process_reply(reply, req, source: str, image: str, rules: dict, dedup: Deduper) -> dict:
    """A reply -> a journal entry (accepted with its record, or rejected with a reason)."""
    base = {"id": req.id, "task": req.task, "source": source}
    try:
        turns = parse_reply(reply.text, reply.finish_reason)
        conv = build_conversation(turns, [r.box for r in req.context.regions], req.task, rules)
        dedup.check_and_add(image, conv)
    except Rejected as r:
        return {**base, "kind": "rejected", "reason": r.reason, "detail": r.detail, "reply": (reply.text or "")[:400]}
    record = {"id": f"gen-{req.id.replace('/', '-')}", "image": image, "conversations": conv,
              "meta": {"source": source, "task": req.task, "context": req.context.id}}
    return {**base, "kind": "accepted", "record": record}


class Sender:
    """Sends one request with retries (exponential backoff with jitter; Retry-After honoured) under the budget."""

    def __init__(self, generator, req_cfg: dict, budget: Budget, stop: threading.Event, sleep=time.sleep):
        self.gen, self.cfg, self.budget, self.stop, self.sleep = generator, req_cfg, budget, stop, sleep

    def send(self, req):
        """(reply or None, usage, error detail or None); reply None with no error means the budget ran out."""
        usage = {"attempts": 0, "prompt_tokens": 0, "completion_tokens": 0}
        rng = random.Random(req.seed)
        error = None
        for attempt in range(self.cfg["max_retries"] + 1):
            if self.stop.is_set() or not self.budget.take():
                return None, usage, error
            usage["attempts"] += 1
            try:
                reply = self.gen.complete(req.messages, max_tokens=self.cfg["max_output_tokens"],
                                          temperature=self.cfg["temperature"], seed=req.seed,
                                          timeout=self.cfg["timeout_s"])
            except RetryableError as e:
                error = str(e)
                delay = min(self.cfg["max_backoff_s"], self.cfg["backoff_s"] * 2 ** attempt) * (0.5 + rng.random())
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, self.cfg["max_backoff_s"]))
                if attempt < self.cfg["max_retries"]:
                    self.stop.wait(delay) if self.sleep is time.sleep else self.sleep(delay)
                continue
            except GenerationError as e:
                return None, usage, str(e)
            usage["prompt_tokens"] += reply.prompt_tokens
            usage["completion_tokens"] += reply.completion_tokens
            self.budget.spend(reply.prompt_tokens + reply.completion_tokens)
            return reply, usage, None
        return None, usage, f"gave up after {usage['attempts']} attempts: {error}"


def run_job(recipe, overrides=(), *, dry_run: bool = False, limit: int | None = None, resume: bool = False,
            log: Callable[[str], None] = print, progress: bool = False, generator=None) -> dict:
    """Run (or, with ``dry_run``, only plan) the job of a generation recipe; returns the manifest (or the plan)."""
    from pvit.registry import build

    g, _ = load_generate_recipe(recipe, overrides)
    root = Path.cwd()
    out = (root / g["output"]).resolve()
    sources = [build_source(s, f"generate.sources[{i}]", out, root) for i, s in enumerate(g["sources"])]
    folders = {s.name: str(s.image_folder.resolve()) for s in sources}
    manifest = {"name": g["name"], "strategy": g["strategy"], "seed": g["seed"],
                "source_versions": {s.name: s.version for s in sources},
                "prices": {"input": g["requests"]["price_per_1k_input"], "output": g["requests"]["price_per_1k_output"]}}
    if g["strategy"] == "convert":
        return _convert(sources, out, manifest, folders, limit, resume, dry_run, log)
    prompts = Prompts(g["prompts"], Path(recipe).resolve().parent, g["tasks"])
    manifest["prompt_hashes"] = prompts.hashes
    plan = []
    for s in sources:
        for req in plan_requests(s.contexts(), g["tasks"], prompts, g["seed"], g["per_context"], g["strategy"]):
            plan.append((s, req))
    plan = plan[:limit] if limit is not None else plan
    journal = Journal(out, resume) if not dry_run else None
    finished = journal.finished() if journal else Journal.peek(out)
    pending = [(s, r) for s, r in plan if r.id not in finished]
    est = sum(estimate_tokens(r.messages) for _, r in pending)
    log(f"plan: {len(plan)} requests, {len(plan) - len(pending)} already finished, {len(pending)} to send; "
        f"~{est} prompt tokens + up to {len(pending) * g['requests']['max_output_tokens']} output tokens")
    if dry_run:
        return {"requests": len(plan), "pending": len(pending), "prompt_tokens_estimate": est}
    gen = generator if generator is not None else build("generator", g["generator"]["name"], where="generate.generator",
                                                        **(g["generator"].get("options") or {}))
    manifest["generator"] = gen.describe() if hasattr(gen, "describe") else {"name": g["generator"]["name"]}
    used = sum((e.get("usage") or {}).get("attempts", 0) for e in journal.entries)
    tokens = sum((e.get("usage") or {}).get(k, 0) for e in journal.entries for k in ("prompt_tokens", "completion_tokens"))
    budget = Budget(g["requests"]["max_requests"], g["requests"]["max_tokens"], used, tokens)
    dedup = Deduper(g["validation"]["near_duplicate"])
    for e in journal.entries:
        if e["kind"] == "accepted":
            try:
                dedup.check_and_add(e["record"]["image"], e["record"]["conversations"])
            except Rejected:
                pass
    stop = threading.Event()
    sender = Sender(gen, g["requests"], budget, stop)
    bar = _Progress(len(pending), progress)

    def work(item):
        s, req = item
        reply, usage, error = sender.send(req)
        if reply is None:
            if error is not None:
                journal.append({"id": req.id, "task": req.task, "source": s.name, "kind": "failed",
                                "reason": "request-failed", "detail": error, "usage": usage})
                bar.step(False)
            elif usage["attempts"]:
                journal.append({"id": req.id, "task": req.task, "source": s.name, "kind": "failed",
                                "reason": "request-failed", "detail": "budget spent while retrying", "usage": usage})
            return
        entry = process_reply(reply, req, s.name, req.context.image, g["validation"], dedup)
        entry["usage"], entry["seed"] = usage, req.seed
        journal.append(entry)
        bar.step(entry["kind"] == "accepted")

    try:
        with ThreadPoolExecutor(max_workers=g["requests"]["concurrency"]) as pool:
            for _ in pool.map(work, pending):
                pass
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        bar.close()
        journal.close()
    left = len([1 for s, r in plan if r.id not in journal.finished()])
    manifest["status"] = "complete" if left == 0 else ("budget-exhausted" if budget.exhausted else "incomplete")
    manifest["unfinished_requests"] = left
    result = finalise(out, journal.entries, folders, manifest)
    log(f"{result['counts']['accepted']} accepted, {result['counts']['rejected']} rejected "
        f"({result['requests']} requests, status {result['status']}) -> {out}")
    return result


def _convert(sources, out: Path, manifest: dict, folders: dict, limit, resume, dry_run, log) -> dict:
    if dry_run:
        n = sum(1 for s in sources for _ in s.records())
        log(f"plan: convert {n} records (no requests are sent)")
        return {"requests": 0, "records": n}
    journal = Journal(out, resume)
    finished = journal.finished()
    for s in sources:
        for k, (status, item) in enumerate(s.records()):
            if limit is not None and k >= limit:
                break
            if item["id"] in finished:
                continue
            if status == "ok":
                journal.append({"id": item["id"], "task": s.name, "source": s.name, "kind": "accepted", "record": item})
            else:
                journal.append({"id": item["id"], "task": s.name, "source": s.name, "kind": "rejected",
                                "reason": item["reason"], "detail": item["detail"]})
    journal.close()
    manifest.update(status="complete", unfinished_requests=0, generator=None)
    result = finalise(out, journal.entries, folders, manifest)
    log(f"{result['counts']['accepted']} converted, {result['counts']['rejected']} rejected -> {out}")
    return result


class _Progress:
    """A rich progress bar (rate, accepted/rejected, ETA) on a terminal; silent otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.ok = self.bad = 0
        self.lock = threading.Lock()
        self.p = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.p = Progress(TextColumn("generate"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[rate]}"),
                              TextColumn("{task.fields[ok]} ok, {task.fields[bad]} rejected"), TimeRemainingColumn())
            self.p.start()
            self.task = self.p.add_task("gen", total=total, ok=0, bad=0, rate="")
            self.t0 = time.monotonic()

    def step(self, accepted: bool) -> None:
        with self.lock:
            self.ok += accepted
            self.bad += not accepted
            if self.p is not None:
                rate = (self.ok + self.bad) / max(1e-6, time.monotonic() - self.t0)
                self.p.update(self.task, advance=1, ok=self.ok, bad=self.bad, rate=f"{rate:.1f}/s")

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
