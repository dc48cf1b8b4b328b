"""The ``generate:`` recipe section: its schema, loading (``base:`` layers, overrides) and checks with key paths."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pvit.errors import RecipeError, did_you_mean
from pvit.recipe_layers import apply_overrides, merged_layers, parse_overrides, read_layers
from pvit.recipe_schema import Component, schema_errors

STRATEGIES = ("convert", "task-specific", "multi-turn")
#: The five task-specific generation tasks of PVIT's stage 2 data, and the general multi-turn task.
TASKS = ("small-objects", "relationships", "ocr", "attributes", "same-category", "multi-turn")


@dataclass
class Prompts:
    """Prompt files (paths relative to the recipe file): a system prompt per task (``{task: path}``, key
    ``default`` for the rest) and an optional JSON file of few-shot seeds ``{task: [{"context", "reply"}]}``."""

    system: Dict[str, str] = field(default_factory=dict)
    seeds: Optional[str] = None
    shots: int = 1


@dataclass
class Requests:
    """How requests are sent: concurrency, timeouts, retries, sampling and the hard budget."""

    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_requests: Optional[int] = None
    max_tokens: Optional[int] = None
    max_output_tokens: int = 768
    temperature: float = 0.7
    price_per_1k_input: float = 0.0
    price_per_1k_output: float = 0.0


@dataclass
class Validation:
    """Rejection rules for generated samples (see docs/generate.md, "Validation")."""

    box_tolerance: float = 0.005
    max_turns: int = 8
    min_turns: int = 1
    max_chars: int = 1500
    near_duplicate: float = 0.85
    require_region: bool = True
    no_boxes_in_answers: List[str] = field(default_factory=lambda: ["ocr", "attributes", "same-category"])


@dataclass
class Generate:
    """One data-generation job."""

    name: str = MISSING
    strategy: str = MISSING
    output: str = MISSING
    seed: int = 0
    sources: List[Component] = field(default_factory=list)
    generator: Optional[Component] = None
    tasks: List[str] = field(default_factory=list)
    per_context: int = 1
    prompts: Prompts = field(default_factory=Prompts)
    requests: Requests = field(default_factory=Requests)
    validation: Validation = field(default_factory=Validation)
    image_source: str = "images"


@dataclass
class GenerateRecipe:
    """A generation recipe file: one ``generate:`` section (plus ``paths`` for interpolations)."""

    paths: Dict[str, Any] = field(default_factory=dict)
    generate: Generate = MISSING


def _semantic_errors(g: dict, errors: list[str]) -> None:
    strategy = g.get("strategy")
    if isinstance(strategy, str) and strategy not in STRATEGIES:
        errors.append(f"generate.strategy: unknown strategy {strategy!r}{did_you_mean(strategy, STRATEGIES)}; "
                      f"valid: {', '.join(STRATEGIES)}")
    for i, task in enumerate(g.get("tasks") or []):
        if task not in TASKS:
            errors.append(f"generate.tasks[{i}]: unknown task {task!r}{did_you_mean(task, TASKS)}; "
                          f"valid: {', '.join(TASKS)}")
    if strategy in ("task-specific", "multi-turn"):
        if not g.get("generator"):
            errors.append(f"generate.generator: strategy {strategy!r} needs a generator ({{name, options}})")
        if not g.get("tasks"):
            errors.append(f"generate.tasks: strategy {strategy!r} needs at least one task; valid: {', '.join(TASKS)}")
    if not g.get("sources"):
        errors.append("generate.sources: at least one source is needed ({name, options})")
    req = g.get("requests") or {}
    for key in ("concurrency", "max_retries"):
        v = req.get(key)
        if isinstance(v, int) and v < (1 if key == "concurrency" else 0):
            errors.append(f"generate.requests.{key}: must be >= {1 if key == 'concurrency' else 0}, got {v}")
    tol = (g.get("validation") or {}).get("box_tolerance")
    if isinstance(tol, (int, float)) and not 0 <= tol < 0.1:
        errors.append(f"generate.validation.box_tolerance: must be in [0, 0.1) (normalised units), got {tol}")


def load_generate_recipe(path: str | Path, overrides: Sequence[str] = ()):
    """Load and check a generation recipe; returns ``(cfg.generate as plain dict, recipe folder)``.

    Every problem is raised at once as a [RecipeError][pvit.errors.RecipeError] with its key path.
    """
    path = Path(path)
    errors: list[str] = []
    data = merged_layers(read_layers(path, errors))
    parsed = parse_overrides(overrides, errors)
    if not errors:
        apply_overrides(data, parsed, errors)
    if not errors:
        schema_errors(GenerateRecipe, data, "", errors)
    if not errors:
        _semantic_errors(data.get("generate") or {}, errors)
    if errors:
        raise RecipeError(errors, source=str(path))
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(GenerateRecipe), data)
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise RecipeError([str(e).splitlines()[0]], source=str(path)) from None
    return plain["generate"], path.resolve().parent
