"""pvit serve: a real uvicorn server on loopback, used with the official openai client and raw HTTP for errors."""

from __future__ import annotations

import base64
import json
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
import httpx  # noqa: E402

from inference_helpers import image, stage1_export, trained_micro  # noqa: E402
from pvit.predict import Predictor  # noqa: E402
from pvit_serve.app import ServeOptions, create_app  # noqa: E402
from pvit_serve.parse import Limits  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return Predictor.from_pretrained(stage1_export(trained_micro(tmp_path_factory)))


@pytest.fixture(scope="module")
def server(predictor):
    batches = []
    real = predictor.predict_batch

    def counting(requests, **kw):
        batches.append(len(requests))
        return real(requests, **kw)

    predictor.predict_batch = counting
    port = _free_port()
    app = create_app(predictor, ServeOptions(max_batch=8, max_wait_ms=50, max_queue=4),
                     Limits(max_image_bytes=200_000, max_image_pixels=512 * 512, max_regions=2))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):  # bounded: at most 20 s
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        pytest.fail("the server did not start")
    yield {"base": base, "batches": batches, "name": predictor.name}
    srv.should_exit = True
    thread.join(timeout=20)
    del predictor.predict_batch
    assert not thread.is_alive()


def data_url(img=None, fmt="PNG") -> str:
    buf = io.BytesIO()
    (img or image()).save(buf, fmt)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def messages(text="What is <region1>?", url=None):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url or data_url()}},
                                         {"type": "text", "text": text}]}]


def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="none", max_retries=0, timeout=60)


def test_openai_client_chat_stream_and_models(server, predictor):
    c = client(server)
    assert [m.id for m in c.models.list().data] == [server["name"]]
    regions = [{"image": 0, "box": [4, 4, 30, 30], "format": "pixels"}]
    r = c.chat.completions.create(model=server["name"], messages=messages(), max_tokens=6,
                                  extra_body={"regions": regions})
    direct = predictor.predict(image(), "What is <region1>?", boxes=[[4, 4, 30, 30]], max_new_tokens=6)
    assert r.choices[0].message.content == direct.text and r.usage.completion_tokens == 6
    assert r.choices[0].finish_reason == "length"
    chunks = list(c.chat.completions.create(model=server["name"], messages=messages(), max_tokens=6, stream=True,
                                            extra_body={"regions": regions}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == direct.text and len(chunks) > 3 and chunks[-1].choices[0].finish_reason == "length"


def test_concurrent_requests_are_batched(server):
    c = client(server)
    server["batches"].clear()
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: c.chat.completions.create(
            model=server["name"], messages=messages(f"Describe {i}."), max_tokens=4), range(4)))
    assert all(r.choices[0].message.content for r in replies)
    assert max(server["batches"]) > 1


BIG = image(2000, 2000)


