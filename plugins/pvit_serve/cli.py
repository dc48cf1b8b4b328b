"""The ``pvit serve`` command: load a run or an export and serve it with uvicorn (loopback unless asked)."""

from __future__ import annotations

from pathlib import Path

import typer


def add_commands(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        path: Path = typer.Argument(..., help="A run folder or a stage export folder."),
        host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback exposes the model."),
        port: int = typer.Option(8000, help="TCP port."),
        device: str = typer.Option(None, help="cpu, cuda, cuda:1... (default: the recipe's engine.device)."),
        max_batch: int = typer.Option(16, help="Most requests generated together in one batch."),
        max_wait_ms: float = typer.Option(10.0, help="How long a batch waits for more requests (ms)."),
        max_queue: int = typer.Option(64, help="Requests queued or streaming at once; beyond, 503 + Retry-After."),
        max_regions: int = typer.Option(16, help="Most regions per request."),
        max_image_mb: float = typer.Option(10.0, help="Largest image accepted (MB)."),
        allow_local_files: bool = typer.Option(False, help="Accept file:// image URLs (files on this machine)."),
        allow_remote_images: bool = typer.Option(False, help="Fetch http(s) image URLs."),
    ):
        """Serve a trained model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models, /health)."""
        from pvit.cli import load_predictor, require_modules, warn_if_exposed

        require_modules("serve", "serve", "fastapi and uvicorn", "fastapi", "uvicorn")
        import uvicorn

        from pvit_serve.app import ServeOptions, create_app
        from pvit_serve.parse import Limits

        predictor = load_predictor(path, device)
        warn_if_exposed(host)
        opts = ServeOptions(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)
        limits = Limits(max_image_bytes=int(max_image_mb * 1024 * 1024), max_regions=max_regions,
                        allow_local_files=allow_local_files, allow_remote_images=allow_remote_images)
        typer.echo(f"serving {predictor.name} on http://{host}:{port}/v1")
        uvicorn.run(create_app(predictor, opts, limits), host=host, port=port, log_level="warning")
