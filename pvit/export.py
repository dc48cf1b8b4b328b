"""``pvit export``: a trained model as a self-contained pvit folder (``pvit``) or a transformers LLaVA folder (``hf``).

The **pvit folder** needs no recipe, run folder or earlier stage export:

- ``pvit.json``: the manifest (format ``pvit-pretrained``, version, name, the recipe keys that point into the folder);
- ``recipe.yaml``: the run's recipe with a model section that reads no outside file: the LLM becomes ``hf-causal-lm``
  on ``llm/``, every file option of the other components is dropped (components with an ``export_options`` attribute,
  and ``hf-clip``, get the file-free options that rebuild them);
- ``weights.safetensors``: every tensor of the model except the LLM's (encoders, projectors, box embedding);
- ``llm/``: the LLM as ``save_pretrained`` writes it, with pvit's tokenizer (``AutoModelForCausalLM`` loads it);
- ``preprocessor_config.json``: the image encoder's preprocessing as a transformers image processor.

[Predictor.from_pretrained][pvit.predict.Predictor.from_pretrained] reads it back ([read_pretrained][]). The
**hf folder** (models without region features, CLIP image tower) is written by [pvit.export_hf][].
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from pvit.errors import CheckpointError, did_you_mean
from pvit.templates import stop_token_ids

FORMATS = ("pvit", "hf")
MANIFEST = "pvit.json"
FORMAT_NAME = "pvit-pretrained"
VERSION = 1
LLM_DIR = "llm"
WEIGHTS = "weights.safetensors"
KINDS = {"image_encoder": "image_encoder", "region_encoder": "region_encoder", "projector": "projector",
         "region_projector": "projector"}


def export(source: str | Path, out: str | Path, fmt: str = "pvit", *, overwrite: bool = False,
           log: Callable[[str], None] = print) -> Path:
    """Load ``source`` (a run folder, a stage export or a pvit folder) on the CPU and write it as ``fmt`` to ``out``."""
    from pvit.predict import Predictor

    if fmt not in FORMATS:
        raise CheckpointError(f"export format {fmt!r} is unknown{did_you_mean(fmt, FORMATS)}; valid: "
                              f"{', '.join(FORMATS)}")
    _check_out(Path(out), overwrite)
    pred = Predictor.load(source, device="cpu")
    return write(pred.model, pred.recipe, pred.template, out, fmt=fmt, name=pred.name, source=str(source),
                 overwrite=overwrite, log=log)


def write(model, cfg, template, out: str | Path, *, fmt: str = "pvit", name: str = "pvit", source: str = "",
          overwrite: bool = False, log: Callable[[str], None] = print) -> Path:
    """Write a built PVITModel (with the recipe ``cfg`` it was built from) to ``out``, atomically as a folder.

    The LLM's optional ``merge_adapters()`` runs first (LoRA adapters folded into the weights, in place), so the
    written LLM is a plain transformers model. ``fmt="hf"`` on a model with region features writes the pvit folder.
    """
    out = Path(out)
    _check_out(out, overwrite)
    llava = fmt == "hf" and model.tokens_per_region == 0
    if llava:
        from pvit.export_hf import check_llava, write_llava

        check_llava(model, template)  # before anything changes or is written
        if model.region_encoder is not None:
            log(f"note: the region encoder ({type(model.region_encoder).__name__}) writes regions as text; the "
                "transformers processor does not, so prompts must carry that text themselves")

        def writer(tmp: Path) -> None:
            write_llava(model, template, tmp, log=log)
    else:
        if fmt == "hf":
            log(f"the region encoder ({type(model.region_encoder).__name__}) has no transformers class: writing the "
                f"self-contained pvit folder; its {LLM_DIR}/ loads with AutoModelForCausalLM")

        def writer(tmp: Path) -> None:
            write_pvit(model, cfg, template, tmp, name=name, source=source)
    merge = getattr(model.llm, "merge_adapters", None)
    if callable(merge):
        merged = merge()
        if merged:
            log(f"merged the LLM's LoRA adapters into its weights ({merged} layers)")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        writer(tmp)
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out} ({'transformers LLaVA' if llava else 'pvit'} format)")
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists; choose another folder or pass --overwrite")


def save_llm(model, template, folder: Path) -> None:
    """The LLM (``save_pretrained``, safetensors) and its tokenizer, generation ending at the template's stops."""
    llm = model.llm
    llm.model.save_pretrained(str(folder))
    llm.tokenizer.save_pretrained(str(folder))
    gen = copy.deepcopy(llm.model.generation_config)
    stops = stop_token_ids(llm.tokenizer, template)
    gen.eos_token_id = stops if len(stops) > 1 else stops[0]
    gen.pad_token_id = llm.tokenizer.pad_token_id
    gen.bos_token_id = llm.tokenizer.bos_token_id
    gen.save_pretrained(str(folder))


