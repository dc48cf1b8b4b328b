"""MkDocs hooks: generate the parts of the site that must not drift from the code, at build time.

A page asks for a generated block with a marker comment on a line of its own:

- ``<!-- pvit:cli -->``: every command of the ``pvit`` typer app (usage, arguments, options, defaults).
- ``<!-- pvit:recipe-schema -->``: every field of the recipe dataclasses in ``pvit/recipe.py``.
- ``<!-- pvit:components -->``: every component the built-in plugins register, with its options.
- ``<!-- pvit:evaluators -->``: dataset, prompt, coordinate format and matcher of each built-in evaluator.
- ``<!-- pvit:recipes -->``: the recipes shipped in ``recipes/``.
- ``<!-- pvit:error ClassName -->``: a real message of that ``pvit.errors`` class, produced at build time.

Problems (an unknown marker, a schema field without a description, a hook missing from the hooks
reference) are logged as warnings, which fail ``mkdocs build --strict``.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import sys
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

log = logging.getLogger("mkdocs.plugins.pvit_docs")

ROOT = Path(__file__).resolve().parents[2]
MARKER_RE = re.compile(r"^<!-- pvit:([a-z-]+)(?: ([A-Za-z]+))? -->$", re.M)

# ------------------------------------------------------------------------------------------- recipe schema
#: One line per recipe field. A field of pvit/recipe.py missing here (or a stale entry) fails the build.
FIELD_DOCS = {
    "Recipe.name": "Name of the run; also used in `run_dir` and reports.",
    "Recipe.description": "Free text shown in the report.",
    "Recipe.seed": "Seed of model init, data order and sampling; stage *i* uses `seed + i`.",
    "Recipe.run_dir": "Where the run writes everything (resolved recipe, checkpoints, exports, metrics, report).",
    "Recipe.paths": "Free-form values for `${paths.x}` interpolation (data roots, image size, ...); never validated.",
    "Recipe.model": "The components of the model: [Model](#model).",
    "Recipe.stages": "Training stages, run in order: a list of [Stage](#stage).",
    "Recipe.eval": "Evaluators run after the last stage: a list of [Component](#component) (`name`, `options`).",
    "Recipe.engine": "How stages run: [Engine](#engine).",
    "Model.llm": "The language model (kind `llm`), e.g. `hf-causal-lm`.",
    "Model.image_encoder": "Image encoder (kind `image_encoder`); null for a text-only model.",
    "Model.region_encoder": "Region encoder (kind `region_encoder`); null gives a LLaVA-style model without regions.",
    "Model.projector": "Projector from image features to the LLM width; `in_dim`/`out_dim` are wired by pvit.",
    "Model.region_projector": "Projector from region features to the LLM width (PVIT: a linear layer).",
    "Model.bbox_embed": "Add PVIT's stage-2 box-position embedding (`Linear(4, D)`, zero-initialised) to region features.",
    "Model.template": "Conversation template: `auto` (the tokenizer's chat template if it has one, else "
                      "`vicuna_v1_1`) or a template name.",
    "Model.max_length": "Longest token sequence; longer samples lose whole trailing turns or are dropped, never "
                        "cut inside an image or region span.",
    "Model.region_policy": "What an invalid box does: `error` (default), `clip` or `drop` (see [pvit.regions][]).",
    "Component.name": "Registered name of the component (`pvit plugins` lists them).",
    "Component.options": "Keyword arguments of the component's factory, checked against its signature.",
    "Stage.name": "Stage name, unique in the recipe; names the stage folder and `init_from` targets.",
    "Stage.data": "The training dataset (kind `dataset`): [Component](#component).",
    "Stage.trainable": "Model slots to train; everything else is frozen. Slots: `image_encoder`, `region_encoder`, "
                       "`projector`, `region_projector`, `llm`, `new_token_embeddings`, `bbox_embed`.",
    "Stage.init_from": "Load weights first: the name of an earlier stage, or a path to an exported stage folder.",
    "Stage.objective": "`lm` (default): next-token loss on the assistant turns. `region-contrastive`: each region "
                       "whose question mentions only it is pulled towards the LLM's word embeddings of its reply "
                       "against the batch's other replies, a CLIP-style region-concept alignment "
                       "([Recipes](recipes.md#region-contrastive)); a model without region features skips the stage.",
    "Stage.optim": "Optimiser and schedule: [Optim](#optim).",
    "Optim.lr": "Peak learning rate (AdamW).",
    "Optim.weight_decay": "AdamW weight decay (not applied to biases, norms and embeddings).",
    "Optim.betas": "AdamW betas.",
    "Optim.epochs": "Length in passes over the data; used when `max_steps` is null.",
    "Optim.max_steps": "Length in optimiser steps; overrides `epochs` when set.",
    "Optim.batch_size": "Samples per device per step.",
    "Optim.grad_accum": "Micro-batches accumulated per optimiser step.",
    "Optim.warmup_ratio": "Fraction of the steps with linear warm-up.",
    "Optim.schedule": "`cosine` (decay to `min_lr_ratio * lr`) or `constant` after warm-up.",
    "Optim.min_lr_ratio": "Final learning rate of the cosine schedule, as a fraction of `lr`.",
    "Optim.clip_grad": "Gradient-norm clipping; null disables it.",
    "Optim.precision": "`fp32` or `bf16` (autocast, also on CPU).",
    "Engine.strategy": "Distribution strategy of the training engine; `auto` lets pvit choose.",
    "Engine.device": "`auto` (CUDA when available, else CPU), `cpu`, `cuda` (this process's GPU) or `cuda:N`; see [the device](recipes.md#engine-device).",
    "Engine.num_workers": "Data-loader worker processes.",
    "Engine.log_every": "Print loss, learning rate and speed every N steps.",
    "Engine.checkpoint_every": "Save a resumable checkpoint every N steps (and at the end of a stage).",
    "Engine.keep_checkpoints": "How many resumable checkpoints to keep per stage.",
    "Engine.tensorboard": "Write TensorBoard logs.",
    "Engine.progress": "Print progress lines.",
    "Engine.deterministic": "Ask torch for deterministic algorithms (slower).",
    "Engine.measure_flops": "Count one training step's FLOPs after each stage and report FLOP/s and MFU against a "
                            "measured matmul peak (cached in `~/.cache/pvit`).",
    "Engine.feature_cache": "Reuse frozen encoders' outputs per image: [FeatureCacheOptions](#featurecacheoptions); "
                            "see [the frozen-feature cache](recipes.md#feature-cache).",
    "FeatureCacheOptions.enabled": "Cache the outputs of the encoders a stage leaves frozen.",
    "FeatureCacheOptions.max_memory_mb": "Bound on the cache in host memory; least recently used entries go first.",
    "FeatureCacheOptions.dir": "A folder for an on-disk cache that later runs with the same weights reuse; null: "
                               "memory only.",
}
SCHEMA_ORDER = ("Recipe", "Model", "Component", "Stage", "Optim", "Engine", "FeatureCacheOptions")


_CODE_RE = re.compile(r"(`+)(.+?)\1", re.S)


def md_cell(text: str) -> str:
    """Text for one table cell: one line, ``|`` escaped, ``<`` and ``>`` escaped outside code spans."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    out, last = [], 0
    for m in _CODE_RE.finditer(text):
        out.append(text[last:m.start()].replace("<", "&lt;").replace(">", "&gt;"))
        out.append(m.group(0))
        last = m.end()
    out.append(text[last:].replace("<", "&lt;").replace(">", "&gt;"))
    return "".join(out).replace("|", "\\|")


