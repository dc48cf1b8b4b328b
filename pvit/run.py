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
from pvit.recipe import LoadedRecipe, dump_yaml, options_of

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
    from pvit.plugins import check_options

    errors = []
    for where, kind, comp in component_entries(cfg):
        try:
            errors += check_options(kind, comp.name, options_of(comp), where=where)
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
    from pvit.runtime import offline

    found: list[tuple[str, str]] = []
    for where, _kind, comp in component_entries(cfg):
        _walk_files(options_of(comp), f"{where}.options", found)
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
                k = len(model.trainable_token_ids) * emb_dim * len(model.slot_parameters(s))
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


def _has_content(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(run_dir.iterdir())


def check_run_dir(run_dir: Path, *, resume: str | None, overwrite: bool) -> None:
    """Refuse to reuse a run directory unless resuming or overwriting (read-only: every rank runs it)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} exists and is not a directory")
    if _has_content(run_dir) and not overwrite and resume is None:
        raise RunDirError(
            f"run directory {run_dir} already exists; pass --resume auto to continue it, --overwrite to "
            "replace it, or choose another with run_dir=PATH"
        )


def prepare_run_dir(run_dir: Path, *, resume: str | None, overwrite: bool, log: Callable[[str], None] = print) -> int:
    """Check the run directory, then create (or empty, with ``overwrite``) it and delete stale temp files left
    by an interrupted write; returns how many temp files were removed."""
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if overwrite and _has_content(run_dir):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = list(run_dir.rglob("*.tmp-*"))
    for tmp in stale:
        if tmp.is_dir():  # a DeepSpeed checkpoint folder
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    if stale:
        log(f"removed {len(stale)} unfinished temp file(s) of an interrupted write in {run_dir}")
    return len(stale)


def write_provenance(loaded: LoadedRecipe, run_dir: Path, launch: dict | None = None) -> None:
    """recipe.yaml (as given), resolved.yaml, overrides.txt, versions.json, plugins.json, launch.json."""
    from pvit.checkpoints import atomic_write_text
    from pvit.plugins import plugin_infos

    atomic_write_text(run_dir / "recipe.yaml", _scrubbed_raw(loaded))
    atomic_write_text(run_dir / "resolved.yaml", dump_yaml(loaded.cfg, resolve=True))
    atomic_write_text(run_dir / "overrides.txt", "\n".join(_scrub_list(loaded, loaded.overrides)) + "\n")
    atomic_write_text(run_dir / "versions.json", json.dumps(versions(), indent=2))
    atomic_write_text(run_dir / "plugins.json", json.dumps([i.as_dict() for i in plugin_infos()], indent=2))
    if launch is not None:
        atomic_write_text(run_dir / "launch.json", json.dumps(launch, indent=2))


def _scrubbed_raw(loaded: LoadedRecipe) -> str:
    """The recipe as given (interpolations unresolved), with any secret value that was written literally
    into an override redacted."""
    import yaml

    return "\n".join(_scrub_list(loaded, yaml.safe_dump(loaded.raw, sort_keys=False).split("\n")))


def _scrub_list(loaded: LoadedRecipe, lines: list[str]) -> list[str]:
    from pvit.recipe import _scrub, _secret_env_values

    secrets = _secret_env_values(loaded.raw)
    return [_scrub(x, secrets) for x in lines]


# ------------------------------------------------------------------------------------------- resume
#: What a changed recipe key does when a run resumes (documented in docs and RELIABILITY.md item 6).
RESUME_RULES = """\
Resuming with a changed recipe (the resolved recipe saved in the run directory is compared key by key):
  seed                                  warning; the run's original seed is kept (the checkpoint's RNG state
                                        and data order depend on it); use --overwrite to start over
  model.*                               error: the checkpoints and exports belong to the old model
  stages: names or order changed        error; stages appended after the existing ones are fine
  stages[i].data, .trainable, .init_from of a stage not yet finished: error (another run; use a new run_dir)
  stages[i].optim.batch_size, .grad_accum, or the number of processes, for a stage not yet finished:
                                        warning: the global batch changes, so losses will not equal those of an
                                        uninterrupted run; training continues from the saved step and data position
  stages[i].optim.lr, .betas, .weight_decay, .warmup_ratio, .schedule, .min_lr_ratio of a stage not yet
                                        finished: warning; ignored: the optimizer and its lr schedule continue as
                                        saved in the checkpoint
  stages[i].optim.* (other keys: max_steps, epochs, clip_grad, precision) of a stage not yet finished: warning;
                                        the new value applies from the resumed step
  any key of a stage already finished:  warning; ignored (the stage is not trained again)
  engine.strategy                       warning
  anything else (eval, engine logging, name, paths): noted in resumes.json
