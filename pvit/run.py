"""Running a recipe: check it, plan it, build the model, run its stages in order, evaluate, report."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pvit.errors import MissingWeightsError, RecipeError, RunDirError
from pvit.recipe import LoadedRecipe, dump_yaml

#: Option keys whose string values name local files or folders (checked before any work starts).
FILE_KEYS = {"path", "checkpoint", "pretrained", "annotations", "image_folder", "questions", "scene_graphs",
             "instructions", "images", "root"}
_WEIGHT_EXT = (".pt", ".pth", ".bin", ".safetensors", ".json", ".jsonl", ".yaml")


# ------------------------------------------------------------------------------------------- checks
def component_entries(cfg) -> list[tuple[str, str, Any]]:
    """(key path, kind, component config) of every component a recipe names."""
    out = []
    m = cfg.model
    for slot, kind in (("llm", "llm"), ("image_encoder", "image_encoder"), ("region_encoder", "region_encoder")):
        if m[slot] is not None:
            out.append((f"model.{slot}", kind, m[slot]))
    if m.image_encoder is not None:
        out.append(("model.projector", "projector", m.projector))
    if m.region_encoder is not None:
        out.append(("model.region_projector", "projector", m.region_projector))
    for i, st in enumerate(cfg.stages):
        out.append((f"stages[{i}].data", "dataset", st.data))
    for i, ev in enumerate(cfg.eval):
        out.append((f"eval[{i}]", "evaluator", ev))
    return out


def check_components(cfg) -> None:
    """Every component exists and its options fit its factory; all problems raised together."""
    from pvit.errors import UnknownComponentError
    from pvit.model import _plain
    from pvit.plugins import check_options

    errors = []
    for where, kind, comp in component_entries(cfg):
        try:
            errors += check_options(kind, comp.name, _plain(dict(comp.options or {})), where=where)
        except UnknownComponentError as e:
            errors.append(str(e))
    names = [s.name for s in cfg.stages]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        errors.append(f"stages: stage names must be unique; repeated: {', '.join(sorted(dup))}")
    for i, st in enumerate(cfg.stages):
        if st.init_from and st.init_from not in names[:i] and not _looks_like_path(st.init_from):
            errors.append(f"stages[{i}].init_from: {st.init_from!r} is neither an earlier stage ({', '.join(names[:i]) or 'none'}) "
                          "nor a path to an export")
    if errors:
        raise RecipeError(errors)


def _looks_like_path(v: str) -> bool:
    return "/" in v or v.endswith(_WEIGHT_EXT) or os.path.exists(v)


def _walk_files(node: Any, path: str, out: list[tuple[str, str]]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{path}.{k}"
            if k in FILE_KEYS and isinstance(v, str) and v:
                out.append((key, v))
            elif k == "image_roots" and isinstance(v, dict):
                out += [(f"{key}.{s}", d) for s, d in v.items() if isinstance(d, str)]
            else:
                _walk_files(v, key, out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk_files(v, f"{path}[{i}]", out)


def missing_files(cfg) -> list[tuple[str, str]]:
    """(key path, value) of file options that name nothing on this machine (hub ids count as missing offline)."""
    from omegaconf import OmegaConf

    from pvit.runtime import offline

    found: list[tuple[str, str]] = []
    for where, _kind, comp in component_entries(cfg):
        _walk_files(OmegaConf.to_container(comp.options, resolve=True) if comp.options is not None else {},
                    f"{where}.options", found)
    missing = []
    for key, value in found:
        p = Path(os.path.expanduser(value))
        if p.exists():
            continue
        hub_id = value.count("/") == 1 and not value.startswith((".", "/", "~")) and not value.endswith(_WEIGHT_EXT)
        if hub_id and not offline():
            continue
        if key.endswith(".pretrained") and "/" not in value and not value.endswith(_WEIGHT_EXT):
            continue  # an open_clip pretrained tag
        missing.append((key, value))
    return missing


# ------------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    components: list[dict] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    total: int = 0

    def as_dict(self) -> dict:
        return {"components": self.components, "stages": self.stages, "total_parameters": self.total}


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def build_model(cfg):
    """Build the PVITModel a recipe describes."""
    from pvit.model import PVITModel

    return PVITModel.from_config(cfg.model)


def plan_model(model, cfg) -> Plan:
    """Parameters per component and trainable parameters per stage."""
    from pvit.model import SLOTS

    plan = Plan()
    for slot in ("image_encoder", "region_encoder", "projector", "region_projector", "llm", "bbox_embed"):
        mod = getattr(model, slot, None)
        if mod is None:
            continue
        comp = cfg.model[slot] if slot in cfg.model and slot != "bbox_embed" else None
        plan.components.append({"slot": slot, "name": comp.name if comp is not None else "linear",
                                "parameters": _count(mod)})
    plan.total = _count(model)
    emb_dim = model.llm.hidden_size
    for st in cfg.stages:
        n = 0
        per: dict[str, int] = {}
        seen = set()
        for s in st.trainable:
            if s not in SLOTS:
                continue
            if s == "new_token_embeddings":
                if "llm" in st.trainable:
                    continue
                k = len(model.new_token_ids) * emb_dim * len(model.slot_parameters(s))
            else:
                ps = [p for p in model.slot_parameters(s) if id(p) not in seen]
                seen.update(id(p) for p in ps)
                k = sum(p.numel() for p in ps)
            per[s] = k
            n += k
        plan.stages.append({"name": st.name, "trainable": per, "trainable_total": n,
                            "data": st.data.name, "lr": st.optim.lr})
    return plan


def make_plan(cfg) -> Plan:
    """Plan a recipe without reading any weights: components are built on the meta device."""
    from pvit.runtime import planning

    with planning():
        model = build_model(cfg)
    return plan_model(model, cfg)


# ------------------------------------------------------------------------------------------- run dir
def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("pvit", "torch", "transformers", "open_clip_torch", "timm", "mmengine", "omegaconf", "pluggy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def prepare_run_dir(run_dir: Path, *, resume: str | None, overwrite: bool) -> None:
    """Refuse to reuse a run directory unless resuming or overwriting; clean stale temp files."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if overwrite:
            shutil.rmtree(run_dir)
        elif resume is None:
            raise RunDirError(
                f"run directory {run_dir} already exists; pass --resume auto to continue it, --overwrite to "
                "replace it, or choose another with run_dir=PATH"
            )
    elif resume not in (None, "auto"):
        pass
    run_dir.mkdir(parents=True, exist_ok=True)
    for tmp in run_dir.rglob("*.tmp-*"):
        tmp.unlink(missing_ok=True)


