"""PVIT's published delta (PVIT-official/PVIT): what its folder holds, checked, and how its keys map onto pvit.

The release is a LLaVA-style ``LlavaLlamaForCausalLM`` checkpoint saved as the difference to LLaMA-7B: fp16
``pytorch_model-*.bin`` shards with ``pytorch_model.bin.index.json``, a ``config.json`` whose ``model_type`` is
``llava`` (PVIT's own class, unrelated to transformers' ``llava``) and the tokenizer with the added tokens.
Every tensor that the base also has is stored as ``target - base``; the embedding rows of the added tokens
(beyond the base vocabulary) and PVIT's own modules (image projector, region projector, box embedding) are
stored as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvit.errors import CheckpointError
from pvit_hf.weight_folder import WeightFolder

#: PVIT's modules outside the LLM -> pvit state names (linear projectors keep their Linear in ``body``).
MULTIMODAL = {
    "model.mm_projector.weight": "projector.body.weight",
    "model.mm_projector.bias": "projector.body.bias",
    "model.prompt_projector.weight": "region_projector.body.weight",
    "model.prompt_projector.bias": "region_projector.body.bias",
    "model.bbox_fc.weight": "bbox_embed.weight",
    "model.bbox_fc.bias": "bbox_embed.bias",
}
#: Tensors never used: the towers load from --clip / --regionclip, rotary tables are recomputed.
SKIPPED_PREFIXES = ("model.vision_tower.", "model.prompt_encoder.")
SKIPPED_SUFFIXES = (".rotary_emb.inv_freq",)
#: The matrices that grew with the added tokens: the first ``base`` rows are deltas, the rest are absolute.
EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")
IMAGE_PATCH, IM_START, IM_END = "<im_patch>", "<im_start>", "<im_end>"
REGION_START, REGION_END = "<Region>", "</Region>"


def _read_config(folder: Path, what: str) -> dict[str, Any]:
    if not folder.is_dir():
        raise CheckpointError(f"{what} {folder}: not a folder" + ("" if folder.exists() else " (it does not exist)"))
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{what} {folder}: no config.json; pass the model folder itself (the one holding "
                              "config.json and the weight files)")
    try:
        cfg = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{what} {path}: not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{what} {path}: expected a JSON object")
    return cfg


@dataclass
class Release:
    """A checked PVIT delta folder.

    Attributes:
        root: the folder.
        config: its ``config.json``.
        weights: its tensors.
        tokens: the tokens PVIT added to LLaMA's vocabulary, in the order its code adds them.
    """

    root: Path
    config: dict
    weights: WeightFolder

    @property
    def tokens(self) -> list[str]:
        c = self.config
        out = [IMAGE_PATCH]
        if c.get("mm_use_im_start_end"):
            out += [IM_START, IM_END]
        if c.get("mm_use_prompt_token") or c.get("mm_use_region_clip"):
            out += [REGION_START, REGION_END]
        if c.get("mm_use_prompt_token"):
            out += [f"<L{i}>" for i in range(1000)]
        return out

    def shape(self, name: str) -> tuple[int, ...]:
        return self.weights.shape(name)


def read_release(folder: str | Path) -> Release:
    """Check that ``folder`` is PVIT's delta release and index its shards; CheckpointError says what is wrong."""
    root = Path(folder)
    cfg = _read_config(root, "--delta")
    model_type = cfg.get("model_type")
    if model_type != "llava":
        hint = " (that is a plain LLaMA: pass it as --base)" if model_type == "llama" else ""
        raise CheckpointError(
            f"--delta {root}: config.json has model_type {model_type!r}{hint}; PVIT's delta release says 'llava' "
            "(PVIT's own LLaVA-LLaMA class). Pass the folder downloaded from PVIT's weights page")
    if not cfg.get("mm_use_region_clip"):
        raise CheckpointError(
            f"--delta {root}: config.json has no mm_use_region_clip, so this is not a PVIT checkpoint (a LLaVA delta "
            "has none); PVIT's release sets it to the RegionCLIP checkpoint it was trained with")
    if cfg.get("mm_use_prompt_encoder"):
        raise CheckpointError(f"--delta {root}: mm_use_prompt_encoder is set (PVIT's SAM prompt-encoder variant); "
                              "only the released RegionCLIP model can be imported")
    release = Release(root, cfg, WeightFolder(root, "--delta"))
    keys = set(release.weights.keys())
    needed = ["model.mm_projector.weight", "model.prompt_projector.weight", *EMBEDDINGS]
    if cfg.get("mm_use_bbox_fc"):
        needed.append("model.bbox_fc.weight")
    missing = [k for k in needed if k not in keys]
    if missing:
        raise CheckpointError(f"--delta {root}: the weights lack {', '.join(missing)}, which PVIT's release has "
                              f"(config.json: mm_use_region_clip, mm_use_bbox_fc={bool(cfg.get('mm_use_bbox_fc'))})")
    return release


def llm_config(release: Release, base_cfg: dict, vocab_size: int, dtype: str):
    """The plain ``LlamaConfig`` of the merged LLM: the release's LLaMA fields without PVIT's ``mm_*`` ones."""
    from transformers import LlamaConfig

    fields = set(LlamaConfig().to_dict())
    keep = {k: v for k, v in release.config.items()
            if k in fields and k not in ("model_type", "architectures", "transformers_version", "torch_dtype",
                                         "dtype", "_name_or_path")}
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if k in base_cfg and k in keep and base_cfg[k] != keep[k]:
            raise CheckpointError(f"--base: config.json has {k}={base_cfg[k]} but the delta was made against a model "
                                  f"with {k}={keep[k]}; PVIT's delta applies to LLaMA-7B")
    keep["vocab_size"] = int(vocab_size)
    for k in ("pad_token_id", "bos_token_id", "eos_token_id"):  # 2023 LLaMA configs say pad -1: not a row index
        if keep.get(k) is not None and not 0 <= int(keep[k]) < vocab_size:
            keep[k] = None
    cfg = LlamaConfig(**keep)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.dtype = dtype
    return cfg


def load_tokenizer(release: Release, base: Path, rows: int):
    """PVIT's tokenizer: the release's own (else the base's), with PVIT's added tokens in PVIT's order, checked
    against the config's token ids and the embedding rows."""
    from transformers import AutoTokenizer

    tok, errors = None, []
    for folder in (release.root, base):
        if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            continue
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            break
        except Exception as e:  # noqa: BLE001 - every failure is reported together below
            errors.append(f"{folder}: {type(e).__name__}: {e}")
    if tok is None:
        raise CheckpointError("could not load a tokenizer from --delta or --base ("
                              + ("; ".join(errors) or "neither has tokenizer files")
                              + "); LLaMA's sentencepiece tokenizer.model needs the sentencepiece package")
    vocab = tok.get_vocab()
    tok.add_tokens([t for t in release.tokens if t not in vocab], special_tokens=True)
    ids = dict(zip(release.tokens, tok.convert_tokens_to_ids(release.tokens)))
    for key, token in (("region_start_token", REGION_START), ("region_end_token", REGION_END)):
        want = release.config.get(key)
        if want is not None and int(want) != ids[token]:
            raise CheckpointError(f"--delta {release.root}: config.json says {key}={want} but the tokenizer gives "
                                  f"{token} the id {ids[token]}; the tokenizer does not belong to these weights")
    if len(tok) > rows:
        raise CheckpointError(f"--delta {release.root}: the tokenizer has {len(tok)} tokens but the embedding matrix "
                              f"{rows} rows; the tokenizer does not belong to these weights")
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token  # PVIT (vicuna v1) pads with <unk>
    return tok