"""


#: Optimizer settings a resumed stage takes from its checkpoint (optimizer param groups, scheduler state).
_FROM_CHECKPOINT = ("lr", "betas", "weight_decay", "warmup_ratio", "schedule", "min_lr_ratio")


@dataclass
class ResumeCheck:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    keep: dict[str, Any] = field(default_factory=dict)  # key -> the run's value, which takes precedence

    def as_dict(self) -> dict:
        return {"errors": self.errors, "warnings": self.warnings, "notes": self.notes}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
        out = {}
        for i, v in enumerate(node):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: node}


def check_resume(old: dict, new: dict, *, finished: set[int], old_world: int, new_world: int) -> ResumeCheck:
    """Compare the run's resolved recipe ``old`` with the one given now; see ``RESUME_RULES``."""
    import re

    res = ResumeCheck()
    old_names = [s.get("name") for s in old.get("stages", [])]
    new_names = [s.get("name") for s in new.get("stages", [])]
    common = min(len(old_names), len(new_names))
    if old_names[:common] != new_names[:common] or len(new_names) < len(old_names):
        res.errors.append(f"stages: the run has stages {old_names}, the recipe now has {new_names}; only appending "
                          "stages is allowed when resuming")
        return res
    a, b = _flatten(old), _flatten(new)
    for key in sorted(set(a) | set(b), key=str):
        va, vb = a.get(key, "<unset>"), b.get(key, "<unset>")
        if va == vb:
            continue
        change = f"{key}: {va!r} -> {vb!r}"
        m = re.match(r"stages\[(\d+)\]\.(\w+)(?:\.(\w+))?", key)
        if key == "seed":
            res.keep["seed"] = va
            res.warnings.append(f"{change}; resuming keeps the run's seed {va!r} (use --overwrite to start over)")
        elif key.startswith("model."):
            res.errors.append(f"{change}: the run's checkpoints and exports belong to the old model")
        elif m:
            i, part, sub = int(m.group(1)), m.group(2), m.group(3)
            if i >= len(old_names):
                res.notes.append(f"{change} (new stage)")
            elif i in finished:
                res.warnings.append(f"{change}: stage {old_names[i]!r} already finished; the change is ignored")
            elif part in ("data", "trainable", "init_from"):
                res.errors.append(f"{change}: stage {old_names[i]!r} was started with the old value; use a new "
                                  "run_dir (or --overwrite) to train it with the new one")
            elif part == "optim" and sub in ("batch_size", "grad_accum"):
                res.warnings.append(f"{change}: the global batch of stage {old_names[i]!r} changes; its losses will "
                                    "not equal those of an uninterrupted run")
            elif part == "optim" and sub in _FROM_CHECKPOINT:
                res.warnings.append(f"{change}: ignored for stage {old_names[i]!r}: the optimizer and its lr schedule "
                                    "continue as saved in the checkpoint")
            else:
                res.warnings.append(f"{change}: applies from the resumed step")
        elif key == "engine.strategy":
            res.warnings.append(f"{change}")
        else:
            res.notes.append(change)
    if old_world != new_world:
        unfinished = [n for i, n in enumerate(old_names) if i not in finished]
        if unfinished:
            res.warnings.append(f"processes: {old_world} -> {new_world}: the global batch of stage(s) "
                                f"{', '.join(unfinished)} changes unless batch_size changed to match")
        else:
            res.notes.append(f"processes: {old_world} -> {new_world}")
    return res


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RunDirError(f"cannot read {path} to check the resumed recipe against the run's ({e})") from None
    return data if isinstance(data, dict) else {}


def _stage_dirs(run_dir: Path, cfg) -> list[Path]:
    return [run_dir / "stages" / f"{i}-{st.name}" for i, st in enumerate(cfg.stages)]