def ref_table(lines: list[str]) -> list[str]:
    """Wrap a Markdown table in ``<div class="pvit-ref">`` (styled in docs/assets/extra.css)."""
    return ['<div class="pvit-ref" markdown>', "", *lines, "", "</div>", ""]


def code(text: str) -> str:
    """``text`` as an inline code span, whatever backticks it holds."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def _type_name(tp: Any) -> str:
    """A recipe field's type as the docs show it: ``float or null``, ``list[str]``, ``[Model](#model)``."""
    if tp is Any:
        return "any"
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(_type_name(a) for a in inner)
        return f"{text} or null" if len(inner) < len(args) else text
    if origin in (list, tuple):
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> str:
    from omegaconf import MISSING

    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "**required**"
    if isinstance(value, str) and value == MISSING:
        return "**required**"
    if dataclasses.is_dataclass(value):
        plain = {k: v for k, v in dataclasses.asdict(value).items() if v not in ({}, [], None)}
        if type(value).__name__ == "Component":
            return f"`{_flow(plain)}`"
        return f"see [{type(value).__name__}](#{type(value).__name__.lower()})"
    return f"`{_flow(value)}`"


def _flow(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def recipe_schema() -> str:
    from pvit import recipe

    out, seen = [], set()
    for cls_name in SCHEMA_ORDER:
        cls = getattr(recipe, cls_name, None)
        if cls is None or not dataclasses.is_dataclass(cls):
            log.warning(f"pvit_docs: pvit.recipe has no dataclass {cls_name}; update SCHEMA_ORDER in {__file__}")
            continue
        hints = get_type_hints(cls)
        doc = inspect.getdoc(cls) or ""
        out += [f"### {cls_name}", "", doc.splitlines()[0] if doc else "", ""]
        rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            key = f"{cls_name}.{f.name}"
            seen.add(key)
            text = FIELD_DOCS.get(key)
            if text is None:
                log.warning(f"pvit_docs: recipe field {key} has no description; add it to FIELD_DOCS in {__file__}")
                text = ""
            rows.append(f"| `{f.name}` | {_type_name(hints[f.name])} | {_default(f)} | {text} |")
        out += ref_table(rows)
    for stale in sorted(set(FIELD_DOCS) - seen):
        log.warning(f"pvit_docs: FIELD_DOCS describes {stale}, which pvit/recipe.py no longer has")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- CLI reference
def _cli_command(cmd, ctx, path: list[str], out: list[str]) -> None:
    usage = cmd.get_usage(ctx).strip()
    help_text = inspect.cleandoc(cmd.help or "")
    out += [f"### `{' '.join(path)}`", "", md_cell(help_text) if help_text else "", "", "```text", usage, "```", ""]
    rows = []
    for p in cmd.params:
        if getattr(p, "hidden", False):
            continue
        record = p.get_help_record(ctx)
        if record is None:
            continue
        name, text = record
        kind = "argument" if getattr(p, "param_type_name", "") == "argument" else "option"
        text = md_cell(text)
        text = re.sub(r"\s*\[(required|default: [^\]]*)\]", lambda m: f" *({m.group(1)})*", text)
        rows.append(f"| {code(name)} | {kind} | {text} |")
    if rows:
        out += ref_table(["| name | kind | description |", "|---|---|---|", *rows])
    for name, sub in getattr(cmd, "commands", {}).items():  # sub-groups (pvit data ...), in declaration order
        if getattr(sub, "hidden", False):
            continue
        _cli_command(sub, sub.context_class(sub, info_name=name, parent=ctx), path + [name], out)


def cli_reference() -> str:
    import typer.main

    from pvit.cli import app

    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="pvit")
    out = ["### `pvit`", "", inspect.cleandoc(root.help or ""), "", "```text", root.get_usage(ctx).strip(), "```", ""]
    for name, sub in root.commands.items():
        if not getattr(sub, "hidden", False):
            _cli_command(sub, sub.context_class(sub, info_name=name, parent=ctx), ["pvit", name], out)
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- components
def _builtin_plugins() -> set[str]:
    from pvit.plugins import plugin_infos

    infos = plugin_infos()
    failed = [i for i in infos if i.status == "failed" and i.distribution == "pvit"]
    for i in failed:
        log.warning(f"pvit_docs: built-in plugin {i.name} failed to load: {i.error}")
    return {i.name for i in infos if i.distribution == "pvit"}


