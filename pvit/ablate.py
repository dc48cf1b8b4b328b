"""``pvit ablate`` (same recipe, only the region encoder changed) and ``pvit eval`` on exported checkpoints."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

from pvit.atomic import atomic_write_text
from pvit.recipe import load_recipe
from pvit.rundir import RunDir

def shared_prefix(cfg) -> int:
    """Number of leading stages that do not involve the region encoder (run once, reused by every variant)."""
    from pvit.slots import depends_on_regions

    n = 0
    for st in cfg.stages:
        if depends_on_regions(list(st.trainable)):
            break
        n += 1
    return n


def keep_stages(cfg, start: int, init_from: str | Path | None = None) -> None:
    """Drop the first ``start`` stages of ``cfg``; the first remaining one starts from ``init_from``."""
    from pvit.recipe import Stage

    stages = OmegaConf.to_container(cfg.stages, resolve=True)[start:]
    if init_from is not None and stages:
        stages[0]["init_from"] = str(init_from)
    cfg.stages = [OmegaConf.merge(OmegaConf.structured(Stage), s) for s in stages]


def _variant_overrides(encoder: str) -> list[str]:
    return [f"model.region_encoder={{name: {encoder}}}"]


def whole_encoder_slots(cfg, log: Callable[[str], None] = print) -> None:
    """In a variant, a stage that trained a declared group of the base recipe's region encoder
    (``region_encoder.head``) trains the variant's whole region encoder instead: the groups belong to the
    encoder that was swapped out."""
    for st in cfg.stages:
        names = list(st.trainable)
        if not any(n.startswith("region_encoder.") for n in names):
            continue
        new = list(dict.fromkeys("region_encoder" if n.startswith("region_encoder.") else n for n in names))
        groups = list(dict.fromkeys(n for n in names if n.startswith("region_encoder.")))
        what = "is a group" if len(groups) == 1 else "are groups"
        log(f"ablate: stage {st.name} trains {', '.join(new)} ({', '.join(groups)} {what} of the base recipe's "
            "region encoder)")
        st.trainable = new


def run_ablation(recipe: Path, encoders: list[str], *, seeds: int = 1, overrides: list[str] = (),
                 log: Callable[[str], None] = print) -> dict:
    """Run the base recipe and each variant (only ``model.region_encoder`` changed) for ``seeds`` seeds;
    print and write one variant x task table (mean and spread over seeds)."""
    from pvit.run import run_recipe

    base = load_recipe(recipe, list(overrides))
    base_name = base.cfg.model.region_encoder.name if base.cfg.model.region_encoder is not None else "none"
    variants = [base_name] + [e for e in encoders if e != base_name]
    root = Path(base.cfg.run_dir + "-ablation")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for seed in range(base.cfg.seed, base.cfg.seed + seeds):
        shared_export = None
        for v in variants:
            ov = list(overrides) + [f"seed={seed}", f"run_dir={root}/{v}-seed{seed}"]
            if v != base_name:
                ov += _variant_overrides(v)
            loaded = load_recipe(recipe, ov)
            if v != base_name:
                whole_encoder_slots(loaded.cfg, log)
            k = shared_prefix(loaded.cfg)
            if v != base_name and shared_export is not None and k > 0:
                keep_stages(loaded.cfg, k, init_from=shared_export)
                log(f"ablate: {v} (seed {seed}) reuses the shared stages from {shared_export}")
            else:
                log(f"ablate: {v} (seed {seed})")
            summary = run_recipe(loaded, overwrite=True, log=log)
            if v == base_name and k > 0:
                shared_export = RunDir(summary["run_dir"]).export(k - 1, loaded.cfg.stages[k - 1].name)
            results[v].append(summary)
    table = ablation_table(results)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "ablation.md", table + "\n")
    atomic_write_text(root / "ablation.json", json.dumps(
        {v: [s.get("eval", {}) for s in runs] for v, runs in results.items()}, indent=2))
    log(table)
    log(f"written: {root / 'ablation.md'}")
    return results


def ablation_table(results: dict[str, list[dict]]) -> str:
    """Markdown table: one row per variant, one column per metric; ``mean ± stdev`` over seeds."""
    from pvit.report import metrics_rows

    cols: list[str] = []
    values: dict[str, dict[str, list[float]]] = {}
    for v, runs in results.items():
        for s in runs:
            for ev, k, x in metrics_rows(s):
                if not k.startswith("accuracy"):
                    continue  # counts and chance levels are the same for every variant
                c = f"{ev}:{k}" if len({e for e, _, _ in metrics_rows(s)}) > 1 else k
                if c not in cols:
                    cols.append(c)
                values.setdefault(v, {}).setdefault(c, []).append(x)
    head = "| variant | " + " | ".join(cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    for v in results:
        cells = []
        for c in cols:
            xs = values.get(v, {}).get(c, [])
            if not xs:
                cells.append("")
            elif len(xs) == 1:
                cells.append(f"{100 * xs[0]:.1f}")
            else:
                cells.append(f"{100 * statistics.mean(xs):.1f} ± {100 * statistics.stdev(xs):.1f}")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_checkpoint(recipe: Path, checkpoints: list[Path], *, out: Path | None = None, overrides=(),
                        log: Callable[[str], None] = print) -> dict:
    """Build the recipe's model, load exported stage weights in order, run the recipe's ``eval:`` list."""
    from pvit.checkpoints import load_export
    from pvit.compose import build_as_run
    from pvit.device import resolve_device
    from pvit.errors import RecipeError
    from pvit.evaluate import run_evaluations
    from pvit.preflight import check_components
    from pvit.report import write_report
    from pvit.templates import get_template

    loaded = load_recipe(recipe, list(overrides))
    cfg = loaded.cfg
    check_components(cfg)
    if not cfg.eval:
        raise RecipeError(f"{recipe}: the recipe has no eval: list")
    model = build_as_run(cfg).to(resolve_device(cfg.engine.device))
    for c in checkpoints:
        load_export(model, c)
        log(f"loaded {c}")
    out = Path(out) if out is not None else Path(checkpoints[0]).resolve().parent / "eval"
    template = get_template(cfg.model.template, model.llm.tokenizer)
    precision = cfg.stages[-1].optim.precision if cfg.stages else "fp32"
    res = run_evaluations(model, list(cfg.eval), template, max_length=cfg.model.max_length,
                          region_policy=cfg.model.region_policy, out_dir=out, precision=precision, log=log)
    summary = {"recipe": cfg.name, "checkpoints": [str(c) for c in checkpoints], "eval": res}
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2, default=str))
    write_report(summary, out)
    log(f"written: {out / 'metrics.json'}, {out / 'report.md'}")
    return summary
