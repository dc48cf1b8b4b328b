"""The ``pvit chat`` command: a terminal chat with a run or an export about one image."""

from __future__ import annotations

from pathlib import Path

import typer


def add_commands(app: typer.Typer) -> None:
    @app.command("chat")
    def chat(
        path: Path = typer.Argument(..., help="A run folder or a stage export folder."),
        image: Path = typer.Option(None, "--image", help="The image to talk about (or /image PATH later)."),
        max_new_tokens: int = typer.Option(128, help="Most tokens per answer."),
        temperature: float = typer.Option(0.0, help="0: greedy; > 0: sampled at this temperature."),
        seed: int = typer.Option(None, help="Seed for sampling."),
        device: str = typer.Option(None, help="cpu, cuda... (default: the recipe's engine.device)."),
    ):
        """Chat in the terminal: streams answers, keeps the conversation; /image, /box, /reset, /help, /quit."""
        import sys

        from pvit.cli import load_predictor
        from pvit_chat.session import HELP, ChatSession

        predictor = load_predictor(path, device)
        session = ChatSession(predictor, None, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                              temperature=temperature or 1.0, seed=seed)
        if image is not None:
            session.handle(f"/image {image}")
        typer.echo(f"pvit chat with {predictor.name}; {HELP}")
        interactive = sys.stdin.isatty()
        while True:
            try:
                line = input("> " if interactive else "")
            except (EOFError, KeyboardInterrupt):
                break
            if not session.handle(line):
                break