def explicit_resume_point(run_dir: Path, cfg, path: str) -> tuple[int, str]:
    """``--resume PATH``: (stage index, checkpoint) after checking that PATH exists, is readable and belongs
    to one of this run's stages (resume checkpoints are unpickled, so only our own run directory is trusted)."""
    from pvit.errors import CheckpointError

    p = Path(path)
    if not p.exists():
        raise RunDirError(f"--resume {path}: no such checkpoint ({p.resolve()} does not exist)")
    dirs = _stage_dirs(run_dir, cfg)
    for i, d in enumerate(dirs):
        if p.resolve().parent == (d / "engine").resolve():
            if not _readable(p):
                raise CheckpointError(f"--resume {path}: {p} is truncated or not a checkpoint")
            return i, str(p)
    raise RunDirError(
        f"--resume {path}: not a checkpoint of this run's stages (expected {run_dir}/stages/<i>-<name>/engine/"
        "iter_N.pth); resume checkpoints are unpickled, so only those inside the run directory are trusted"
    )


def resume_point(engine_dir: Path, log: Callable[[str], None]) -> str | None:
    """``--resume auto`` for one stage: its newest readable engine checkpoint; unreadable ones are skipped
    with a message naming them; an error if there are checkpoints but none is readable."""
    from pvit.errors import CheckpointError

    if not engine_dir.is_dir():
        return None
    ckpts = sorted((p for p in engine_dir.glob("iter_*.pth") if p.stem.split("_")[1].isdigit()),
                   key=lambda p: int(p.stem.split("_")[1]), reverse=True)
    skipped = []
    for p in ckpts:
        if _readable(p):
            if skipped:
                log(f"resume: skipped unreadable checkpoint(s) {', '.join(map(str, skipped))}; using {p}")
            return str(p)
        skipped.append(p)
    if ckpts:
        raise CheckpointError(f"--resume auto: no readable checkpoint in {engine_dir} (unreadable: "
                              f"{', '.join(p.name for p in skipped)})")
    return None


def _readable(p: Path) -> bool:
    """A torch zip checkpoint whose every member passes its CRC check (nothing is unpickled)."""
    import zipfile

    if p.is_dir():  # DeepSpeed writes folders: its model states plus optimizer shards
        files = [f for f in p.iterdir() if f.is_file()]
        return any(f.name.endswith("model_states.pt") for f in files) and all(_readable(f) for f in files)
    try:
        with zipfile.ZipFile(p) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


# ------------------------------------------------------------------------------------------- run
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


