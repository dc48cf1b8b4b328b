"""The ``pvit demo`` command: load a run or an export and serve the box-drawing web page (loopback unless asked)."""

from __future__ import annotations

import time
from pathlib import Path

import typer


def add_commands(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        path: Path = typer.Argument(..., help="A run folder or a stage export folder."),
        host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback exposes the model."),
        port: int = typer.Option(7860, help="TCP port."),
        device: str = typer.Option(None, help="cpu, cuda... (default: the recipe's engine.device)."),
        max_new_tokens: int = typer.Option(128, help="Most tokens per answer."),
        temperature: float = typer.Option(0.0, help="0: greedy; > 0: sampled at this temperature."),
        seed: int = typer.Option(None, help="Seed for sampling."),
    ):
        """A web page: upload an image, draw boxes (<region1>, <region2>...), ask, see the streamed answer."""
        from pvit.cli import load_predictor, require_modules, warn_if_exposed

        require_modules("demo", "demo", "gradio and gradio-image-annotation", "gradio", "gradio_image_annotation")
        from pvit_demo.app import build_demo, launch

        predictor = load_predictor(path, device)
        warn_if_exposed(host)
        page = build_demo(predictor, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                          temperature=temperature or 1.0, seed=seed)
        try:
            launch(page, host, port)
        except OSError as e:
            why = "the port is in use" if "empty port" in str(e) else str(e)
            typer.secho(f"error: cannot serve on {host}:{port}: {why}; pick another --port", fg="red", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"pvit demo of {predictor.name} on http://{host}:{port} (Ctrl+C stops it)")
        try:
            while page.is_running:
                time.sleep(0.2)
        except KeyboardInterrupt:
            typer.echo("stopping")
        finally:
            page.close()