def _options(factory, kind: str) -> str:
    from pvit.plugins import WIRED_OPTIONS

    parts = []
    for p in inspect.signature(factory).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        elif p.name in WIRED_OPTIONS.get(kind, ()) or p.kind is p.VAR_POSITIONAL:
            continue
        elif p.default is p.empty:
            parts.append(f"{p.name} (required)")
        else:
            parts.append(f"{p.name}={p.default!r}")
    return "<br>".join(code(x) for x in parts) or "none"


KIND_TITLES = {"image_encoder": "Image encoders", "region_encoder": "Region encoders", "projector": "Projectors",
               "llm": "Language models", "dataset": "Datasets", "evaluator": "Evaluators"}


def components_table() -> str:
    from pvit.plugins import KINDS, registry

    builtin = _builtin_plugins()
    out = []
    for kind in KINDS:
        rows = []
        for name, comp in sorted(registry()[kind].items()):
            if comp.plugin not in builtin:
                continue
            doc = md_cell((inspect.getdoc(comp.factory) or "").split("\n\n")[0])
            rows.append(f"| `{name}` | `{comp.plugin}` | {_options(comp.factory, kind)} | {doc} |")
        if rows:
            out += [f"#### {KIND_TITLES.get(kind, kind)} (`{kind}`)", ""]
            out += ref_table(["| name | plugin | options (defaults) | what it is |", "|---|---|---|---|", *rows])
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- evaluators
def _prompts(dataset: str) -> str:
    import pvit

    factory = pvit.components("dataset").get(dataset)
    if factory is None:
        return f"from dataset `{dataset}` (not installed)"
    param = inspect.signature(factory).parameters.get("prompt")
    if param is not None and param.default is not param.empty:
        return code(repr(param.default))
    if dataset == "synth-regions":
        try:
            from pvit_synth.tasks import REGION_TASKS, TEMPLATES

            keys = [k for k in TEMPLATES if k.split("/")[0] in REGION_TASKS]
            return "<br>".join(f"{k}: {code(TEMPLATES[k])}" for k in keys)
        except ImportError as e:
            log.warning(f"pvit_docs: cannot read the synth-regions templates: {e}")
    if dataset == "fine-eval":
        return "`'<image>\\n' + instruction` (each line of `instructions.jsonl`)"
    return f"the samples of `{dataset}`"


