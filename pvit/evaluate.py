"""Evaluation: batched generation on each evaluator's dataset, scoring, and metrics / per-sample files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from pvit.atomic import atomic_write_text
from pvit.collate import Collator
from pvit.model import PVITModel
from pvit.predict import run_batch
from pvit.recipe import options_of
from pvit.registry import build

#: Decoding options an evaluator may carry (as attributes, or in a ``generation`` dict attribute), with the
#: values used when it does not: greedy decoding, 16 prompts per batch.
GENERATION_DEFAULTS: dict[str, Any] = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": None,
                                       "batch_size": 16}
#: Box used to show, in each protocol, how the model's region encoder renders a region mention.
EXAMPLE_BOX = (0.1, 0.2, 0.5, 0.6)


def generation_options(evaluator) -> dict[str, Any]:
    """The decoding options of ``evaluator``: ``do_sample``, ``temperature``, ``top_p``, ``seed``, ``batch_size``.

    Each is read from the evaluator's ``generation`` dict when it has one, else from an attribute of that
    name (so an evaluator factory that takes these options and stores them makes them recipe options), else
    [GENERATION_DEFAULTS][pvit.evaluate.GENERATION_DEFAULTS].
    """
    given = dict(getattr(evaluator, "generation", None) or {})
    unknown = sorted(set(given) - set(GENERATION_DEFAULTS))
    if unknown:
        raise ValueError(f"evaluator {getattr(evaluator, 'name', '?')!r}: unknown generation options {unknown}; "
                         f"known: {', '.join(GENERATION_DEFAULTS)}")
    out = {}
    for k, default in GENERATION_DEFAULTS.items():
        v = given.get(k, getattr(evaluator, k, default))
        out[k] = default if v is None and default is not None else v
    if int(out["batch_size"]) < 1:
        raise ValueError(f"evaluator {getattr(evaluator, 'name', '?')!r}: batch_size must be >= 1")
    return out


def _answer(sample: dict) -> str | None:
    conv = sample.get("conversations") or []
    if conv and conv[-1].get("from") in ("gpt", "assistant"):
        return str(conv[-1].get("value", "")).strip()
    return None


def _prompt(sample: dict) -> str | None:
    users = [t for t in sample.get("conversations") or [] if t.get("from") in ("human", "user")]
    return str(users[-1].get("value", "")) if users else None


def generate_records(
    model: PVITModel,
    dataset,
    collator: Collator,
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    precision: str = "fp32",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> list[dict]:
    """Generate a reply for every sample of ``dataset``, ``batch_size`` prompts at a time (left padded, KV cache).

    Returns one record per sample, in dataset order: ``id``, ``prompt`` (the last human turn as the dataset
    wrote it), ``prediction``, ``answer`` (the held-out last gpt turn, or None) and ``meta``. A prompt longer
    than the collator's ``max_length`` is not generated for: its record has ``prediction`` ``""`` and
    ``skipped`` saying why, so it counts as a wrong answer rather than vanishing from the denominator.
    """
    if not collator.generate:
        raise ValueError("generate_records needs a collator built with generate=True (left padding, prompts only)")
    model.eval()
    records: list[dict] = []
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        encoded = [collator.encode(s) for s in samples]
        live = [e for e in encoded if e is not None]
        preds: list[str] = []
        if live:  # the Predictor's batched path: one way from sample to text
            preds = run_batch(model, collator, live, max_new_tokens=max_new_tokens, precision=precision,
                              do_sample=do_sample, temperature=temperature, top_p=top_p,
                              seed=None if seed is None else int(seed) + start)
        it = iter(preds)
        for s, e in zip(samples, encoded):
            if e is None:
                records.append({"id": str(s.get("id", "?")), "prompt": _prompt(s), "prediction": "",
                                "answer": _answer(s), "meta": s.get("meta", {}),
                                "skipped": f"prompt longer than max_length={collator.max_length} tokens"})
            else:
                records.append({"id": e["id"], "prompt": e["prompt"], "prediction": next(it), "answer": e["answer"],
                                "meta": e["meta"]})
    return records


def _protocol(scored: dict, model: PVITModel, template, collator: Collator, gen: dict, max_new_tokens: int) -> dict:
    """The evaluator's protocol with what the core knows filled in: template, region rendering, decoding."""
    protocol = dict(scored.get("protocol") or {})
    filled = {
        "template": template.name,
        "coordinate_format": "not stated by the evaluator",
        "matcher": "not stated by the evaluator",
    }
    for k, v in filled.items():
        if protocol.get(k) is None:
            protocol[k] = v
    enc = model.region_encoder
    protocol.setdefault("region_encoder", type(enc).__name__ if enc is not None else None)
    protocol.setdefault("region_text", enc.region_text(EXAMPLE_BOX) if enc is not None else None)
    protocol.setdefault("max_new_tokens", max_new_tokens)
    protocol.setdefault("max_length", collator.max_length)
    protocol["decoding"] = {k: gen[k] for k in ("do_sample", "temperature", "top_p", "seed")} if gen["do_sample"] \
        else {"do_sample": False}
    return protocol