# ------------------------------------------------------------------------------------------------ pvit format
def write_pvit(model, cfg, template, folder: Path, *, name: str, source: str = "") -> None:
    """Write the self-contained pvit folder into the (empty) ``folder``; see the module docstring."""
    import yaml
    from safetensors.torch import save_file

    from pvit import __version__
    from pvit.atomic import atomic_write_text
    from pvit.recipe import dump_yaml

    data = yaml.safe_load(dump_yaml(cfg))
    m = data["model"]
    m["llm"] = _llm_entry(model)
    for slot, kind in KINDS.items():
        module = getattr(model, slot, None)
        if module is not None and m.get(slot) is not None:
            m[slot] = _file_free(kind, m[slot], module, f"model.{slot}")
    save_llm(model, template, folder / LLM_DIR)
    _check_rebuild(model, m, folder)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()
             if not k.startswith("llm.")}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt", "pvit": FORMAT_NAME})
    atomic_write_text(folder / "recipe.yaml", yaml.safe_dump(data, sort_keys=False))
    if model.image_encoder is not None:
        from pvit.export_hf import image_processor

        image_processor(model.image_encoder).save_pretrained(str(folder))
    manifest = {"format": FORMAT_NAME, "version": VERSION, "name": name, "source": source, "pvit_version": __version__,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"), "files": {"model.llm.options.path": LLM_DIR},
                "region_encoder": (m.get("region_encoder") or {}).get("name")}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))


def _llm_entry(model) -> dict:
    """``hf-causal-lm`` on ``llm/`` in the dtype the weights are in (the attention kernel is kept)."""
    llm = model.llm.model
    dtype = str(next(llm.parameters()).dtype).replace("torch.", "")
    attn = getattr(llm.config, "_attn_implementation", None)
    opts: dict[str, Any] = {"path": LLM_DIR, "dtype": dtype}
    if attn in ("eager", "sdpa", "flash_attention_2"):
        opts["attn_implementation"] = attn
    return {"name": "hf-causal-lm", "options": opts}


def _hf_clip_options(encoder) -> dict:
    from transformers import CLIPVisionConfig

    known = set(CLIPVisionConfig().to_dict()) - {"model_type", "transformers_version", "architectures", "dtype",
                                                 "torch_dtype"}
    config = {k: v for k, v in encoder.backbone.config.to_dict().items() if k in known}
    return {"config": config, "mean": list(encoder.mean), "std": list(encoder.std)}


def _file_free(kind: str, entry: dict, module, where: str) -> dict:
    """A recipe component without its file options, plus the options that rebuild it without files."""
    from pvit.options import file_options
    from pvit.registry import check_options, get_component

    name = entry["name"]
    opts = dict(entry.get("options") or {})
    dropped = [k for k in file_options(get_component(kind, name).factory) if opts.pop(k, None) is not None]
    extra = getattr(module, "export_options", None)
    if extra is None and kind == "image_encoder" and name == "hf-clip":
        extra = _hf_clip_options(module)
    opts.update(dict(extra or {}))
    problems = check_options(kind, name, opts, where)
    if problems:
        raise CheckpointError(f"{where}: {name} cannot be rebuilt without its files ({', '.join(dropped)}), so it "
                              f"cannot go into a self-contained export: {'; '.join(problems)}")
    return {"name": name, "options": opts}


def _check_rebuild(model, m: dict, folder: Path) -> None:
    """Plan the written model section (meta device) and compare every non-LLM tensor's name and shape."""
    from omegaconf import OmegaConf

    from pvit.compose import build_model
    from pvit.runtime import planning

    planned_cfg = OmegaConf.create(copy.deepcopy(m))
    planned_cfg.llm.options.path = str(folder / LLM_DIR)
    with planning():
        planned = build_model(planned_cfg)

    def shapes(mod):
        return {k: tuple(v.shape) for k, v in mod.state_dict().items() if not k.startswith("llm.")}

    have, rebuilt = shapes(model), shapes(planned)
    diff = sorted(set(have) ^ set(rebuilt)) + sorted(k for k in have if k in rebuilt and have[k] != rebuilt[k])
    if diff:
        raise CheckpointError(f"the model rebuilt from the export's recipe differs from this one in {len(diff)} "
                              f"tensor(s), e.g. {diff[:4]}; a component's architecture depends on a file it was "
                              "given, which a self-contained export cannot carry")


def read_pretrained(folder: str | Path) -> tuple[Any, str]:
    """(recipe config with its paths into ``folder``, name) of a pvit folder written by ``pvit export``."""
    from omegaconf import OmegaConf

    from pvit.recipe import load_recipe

    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / MANIFEST} cannot be read ({e})") from None
    if manifest.get("format") != FORMAT_NAME or int(manifest.get("version", 0)) > VERSION:
        raise CheckpointError(f"{folder}: format {manifest.get('format')!r} version {manifest.get('version')!r} is "
                              f"not one this pvit reads ({FORMAT_NAME} version <= {VERSION})")
    for need in ("recipe.yaml", WEIGHTS, *manifest.get("files", {}).values()):
        if not (folder / need).exists():
            raise CheckpointError(f"{folder}: {need} is missing; the folder is incomplete")
    cfg = load_recipe(folder / "recipe.yaml").cfg
    for key, rel in manifest.get("files", {}).items():
        OmegaConf.update(cfg, key, str((folder / rel).resolve()), merge=False)
    return cfg, str(manifest.get("name") or folder.name)