@pytest.mark.parametrize("body, status, code", [
    ({"model": "nope", "messages": messages("hi")}, 404, "model_not_found"),
    ({"messages": messages("What is <region1>?")}, 400, "region_without_box"),
    ({"messages": messages("hi"), "regions": [{"box": [1, 1, 5, 5]}]}, 400, "box_without_mention"),
    ({"messages": messages(), "regions": [{"box": [1, 1, 500, 5]}]}, 400, "invalid_box"),
    ({"messages": messages(), "regions": [{"box": [5, 5, 5, 9]}]}, 400, "invalid_box"),
    ({"messages": messages("<region1><region2><region3>"), "regions": [{"box": [1, 1, 5, 5]}] * 3}, 400,
     "too_many_regions"),
    ({"messages": messages("hi", url="data:image/png;base64,aGVsbG8=")}, 400, "invalid_image"),
    ({"messages": messages("hi", url="http://example.com/a.png")}, 400, "invalid_image"),
    ({"messages": messages("hi", url="file:///etc/passwd")}, 400, "invalid_image"),
    ({"messages": messages("word " * 3000)}, 400, "context_length_exceeded"),
    ({"messages": "hi"}, 400, "invalid_request"),
])
def test_bad_requests_get_openai_errors(server, body, status, code):
    r = httpx.post(server["base"] + "/v1/chat/completions", json={"max_tokens": 2, **body}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and "Traceback" not in r.text


def test_oversized_image_and_malformed_json(server):
    buf = io.BytesIO()
    image(600, 600).save(buf, "BMP")  # 1 MB > the 200 kB limit
    url = "data:image/bmp;base64," + base64.b64encode(buf.getvalue()).decode()
    r = httpx.post(server["base"] + "/v1/chat/completions", json={"messages": messages("hi", url=url)}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "image_too_large"
    big = data_url(BIG)  # small PNG, 4 Mpx > the 512x512 limit: refused before decoding
    r = httpx.post(server["base"] + "/v1/chat/completions", json={"messages": messages("hi", url=big)}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "image_too_large"
    r = httpx.post(server["base"] + "/v1/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert httpx.get(server["base"] + "/health", timeout=5).json()["status"] == "ok"


class _Held:
    """A stream whose pieces wait for ``gate``: keeps requests in flight for as long as the test needs."""

    def __init__(self, stream, gate):
        self.s, self.gate, self.reply = stream, gate, None

    def __iter__(self):
        for piece in self.s:
            self.gate.wait(10)
            yield piece
        self.reply = self.s.reply

    def close(self):
        self.s.close()


def test_full_queue_gets_503_and_a_dropped_stream_frees_its_slot(server, predictor):
    url = server["base"] + "/v1/chat/completions"
    body = {"messages": messages("hi"), "max_tokens": 50, "stream": True}
    gate, real = threading.Event(), predictor.stream
    predictor.stream = lambda *a, **kw: _Held(real(*a, **kw), gate)
    try:
        with httpx.Client(timeout=30) as h:
            held = []
            for _ in range(4):  # max_queue=4 streams hold every slot
                cm = h.stream("POST", url, json=body)
                lines = cm.__enter__().iter_lines()  # kept: a dropped line iterator closes the response
                assert next(lines).startswith("data: ")
                held.append((cm, lines))
            r = httpx.post(url, json={"messages": messages("hi"), "max_tokens": 2}, timeout=30)
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            assert r.json()["error"]["code"] == "server_overloaded"
            for cm, _ in held:  # the clients go away mid-stream
                cm.__exit__(None, None, None)
        gate.set()
        for _ in range(100):  # bounded: the slots come back once the server sees the disconnects
            if httpx.get(server["base"] + "/health", timeout=5).json()["busy"] == 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the disconnected streams still hold their slots")
    finally:
        gate.set()
        del predictor.stream
    r = httpx.post(url, json={"messages": messages("hi"), "max_tokens": 2}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_pvit_generate_runs_against_pvit_serve(server, predictor, tmp_path, monkeypatch):
    """The generation job with `pvit serve` as its endpoint: every planned request is answered once (no 4xx, no
    retry), and every reply is accounted for as an accepted sample or a rejection with a reason."""
    pytest.importorskip("pvit_generate")
    from pvit_generate.runner import run_job

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "generate" / "task_specific.yaml"
    # the micro recipe's context (256) is shorter than a scene's listing in its word-level tokens
    monkeypatch.setattr(predictor.collator, "max_length", 2048)
    system = tmp_path / "system.txt"
    system.write_text("Write one question and answer about the regions as JSON.\n")
    over = [f"generate.output={tmp_path / 'out'}", "generate.sources.0.options.size=2",
            "generate.generator.name=openai-compatible", f"generate.generator.options.model={server['name']}",
            f"generate.generator.options.base_url={server['base']}/v1",
            "generate.generator.options.extra_body={region_text: plain}",
            "generate.requests.max_output_tokens=8", "generate.requests.max_retries=0",
            f"generate.prompts.system.default={system}", "generate.prompts.shots=0"]
    plan = run_job(recipe, over, dry_run=True, log=lambda s: None)
    server["batches"].clear()
    m = run_job(recipe, over, log=lambda s: None)
    assert plan["requests"] == 10 and m["requests"] == 10 and sum(server["batches"]) == 10
    counts = m["counts"]
    assert counts["accepted"] + counts["rejected"] == 10
    assert counts["rejected_by_reason"] and "request-failed" not in counts["rejected_by_reason"]
    rejected = [json.loads(x) for x in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == counts["rejected"] and all(r["reason"] and r["reply"] for r in rejected)


def test_box_text_in_a_text_only_prompt_is_a_region_unless_plain(server):
    """Box text without an image is refused as a region (400); `region_text: plain` reads it as words."""
    url = server["base"] + "/v1/chat/completions"
    text = "Describe <Region>[0.100, 0.200, 0.300, 0.400]</Region> in words."
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 3}
    r = httpx.post(url, json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "region_without_image"
    assert "region_text 'plain'" in r.json()["error"]["message"]
    r = httpx.post(url, json={**body, "region_text": "plain"}, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["boxes"] == []
    r = httpx.post(url, json={**body, "region_text": "words"}, timeout=60)
    assert r.status_code == 400 and "valid: parse, plain" in r.json()["error"]["message"]
    r = httpx.post(url, json={"messages": messages("What is <region1>?"), "region_text": "plain",
                              "regions": [{"image": 0, "box": [4, 4, 30, 30]}]}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "box_without_mention"