def _run(loaded: LoadedRecipe, info, *, resume: str | None, overwrite: bool, log: Callable[[str], None]) -> dict:
    import torch

    from pvit.checkpoints import atomic_write_text, export_stage, load_export
    from pvit.data.templates import get_template
    from pvit.engine import barrier, resolve_strategy, run_stage
    from pvit.evaluate import make_collator, run_evaluations
    from pvit.plugins import build
    from pvit.report import write_report

    cfg = loaded.cfg
    check_components(cfg)
    strategy = resolve_strategy(str(cfg.engine.strategy), info.world)
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
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    resuming = resume is not None and (run_dir / "resolved.yaml").is_file() and not overwrite
    if resume is not None and not resuming and resume != "auto":
        raise RunDirError(f"--resume {resume}: {run_dir} holds no run to resume (no resolved.yaml)")
    if resume == "auto" and not resuming:
        log(f"--resume auto: {run_dir} holds no run yet; starting it from the beginning")
    dirs = _stage_dirs(run_dir, cfg)
    explicit: tuple[int, str] | None = None
    if resuming and resume != "auto":
        explicit = explicit_resume_point(run_dir, cfg, resume)
    finished = set()
    if resuming:
        finished = (set(range(explicit[0])) if explicit else
                    {i for i, d in enumerate(dirs) if (d / "export" / "weights.safetensors").is_file()})
    launch = {"world_size": info.world, "strategy": strategy, "argv": sys.argv,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    check = None
    if resuming:
        import yaml

        old_launch = json.loads((run_dir / "launch.json").read_text()) if (run_dir / "launch.json").is_file() else {}
        check = check_resume(_read_yaml(run_dir / "resolved.yaml"), yaml.safe_load(dump_yaml(cfg, resolve=True)),
                             finished=finished, old_world=int(old_launch.get("world_size", info.world)),
                             new_world=info.world)
        if check.errors:
            raise RunDirError(f"cannot resume {run_dir} with this recipe:\n"
                              + "\n".join(f"  - {e}" for e in check.errors)
                              + "\n(see RESUME_RULES in pvit/run.py; use --overwrite or a new run_dir to start over)")
        for w in check.warnings:
            log(f"warning: resume: {w}")
        for key, value in check.keep.items():
            cfg[key] = value
    barrier()  # every rank has checked before rank 0 changes anything
    if info.main:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, log=log)
        if resuming:
            _append_resume(run_dir, loaded, launch, resume, check)
        else:
            write_provenance(loaded, run_dir, launch)
    barrier()
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    log(f"pvit: building model for recipe {cfg.name!r}" + (f" ({info.world} processes, {strategy})"
                                                          if info.world > 1 else ""))
    model = build_model(cfg)
    plan = plan_model(model, cfg)
    template = get_template(cfg.model.template, model.llm.tokenizer)
    summary: dict[str, Any] = {"recipe": cfg.name, "run_dir": str(run_dir), "plan": plan.as_dict(), "stages": [],
                               "versions": versions(), "world_size": info.world, "strategy": strategy,
                               "rank": info.rank}
    names = [s.name for s in cfg.stages]
    for i, st in enumerate(cfg.stages):
        stage_dir = dirs[i]
        export_dir = stage_dir / "export"
        if st.init_from:
            src = dirs[names.index(st.init_from)] / "export" if st.init_from in names else Path(st.init_from)
            load_export(model, src)
        if i in finished:
            load_export(model, export_dir)
            log(f"stage {st.name}: already finished in {stage_dir}; loaded its export")
            prev = json.loads((stage_dir / "stage.json").read_text()) if (stage_dir / "stage.json").is_file() else {}
            summary["stages"].append(prev)
            continue
        dataset = build("dataset", st.data.name, where=f"stages[{i}].data", **options_of(st.data))
        collator = make_collator(model, template, cfg.model.max_length, cfg.model.region_policy, generate=False)
        engine_dir = stage_dir / "engine"
        resume_from = None
        if explicit is not None and explicit[0] == i:
            resume_from = explicit[1]
        elif resuming:
            resume_from = resume_point(engine_dir, log)
            if resume_from is None:
                log(f"stage {st.name}: no checkpoint in {engine_dir}; training it from step 0")
        if resume_from:
            log(f"stage {st.name}: resuming from {resume_from}")
        log(f"stage {i + 1}/{len(cfg.stages)} {st.name}: {len(dataset)} samples, trainable "
            f"{', '.join(st.trainable)} ({plan.stages[i]['trainable_total']:,} parameters)")
        result = run_stage(model, st, dataset=dataset, collator=collator, work_dir=engine_dir,
                           engine_cfg=cfg.engine, seed=cfg.seed + i, resume_from=resume_from)
        info_ = {"name": st.name, "steps": result.steps, "seconds": round(result.seconds, 1),
                 "trainable": result.trainable, "losses": result.losses,
                 "final_loss": result.losses[-1][1] if result.losses else None,
                 "world_size": result.world, "strategy": result.strategy}
        if info.main:
            export_stage(model, list(st.trainable), export_dir, {"stage": st.name, "recipe": cfg.name})
            atomic_write_text(export_dir / "recipe.yaml", dump_yaml(cfg))
            atomic_write_text(stage_dir / "stage.json", json.dumps(info_))
        barrier()  # the export exists before any rank moves on (a later stage may init_from it)
        summary["stages"].append(info_)
        log(f"stage {st.name}: {result.steps} steps in {result.seconds:.0f} s, final loss "
            f"{info_['final_loss']:.4f}" if info_["final_loss"] is not None else f"stage {st.name}: done")
    if not info.main:
        return summary
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


def _append_resume(run_dir: Path, loaded: LoadedRecipe, launch: dict, resume: str, check) -> None:
    """Keep the run's provenance and record this resume (its overrides, processes and recipe changes)."""
    from pvit.checkpoints import atomic_write_text

    path = run_dir / "resumes.json"
    try:
        history = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError):
        history = []
    history.append({**launch, "resume": resume, "overrides": _scrub_list(loaded, loaded.overrides),
                    "versions": versions(), **(check.as_dict() if check is not None else {})})
    atomic_write_text(path, json.dumps(history, indent=2, default=str))
