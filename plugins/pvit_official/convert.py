"""``pvit import pvit-official``: base + delta -> a pvit export that the Predictor, ``pvit serve`` and ``pvit eval``
load directly.

The export folder holds

* ``llm/``: the merged LLaMA as a plain transformers folder (safetensors shards, config, PVIT's tokenizer), plus
  ``mm_projector.bin`` (LLaVA's projector file format), so ``llm/`` also serves as the ``paths.llava`` folder of
  ``recipes/pvit_full.yaml`` and the evaluation recipes;
* ``weights.safetensors``: the image projector, region projector and box embedding under pvit's names;
* ``recipe.yaml`` (the model, pointing at ``llm/``, the CLIP folder and the RegionCLIP file by absolute path),
  ``tokenizer/`` and ``meta.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch

from pvit.atomic import atomic_path, atomic_write_text
from pvit.errors import CheckpointError
from pvit_official.release import (EMBEDDINGS, MULTIMODAL, SKIPPED_PREFIXES, SKIPPED_SUFFIXES, Release,
                                   _read_config, llm_config, load_tokenizer, read_release)
from pvit_hf.weight_folder import WeightFolder

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _fits(name: str, delta: tuple, base: tuple) -> bool:
    """Whether a delta tensor of shape ``delta`` applies to a base tensor of shape ``base``."""
    if delta == base:
        return True
    return name in EMBEDDINGS and len(delta) == len(base) == 2 and delta[1] == base[1] and delta[0] >= base[0]


def merge_tensor(name: str, delta: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``base + delta`` computed in fp32 and rounded to the release's dtype (fp16), as PVIT's ``apply_delta``.

    The embedding matrices may have more rows than the base (the added tokens): those rows are taken as stored.
    """
    if not _fits(name, tuple(delta.shape), tuple(base.shape)):
        raise CheckpointError(f"--delta and --base do not match: tensor {name!r} has shape {tuple(delta.shape)} in the "
                              f"delta and {tuple(base.shape)} in the base; PVIT's delta applies to LLaMA-7B")
    out = delta.float()
    out[: base.shape[0]] += base.float()
    return out.to(delta.dtype)


def _skipped(name: str) -> bool:
    return name.startswith(SKIPPED_PREFIXES) or name.endswith(SKIPPED_SUFFIXES)


def check_against_base(release: Release, base: WeightFolder) -> None:
    """Every LLM tensor of the delta has a base tensor of a fitting shape, and the delta covers the base."""
    base_keys = {k for k in base.keys() if not _skipped(k)}
    delta_keys = {k for k in release.weights.keys() if not _skipped(k) and k not in MULTIMODAL}
    lacking = sorted(base_keys - delta_keys)
    if lacking:
        raise CheckpointError(f"--delta {release.root}: lacks {len(lacking)} tensors of the base (e.g. {lacking[:3]}); "
                              "the download is incomplete or --base is another model")
    extra = sorted(delta_keys - base_keys)
    if extra:
        raise CheckpointError(f"--delta: {len(extra)} tensors (e.g. {extra[:3]}) are neither in the base model nor "
                              f"PVIT's own modules ({', '.join(sorted({k.rsplit('.', 1)[0] for k in MULTIMODAL}))}); "
                              "is --base LLaMA-7B?")
    bad = [f"{k}: delta {release.weights.shape(k)} vs base {base.shape(k)}" for k in sorted(delta_keys)
           if not _fits(k, release.weights.shape(k), base.shape(k))]
    if bad:
        raise CheckpointError(f"--delta and --base do not match: {len(bad)} tensors have other shapes (e.g. "
                              f"{'; '.join(bad[:2])}); PVIT's delta applies to LLaMA-7B")


def _check_clip(clip: Path, release: Release) -> None:
    cfg = _read_config(clip, "--clip")
    vision = cfg.get("vision_config", cfg)
    width = vision.get("hidden_size")
    want = release.shape("model.mm_projector.weight")[1]
    if width != want:
        raise CheckpointError(f"--clip {clip}: its vision tower is {width} wide but PVIT's image projector takes "
                              f"{want} (config.json mm_vision_tower: {release.config.get('mm_vision_tower')!r}); "
                              "pass that CLIP")


def _check_regionclip(path: Path, model: str, release: Release) -> None:
    from pvit_regionclip.checkpoint import load_visual_weights
    from pvit_regionclip.config import resolve_config
    from pvit_regionclip.encoder import build_visual

    if not path.is_file():
        raise CheckpointError(f"--regionclip {path}: no such file; pass RegionCLIP's "
                              "regionclip_pretrained-cc_rn50x4.pth")
    cfg = resolve_config(model)
    want = release.shape("model.prompt_projector.weight")[1]
    if cfg.output_dim != want:
        raise CheckpointError(f"--regionclip-model {model!r} gives {cfg.output_dim}-d region features but PVIT's "
                              f"region projector takes {want}; PVIT uses RN50x4 (640)")
    load_visual_weights(build_visual(cfg, seed=0), path, model_name=cfg.name)  # a wrong file fails here, not later