def evaluate_one(model: PVITModel, evaluator, dataset, collator: Collator, template, *, out_dir: Path, key: str,
                 precision: str = "fp32") -> dict[str, Any]:
    """Generate, score and write the files of one evaluator; returns its result (metrics, protocol, files)."""
    gen = generation_options(evaluator)
    t0 = time.time()
    records = generate_records(model, dataset, collator, max_new_tokens=evaluator.max_new_tokens,
                               batch_size=int(gen["batch_size"]), precision=precision, do_sample=bool(gen["do_sample"]),
                               temperature=float(gen["temperature"]), top_p=float(gen["top_p"]), seed=gen["seed"])
    scored = evaluator.score(records)
    protocol = _protocol(scored, model, template, collator, gen, evaluator.max_new_tokens)
    files = []
    writer, output_file = getattr(evaluator, "write", None), protocol.get("output_file")
    if callable(writer) and output_file:  # the evaluator's own format (fine-eval: {image, instruction, output})
        writer(scored.get("records", records), out_dir / str(output_file))
        files.append(str(output_file))
        per_sample = records  # the raw generations beside it, with ids and prompts
    else:
        per_sample = scored.get("records", records)
    lines = "\n".join(json.dumps(r, default=str, ensure_ascii=False) for r in per_sample)
    atomic_write_text(out_dir / f"{key}.jsonl", lines + ("\n" if lines else ""))
    files.insert(0, f"{key}.jsonl")
    skipped = sum(1 for r in records if r.get("skipped"))
    return {"metrics": scored.get("metrics", {}), "protocol": protocol, "n": len(records), "skipped": skipped,
            "files": files, "seconds": round(time.time() - t0, 2)}


def metrics_table(results: dict[str, Any]) -> str:
    """A short markdown table: one row per (evaluator, metric), with the template / matcher line per evaluator."""
    lines = ["| evaluator | metric | value |", "|---|---|---:|"]
    notes = []
    for key, res in results.items():
        for k, v in res.get("metrics", {}).items():
            lines.append(f"| {key} | {k} | {v:.4f} |" if isinstance(v, float) else f"| {key} | {k} | {v} |")
        p = res.get("protocol", {})
        notes.append(f"- {key}: {res.get('n', 0)} samples ({res.get('skipped', 0)} skipped); template "
                     f"`{p.get('template')}`; matcher: {p.get('matcher')}; coordinates: {p.get('coordinate_format')}")
    return "\n".join(lines + [""] + notes) + "\n"


def run_evaluations(model: PVITModel, eval_cfgs: list, template, *, max_length: int, region_policy: str,
                    out_dir: Path, precision: str = "fp32", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every evaluator of a recipe's ``eval:`` list.

    Writes, in ``out_dir``: ``<name>.jsonl`` per evaluator (per-sample records), the evaluator's own output
    file when it names one (``protocol["output_file"]``, written with its ``write``), and ``metrics.md`` (a
    short markdown table). Returns ``{evaluator name: {"metrics", "protocol", "n", "skipped", "files",
    "seconds"}}``; each protocol records the template, coordinate format, matcher and decoding used.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    collator = Collator.for_model(model, template, max_length, region_policy, generate=True)
    for i, ev_cfg in enumerate(eval_cfgs):
        options = options_of(ev_cfg)
        evaluator = build("evaluator", ev_cfg.name, where=f"eval[{i}]", **options)
        data = dict(evaluator.data)
        dataset = build("dataset", data["name"], where=f"eval[{i}].data", **dict(data.get("options") or {}))
        key = ev_cfg.name if ev_cfg.name not in results else f"{ev_cfg.name}-{i}"
        results[key] = evaluate_one(model, evaluator, dataset, collator, template, out_dir=out_dir, key=key,
                                    precision=precision)
        log(f"  eval {key}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in results[key]["metrics"].items()))
    atomic_write_text(out_dir / "metrics.md", metrics_table(results))
    return results
