"""Resuming a run: which stages are finished, where each unfinished one continues, and what a changed recipe
may change (``RESUME_RULES``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pvit.errors import CheckpointError, RunDirError
from pvit.rundir import RunDir


#: What a changed recipe key does when a run resumes (documented on the Reliability page, item 6).
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


def explicit_resume_point(run_dir: RunDir, names: list[str], path: str) -> tuple[int, str]:
    """``--resume PATH``: (stage index, checkpoint) after checking that PATH exists, is readable and belongs
    to one of this run's stages (resume checkpoints are unpickled, so only our own run directory is trusted)."""
    p = Path(path)
    if not p.exists():
        raise RunDirError(f"--resume {path}: no such checkpoint ({p.resolve()} does not exist)")
    for i, name in enumerate(names):
        if p.resolve().parent == run_dir.engine(i, name).resolve():
            if not _readable(p):
                raise CheckpointError(f"--resume {path}: {p} is truncated or not a checkpoint")
            return i, str(p)
    raise RunDirError(
        f"--resume {path}: not a checkpoint of this run's stages (expected {run_dir.path}/stages/<n>-<name>/engine/"
        "iter_N.pth); resume checkpoints are unpickled, so only those inside the run directory are trusted"
    )





def resume_point(engine_dir: Path, log: Callable[[str], None]) -> str | None:
    """``--resume auto`` for one stage: its newest readable engine checkpoint; unreadable ones are skipped
    with a message naming them; an error if there are checkpoints but none is readable."""
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


@dataclass
class Resume:
    """How a run starts: fresh, or resumed with some stages finished and one continuing from a checkpoint."""

    resuming: bool = False
    finished: set[int] = field(default_factory=set)
    explicit: tuple[int, str] | None = None
    check: ResumeCheck | None = None

    def checkpoint(self, index: int, engine_dir: Path, log: Callable[[str], None]) -> str | None:
        """The checkpoint stage ``index`` continues from (None: from step 0)."""
        if self.explicit is not None and self.explicit[0] == index:
            return self.explicit[1]
        return resume_point(engine_dir, log) if self.resuming else None


def plan_resume(run_dir: RunDir, cfg: Any, resume: str | None, *, overwrite: bool, world: int,
                log: Callable[[str], None]) -> Resume:
    """Decide how the run starts; for a resume, compare the recipe with the run's and apply ``RESUME_RULES``
    (errors raise, warnings are logged, kept values are written into ``cfg``)."""
    import yaml

    from pvit.recipe import dump_yaml

    names = [s.name for s in cfg.stages]
    res = Resume(resuming=resume is not None and run_dir.resolved.is_file() and not overwrite)
    if resume is not None and not res.resuming and resume != "auto":
        raise RunDirError(f"--resume {resume}: {run_dir.path} holds no run to resume (no resolved.yaml)")
    if resume == "auto" and not res.resuming:
        log(f"--resume auto: {run_dir.path} holds no run yet; starting it from the beginning")
    if not res.resuming:
        return res
    if resume != "auto":
        res.explicit = explicit_resume_point(run_dir, names, resume)
    res.finished = set(range(res.explicit[0])) if res.explicit else run_dir.finished(names)
    old_world = int(run_dir.read_launch().get("world_size", world))
    res.check = check_resume(_read_yaml(run_dir.resolved), yaml.safe_load(dump_yaml(cfg, resolve=True)),
                             finished=res.finished, old_world=old_world, new_world=world)
    if res.check.errors:
        raise RunDirError(f"cannot resume {run_dir.path} with this recipe:\n"
                          + "\n".join(f"  - {e}" for e in res.check.errors)
                          + "\n(see RESUME_RULES in pvit/resume.py; use --overwrite or a new run_dir to start over)")
    for w in res.check.warnings:
        log(f"warning: resume: {w}")
    for key, value in res.check.keep.items():
        cfg[key] = value
    return res
