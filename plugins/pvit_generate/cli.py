"""The ``pvit generate RECIPE [--dry-run] [--limit N] [--resume]`` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer


def add_commands(app: typer.Typer) -> None:
    """Add ``generate`` to the ``pvit`` command line."""

    @app.command()
    def generate(
        recipe: Path = typer.Argument(..., help="Generation recipe, e.g. recipes/generate/task_specific.yaml."),
        overrides: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE overrides, e.g. generate.seed=1."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the number of requests and a token estimate; send nothing."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Plan at most N requests (or convert N records per source)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the job in the output folder; finished samples are not sent again."),
    ):
        """Generate region-level instruction data (convert, task-specific or multi-turn) in PVIT's folder format."""
        from pvit.cli import user_errors
        from pvit_generate.runner import run_job

        with user_errors():
            run_job(recipe, overrides or [], dry_run=dry_run, limit=limit, resume=resume,
                    log=typer.echo, progress=sys.stderr.isatty())
