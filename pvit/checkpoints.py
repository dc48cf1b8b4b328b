"""Exported stage weights: atomic safetensors writes, and loading that maps embedding rows by token."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pvit.atomic import atomic_write_bytes, atomic_write_text
from pvit.errors import CheckpointError
from pvit.model import PVITModel
from pvit.slots import select, state_names

WEIGHTS = "weights.safetensors"


def trained_state(model: PVITModel, slots: list[str]) -> dict[str, torch.Tensor]:
    """The state (parameters and buffers) of the modules a stage trained, shared tensors saved once."""
    state: dict[str, torch.Tensor] = {}
    prefixes = state_names(model, select(model, slots))
    seen = set()
    for name, t in model.state_dict(keep_vars=False).items():
        if any(name == p or (p.endswith(".") and name.startswith(p)) for p in prefixes):
            key = (t.data_ptr(), t.shape, t.stride()) if t.numel() else None
            if key is not None and key in seen:
                continue
            if key is not None:
                seen.add(key)
            state[name] = t.detach().contiguous().cpu()
    return state


def export_stage(model: PVITModel, slots: list[str], out_dir: Path, meta: dict) -> Path:
    """Write ``weights.safetensors`` (the trained slots), the tokenizer and ``meta.json`` into ``out_dir``."""
    from safetensors.torch import save

    out_dir.mkdir(parents=True, exist_ok=True)
    state = trained_state(model, slots)
    atomic_write_bytes(out_dir / WEIGHTS, save(state, metadata={"pvit": json.dumps({"slots": slots})}))
    if model.llm.tokenizer is not None:
        model.llm.tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2))
    return out_dir / WEIGHTS


def _embedding_names(model: PVITModel) -> dict[str, str]:
    names = {}
    inp = model.llm.model.get_input_embeddings().weight
    out = model.llm.model.get_output_embeddings()
    for n, p in model.named_parameters(remove_duplicate=False):
        if p is inp:
            names[n] = "input"
        elif out is not None and p is out.weight:
            names[n] = "output"
    return names


def load_export(model: PVITModel, path: str | Path) -> list[str]:
    """Load exported weights (a ``weights.safetensors`` or its folder) into ``model``.

    Embedding matrices whose vocabulary differs (e.g. a LLaVA-style base without region tokens) are
    copied row by row for the tokens both tokenizers know; the returned list says what was loaded.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    file = path / WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"init_from: {file} does not exist (expected an exported stage folder or a "
                              f"{WEIGHTS} file)")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"init_from: {file} is not a readable safetensors file ({e})") from None
    own = model.state_dict()
    emb = _embedding_names(model)
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise CheckpointError(
            f"init_from: {file} has {len(unexpected)} tensors this model does not have (e.g. {unexpected[:3]}); "
            "was it exported from a model with other components?"
        )
    src_vocab = None
    tok_dir = file.parent / "tokenizer"
    loaded = []
    with torch.no_grad():
        for k, v in state.items():
            target = own[k]
            v = v.to(target.device)  # a model on another device (engine.device) than the file's CPU tensors
            if target.shape == v.shape:
                target.copy_(v.to(target.dtype))
            elif k in emb and target.shape[1:] == v.shape[1:]:
                if src_vocab is None:
                    src_vocab = _vocab(tok_dir)
                dst_vocab = model.llm.tokenizer.get_vocab()
                pairs = [(dst_vocab[t], i) for t, i in src_vocab.items() if t in dst_vocab and i < v.shape[0]]
                dst = torch.tensor([d for d, _ in pairs], device=target.device)
                src = torch.tensor([s for _, s in pairs], device=target.device)
                target[dst] = v[src].to(target.dtype)
                uncovered = torch.ones(target.shape[0], dtype=torch.bool, device=target.device)
                uncovered[dst] = False
                if uncovered.any():  # tokens the source never had start at the mean of the loaded rows
                    target[uncovered] = target[dst].mean(0, keepdim=True)
            else:
                raise CheckpointError(f"init_from: {file}: tensor {k} has shape {tuple(v.shape)}, the model has "
                                      f"{tuple(target.shape)}")
            loaded.append(k)
    return loaded


def _vocab(tok_dir: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    if not tok_dir.is_dir():
        raise CheckpointError(f"init_from: the embedding sizes differ and {tok_dir} (the export's tokenizer) is missing")
    return AutoTokenizer.from_pretrained(str(tok_dir)).get_vocab()
