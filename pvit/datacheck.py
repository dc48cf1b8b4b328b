"""``pvit data check``: count samples, regions, invalid boxes, truncations and bad images before training."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

from pvit.errors import DataError, InvalidRegionError


def _datasets(cfg) -> list[tuple[str, str, dict]]:
    from pvit.model import _plain
    from pvit.plugins import build

    out = []
    for i, st in enumerate(cfg.stages):
        out.append((f"stages[{i}] {st.name}", st.data.name, _plain(dict(st.data.options or {}))))
    for i, ev in enumerate(cfg.eval):
        evaluator = build("evaluator", ev.name, where=f"eval[{i}]", **_plain(dict(ev.options or {})))
        data = dict(evaluator.data)
        out.append((f"eval[{i}] {ev.name}", data["name"], dict(data.get("options") or {})))
    return out


def check_dataset(dataset, collator, limit: int | None = None, examples: int = 5) -> dict:
    """Counts for one dataset through the recipe's collator (invalid boxes are counted, not raised)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    counts = {"samples": n, "checked": 0, "with_image": 0, "text_only": 0, "regions": 0, "invalid_boxes": 0,
              "truncated": 0, "dropped_too_long": 0, "dropped_no_target": 0, "bad_images": 0, "bad_samples": 0}
    problems: list[str] = []
    before = dict(collator.stats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(n):
            try:
                sample = dataset[i]
            except DataError as e:
                counts["bad_images"] += 1
                if len(problems) < examples:
                    problems.append(str(e))
                continue
            counts["with_image" if sample.get("image") is not None else "text_only"] += 1
            try:
                enc = collator.encode(sample)
            except (DataError, InvalidRegionError) as e:
                counts["bad_samples"] += 1
                if len(problems) < examples:
                    problems.append(str(e))
                continue
            counts["checked"] += 1
            if enc is not None:
                counts["regions"] += len(enc["boxes"])
    for key in ("truncated", "dropped_too_long", "dropped_no_target"):
        counts[key] = collator.stats.get(key, 0) - before.get(key, 0)
    counts["invalid_boxes"] = collator.region_stats.dropped + collator.region_stats.clipped
    return {"counts": counts, "problems": problems}


def check_data(recipe: Path, overrides=(), *, limit: int | None = None,
               log: Callable[[str], None] = print) -> dict:
    """Check every dataset a recipe uses (stages and evaluations) with the recipe's own model text pipeline."""
    from pvit.data.templates import get_template
    from pvit.evaluate import make_collator
    from pvit.plugins import build
    from pvit.recipe import load_recipe
    from pvit.run import build_model, check_components

    loaded = load_recipe(recipe, list(overrides))
    cfg = loaded.cfg
    check_components(cfg)
    model = build_model(cfg)
    template = get_template(cfg.model.template, model.llm.tokenizer)
    report = {}
    for where, name, options in _datasets(cfg):
        dataset = build("dataset", name, where=where, **options)
        generate = where.startswith("eval")
        collator = make_collator(model, template, cfg.model.max_length, "drop", generate=generate)
        res = check_dataset(dataset, collator, limit=limit)
        report[where] = {"dataset": name, **res}
        c = res["counts"]
        log(f"{where} ({name}): {c['checked']}/{c['samples']} samples ok, {c['with_image']} with image, "
            f"{c['text_only']} text-only, {c['regions']} regions, {c['invalid_boxes']} invalid boxes, "
            f"{c['truncated']} truncated, {c['dropped_too_long'] + c['dropped_no_target']} dropped, "
            f"{c['bad_images']} bad images, {c['bad_samples']} bad samples")
        for p in res["problems"]:
            log(f"    {p}")
    return report
