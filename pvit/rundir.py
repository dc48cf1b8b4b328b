"""The run directory: its layout (one place builds every path), collision checks, provenance and resume log."""

from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from pvit.atomic import atomic_write_text
from pvit.errors import RunDirError

#: Distributions whose versions every run records.
VERSIONED = ("pvit", "torch", "transformers", "open_clip_torch", "timm", "mmengine", "omegaconf", "pluggy")


def versions() -> dict:
    """Python, platform and the versions of the libraries a run depends on."""
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in VERSIONED:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


class RunDir:
    """``RUN/`` of ``pvit run``::

        recipe.yaml resolved.yaml overrides.txt versions.json plugins.json launch.json [resumes.json]
        stages/<n>-<name>/engine/iter_N.pth   resume checkpoints (n counts from 1, as messages do)
        stages/<n>-<name>/export/             weights.safetensors, tokenizer/, meta.json, recipe.yaml
        stages/<n>-<name>/stage.json          steps, seconds, losses
        eval/                                 per-evaluator records and metrics.md
        metrics.json report.md plots/
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------ layout
    def stage(self, index: int, name: str) -> Path:
        """Folder of the stage at ``index`` (0-based position in ``stages:``)."""
        return self.path / "stages" / f"{index + 1}-{name}"

    def export(self, index: int, name: str) -> Path:
        return self.stage(index, name) / "export"

    def engine(self, index: int, name: str) -> Path:
        return self.stage(index, name) / "engine"

    def stage_json(self, index: int, name: str) -> Path:
        return self.stage(index, name) / "stage.json"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def resolved(self) -> Path:
        return self.path / "resolved.yaml"

    @property
    def launch(self) -> Path:
        return self.path / "launch.json"

    def finished(self, names: list[str]) -> set[int]:
        """Indices of the stages whose export exists."""
        return {i for i, n in enumerate(names) if (self.export(i, n) / "weights.safetensors").is_file()}

    def read_stage(self, index: int, name: str) -> dict:
        path = self.stage_json(index, name)
        return json.loads(path.read_text()) if path.is_file() else {}

    def read_launch(self) -> dict:
        return json.loads(self.launch.read_text()) if self.launch.is_file() else {}

    # ------------------------------------------------------------------------------------------ lifecycle
    def _has_content(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def check(self, *, resume: str | None, overwrite: bool) -> None:
        """Refuse to reuse the directory unless resuming or overwriting (read-only: every rank runs it)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} exists and is not a directory")
        if self._has_content() and not overwrite and resume is None:
            raise RunDirError(
                f"run directory {self.path} already exists; pass --resume auto to continue it, --overwrite to "
                "replace it, or choose another with run_dir=PATH"
            )

    def prepare(self, *, resume: str | None, overwrite: bool, log: Callable[[str], None] = print) -> int:
        """Check, then create (or empty, with ``overwrite``) the directory and delete stale temp files left by
        an interrupted write; returns how many temp files were removed."""
        self.check(resume=resume, overwrite=overwrite)
        if overwrite and self._has_content():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        stale = list(self.path.rglob("*.tmp-*"))
        for tmp in stale:
            if tmp.is_dir():  # a DeepSpeed checkpoint folder
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        if stale:
            log(f"removed {len(stale)} unfinished temp file(s) of an interrupted write in {self.path}")
        return len(stale)

    def write_provenance(self, loaded: Any, launch: dict | None = None) -> None:
        """recipe.yaml (as given), resolved.yaml, overrides.txt, versions.json, plugins.json, launch.json."""
        import yaml

        from pvit.plugins import plugin_infos
        from pvit.recipe import dump_yaml

        write = lambda name, text: atomic_write_text(self.path / name, text)  # noqa: E731
        raw = yaml.safe_dump(loaded.raw, sort_keys=False).split("\n")
        write("recipe.yaml", "\n".join(_scrubbed(loaded, raw)))
        write("resolved.yaml", dump_yaml(loaded.cfg, resolve=True))
        write("overrides.txt", "\n".join(_scrubbed(loaded, loaded.overrides)) + "\n")
        write("versions.json", json.dumps(versions(), indent=2))
        write("plugins.json", json.dumps([i.as_dict() for i in plugin_infos()], indent=2))
        if launch is not None:
            write("launch.json", json.dumps(launch, indent=2))

    def append_resume(self, loaded: Any, launch: dict, resume: str, check: Any) -> None:
        """Keep the run's provenance and record this resume (its overrides, processes and recipe changes)."""
        path = self.path / "resumes.json"
        try:
            history = json.loads(path.read_text()) if path.is_file() else []
        except (OSError, ValueError):
            history = []
        history.append({**launch, "resume": resume, "overrides": _scrubbed(loaded, loaded.overrides),
                        "versions": versions(), **(check.as_dict() if check is not None else {})})
        atomic_write_text(path, json.dumps(history, indent=2, default=str))

    def write_stage(self, index: int, name: str, info: dict) -> None:
        atomic_write_text(self.stage_json(index, name), json.dumps(info))

    def write_metrics(self, summary: dict) -> None:
        atomic_write_text(self.metrics, json.dumps(summary, indent=2, default=str))


def _scrubbed(loaded: Any, lines: list[str]) -> list[str]:
    """``lines`` with any secret value that was written literally into the recipe or an override redacted."""
    from pvit.secrets import scrub, secret_env_values

    secrets = secret_env_values(loaded.raw)
    return [scrub(x, secrets) for x in lines]