def write_provenance(loaded: LoadedRecipe, run_dir: Path) -> None:
    import yaml

    from pvit.checkpoints import atomic_write_text
    from pvit.plugins import plugin_infos

    atomic_write_text(run_dir / "recipe.yaml", yaml.safe_dump(loaded.raw, sort_keys=False))
    atomic_write_text(run_dir / "resolved.yaml", dump_yaml(loaded.cfg, resolve=True))
    atomic_write_text(run_dir / "overrides.txt", "\n".join(loaded.overrides) + "\n")
    atomic_write_text(run_dir / "versions.json", json.dumps(versions(), indent=2))
    atomic_write_text(run_dir / "plugins.json", json.dumps([i.as_dict() for i in plugin_infos()], indent=2))


# ------------------------------------------------------------------------------------------- run
def run_recipe(loaded: LoadedRecipe, *, resume: str | None = None, overwrite: bool = False,
               log: Callable[[str], None] = print) -> dict:
    """Run every stage of a recipe, then its evaluations; returns the summary written to ``metrics.json``."""
    import torch

    from pvit.checkpoints import atomic_write_text, export_stage, load_export
    from pvit.data.templates import get_template
    from pvit.engine import run_stage
    from pvit.evaluate import make_collator, run_evaluations
    from pvit.model import _plain
    from pvit.plugins import build
    from pvit.report import write_report

    cfg = loaded.cfg
    check_components(cfg)
    missing = missing_files(cfg)
    if missing:
        lines = "\n".join(f"  - {k}: {v}" for k, v in missing)
        raise MissingWeightsError(
            f"{loaded.path} needs files that are not on this machine:\n{lines}\n"
            f"Get them as described in the comments of {loaded.path} (and docs/reproduce.md), point the recipe's "
            "paths at them (e.g. with environment variables or KEY=VALUE overrides), or run "
            "recipes/pvit_tiny.yaml, which runs anywhere."
        )
    run_dir = Path(cfg.run_dir)
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    write_provenance(loaded, run_dir)
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    log(f"pvit: building model for recipe {cfg.name!r}")
    model = build_model(cfg)
    plan = plan_model(model, cfg)
    template = get_template(cfg.model.template, model.llm.tokenizer)
    summary: dict[str, Any] = {"recipe": cfg.name, "run_dir": str(run_dir), "plan": plan.as_dict(), "stages": [],
                               "versions": versions()}
    for i, st in enumerate(cfg.stages):
        stage_dir = run_dir / "stages" / f"{i}-{st.name}"
        export_dir = stage_dir / "export"
        if st.init_from:
            src = (run_dir / "stages" / f"{[s.name for s in cfg.stages].index(st.init_from)}-{st.init_from}" / "export"
                   if st.init_from in [s.name for s in cfg.stages] else Path(st.init_from))
            load_export(model, src)
        if resume is not None and (export_dir / "weights.safetensors").is_file():
            load_export(model, export_dir)
            log(f"stage {st.name}: already finished in {stage_dir}; loaded its export")
            prev = json.loads((stage_dir / "stage.json").read_text()) if (stage_dir / "stage.json").is_file() else {}
            summary["stages"].append(prev)
            continue
        if plan.stages[i]["trainable_total"] == 0:
            # e.g. stage 1 of the `none` ablation: no region projector and no new tokens to train
            log(f"stage {st.name}: nothing to train in this model ({', '.join(st.trainable)} are absent or empty); "
                "skipped")
            summary["stages"].append({"name": st.name, "steps": 0, "skipped": True, "losses": []})
            continue
        dataset = build("dataset", st.data.name, where=f"stages[{i}].data", **_plain(dict(st.data.options or {})))
        collator = make_collator(model, template, cfg.model.max_length, cfg.model.region_policy, generate=False)
        engine_dir = stage_dir / "engine"
        resume_from = None
        if resume is not None:
            resume_from = _resume_point(engine_dir, resume, log)
        log(f"stage {i + 1}/{len(cfg.stages)} {st.name}: {len(dataset)} samples, trainable "
            f"{', '.join(st.trainable)} ({plan.stages[i]['trainable_total']:,} parameters)")
        result = run_stage(model, st, dataset=dataset, collator=collator, work_dir=engine_dir,
                           engine_cfg=cfg.engine, seed=cfg.seed + i, resume_from=resume_from)
        export_stage(model, list(st.trainable), export_dir, {"stage": st.name, "recipe": cfg.name})
        atomic_write_text(export_dir / "recipe.yaml", dump_yaml(cfg))
        info = {"name": st.name, "steps": result.steps, "seconds": round(result.seconds, 1),
                "trainable": result.trainable, "losses": result.losses,
                "final_loss": result.losses[-1][1] if result.losses else None}
        atomic_write_text(stage_dir / "stage.json", json.dumps(info))
        summary["stages"].append(info)
        log(f"stage {st.name}: {result.steps} steps in {result.seconds:.0f} s, final loss "
            f"{info['final_loss']:.4f}" if info["final_loss"] is not None else f"stage {st.name}: done")
    if cfg.eval:
        log("evaluating")
        precision = cfg.stages[-1].optim.precision if cfg.stages else "fp32"
        summary["eval"] = run_evaluations(model, list(cfg.eval), template, max_length=cfg.model.max_length,
                                          region_policy=cfg.model.region_policy, out_dir=run_dir / "eval",
                                          precision=precision, log=log)
    summary["seconds"] = round(time.time() - t_start, 1)
    atomic_write_text(run_dir / "metrics.json", json.dumps(summary, indent=2, default=str))
    write_report(summary, run_dir)
    return summary


def _resume_point(engine_dir: Path, resume: str, log) -> str | None:
    """The engine checkpoint to resume from: ``auto`` takes the newest readable one, a path must exist."""
    from pvit.errors import CheckpointError

    if resume != "auto":
        p = Path(resume)
        if not p.is_file():
            raise RunDirError(f"--resume {resume}: no such checkpoint file")
        return str(p)
    if not engine_dir.is_dir():
        return None
    ckpts = sorted(engine_dir.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]), reverse=True)
    for p in ckpts:
        if _readable(p):
            return str(p)
        log(f"resume: skipping unreadable checkpoint {p}")
    if ckpts:
        raise CheckpointError(f"--resume auto: no readable checkpoint in {engine_dir} (tried {len(ckpts)})")
    return None


def _readable(p: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False