def evaluators_table() -> str:
    import pvit
    from pvit.plugins import registry

    builtin = _builtin_plugins()
    rows = []
    for name, comp in sorted(registry()["evaluator"].items()):
        if comp.plugin not in builtin:
            continue
        ev = pvit.build("evaluator", name)
        proto = ev.protocol() if hasattr(ev, "protocol") else {}
        rows.append((name, ev.data["name"], _prompts(ev.data["name"]), str(proto.get("coordinate_format", "")),
                     md_cell(getattr(ev, "matcher", proto.get("matcher", ""))), ev.max_new_tokens))
    formats = {r[3] for r in rows}
    shared = len(formats) == 1
    out = []
    if shared:
        out += [f"Coordinate format of every built-in evaluator's prompts: {code(formats.pop())}.", ""]
    head = ["evaluator", "generates on", "prompt (default)"] + ([] if shared else ["coordinate format"])
    head += ["matcher", "max new tokens"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, data, prompt, fmt, matcher, budget in rows:
        cells = [f"`{name}`", f"`{data}`", prompt] + ([] if shared else [code(fmt)]) + [matcher, str(budget)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- shipped recipes
def _leading_comment(text: str) -> str:
    """The first paragraph of the comment block a recipe opens with."""
    lines = []
    for line in text.splitlines():
        body = line.lstrip("#").strip()
        if not line.startswith("#") or (not body and lines):
            break
        if body:
            lines.append(body)
    return " ".join(lines)


def recipes_list() -> str:
    import yaml

    files = sorted((ROOT / "recipes").rglob("*.yaml"))
    if not files:
        log.warning("pvit_docs: no recipes found in recipes/")
    out = ["| recipe | name | base | what it is |", "|---|---|---|---|"]
    for path in files:
        text = path.read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            log.warning(f"pvit_docs: {path} is not valid YAML: {e}")
            continue
        base = data.get("base")
        base = ", ".join(f"`{b}`" for b in ([base] if isinstance(base, str) else base or [])) or "none"
        about = _leading_comment(text) or str(data.get("description") or "").strip()
        about = md_cell(about)
        name = data.get("name") or (data.get("generate") or {}).get("name", "")  # generation recipes: generate.name
        out.append(f"| `{path.relative_to(ROOT)}` | `{name}` | {base} | {about} |")
    return "\n".join(ref_table(out))


# ------------------------------------------------------------------------------------------- error examples
def _raise_each() -> dict[str, str]:
    """Provoke each user-facing error the way a user would and keep its message (paths made relative)."""
    import tempfile
    import types
    import warnings

    import pvit
    from pvit import regions
    from pvit.plugins import register_plugin
    from pvit.predict_text import resolve_regions

    tiny = ROOT / "recipes" / "pvit_tiny.yaml"
    tmp = Path(tempfile.mkdtemp(prefix="pvit-docs-"))

    def misspelt_plugin():
        plugin = types.ModuleType("my_plugin")

        @pvit.hookimpl
        def pvit_register_region_encoder(register):  # the hook is pvit_register_region_encoders
            register("box-stats", dict)

        plugin.pvit_register_region_encoder = pvit_register_region_encoder
        register_plugin(plugin, "my-plugin")

    def splice():
        import torch

        from pvit.model import PVITModel

        ids = torch.tensor([[5, 9, 7, 7, 8, 1]])  # (B, T): two <region_patch> (id 7) in the text
        PVITModel._check_counts(None, ids, 7, torch.tensor([1]), "region", ["coco-val-397133-2"])

    def run_dir():
        from pvit.rundir import RunDir

        (tmp / "runs" / "pvit-tiny").mkdir(parents=True)
        (tmp / "runs" / "pvit-tiny" / "metrics.json").write_text("{}")
        RunDir(tmp / "runs" / "pvit-tiny").prepare(resume=None, overwrite=False)

    def checkpoint():
        from pvit.checkpoints import load_export

        (tmp / "stage1").mkdir()
        (tmp / "stage1" / "weights.safetensors").write_bytes(b"not a safetensors file")
        load_export(None, tmp / "stage1" / "weights.safetensors")

    def missing_weights():
        from pvit.run import run_recipe

        ckpt = "model.region_encoder.options.checkpoint=/models/regionclip_pretrained-cc_rn50x4.pth"
        run_recipe(pvit.load_recipe(tiny, [ckpt]), log=lambda _msg: None)

    cases = {
        "RecipeError": lambda: pvit.load_recipe(
            tiny, ["stages.0.optim.max_steps=ten", "model.regoin_encoder.name=vit-roi", "engine.log_evry=5"]),
        "PluginError": misspelt_plugin,
        "UnknownComponentError": lambda: pvit.build("region_encoder", "regionclp"),
        "ComponentOptionError": lambda: pvit.build("region_encoder", "regionclip", min_sise=224),
        "InvalidRegionError": lambda: regions.find_mentions(
            "What is in <Region><L810><L469><L204><L960></Region>?", where="data/stage2/5_multi_objects.json sample 17"),
        "DataError": lambda: pvit.build("dataset", "coco-regions", annotations="coco/annotations/instances_val2017.json",
                                        image_folder="coco/val2017", root=str(tmp)),
        "SpliceError": splice,
        "RunDirError": run_dir,
        "CheckpointError": checkpoint,
        "MissingWeightsError": missing_weights,
        "PredictError": lambda: resolve_regions(["What is <region1> holding, next to <region2>?"],
                                                [(0.1, 0.2, 0.5, 0.6)]),
    }
    from pvit.errors import PvitError
    from pvit.predict_text import PredictError

    out = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, fn in cases.items():
                try:
                    fn()
                except (PvitError, PredictError) as e:
                    text = f"{type(e).__name__}: {e}"
                    out[name] = text.replace(str(tmp) + "/", "").replace(str(ROOT) + "/", "")
                    if type(e).__name__ != name:
                        log.warning(f"pvit_docs: the {name} example raised {type(e).__name__} instead: {e}")
                else:
                    log.warning(f"pvit_docs: the {name} example raised nothing; update _raise_each in {__file__}")
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def error_example(name: str) -> str:
    if "errors" not in _cache_obj:
        _cache_obj["errors"] = _raise_each()
    text = _cache_obj["errors"].get(name)
    if text is None:
        log.warning(f"pvit_docs: no example for error {name}; known: {', '.join(_cache_obj['errors'])}")
        return ""
    return "\n".join(['<div class="pvit-error" markdown>', "", "```text", text, "```", "", "</div>"])


def _check_errors_page(markdown: str) -> None:
    """Every exception class of pvit/errors.py has a section on the errors page."""
    import pvit.errors

    for name, obj in vars(pvit.errors).items():
        if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == "pvit.errors":
            if f"## {name}" not in markdown:
                log.warning(f"pvit_docs: error class {name} has no '## {name}' section in errors.md")


# ------------------------------------------------------------------------------------------- MkDocs hooks
GENERATORS = {
    "cli": cli_reference,
    "recipe-schema": recipe_schema,
    "components": components_table,
    "evaluators": evaluators_table,
    "recipes": recipes_list,
}
_cache: dict[str, str] = {}
_cache_obj: dict[str, Any] = {}


def on_config(config):
    for p in (str(ROOT), str(ROOT / "plugins")):
        if p not in sys.path:
            sys.path.insert(0, p)
    _cache.clear()
    _cache_obj.clear()
    # snippet paths are relative to the working directory; anchor them to the repository instead
    snippets = config["mdx_configs"].get("pymdownx.snippets")
    if snippets is not None:
        snippets["base_path"] = [str(ROOT / p) for p in snippets.get("base_path", ["."])]
    return config


def _check_hooks_page(markdown: str) -> None:
    """Every hook in pvit/hookspecs.py has a ``::: pvit.hookspecs.<hook>`` block on the hooks page."""
    from pvit import hookspecs

    for name in dir(hookspecs):
        if name.startswith("pvit_") and callable(getattr(hookspecs, name)):
            if f"::: pvit.hookspecs.{name}" not in markdown:
                log.warning(f"pvit_docs: hook {name} is not documented in hooks.md (add '::: pvit.hookspecs.{name}')")


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "hooks.md":
        _check_hooks_page(markdown)
    if page.file.src_uri == "errors.md":
        _check_errors_page(markdown)

    def replace(m: re.Match) -> str:
        key, arg = m.group(1), m.group(2)
        if key == "error" and arg:
            try:
                return error_example(arg)
            except Exception as e:
                log.warning(f"pvit_docs: the error examples could not be produced: {type(e).__name__}: {e}")
                return ""
        gen = GENERATORS.get(key)
        if gen is None:
            log.warning(f"pvit_docs: {page.file.src_uri}: unknown marker pvit:{key}; known: {', '.join(GENERATORS)}")
            return m.group(0)
        if key not in _cache:
            try:
                _cache[key] = gen()
            except Exception as e:  # a broken generator must fail the strict build, with the cause
                log.warning(f"pvit_docs: generating pvit:{key} for {page.file.src_uri} failed: "
                            f"{type(e).__name__}: {e}")
                return f"!!! failure \"pvit:{key} could not be generated\"\n    {type(e).__name__}: {e}\n"
        return _cache[key]

    return MARKER_RE.sub(replace, markdown)
