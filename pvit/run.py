"""Running a recipe: check it, plan it, build the model, run its stages in order, evaluate, report."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from pvit.recipe import LoadedRecipe, dump_yaml
from pvit.rundir import RunDir, versions


def build_model(cfg):
    """Build the PVITModel a recipe describes (see [pvit.compose.build_model][])."""
    from pvit.compose import build_model as build

    return build(cfg)


def run_recipe(loaded: LoadedRecipe, *, resume: str | None = None, overwrite: bool = False,
               log: Callable[[str], None] = print) -> dict:
    """Run every stage of a recipe, then its evaluations; returns the summary written to ``metrics.json``.

    Under ``torchrun`` every process trains; rank 0 alone writes the run directory, exports and evaluates.
    ``resume``: ``None`` (a new run), ``"auto"`` (finished stages are loaded from their exports, the first
    unfinished one continues from its newest readable checkpoint) or a checkpoint path of this run.
    """
    from pvit.engine import distributed

    need_group = str(loaded.cfg.engine.strategy) in ("fsdp", "deepspeed")
    with distributed(force=need_group) as info:
        return _run(loaded, info, resume=resume, overwrite=overwrite, log=log if info.main else (lambda *_: None))


def _start(loaded: LoadedRecipe, info, strategy: str, resume: str | None, overwrite: bool, log):
    """Check everything, then (rank 0) prepare the run directory; returns it and how the run starts."""
    from pvit.engine import barrier
    from pvit.preflight import check_components, require_files
    from pvit.resume import plan_resume

    cfg = loaded.cfg
    check_components(cfg)
    require_files(cfg, loaded.path)
    run_dir = RunDir(cfg.run_dir)
    run_dir.check(resume=resume, overwrite=overwrite)
    how = plan_resume(run_dir, cfg, resume, overwrite=overwrite, world=info.world, log=log)
    launch = {"world_size": info.world, "strategy": strategy, "argv": sys.argv,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    barrier()  # every rank has checked before rank 0 changes anything
    if info.main:
        run_dir.prepare(resume=resume, overwrite=overwrite, log=log)
        if how.resuming:
            run_dir.append_resume(loaded, launch, resume, how.check)
        else:
            run_dir.write_provenance(loaded, launch)
    barrier()
    return run_dir, how


def _train_stage(model, cfg, i: int, run_dir: RunDir, how, plan, template, info, device, log) -> dict:
    """Run (or load, when finished) stage ``i``; returns its summary entry."""
    from pvit.checkpoints import export_stage, load_export
    from pvit.collate import Collator
    from pvit.engine import StageResult, barrier, run_stage
    from pvit.objectives import needs_region_features
    from pvit.registry import build
    from pvit.atomic import atomic_write_text

    st, names = cfg.stages[i], [s.name for s in cfg.stages]
    if st.init_from:
        src = run_dir.export(names.index(st.init_from), st.init_from) if st.init_from in names else st.init_from
        load_export(model, src)
    if i in how.finished:
        load_export(model, run_dir.export(i, st.name))
        log(f"stage {i + 1}/{len(names)} {st.name}: already finished in {run_dir.stage(i, st.name)}; loaded its export")
        return run_dir.read_stage(i, st.name)
    if needs_region_features(st.objective) and model.tokens_per_region == 0:
        # e.g. `pvit ablate --region-encoder text-coords` over a recipe that pretrains region features
        log(f"stage {i + 1}/{len(names)} {st.name}: skipped; its objective {st.objective} needs region features "
            f"and this model's region encoder ({cfg.model.region_encoder.name if cfg.model.region_encoder else 'null'}) "
            "gives none")
        result = StageResult(st.name, 0, [], 0.0, {})
    else:
        dataset = build("dataset", st.data, where=f"stages[{i}].data")
        collator = Collator.for_model(model, template, cfg.model.max_length, cfg.model.region_policy, generate=False)
        resume_from = how.checkpoint(i, run_dir.engine(i, st.name), log)
        if how.resuming:
            log(f"stage {i + 1}/{len(names)} {st.name}: " + (f"resuming from {resume_from}" if resume_from else
                f"no checkpoint in {run_dir.engine(i, st.name)}; training it from step 0"))
        log(f"stage {i + 1}/{len(names)} {st.name}: {len(dataset)} samples, trainable "
            f"{', '.join(st.trainable)} ({plan.stages[i]['trainable_total']:,} parameters)")
        result = run_stage(model, st, dataset=dataset, collator=collator, work_dir=run_dir.engine(i, st.name),
                           engine_cfg=cfg.engine, seed=cfg.seed + i, resume_from=resume_from, device=device)
    entry = {"name": st.name, "steps": result.steps, "seconds": round(result.seconds, 1),
             "trainable": result.trainable, "losses": result.losses,
             "final_loss": result.losses[-1][1] if result.losses else None,
             "world_size": result.world, "strategy": result.strategy, "flops": result.flops,
             "feature_cache": result.cache}
    if info.main:
        export = run_dir.export(i, st.name)
        export_stage(model, list(st.trainable), export, {"stage": st.name, "recipe": cfg.name})
        atomic_write_text(export / "recipe.yaml", dump_yaml(cfg))
        run_dir.write_stage(i, st.name, entry)
    barrier()  # the export exists before any rank moves on (a later stage may init_from it)
    log(f"stage {i + 1}/{len(names)} {st.name}: {result.steps} steps in {result.seconds:.0f} s" +
        (f", final loss {entry['final_loss']:.4f}" if entry["final_loss"] is not None else "") + _mfu_text(result.flops)
        + (f", frozen-feature cache {100 * result.cache['hit_rate']:.0f}% hits" if result.cache else ""))
    return entry


def _mfu_text(flops: dict | None) -> str:
    """``, 12.3 GFLOP/s, MFU 4.1% (of a 300 GFLOP/s matmul peak)`` for a stage's log line."""
    from pvit.flops import format_flops

    if not flops or "mfu" not in flops:
        return ""
    return (f", {format_flops(flops['flops_per_s'])}FLOP/s, MFU {100 * flops['mfu']:.1f}% (of a "
            f"{format_flops(flops['peak_flops_per_s'])}FLOP/s matmul peak)")


