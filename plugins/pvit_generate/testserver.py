"""A scripted OpenAI-compatible chat server on 127.0.0.1 for tests and benchmarks: deterministic replies (the
``template`` generator's), fixed latency, and scripted faults (bad JSON, invented boxes, 429, 500, slow, dropped)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from pvit_generate.template import TemplateGenerator


class ScriptedServer:
    """``with ScriptedServer(script=fn, latency=0.05) as s: s.base_url``.

    ``script(body, seen)`` gets the request JSON and how many times the same request was seen before, and returns
    None (a normal reply) or an action: ``("text", str)``, ``("length", str)``, ``("status", code, headers)``,
    ``("sleep", seconds)`` (then a normal reply) or ``("drop",)`` (close the connection without a reply).
    ``requests`` lists every request body received.
    """

    def __init__(self, script: Callable[[dict, int], tuple | None] | None = None, latency: float = 0.0):
        self.script, self.latency = script, latency
        self.requests: list[dict] = []
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        self.template = TemplateGenerator()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                server.handle(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _send(self, h, code: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, str(v))
        h.end_headers()
        h.wfile.write(data)

    def handle(self, h, body: dict) -> None:
        key = json.dumps(body["messages"], sort_keys=True)
        with self.lock:
            self.requests.append(body)
            seen = self.seen.get(key, 0)
            self.seen[key] = seen + 1
        if self.latency:
            time.sleep(self.latency)
        action = self.script(body, seen) if self.script else None
        finish = "stop"
        if action is not None and action[0] == "drop":
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if action is not None and action[0] == "status":
            self._send(h, action[1], {"error": {"message": "scripted", "type": "scripted"}}, action[2])
            return
        if action is not None and action[0] == "sleep":
            time.sleep(action[1])
            action = None
        if action is None:
            text = self.template.complete(body["messages"], max_tokens=0, temperature=0, seed=body.get("seed", 0),
                                          timeout=0).text
        else:
            text, finish = action[1], ("length" if action[0] == "length" else "stop")
        self._send(h, 200, {
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body.get("model", "m"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        })
