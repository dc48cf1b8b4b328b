"""The ``pvit`` command line (typer); heavy libraries are imported inside the commands."""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from pvit.errors import PvitError

app = typer.Typer(
    name="pvit",
    help="pvit: train, ablate and evaluate region-aware multimodal LLMs (PVIT) from recipes and plugins.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect the data a recipe uses.", no_args_is_help=True)
app.add_typer(data_app, name="data")
#: ``pvit import <source>``: each source is a sub-command a plugin adds (see [command_group][pvit.cli.command_group]).
import_app = typer.Typer(help="Bring a pretrained checkpoint into pvit; each source is a sub-command a plugin adds.",
                         no_args_is_help=True)
app.add_typer(import_app, name="import")


def command_group(root: typer.Typer, name: str) -> typer.Typer:
    """The sub-command group ``name`` (``import``, ``data``) of the root app a ``pvit_register_commands`` hook gets.

    A plugin adds ``pvit import <source>`` with
    ``command_group(app, "import").command("<source>")(function)`` inside its hook.
    """
    for group in root.registered_groups:
        if group.name == name and group.typer_instance is not None:
            return group.typer_instance
    names = [g.name for g in root.registered_groups]
    raise KeyError(f"the pvit command line has no command group {name!r}; groups: {', '.join(map(str, names))}")

DEFAULT_RECIPE = "recipes/pvit_tiny.yaml"


@contextlib.contextmanager
def user_errors():
    """Print pvit's user-facing errors without a traceback and exit with status 2."""
    try:
        yield
    except PvitError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        raise typer.Exit(130) from None


#: Hosts that keep a server on this machine; ``pvit serve`` and ``pvit demo`` warn for any other.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def require_modules(command: str, extra: str, packages: str, *modules: str) -> None:
    """Exit with status 2 and the install line when a plugin command's optional modules are missing."""
    import importlib

    try:
        for m in modules:
            importlib.import_module(m)
    except ImportError:
        typer.secho(f"error: pvit {command} needs {packages}: pip install 'pvit[{extra}]'", fg="red", err=True)
        raise typer.Exit(2) from None


def load_predictor(path: Path, device: str | None = None):
    """A run or export folder as a [Predictor][pvit.predict.Predictor]; user errors exit without a traceback."""
    from pvit.predict import Predictor

    with user_errors():
        return Predictor.load(path, device=device)


def warn_if_exposed(host: str) -> None:
    if host not in LOOPBACK:
        typer.secho(f"warning: binding {host}: the model is reachable from other machines", fg="yellow", err=True)


def _print_plan(plan) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title="components")
    t.add_column("slot")
    t.add_column("component")
    t.add_column("parameters", justify="right")
    for c in plan.components:
        t.add_row(c["slot"], c["name"], f"{c['parameters']:,}")
    t.add_row("total", "", f"{plan.total:,}")
    console.print(t)
    s = Table(title="stages")
    for col in ("stage", "data", "trainable", "trainable parameters", "lr", "objective"):
        s.add_column(col, justify="right" if col == "trainable parameters" else "left")
    for st in plan.stages:
        s.add_row(st["name"], st["data"], ", ".join(st["trainable"]), f"{st['trainable_total']:,}", f"{st['lr']:g}",
                  st["objective"])
    console.print(s)


