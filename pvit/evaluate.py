"""Evaluation: batched generation on each evaluator's dataset, scoring, and metrics / per-sample files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from pvit.checkpoints import atomic_write_text
from pvit.data.collate import Collator
from pvit.model import PVITModel, _plain, batch_to
from pvit.plugins import build


def make_collator(model: PVITModel, template, max_length: int, region_policy: str, generate: bool) -> Collator:
    """The collator that matches ``model``'s components."""
    return Collator(
        model.llm.tokenizer,
        template,
        image_transform=model.image_encoder.transform if model.image_encoder is not None else None,
        num_image_tokens=model.num_image_tokens,
        region_encoder=model.region_encoder,
        max_length=max_length,
        region_policy=region_policy,
        generate=generate,
    )


def generate_records(model: PVITModel, dataset, collator: Collator, *, batch_size: int = 16,
                     max_new_tokens: int = 32, precision: str = "fp32") -> list[dict]:
    """Greedy generation for every sample of ``dataset``: records with id, prompt, prediction, answer, meta."""
    model.eval()
    device = next(model.llm.parameters()).device
    records = []
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        encoded = [e for e in (collator.encode(s) for s in samples) if e is not None]
        if not encoded:
            continue
        batch = batch_to(collator.pad(encoded), device)
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else torch.autocast(
            device.type, enabled=False)
        with ctx:
            preds = model.generate(batch, max_new_tokens=max_new_tokens)
        for e, p in zip(encoded, preds):
            records.append({"id": e["id"], "prediction": p, "answer": e["answer"], "meta": e["meta"]})
    return records


def run_evaluations(model: PVITModel, eval_cfgs: list, template, *, max_length: int, region_policy: str,
                    out_dir: Path, precision: str = "fp32", log=print) -> dict[str, Any]:
    """Run every evaluator of a recipe's ``eval:`` list; writes ``<name>.jsonl`` per evaluator and returns
    ``{evaluator name: result}`` (metrics, protocol, counts, seconds)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    collator = make_collator(model, template, max_length, region_policy, generate=True)
    for i, ev_cfg in enumerate(eval_cfgs):
        options = _plain(dict(ev_cfg.options or {}))
        evaluator = build("evaluator", ev_cfg.name, where=f"eval[{i}]", **options)
        data = dict(evaluator.data)
        dataset = build("dataset", data["name"], where=f"eval[{i}].data", **dict(data.get("options") or {}))
        t0 = time.time()
        records = generate_records(model, dataset, collator, max_new_tokens=evaluator.max_new_tokens,
                                   precision=precision)
        scored = evaluator.score(records)
        protocol = dict(scored.get("protocol") or {})
        protocol.setdefault("template", template.name)
        if model.region_encoder is not None:
            protocol.setdefault("region_encoder", type(model.region_encoder).__name__)
        key = ev_cfg.name if ev_cfg.name not in results else f"{ev_cfg.name}-{i}"
        results[key] = {"metrics": scored.get("metrics", {}), "protocol": protocol, "n": len(records),
                        "seconds": round(time.time() - t0, 2)}
        lines = "\n".join(json.dumps(r, default=str) for r in scored.get("records", records))
        atomic_write_text(out_dir / f"{key}.jsonl", lines + ("\n" if lines else ""))
        log(f"  eval {key}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in results[key]["metrics"].items()))
    return results
