"""A tiny synthetic PVIT release in the published layout, with its LLaMA base, CLIP and RegionCLIP stand-ins.

The delta folder is laid out as PVIT's weights page has it: fp16 ``pytorch_model-0000k-of-00002.bin`` pickles with
``pytorch_model.bin.index.json``, a ``config.json`` of ``model_type`` ``llava`` with PVIT's ``mm_*`` fields and
token ids, the tokenizer with the five added tokens, LLaVA's key names (``model.mm_projector``,
``model.prompt_projector``, ``model.bbox_fc``) and a stale ``rotary_emb.inv_freq`` buffer as 2023 transformers
saved. Every LLM tensor is stored as ``target - base``; the added tokens' embedding rows as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

ADDED = ["<im_patch>", "<im_start>", "<im_end>", "<Region>", "</Region>"]
WORDS = ["a", "red", "blue", "circle", "square", "what", "is", "in", "the", "region", "left", "of"]
HIDDEN, CLIP_WIDTH, REGION_WIDTH = 32, 64, 64
LLAMA = dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)


@dataclass
class Release:
    delta: Path
    base: Path
    clip: Path
    regionclip: Path
    target: dict  # the fp16 tensors PVIT trained (what base + delta must give), LLaVA key names


def _save_llama(folder: Path, tok, seed: int, **over):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**LLAMA, "vocab_size": len(tok), **over})).half()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def make_release(root: Path) -> Release:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from pvit_hf.model import build_word_tokenizer
    from pvit_regionclip.config import resolve_config
    from pvit_regionclip.encoder import build_visual
    from pvit_vision.tiny import TINY_OPTIONS

    tok = build_word_tokenizer(WORDS)
    base = _save_llama(root / "llama-7b", tok, seed=0)
    n_base = len(tok)

    g = torch.Generator().manual_seed(1)
    target = {}
    for k, v in base.state_dict().items():
        t = v.float() + 0.05 * torch.randn(v.shape, generator=g)
        if k in ("model.embed_tokens.weight", "lm_head.weight"):  # PVIT's five added tokens
            t = torch.cat([t, torch.randn(len(ADDED), HIDDEN, generator=g)])
        target[k] = t.half()
    target["model.mm_projector.weight"] = torch.randn(HIDDEN, CLIP_WIDTH, generator=g).half()
    target["model.mm_projector.bias"] = torch.randn(HIDDEN, generator=g).half()
    target["model.prompt_projector.weight"] = torch.randn(HIDDEN, REGION_WIDTH, generator=g).half()
    target["model.prompt_projector.bias"] = torch.randn(HIDDEN, generator=g).half()
    target["model.bbox_fc.weight"] = torch.randn(HIDDEN, 4, generator=g).half()
    target["model.bbox_fc.bias"] = torch.randn(HIDDEN, generator=g).half()

    delta = {}
    base_sd = base.state_dict()
    for k, t in target.items():
        if k not in base_sd:
            delta[k] = t.clone()
            continue
        d = t.clone()
        d[: base_sd[k].shape[0]] -= base_sd[k]  # fp16 arithmetic, as PVIT's make_delta
        delta[k] = d
    delta["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.rand(HIDDEN // 4).half()

    folder = root / "pvit-delta"
    folder.mkdir()
    names = list(delta)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    for file, keys in shards.items():
        torch.save({k: delta[k] for k in keys}, folder / file)
    total = sum(t.numel() * t.element_size() for t in delta.values())
    index = {"metadata": {"total_size": total}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    tok_delta = build_word_tokenizer(WORDS)
    tok_delta.add_tokens(ADDED, special_tokens=True)
    ids = tok_delta.convert_tokens_to_ids(ADDED)
    assert ids == list(range(n_base, n_base + len(ADDED)))
    tok_delta.save_pretrained(folder)
    config = {
        "_name_or_path": "checkpoints/stage2_ckpt", "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": -1,
        "hidden_act": "silu", "initializer_range": 0.02, "rms_norm_eps": 1e-6, "max_sequence_length": 2048,
        **{k: v for k, v in LLAMA.items() if k != "num_key_value_heads"},
        "vocab_size": n_base + len(ADDED), "torch_dtype": "float16", "transformers_version": "4.28.0.dev0",
        "use_cache": False, "freeze_mm_mlp_adapter": False, "tune_mm_mlp_adapter": False,
        "mm_vision_tower": "openai/clip-vit-large-patch14", "mm_hidden_size": CLIP_WIDTH,
        "mm_vision_select_layer": -2, "use_mm_proj": True, "mm_use_im_start_end": True,
        "mm_use_prompt_token": False, "mm_use_prompt_encoder": False,
        "mm_use_region_clip": "model_weights/regionclip_pretrained-cc_rn50x4.pth", "mm_use_bbox_fc": True,
        "tune_mm_prompt_only": False, "region_start_token": ids[3], "region_end_token": ids[4],
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))

    torch.manual_seed(2)
    CLIPVisionModel(CLIPVisionConfig(**TINY_OPTIONS["hf-clip"]["config"])).save_pretrained(root / "clip")
    visual = build_visual(resolve_config("tiny"), seed=3)
    state = {f"backbone.{k}": v for k, v in visual.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"model": state}, root / "regionclip.pth")  # RegionCLIP's detectron2 layout
    return Release(folder, root / "llama-7b", root / "clip", root / "regionclip.pth", target)


def hand_merge(release: Release) -> dict[str, torch.Tensor]:
    """base + delta by hand (fp32 sum rounded to fp16; the added rows as stored), for the LLM tensors only."""
    from safetensors.torch import load_file

    base = load_file(str(release.base / "model.safetensors"))
    delta = {}
    for f in sorted(release.delta.glob("pytorch_model-*.bin")):
        delta.update(torch.load(f, weights_only=True))
    out = {}
    for k, b in base.items():
        d = delta[k].float()
        d[: b.shape[0]] += b.float()
        out[k] = d.half()
    return out
