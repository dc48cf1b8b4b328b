"""``pvit data check``: count samples, regions, invalid boxes, truncations and bad images before training."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

from pvit.errors import DataError, InvalidRegionError

#: The counts reported per dataset, in print order.
COUNTS = ("samples", "checked", "with_image", "text_only", "regions", "invalid_boxes", "truncated",
          "dropped_too_long", "dropped_no_target", "bad_images", "bad_samples")


def _datasets(cfg) -> list[tuple[str, str, dict]]:
    from pvit.recipe import options_of
    from pvit.registry import build

    out = []
    for i, st in enumerate(cfg.stages):
        out.append((f"stages[{i}] {st.name}", st.data.name, options_of(st.data)))
    for i, ev in enumerate(cfg.eval):
        evaluator = build("evaluator", ev.name, where=f"eval[{i}]", **options_of(ev))
        data = dict(evaluator.data)
        out.append((f"eval[{i}] {ev.name}", data["name"], dict(data.get("options") or {})))
    return out


def counting_options(name: str, options: dict) -> dict:
    """``options`` with the dataset's region policy set to ``drop`` where it would be ``error``, so that every
    invalid box is counted instead of the check stopping at the first (``clip`` is kept as the recipe says)."""
    from pvit.registry import accepted_options, get_component

    names, _, var_kw = accepted_options(get_component("dataset", name).factory)
    if ("region_policy" in names or var_kw) and options.get("region_policy", "error") == "error":
        return {**options, "region_policy": "drop"}
    return dict(options)


def check_dataset(dataset, collator, limit: int | None = None, examples: int = 5) -> dict:
    """Counts for one dataset through the recipe's collator; problems are counted (with a few examples), not raised.

    Returns ``{"counts": {name: int for name in COUNTS}, "problems": [message, ...]}``. ``bad_images`` counts
    samples whose image could not be used (missing, empty, truncated, not an image, decompression bomb),
    ``bad_samples`` other unusable samples, ``invalid_boxes`` boxes the region policy dropped or clipped.
    """
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    counts = dict.fromkeys(COUNTS, 0)
    counts["samples"] = n
    problems: list[str] = []
    before = dict(collator.stats)
    col_before = (collator.region_stats.dropped, collator.region_stats.clipped, len(collator.region_stats.examples))

    def problem(msg: str) -> None:
        if len(problems) < examples:
            problems.append(msg)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(n):
            try:
                enc = collator.encode(dataset[i])  # reading the sample and encoding it fail the same ways
            except InvalidRegionError as e:
                counts["invalid_boxes"] += 1
                counts["bad_samples"] += 1
                problem(str(e))
                continue
            except DataError as e:
                counts["bad_images" if getattr(e, "reason", None) else "bad_samples"] += 1
                problem(str(e))
                continue
            counts["checked"] += 1
            if enc is not None:
                counts["with_image" if enc["pixels"] is not None else "text_only"] += 1
                counts["regions"] += len(enc["boxes"])
    for key in ("truncated", "dropped_too_long", "dropped_no_target"):
        counts[key] = collator.stats.get(key, 0) - before.get(key, 0)
    rs = collator.region_stats
    counts["invalid_boxes"] += rs.dropped - col_before[0] + rs.clipped - col_before[1]
    for ex in rs.examples[col_before[2]:]:
        problem(ex)
    ds_stats = getattr(dataset, "region_stats", None)
    if ds_stats is not None:
        counts["invalid_boxes"] += ds_stats.dropped + ds_stats.clipped
        for ex in ds_stats.examples:
            problem(ex)
    report = getattr(dataset, "report", None)
    if callable(report):  # images skipped under the dataset's own 'skip' policy
        images = report().get("images", {})
        counts["bad_images"] += int(images.get("skipped", 0))
    return {"counts": counts, "problems": problems}


def summary_line(where: str, name: str, c: dict) -> str:
    """One line of counts for a dataset."""
    return (f"{where} ({name}): {c['checked']}/{c['samples']} samples ok, {c['with_image']} with image, "
            f"{c['text_only']} text-only, {c['regions']} regions, {c['invalid_boxes']} invalid boxes, "
            f"{c['truncated']} truncated, {c['dropped_too_long'] + c['dropped_no_target']} dropped, "
            f"{c['bad_images']} bad images, {c['bad_samples']} bad samples")


def check_data(recipe: Path, overrides=(), *, limit: int | None = None,
               log: Callable[[str], None] = print) -> dict:
    """Check every dataset a recipe uses (stages and evaluations) with the recipe's own model text pipeline.

    Returns ``{"<where> ": {"dataset": name, "counts": {...}, "problems": [...]}}`` and logs one summary
    line per dataset plus up to five example problems each.
    """
    from pvit.templates import get_template
    from pvit.collate import Collator
    from pvit.registry import build
    from pvit.recipe import load_recipe
    from pvit.compose import build_model
    from pvit.preflight import check_components

    loaded = load_recipe(recipe, list(overrides))
    cfg = loaded.cfg
    check_components(cfg)
    model = build_model(cfg)
    template = get_template(cfg.model.template, model.llm.tokenizer)
    report = {}
    for where, name, options in _datasets(cfg):
        dataset = build("dataset", name, where=where, **counting_options(name, options))
        generate = where.startswith("eval")
        collator = Collator.for_model(model, template, cfg.model.max_length, "drop", generate=generate)
        res = check_dataset(dataset, collator, limit=limit)
        report[where] = {"dataset": name, **res}
        log(summary_line(where, name, res["counts"]))
        for p in res["problems"]:
            log(f"    {p}")
        if res["counts"]["invalid_boxes"] and options.get("region_policy", "error") == "error":
            log(f"    note: under region_policy 'error' (the default) training stops at the first invalid box; "
                f"set region_policy: clip or drop in {where}'s data options to repair or skip them (counted)")
    return report