def _run(loaded: LoadedRecipe, info, *, resume: str | None, overwrite: bool, log: Callable[[str], None]) -> dict:
    import torch

    from pvit.device import resolve_device
    from pvit.engine import resolve_strategy
    from pvit.evaluate import run_evaluations
    from pvit.plan import plan_model
    from pvit.report import write_report
    from pvit.templates import get_template

    cfg = loaded.cfg
    strategy = resolve_strategy(str(cfg.engine.strategy), info.world)
    device = resolve_device(cfg.engine.device)
    run_dir, how = _start(loaded, info, strategy, resume, overwrite, log)
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    log(f"pvit: building model for recipe {cfg.name!r}" + (f" ({info.world} processes, {strategy})"
                                                          if info.world > 1 else "") + f" on {device}")
    model = build_model(cfg).to(device)
    if cfg.engine.feature_cache.enabled:
        from pvit.feature_cache import FeatureCache

        fc = cfg.engine.feature_cache
        model.feature_cache = FeatureCache(fc.max_memory_mb, fc.dir)
    plan = plan_model(model, cfg)
    template = get_template(cfg.model.template, model.llm.tokenizer)
    summary: dict[str, Any] = {"recipe": cfg.name, "run_dir": str(run_dir.path), "plan": plan.as_dict(),
                               "stages": [], "versions": versions(), "world_size": info.world, "strategy": strategy,
                               "rank": info.rank, "device": str(device)}
    for i in range(len(cfg.stages)):
        summary["stages"].append(_train_stage(model, cfg, i, run_dir, how, plan, template, info, device, log))
    if not info.main:
        return summary
    if cfg.eval:
        log("evaluating")
        precision = cfg.stages[-1].optim.precision if cfg.stages else "fp32"
        summary["eval"] = run_evaluations(model, list(cfg.eval), template, max_length=cfg.model.max_length,
                                          region_policy=cfg.model.region_policy, out_dir=run_dir.eval,
                                          precision=precision, log=log)
    summary["seconds"] = round(time.time() - t_start, 1)
    run_dir.write_metrics(summary)
    write_report(summary, run_dir.path)
    return summary

