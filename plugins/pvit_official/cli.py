"""The ``pvit import pvit-official`` command."""

from __future__ import annotations

from pathlib import Path

import typer


def pvit_official(
    out: Path = typer.Argument(..., help="Folder to write the pvit export to."),
    delta: Path = typer.Option(..., "--delta", help="PVIT's delta folder (config.json, pytorch_model-*.bin, index)."),
    base: Path = typer.Option(..., "--base", help="LLaMA-7B in Hugging Face format (the delta's base)."),
    regionclip: Path = typer.Option(..., "--regionclip",
                                    help="RegionCLIP checkpoint (regionclip_pretrained-cc_rn50x4.pth)."),
    clip: Path = typer.Option(..., "--clip", help="CLIP ViT-L/14 folder (openai/clip-vit-large-patch14, HF format)."),
    regionclip_model: str = typer.Option("RN50x4", "--regionclip-model",
                                         help="RegionCLIP architecture (the regionclip option `model`)."),
    dtype: str = typer.Option("float16", "--dtype", help="float16 (as released), bfloat16 or float32."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT folder."),
):
    """Apply PVIT's released delta to LLaMA-7B and write a pvit export (Predictor, `pvit serve`, `pvit eval`)."""
    from pvit.cli import user_errors

    with user_errors():
        from pvit_official.convert import import_release

        import_release(delta, base, regionclip, clip, out, regionclip_model=regionclip_model, dtype=dtype,
                       overwrite=overwrite, log=typer.echo)


def add_commands(app: typer.Typer) -> None:
    from pvit.cli import command_group

    command_group(app, "import").command("pvit-official")(pvit_official)
