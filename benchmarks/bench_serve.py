"""Inference speed: predict_batch vs predict, the server with 16 concurrent clients vs 16 sequential requests,
time to first streamed token vs the full answer, server overhead at one client, p50/p99 latency under load, and
the server process's memory over 2000 requests (RSS at request 200 and at 2000: flat means no per-request leak).

Uses the tiny recipe's model (random weights, so answers run to the full token budget and every request does
the same work), or a trained run / export with ``--path``. Targets: batch >= 4x, server concurrency >= 4x,
server overhead <= 1.2x.

    python benchmarks/bench_serve.py
    python benchmarks/bench_serve.py --path runs/pvit-tiny --max-tokens 16
    python benchmarks/bench_serve.py --memory-only --memory-requests 2000
"""

from __future__ import annotations

import argparse
import base64
import io
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def predictor(path: str | None):
    from pvit.predict import Predictor

    if path:
        return Predictor.load(path, device="cpu")
    from pvit.compose import build_model
    from pvit.recipe import load_recipe
    from pvit.templates import get_template

    cfg = load_recipe(ROOT / "recipes" / "pvit_tiny.yaml").cfg
    model = build_model(cfg)
    return Predictor(model, get_template(cfg.model.template, model.llm.tokenizer), max_length=cfg.model.max_length,
                     region_policy=cfg.model.region_policy, name="pvit-tiny")


def rss_mb() -> float:
    """This process's resident memory now, in MiB: the server's, with the benchmark's small HTTP client (both run in
    it). Measured after a garbage collection and glibc's ``malloc_trim``, so that memory already freed but still
    held by the allocator is not counted."""
    import ctypes
    import gc
    import os

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS as it is
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_over(request, marks: list[int], clients: int) -> list[float]:
    """RSS after each of ``marks`` (request counts) while ``clients`` threads send ``request(i)``."""
    out, done = [], 0
    with ThreadPoolExecutor(clients) as pool:
        for m in marks:
            list(pool.map(request, range(done, m)))
            done = m
            out.append(rss_mb())
    return out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default=None, help="a run or export folder (default: the tiny recipe, random weights)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--memory-requests", type=int, default=2000, help="requests of the memory measurement")
    ap.add_argument("--memory-only", action="store_true", help="only the memory measurement")
    args = ap.parse_args()
    import httpx
    import uvicorn
    from PIL import Image

    from pvit_serve.app import ServeOptions, create_app

    p = predictor(args.path)
    img = Image.new("RGB", (96, 64), "red")
    prompts = [f"What is in <region1>? ({i})" for i in range(32)]
    box = [[8, 8, 60, 50]]
    dec = dict(max_new_tokens=args.max_tokens)
    p.predict(img, prompts[0], boxes=box, **dec)  # warm-up
    if not args.memory_only:
        single = timed(lambda: [p.predict(img, q, boxes=box, **dec) for q in prompts])
        batch = timed(lambda: p.predict_batch([{"image": img, "prompt": q, "boxes": box} for q in prompts], **dec))
        print(f"predict x32: {single:.2f}s  predict_batch(32): {batch:.2f}s  ratio {single / batch:.1f}x "
              "(target >= 4x)")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(p, ServeOptions(max_batch=args.clients, max_wait_ms=10,
                                                                   max_queue=256)),
                                        host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(base + "/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    http = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=64))

    def request(i: int, stream: bool = False, max_tokens: int | None = None, bad: bool = False) -> float:
        body = {"model": p.name, "max_tokens": max_tokens or args.max_tokens, "stream": stream,
                "regions": [{"image": 0, "box": [8, 8, 500, 50] if bad else box[0]}],
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                          {"type": "text", "text": prompts[i % 32]}]}]}
        t = time.perf_counter()
        if not stream:
            r = http.post(base + "/v1/chat/completions", json=body)
            assert r.status_code == (400 if bad else 200), r.text
            return time.perf_counter() - t
        with http.stream("POST", base + "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    return time.perf_counter() - t
        return time.perf_counter() - t

    request(0)
    n = args.clients
    if args.memory_only:
        memory(request, args.memory_requests, n)
        srv.should_exit = True
        return
    seq = timed(lambda: [request(i) for i in range(n)])
    with ThreadPoolExecutor(n) as pool:
        conc = timed(lambda: list(pool.map(request, range(n))))
    print(f"server: {n} sequential {seq:.2f}s  {n} concurrent clients {conc:.2f}s  ratio {seq / conc:.1f}x "
          "(target >= 4x)")
    direct = statistics.median(timed(lambda: p.predict(img, prompts[0], boxes=box, **dec)) for _ in range(5))
    served = statistics.median(request(0) for _ in range(5))
    print(f"one client: direct predict {direct * 1000:.0f}ms  via server {served * 1000:.0f}ms  overhead "
          f"{served / direct:.2f}x (target <= 1.2x)")
    ttft = statistics.median(request(0, stream=True) for _ in range(5))
    print(f"streaming: time to first token {ttft * 1000:.0f}ms vs full answer {served * 1000:.0f}ms "
          f"({ttft / served:.2f} of it)")
    with ThreadPoolExecutor(n) as pool:
        lat = sorted(pool.map(request, range(4 * n)))
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"latency under load ({n} clients, {4 * n} requests): p50 {p50 * 1000:.0f}ms  p99 {p99 * 1000:.0f}ms")
    memory(request, args.memory_requests, n)
    srv.should_exit = True


def memory(request, total: int, clients: int) -> None:
    """Memory over ``total`` requests: short answers, every 10th streamed, every 25th a 400 (box outside)."""
    def one(i: int) -> float:
        return request(i, stream=i % 10 == 5, max_tokens=4, bad=i % 25 == 7)

    t = time.perf_counter()
    marks = sorted({min(200, total), *range(500, total, 500), total})
    rss = memory_over(one, marks, clients)
    growth = rss[-1] - rss[0]
    print(f"memory over {total} requests ({clients} clients, {time.perf_counter() - t:.0f}s): server process RSS "
          f"{rss[0]:.0f} MiB at request {marks[0]}, {rss[-1]:.0f} MiB at {total}: growth {growth:+.1f} MiB "
          f"({growth * 1024 / max(1, total - marks[0]):+.2f} KiB per request)")
    print("  RSS (MiB) by request: " + ", ".join(f"{m}: {r:.0f}" for m, r in zip(marks, rss))
          + "  (a leak grows with every request; allocator warm-up levels off)")


if __name__ == "__main__":
    main()