def _print_results(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from pvit.report import metrics_rows

    rows = metrics_rows(summary)
    if not rows:
        return
    t = Table(title=f"results: {summary.get('recipe')}")
    t.add_column("evaluator")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for ev, k, v in rows:
        t.add_row(ev, k, f"{v:.4f}")
    Console().print(t)


def _check_components(loaded) -> None:
    """Every component the recipe names exists and takes its options; errors name the recipe file."""
    from pvit.errors import RecipeError
    from pvit.preflight import check_components

    try:
        check_components(loaded.cfg)
    except RecipeError as e:
        if e.source is not None:
            raise
        raise RecipeError(e.errors, source=str(loaded.path)) from None


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML file, e.g. recipes/pvit_tiny.yaml."),
    overrides: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE overrides, e.g. stages.1.optim.lr=1e-5."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe and the plan; train nothing."),
    resume: Optional[str] = typer.Option(None, "--resume", help="'auto' (newest valid checkpoint) or a checkpoint path."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
):
    """Run a recipe: its stages in order, then its evaluations."""
    with user_errors():
        from pvit.recipe import load_recipe

        loaded = load_recipe(recipe, overrides or [])
        _check_components(loaded)
        if dry_run:
            from pvit.plan import make_plan
            from pvit.preflight import missing_files

            typer.echo(loaded.to_yaml())
            plan = make_plan(loaded.cfg)
            _print_plan(plan)
            missing = missing_files(loaded.cfg)
            if missing:
                typer.echo("files not on this machine (a real run would stop here):")
                for k, v in missing:
                    typer.echo(f"  - {k}: {v}")
            return
        from pvit.run import run_recipe

        summary = run_recipe(loaded, resume=resume, overwrite=overwrite, log=typer.echo)
        if summary.get("rank", 0) == 0:  # under torchrun, only rank 0 reports
            _print_results(summary)
            typer.echo(f"run directory: {summary['run_dir']} (report.md, metrics.json, plots/)")


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List installed plugins: distribution, version, status and the components each registers.

    Plugins that failed to load or that register a name another plugin also registers are listed with
    the cause, and summarised on stderr.
    """
    from pvit.plugins import plugin_infos

    infos = plugin_infos()
    if as_json:
        typer.echo(json.dumps([i.as_dict() for i in infos], indent=2))
    else:
        for i in infos:
            comps = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(i.components.items()))
            status = i.status if i.status == "ok" else f"{i.status.upper()} ({i.error})"
            typer.echo(f"{i.name:<14} {i.distribution} {i.version:<8} {status}")
            if comps:
                typer.echo(f"{'':<14} {comps}")
    broken = [i for i in infos if i.status in ("failed", "conflict")]
    if broken:
        names = ", ".join(f"{i.name} ({i.status})" for i in broken)
        typer.secho(f"warning: {len(broken)} plugin(s) need attention: {names}", fg=typer.colors.YELLOW, err=True)


@app.command()
def ablate(
    region_encoder: List[str] = typer.Option(..., "--region-encoder", help="Variant region encoder (repeatable); 'none' = LLaVA baseline."),
    recipe: Path = typer.Option(Path(DEFAULT_RECIPE), "--recipe", help="Base recipe."),
    seeds: int = typer.Option(1, "--seeds", help="Repeat each variant with this many seeds."),
    overrides: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE overrides applied to every variant."),
):
    """Re-run a recipe with only the region encoder changed and print one variant x task table."""
    with user_errors():
        from pvit.ablate import run_ablation

        run_ablation(recipe, region_encoder, seeds=seeds, overrides=overrides or [], log=typer.echo)


@app.command(name="eval")
def eval_(
    recipe: Path = typer.Argument(..., help="Recipe whose model and eval: list to use."),
    checkpoint: List[Path] = typer.Option(..., "--checkpoint", help="Exported stage folder(s), applied in order."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <first checkpoint>/../eval)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE overrides."),
):
    """Evaluate exported checkpoints with a recipe's evaluators: metrics JSON, per-sample JSONL, a markdown table."""
    with user_errors():
        from pvit.ablate import evaluate_checkpoint

        summary = evaluate_checkpoint(recipe, checkpoint, out=out, overrides=overrides or [], log=typer.echo)
        _print_results(summary)


@app.command()
def export(
    source: Path = typer.Argument(..., help="A run folder, a stage export, or a folder of an earlier export."),
    out: Path = typer.Argument(..., help="The folder to write."),
    fmt: str = typer.Option("pvit", "--format", help="pvit: a self-contained pvit folder (Predictor.from_pretrained);"
                            " hf: a transformers LlavaForConditionalGeneration folder (models without region features)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT."),
):
    """Export a trained model: a self-contained pvit folder, or a folder plain transformers loads.

    See the Pretrained models page for what each format holds and what loads it.
    """
    with user_errors():
        from pvit.export import export as run_export

        run_export(source, out, fmt, overwrite=overwrite, log=typer.echo)


@data_app.command("check")
def data_check(
    recipe: Path = typer.Argument(..., help="Recipe whose stage and eval data to check."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Check at most this many samples per dataset."),
    overrides: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE overrides."),
):
    """Count samples, regions, invalid boxes, truncations and bad images before training."""
    with user_errors():
        try:
            from pvit.datacheck import check_data
        except ModuleNotFoundError as e:
            if e.name != "pvit.datacheck":
                raise
            typer.secho("error: 'pvit data check' is not available in this installation (pvit.datacheck is missing)",
                        fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        check_data(recipe, overrides or [], limit=limit, log=typer.echo)


def _load_plugin_commands() -> None:
    """Let each loaded plugin add sub-commands; one that fails is reported and skipped."""
    from pvit.plugins import get_plugin_manager

    try:
        impls = get_plugin_manager().hook.pvit_register_commands.get_hookimpls()
    except Exception as e:  # a broken plugin must not break the command line
        print(f"warning: plugin commands not loaded: {e}", file=sys.stderr)
        return
    for impl in impls:
        try:
            impl.function(app=app)
        except Exception as e:
            print(f"warning: pvit plugin {impl.plugin_name!r} failed to add its commands: {type(e).__name__}: {e}",
                  file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Plugin warnings print as one ``warning: ...`` line; others as Python prints them."""
    from pvit.plugins import PluginWarning

    if issubclass(category, PluginWarning):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main() -> None:
    """Entry point of the ``pvit`` console script."""
    warnings.showwarning = _show_warning
    _load_plugin_commands()
    app()


if __name__ == "__main__":
    main()