def _write_llm(release: Release, base: WeightFolder, out: Path, dtype: torch.dtype, log) -> dict:
    """Merged LLM shards into ``out`` (one per delta shard) and their index; returns PVIT's own modules' tensors."""
    from safetensors.torch import save_file

    multimodal, weight_map = {}, {}
    n = len(release.weights.shards)
    for i, (file, names) in enumerate(release.weights.shards.items()):
        merged = {}
        for name in names:
            if _skipped(name):
                continue
            delta = release.weights.get(name)
            if name in MULTIMODAL:
                multimodal[MULTIMODAL[name]] = delta.clone()
                continue
            merged[name] = merge_tensor(name, delta, base.get(name)).to(dtype)
        if not merged:
            continue
        shard = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        with atomic_path(out / shard) as tmp:
            save_file({k: v.contiguous() for k, v in merged.items()}, tmp, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(merged, shard))
        log(f"  {file}: {len(merged)} tensors merged -> llm/{shard}")
    atomic_write_text(out / "model.safetensors.index.json", json.dumps({"metadata": {}, "weight_map": weight_map},
                                                                       indent=2))
    return multimodal


def _recipe(release: Release, out: Path, clip: Path, regionclip: Path, regionclip_model: str, dtype: str) -> str:
    from omegaconf import OmegaConf

    recipe = {
        "name": "pvit-official",
        "description": "PVIT's released weights (LLaMA-7B + PVIT's delta), from `pvit import pvit-official`.",
        "model": {
            "llm": {"name": "hf-causal-lm", "options": {"path": str(out / "llm"), "dtype": dtype}},
            "image_encoder": {"name": "hf-clip", "options": {
                "path": str(clip), "select_layer": int(release.config.get("mm_vision_select_layer", -1)),
                "dtype": dtype}},
            "region_encoder": {"name": "regionclip", "options": {
                "model": regionclip_model, "checkpoint": str(regionclip), "min_size": 800, "max_size": 1333}},
            "projector": {"name": "linear"},
            "region_projector": {"name": "linear"},
            "bbox_embed": bool(release.config.get("mm_use_bbox_fc")),
            "template": "vicuna_v1_1",
            "max_length": int(release.config.get("max_sequence_length") or 2048),
        },
        "stages": [],
        "eval": [],
    }
    return OmegaConf.to_yaml(OmegaConf.create(recipe))


def import_release(delta: str | Path, base: str | Path, regionclip: str | Path, clip: str | Path, out: str | Path, *,
                   regionclip_model: str = "RN50x4", dtype: str = "float16", overwrite: bool = False,
                   log: Callable[[str], None] = print) -> Path:
    """Apply PVIT's delta to ``base`` and write a pvit export to ``out``; returns ``out``.

    Nothing is written before every input has been checked (folders, config, shard list, CLIP width, RegionCLIP
    file and width, tokenizer ids).
    """
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    release = read_release(delta)
    base, clip, regionclip, out = Path(base), Path(clip).resolve(), Path(regionclip).resolve(), Path(out).resolve()
    base_cfg = _read_config(base, "--base")
    if base_cfg.get("model_type") != "llama":
        raise CheckpointError(f"--base {base}: config.json has model_type {base_cfg.get('model_type')!r}; PVIT's delta "
                              "applies to LLaMA-7B in Hugging Face format (model_type 'llama')")
    base_w = WeightFolder(base, "--base")
    _check_clip(clip, release)
    _check_regionclip(regionclip, regionclip_model, release)
    rows = release.shape(EMBEDDINGS[0])[0]
    config = llm_config(release, base_cfg, rows, dtype)  # sizes first: the clearest message for a wrong base
    check_against_base(release, base_w)
    tokenizer = load_tokenizer(release, base, rows)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CheckpointError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
        shutil.rmtree(out)
    llm = out / "llm"
    llm.mkdir(parents=True)
    log(f"applying the delta {release.root} to {base}")
    multimodal = _write_llm(release, base_w, llm, DTYPES[dtype], log)
    config.save_pretrained(str(llm))
    tokenizer.save_pretrained(str(llm))
    tokenizer.save_pretrained(str(out / "tokenizer"))
    with atomic_path(llm / "mm_projector.bin") as tmp:  # LLaVA's projector file: llm/ works as recipes' paths.llava
        torch.save({"model.mm_projector." + k.rsplit(".", 1)[1]: v for k, v in multimodal.items()
                    if k.startswith("projector.")}, tmp)
    from safetensors.torch import save

    from pvit.atomic import atomic_write_bytes

    slots = ["projector", "region_projector"] + (["bbox_embed"] if "bbox_embed.weight" in multimodal else [])
    atomic_write_bytes(out / "weights.safetensors",
                       save(multimodal, metadata={"pvit": json.dumps({"slots": slots, "source": "pvit-official"})}))
    atomic_write_text(out / "recipe.yaml", _recipe(release, out, clip, regionclip, regionclip_model, dtype))
    meta = {"source": "pvit-official", "delta": str(release.root.resolve()), "base": str(base.resolve()),
            "clip": str(clip), "regionclip": str(regionclip), "dtype": dtype, "added_tokens": release.tokens,
            "vocab_rows": rows, "slots": slots}
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2))
    log(f"written: {out} (load it with pvit.Predictor.from_pretrained, `pvit serve`, or `pvit eval ... "
        f"paths.llava={llm}`)")
    return out
