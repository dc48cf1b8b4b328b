"""Benchmark of `pvit generate`: requests/s with 16 vs 1 in flight against a 50 ms loopback server, and the
per-sample overhead of parse + validate + journal write. Prints the figures and the targets (>= 8x, < 5 ms)."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pvit_generate.generators import make_openai_compatible
from pvit_generate.output import Journal
from pvit_generate.prompting import Prompts, plan_requests
from pvit_generate.runner import Budget, Sender, process_reply
from pvit_generate.synth_inputs import SynthScenes
from pvit_generate.testserver import ScriptedServer
from pvit_generate.validate import Deduper

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "recipes" / "generate" / "prompts"
CFG = {"max_retries": 0, "max_output_tokens": 256, "temperature": 0.0, "timeout_s": 10.0, "backoff_s": 0.1,
       "max_backoff_s": 1.0}
RULES = {"box_tolerance": 0.005, "max_turns": 8, "min_turns": 1, "max_chars": 1500, "require_region": True,
         "no_boxes_in_answers": ["ocr", "attributes", "same-category"], "near_duplicate": 0.85}


def requests(tmp: Path, n_images: int):
    prompts = Prompts({"system": {"default": "task_specific.txt"}, "seeds": "seeds.json"}, PROMPTS,
                      ["relationships", "attributes"])
    return plan_requests(SynthScenes(tmp, size=n_images, image_size=32).contexts(), ["relationships", "attributes"],
                         prompts, seed=0)


def rate(base_url: str, reqs, in_flight: int) -> float:
    gen = make_openai_compatible("m", base_url=base_url)
    sender = Sender(gen, CFG, Budget(None, None), threading.Event())
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        replies = list(pool.map(lambda r: sender.send(r)[0], reqs))
    assert all(r is not None for r in replies)
    return len(reqs) / (time.perf_counter() - t0)


def overhead(tmp: Path, reqs, replies) -> float:
    journal, dedup = Journal(tmp / "bench-journal", resume=False), Deduper(0.85)
    t0 = time.perf_counter()
    for req, reply in zip(reqs, replies):
        journal.append(process_reply(reply, req, "synth", req.context.image, RULES, dedup))
    ms = (time.perf_counter() - t0) / len(reqs) * 1000
    journal.close()
    return ms


def main() -> None:
    with tempfile.TemporaryDirectory() as d, ScriptedServer(latency=0.05) as server:
        tmp = Path(d)
        reqs = requests(tmp, 48)  # 96 requests
        warm = rate(server.base_url, reqs[:8], 8)
        one = rate(server.base_url, reqs[:24], 1)
        sixteen = rate(server.base_url, reqs, 16)
        gen = make_openai_compatible("m", base_url=server.base_url)
        replies = [gen.complete(r.messages, max_tokens=256, temperature=0, seed=r.seed, timeout=10) for r in reqs[:32]]
        ms = overhead(tmp, reqs[:32] * 8, replies * 8)  # repeats are rejected as duplicates: also timed
    print(f"machine: {os.cpu_count()} CPUs (shared machines give indicative figures); warm-up {warm:.1f} req/s")
    print(f"requests/s, 1 in flight:  {one:.1f}")
    print(f"requests/s, 16 in flight: {sixteen:.1f}")
    print(f"speed-up 16 vs 1: {sixteen / one:.1f}x (target >= 8x)")
    print(f"overhead per sample (parse + validate + journal write): {ms:.3f} ms (target < 5 ms)")
    sys.exit(0 if sixteen / one >= 8 and ms < 5 else 1)


if __name__ == "__main__":
    main()
