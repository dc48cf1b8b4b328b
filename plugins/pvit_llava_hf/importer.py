"""``pvit import llava-hf CHECKPOINT OUT``: a llava-hf checkpoint as a self-contained pvit folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import typer


def llava_recipe(path: str, *, dtype: str = "float32", name: str = "llava-hf", max_length: int | None = None):
    """The recipe config (no stages) of a llava-hf checkpoint used as it is: its three parts, no region encoder,
    llava-hf's prompt format (``plain``: ``USER: <image>\\n... ASSISTANT:``)."""
    from omegaconf import OmegaConf

    from pvit.recipe_schema import Recipe

    from .checkpoint import read_config

    cfg, _ = read_config(path, None, "pvit import llava-hf")
    if max_length is None:
        max_length = int(getattr(cfg.text_config, "max_position_embeddings", 2048) or 2048)
    part = {"path": str(path)}
    model = {"llm": {"name": "llava-hf", "options": {**part, "dtype": dtype}},
             "image_encoder": {"name": "llava-hf", "options": {**part, "dtype": dtype}},
             "projector": {"name": "llava-hf", "options": dict(part)},
             "region_encoder": None, "template": "plain", "max_length": max_length}
    return OmegaConf.merge(OmegaConf.structured(Recipe), {"name": name, "model": model, "engine": {"device": "cpu"}})


def import_checkpoint(path: str, out: str | Path, *, dtype: str = "float32", overwrite: bool = False,
                      log: Callable[[str], None] = print) -> Path:
    """Load the checkpoint through the llava-hf components and write it with [pvit.export.write][]."""
    from pvit.compose import build_model
    from pvit.export import write
    from pvit.templates import get_template

    cfg = llava_recipe(path, dtype=dtype, name=Path(str(path)).name or "llava-hf")
    model = build_model(cfg).eval()
    return write(model, cfg, get_template(cfg.model.template, model.llm.tokenizer), out, fmt="pvit",
                 name=cfg.name, source=str(path), overwrite=overwrite, log=log)


def import_llava_hf(
    checkpoint: str = typer.Argument(..., help="A llava-hf folder (LlavaForConditionalGeneration.save_pretrained), "
                                               "or a hub id in the local cache, e.g. llava-hf/llava-1.5-7b-hf."),
    out: Path = typer.Argument(..., help="The pvit folder to write."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16: the dtype of the weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT."),
):
    """Write a llava-hf checkpoint as a self-contained pvit folder (Predictor.from_pretrained and pvit chat load it;
    recipes start from the checkpoint itself with the llava-hf components)."""
    from pvit.cli import user_errors

    with user_errors():
        import_checkpoint(checkpoint, out, dtype=dtype, overwrite=overwrite, log=typer.echo)
