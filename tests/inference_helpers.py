"""Shared by the inference tests: the micro recipe trained once per test session, and a tiny test image."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

import pvit
from pvit.run import run_recipe

MICRO = Path(__file__).parent / "recipes" / "micro.yaml"
_RUN: dict[str, Path] = {}


def trained_micro(tmp_path_factory) -> Path:
    """The run folder of micro.yaml, trained on first use and reused by every inference test of the session."""
    if "run" not in _RUN:
        run = tmp_path_factory.mktemp("inference") / "run"
        run_recipe(pvit.load_recipe(MICRO, [f"run_dir={run}"]), overwrite=True, log=lambda s: None)
        _RUN["run"] = run
    return _RUN["run"]


def stage1_export(run: Path) -> Path:
    """The stage-1 export: a model that still answers with words (the full micro run mostly stops at once)."""
    return run / "stages" / "2-stage1" / "export"


def image(w: int = 64, h: int = 48) -> Image.Image:
    return Image.new("RGB", (w, h), "red")
