"""The OpenAI-compatible HTTP app: /v1/chat/completions (batched dynamically, or streamed), /v1/models, /health."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from pvit.predict_text import PredictError
from pvit_serve.parse import Limits, parse_messages

STATUS = {"model_not_found": 404, "server_overloaded": 503}


@dataclass
class ServeOptions:
    """Batching and admission: at most ``max_batch`` requests per batch, waiting ``max_wait_ms`` to fill one,
    ``max_queue`` requests queued or streaming at once (beyond: 503 with Retry-After)."""

    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_new_tokens: int = 256


def error(message: str, code: str, status: int = 400, headers: dict | None = None):
    kind = "server_error" if status >= 500 and status != 503 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status, headers=headers)


class Batcher:
    """A bounded request queue feeding ``predict_batch``: requests with the same decoding options share a batch."""

    def __init__(self, predictor, opts: ServeOptions):
        self.p, self.opts = predictor, opts
        self.queue: asyncio.Queue = asyncio.Queue()
        self.held: list = []
        self.busy = 0  # queued + running + streaming requests

    def admit(self) -> bool:
        if self.busy >= self.opts.max_queue:
            return False
        self.busy += 1
        return True

    def release(self) -> None:
        self.busy -= 1

    async def submit(self, sample: dict, decoding: dict, stop):
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((sample, decoding, stop, fut))
        return await fut

    async def run(self) -> None:
        while True:
            first = self.held.pop(0) if self.held else await self.queue.get()
            key = json.dumps([first[1], first[2]], sort_keys=True)
            batch, deadline = [first], time.monotonic() + self.opts.max_wait_ms / 1000
            for item in list(self.held):
                if len(batch) < self.opts.max_batch and json.dumps([item[1], item[2]], sort_keys=True) == key:
                    self.held.remove(item)
                    batch.append(item)
            while len(batch) < self.opts.max_batch:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(deadline - time.monotonic(), 0))
                except asyncio.TimeoutError:
                    break
                (batch if json.dumps([item[1], item[2]], sort_keys=True) == key else self.held).append(item)
            live = [b for b in batch if not b[3].done()]  # a client that went away frees its slot
            if not live:
                continue
            try:
                replies = await asyncio.to_thread(self.p.predict_batch, [b[0] for b in live], stop=first[2],
                                                  **first[1])
                for b, r in zip(live, replies):
                    if not b[3].done():
                        b[3].set_result(r)
            except Exception as e:  # noqa: BLE001 - handed to each request
                for b in live:
                    if not b[3].done():
                        b[3].set_exception(e)


def decoding_of(body: dict, opts: ServeOptions, context: int) -> tuple[dict, list]:
    """Decoding options of a request: greedy unless ``temperature`` > 0; ``max_tokens``; ``top_p``; ``seed``; ``stop``."""
    try:
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or opts.max_new_tokens)
        temperature = float(body.get("temperature") or 0.0)
        top_p = float(body.get("top_p") if body.get("top_p") is not None else 1.0)
        seed = None if body.get("seed") is None else int(body["seed"])
    except (TypeError, ValueError):
        raise PredictError("max_tokens, temperature, top_p and seed must be numbers", "invalid_request") from None
    if not 1 <= max_tokens <= context:
        raise PredictError(f"max_tokens must be in 1..{context}", "invalid_request")
    if temperature < 0 or not 0 < top_p <= 1:
        raise PredictError("temperature must be >= 0 and top_p in (0, 1]", "invalid_request")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise PredictError("stop must be a string or a list of strings", "invalid_request")
    return dict(max_new_tokens=max_tokens, do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p,
                seed=seed), stop


def create_app(predictor, opts: ServeOptions | None = None, limits: Limits | None = None):
    """The FastAPI app serving ``predictor`` (a [Predictor][pvit.predict.Predictor])."""
    from contextlib import asynccontextmanager

    opts, limits = opts or ServeOptions(), limits or Limits()
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app):
        state["batcher"] = Batcher(predictor, opts)
        task = asyncio.create_task(state["batcher"].run())
        yield
        task.cancel()

    app = FastAPI(title="pvit", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return error("the request body is not valid JSON", "invalid_json")

    @app.exception_handler(Exception)
    async def _crash(request, exc):
        return error(f"internal error ({type(exc).__name__})", "internal_error", 500)

    @app.get("/health")
    async def health():
        b = state.get("batcher")
        return {"status": "ok", "model": predictor.name, "busy": b.busy if b else 0}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": predictor.name, "object": "model", "created": 0,
                                            "owned_by": "pvit"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return error("the request body is not valid JSON", "invalid_json")
        if not isinstance(body, dict):
            return error("the request body must be a JSON object", "invalid_json")
        if body.get("model") not in (None, predictor.name):
            return error(f"model {body.get('model')!r} is not served here; available: {predictor.name}",
                         "model_not_found", 404)
        batcher: Batcher = state["batcher"]
        if not batcher.admit():
            return error("the server is busy; retry shortly", "server_overloaded", 503, {"Retry-After": "1"})
        released = False
        try:
            image, turns, boxes, fmt = await asyncio.to_thread(parse_messages, body, limits)
            region_text = body.get("region_text", "parse")
            sample = predictor.sample(image, turns, boxes, fmt, max_regions=limits.max_regions,
                                      region_text=region_text if isinstance(region_text, str) else repr(region_text))
            predictor.encode(sample)  # over the context length: a 400 now, not in the batch
            decoding, stop = decoding_of(body, opts, predictor.collator.max_length)
            rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            if body.get("stream"):
                stream = predictor.stream(sample["image"], turns, boxes, box_format=fmt, region_text=region_text,
                                          stop=stop, **decoding)
                released = True
                return StreamingResponse(_sse(stream, request, batcher, rid, created, predictor.name),
                                         media_type="text/event-stream")
            r = await batcher.submit(sample, decoding, stop)
        except PredictError as e:
            return error(str(e), e.code, STATUS.get(e.code, 400))
        finally:
            if not released:
                batcher.release()
        return {"id": rid, "object": "chat.completion", "created": created, "model": predictor.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text, "boxes": r.boxes},
                             "finish_reason": r.finish_reason}],
                "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                          "total_tokens": r.prompt_tokens + r.completion_tokens}}

    return app


async def _sse(stream, request, batcher: Batcher, rid: str, created: int, model: str):
    """Server-sent events in OpenAI's chunk format; the stream stops when the client disconnects."""
    def chunk(delta: dict, finish=None, **extra) -> str:
        c = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(c)}\n\n"

    it, done = iter(stream), object()
    try:
        yield chunk({"role": "assistant", "content": ""})
        while (piece := await asyncio.to_thread(next, it, done)) is not done:
            if await request.is_disconnected():
                return
            yield chunk({"content": piece})
        r = stream.reply
        yield chunk({"boxes": r.boxes}, r.finish_reason, usage={
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens})
        yield "data: [DONE]\n\n"
    finally:
        stream.close()
        batcher.release()
