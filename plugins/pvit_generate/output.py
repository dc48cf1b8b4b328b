"""The job's files: an append-only journal (one line per finished sample, so a kill loses nothing finished),
and from it PVIT's folder format (mapping.yaml + one JSON array per key), rejected.jsonl and manifest.json."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path

from pvit.atomic import atomic_write_text
from pvit.errors import DataError

JOURNAL = "journal.jsonl"


class Journal:
    """``journal.jsonl``: each line one finished request or converted record, written with one ``write()`` on an
    ``O_APPEND`` descriptor (a kill leaves at most a torn last line, which the next open cuts off)."""

    def __init__(self, folder: Path, resume: bool):
        self.path = Path(folder) / JOURNAL
        self.entries: list[dict] = []
        if self.path.exists():
            if not resume:
                raise DataError(f"{folder} already holds a generation journal ({JOURNAL}); pass --resume to "
                                "continue it, or choose another generate.output")
            self._load()
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lock = threading.Lock()

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line from a kill: drop it
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for n, line in enumerate(data[:end].splitlines(), 1):
            try:
                self.entries.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(f"{self.path}:{n}: corrupt journal line (not JSON); remove the line to resume") from None

    @staticmethod
    def peek(folder: Path) -> set[str]:
        """The finished ids of the journal in ``folder`` without opening it for writing (for ``--dry-run``)."""
        j = Journal.__new__(Journal)
        j.path, j.entries = Path(folder) / JOURNAL, []
        if j.path.exists():
            data = j.path.read_bytes()
            j.entries = [json.loads(x) for x in data[: data.rfind(b"\n") + 1].splitlines()]
        return j.finished()

    def finished(self) -> set[str]:
        """Ids of requests with a final outcome (accepted or rejected); failed ones are sent again."""
        return {e["id"] for e in self.entries if e["kind"] in ("accepted", "rejected")}

    def append(self, entry: dict) -> None:
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock:
            os.write(self.fd, line)
            self.entries.append(entry)

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


def data_key(source: str, task: str) -> str:
    """The mapping.yaml key (JSON file name) of a source's task: ``gqa``, ``synth_small_objects``."""
    return (source if task == source else f"{source}_{task}").replace("-", "_")


def latest(entries: list[dict]) -> dict[str, dict]:
    """The last entry per id (a failed request later accepted counts as accepted)."""
    out: dict[str, dict] = {}
    for e in entries:
        out[e["id"]] = e
    return out


def finalise(folder: Path, entries: list[dict], image_folders: dict[str, str], manifest: dict) -> dict:
    """Write mapping.yaml, the JSON arrays, rejected.jsonl and manifest.json from the journal; returns the manifest."""
    import yaml

    folder = Path(folder)
    final = latest(entries)
    groups: dict[str, list[dict]] = {}
    sources: dict[str, str] = {}
    rejected, reasons, per_task = [], Counter(), {}
    for e in final.values():
        t = per_task.setdefault(e["task"], Counter())
        if e["kind"] == "accepted":
            key = data_key(e["source"], e["task"])
            groups.setdefault(key, []).append(e["record"])
            sources[key] = e["source"]
            t["accepted"] += 1
        else:
            reason = e.get("reason", "request-failed")
            rejected.append({"id": e["id"], "task": e["task"], "reason": reason, "detail": e.get("detail", ""),
                             "reply": e.get("reply")})
            reasons[reason] += 1
            t["rejected" if e["kind"] == "rejected" else "failed"] += 1
    for key, records in groups.items():
        records.sort(key=lambda r: r["id"])
        atomic_write_text(folder / f"{key}.json", json.dumps(records, ensure_ascii=False))
    mapping = {
        "image_paths": {s: image_folders[s] for s in sorted(set(sources.values()))},
        "mapping": {k: sources[k] for k in sorted(groups)},
        "count": {k: len(groups[k]) for k in sorted(groups)},
    }
    atomic_write_text(folder / "mapping.yaml", yaml.safe_dump(mapping, sort_keys=False))
    rejected.sort(key=lambda r: r["id"])
    atomic_write_text(folder / "rejected.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected))
    usage = Counter()
    for e in entries:
        usage.update({k: v for k, v in (e.get("usage") or {}).items() if isinstance(v, int)})
    manifest = {
        **manifest,
        "counts": {"accepted": sum(len(g) for g in groups.values()), "rejected": len(rejected),
                   "per_task": {k: dict(v) for k, v in sorted(per_task.items())},
                   "rejected_by_reason": dict(sorted(reasons.items()))},
        "requests": usage.get("attempts", 0),
        "tokens": {"prompt": usage.get("prompt_tokens", 0), "completion": usage.get("completion_tokens", 0)},
    }
    price = manifest.get("prices") or {}
    manifest["cost_estimate"] = round(manifest["tokens"]["prompt"] / 1000 * price.get("input", 0.0)
                                      + manifest["tokens"]["completion"] / 1000 * price.get("output", 0.0), 6)
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest
