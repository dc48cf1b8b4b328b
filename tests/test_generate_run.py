"""`pvit generate` end to end against a scripted OpenAI-compatible server on 127.0.0.1: faults, retries, budget,
resume after SIGKILL, output read by pvit-instruct, no secret in any output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pvit
from pvit_generate.runner import run_job
from pvit_generate.testserver import ScriptedServer

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "recipes" / "generate" / "prompts"
SECRET = "sk-test-do-not-leak-1234567890"


def _recipe(tmp_path: Path, base_url: str, size: int = 4) -> Path:
    p = tmp_path / "gen.yaml"
    p.write_text(f"""
generate:
  name: t
  strategy: task-specific
  output: {tmp_path / 'out'}
  sources: [{{name: synth-scenes, options: {{size: {size}, image_size: 32}}}}]
  generator: {{name: openai-compatible, options: {{model: m, base_url: "{base_url}", api_key_env: PVIT_TEST_KEY}}}}
  tasks: [relationships, attributes]
  prompts: {{system: {{default: {PROMPTS / 'task_specific.txt'}}}, seeds: {PROMPTS / 'seeds.json'}}}
  requests: {{concurrency: 4, timeout_s: 0.5, max_retries: 3, backoff_s: 0.01, max_backoff_s: 0.2}}
""")
    return p


def _files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="ignore") for p in folder.rglob("*") if p.is_file() and p.suffix != ".png")


def test_faults_are_retried_or_rejected_and_the_output_reads_back(tmp_path, monkeypatch):
    monkeypatch.setenv("PVIT_TEST_KEY", SECRET)
    faults = {"synth-train-0": ("text", "not json {"), "synth-train-1": ("text", json.dumps(
        {"conversations": [{"question": "What is <Region>[0.9, 0.9, 1.0, 1.0]</Region>?", "answer": "x"}]}))}
    transient = {"synth-train-2": ("status", 429, {"Retry-After": "0.05"}), "synth-train-3": ("status", 500, {})}

    def script(body, seen):
        user = body["messages"][-1]["content"]
        task = "relationships" if "relationships" in user.splitlines()[0] else "attributes"
        ctx = next(f"synth-train-{i}" for i, region in first_regions.items() if region in user)
        if task == "attributes":
            return faults.get(ctx) or (transient.get(ctx) if seen == 0 else None)
        if ctx == "synth-train-0" and seen == 0:
            return ("sleep", 1.0)  # longer than timeout_s: the client times out and retries
        if ctx == "synth-train-1" and seen == 0:
            return ("drop",)
        return None

    first_regions = _first_regions(tmp_path)
    with ScriptedServer(script) as server:
        logs = []
        m = run_job(_recipe(tmp_path, server.base_url), log=logs.append)
    out = tmp_path / "out"
    assert m["status"] == "complete"
    assert m["counts"]["accepted"] == 6 and m["counts"]["rejected_by_reason"] == {"invented-box": 1, "malformed-json": 1}
    assert m["requests"] == 8 + 4  # 8 planned, 4 retried once (429, 500, timeout, dropped connection)
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in rejected} == {"invented-box", "malformed-json"}
    ds = pvit.build("dataset", "pvit-instruct", path=str(out))
    assert len(ds) == 6 and "<Region><L" in ds[0]["conversations"][0]["value"]
    assert SECRET not in _files_text(out) and SECRET not in "\n".join(logs)
    assert m["generator"] == {"name": "openai-compatible", "model": "m", "base_url": server.base_url}


def _first_regions(tmp_path) -> dict[int, str]:
    """Context index -> the prompt text of its first region (unique per scene), to script replies per context."""
    from pvit_generate.synth_inputs import SynthScenes
    from pvit_generate.prompting import region_text

    s = SynthScenes(tmp_path / "probe", size=4, image_size=32)
    return {i: region_text(c.regions[0].box) for i, c in enumerate(s.contexts())}


def test_budget_stops_cleanly_and_resume_sends_nothing_finished(tmp_path, monkeypatch):
    monkeypatch.setenv("PVIT_TEST_KEY", SECRET)
    with ScriptedServer() as server:
        m = run_job(_recipe(tmp_path, server.base_url), ["generate.requests.max_requests=3"], log=lambda s: None)
        assert m["status"] == "budget-exhausted" and m["requests"] == 3 and len(server.requests) == 3
        first = {json.dumps(b["messages"]) for b in server.requests}
        m = run_job(tmp_path / "gen.yaml", ["generate.requests.max_requests=100"], resume=True, log=lambda s: None)
    assert m["status"] == "complete" and m["counts"]["accepted"] == 8
    later = [json.dumps(b["messages"]) for b in server.requests[3:]]
    assert len(later) == 5 and not first & set(later)


def test_dry_run_sends_nothing_and_same_seed_sends_the_same_requests(tmp_path, monkeypatch):
    monkeypatch.setenv("PVIT_TEST_KEY", SECRET)
    with ScriptedServer() as server:
        logs = []
        plan = run_job(_recipe(tmp_path, server.base_url), dry_run=True, log=logs.append)
        assert plan["requests"] == 8 and server.requests == [] and "8 requests" in logs[0]
        run_job(tmp_path / "gen.yaml", log=lambda s: None)
        run_job(tmp_path / "gen.yaml", [f"generate.output={tmp_path / 'out2'}"], log=lambda s: None)
    key = lambda b: json.dumps(b, sort_keys=True)  # noqa: E731
    assert sorted(map(key, server.requests[:8])) == sorted(map(key, server.requests[8:]))


def test_sigkill_loses_nothing_finished_and_resume_resends_nothing(tmp_path):
    env = {**os.environ, "PVIT_TEST_KEY": SECRET, "HF_HUB_OFFLINE": "1"}
    with ScriptedServer(latency=0.1) as server:
        recipe = _recipe(tmp_path, server.base_url, size=12)
        cmd = [sys.executable, "-m", "pvit", "generate", str(recipe), "generate.requests.concurrency=2"]
        journal = tmp_path / "out" / "journal.jsonl"
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not journal.exists() or journal.read_text().count("\n") < 4):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        done = {json.loads(x)["id"] for x in journal.read_text().splitlines()}
        assert 4 <= len(done) < 24, proc.stderr.read().decode()[-2000:]
        sent_before = len(server.requests)
        r = subprocess.run(cmd + ["--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
    finished_seeds = {e["seed"] for e in map(json.loads, journal.read_text().splitlines()) if e["id"] in done}
    resent = [b for b in server.requests[sent_before:] if b["seed"] in finished_seeds]
    assert resent == [] and len(server.requests) - sent_before == 24 - len(done)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["accepted"] == 24
    ids = [x["id"] for f in (tmp_path / "out").glob("synth_*.json") for x in json.loads(f.read_text())]
    assert len(ids) == len(set(ids)) == 24
