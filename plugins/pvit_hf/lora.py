"""LoRA / QLoRA for ``hf-causal-lm``: option checks, adapter injection with ``peft``, the ``lora`` parameter group
and merging adapters back into the base weights.

Adapters are injected in place (``peft.inject_adapter_in_model``), so the LLM stays a plain transformers model
with LoRA layers inside. A wrapped layer's own weights live at ``<layer>.base_layer.weight`` in PyTorch; state dicts
show them under the plain name ``<layer>.weight`` (a state-dict hook renames them, a load pre-hook renames them
back), so exports and checkpoints of a LoRA model use the same names as those of the model without adapters and
load into either. The adapter tensors are ``<layer>.lora_A.default.weight`` / ``lora_B``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pvit.errors import ComponentOptionError

#: Keys of the ``lora`` option and their defaults (``target_modules: null``: peft's default for the architecture,
#: ``q_proj`` and ``v_proj`` for LLaMA).
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": None}
#: Values of the ``quantization`` option: ``nf4`` loads the base in 4 bits (bitsandbytes NF4, double quantisation,
#: bf16 compute), as QLoRA.
QUANTIZATIONS = ("nf4",)
ADAPTER = "default"


def lora_problems(lora: Any, where: str = "model.llm.options") -> list[str]:
    """Problems with a ``lora`` option value (empty when it is usable)."""
    if lora is None:
        return []
    if not isinstance(lora, dict):
        return [f"{where}.lora: expected a mapping such as {{r: 8, alpha: 16, dropout: 0.05, target_modules: "
                f"[q_proj, v_proj]}}, got {type(lora).__name__}"]
    from pvit.errors import did_you_mean

    out = []
    for key in lora:
        if key not in LORA_DEFAULTS:
            out.append(f"{where}.lora: unknown key {key!r}{did_you_mean(key, LORA_DEFAULTS)}; accepted: "
                       f"{', '.join(LORA_DEFAULTS)}")
    r = lora.get("r", LORA_DEFAULTS["r"])
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        out.append(f"{where}.lora.r: the adapter rank must be a positive int, got {r!r}")
    alpha = lora.get("alpha", LORA_DEFAULTS["alpha"])
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        out.append(f"{where}.lora.alpha: must be a positive number (the update is scaled by alpha / r), got {alpha!r}")
    dropout = lora.get("dropout", LORA_DEFAULTS["dropout"])
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        out.append(f"{where}.lora.dropout: must be a number in [0, 1), got {dropout!r}")
    targets = lora.get("target_modules")
    if targets is not None and not (targets == "all-linear" or (
            isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets))):
        out.append(f"{where}.lora.target_modules: a list of module names (e.g. [q_proj, k_proj, v_proj, o_proj]), "
                   f"'all-linear', or null for peft's default for the architecture; got {targets!r}")
    return out


def quantization_problems(quantization: Any, where: str = "model.llm.options") -> list[str]:
    """Problems with a ``quantization`` option on this machine: QLoRA needs CUDA and bitsandbytes."""
    if quantization is None:
        return []
    if quantization not in QUANTIZATIONS:
        return [f"{where}.quantization: {quantization!r} is not supported; use one of {', '.join(QUANTIZATIONS)} "
                "or null"]
    if not torch.cuda.is_available():
        return [f"{where}.quantization: {quantization!r} (QLoRA's 4-bit base) needs a CUDA GPU (bitsandbytes' 4-bit "
                "kernels), and torch sees none on this machine; on CPU, drop `quantization` and train plain LoRA "
                "(keep `lora`)"]
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return [f"{where}.quantization: {quantization!r} needs the bitsandbytes package: pip install 'pvit[qlora]'"]
    return []


def preflight(options: dict, where: str) -> list[str]:
    """Recipe-time checks of the LoRA / QLoRA options (called by ``pvit.preflight.check_components``)."""
    out = lora_problems(options.get("lora"), f"{where}.options")
    out += quantization_problems(options.get("quantization"), f"{where}.options")
    if options.get("quantization") is not None and options.get("path") is None:
        out.append(f"{where}.options.quantization: a 4-bit base is quantised while loading pretrained weights; "
                   "set `path` (a random-init `config` model cannot be loaded in 4 bits)")
    return out


def quantization_config(quantization: str):
    """The transformers ``BitsAndBytesConfig`` of a ``quantization`` value (QLoRA's NF4 recipe)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization, bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _peft():
    try:
        import peft
    except ImportError:
        raise ComponentOptionError("hf-causal-lm option `lora` needs the peft package: "
                                   "pip install 'pvit[lora]'") from None
    return peft


def inject(model: nn.Module, lora: dict, quantized: bool = False, gradient_checkpointing: bool = False) -> int:
    """Add LoRA adapters to ``model`` in place; returns the number of wrapped layers.

    Adapter B matrices start at zero (peft's default), so the model's outputs are unchanged until it trains.
    """
    problems = lora_problems(lora)
    if problems:
        raise ComponentOptionError("; ".join(problems))
    peft = _peft()
    opts = {**LORA_DEFAULTS, **lora}
    if quantized:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    config = peft.LoraConfig(r=int(opts["r"]), lora_alpha=float(opts["alpha"]), lora_dropout=float(opts["dropout"]),
                             target_modules=opts["target_modules"], bias="none")
    try:
        peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    except ValueError as e:
        raise ComponentOptionError(f"hf-causal-lm option lora: {e}") from None
    layers = lora_layers(model)
    for _name, layer in layers:
        layer.register_state_dict_post_hook(_plain_names)
        layer.register_load_state_dict_pre_hook(_base_names)
    return len(layers)


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, layer) of the LoRA-wrapped layers of ``model``."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA adapter parameters (``lora_A`` / ``lora_B``) of ``model``, in module order."""
    return [p for _n, layer in lora_layers(model) for n, p in layer.named_parameters()
            if not n.startswith("base_layer.")]


def _plain_names(module, state_dict, prefix, local_metadata):
    """State-dict hook: ``<layer>.base_layer.<key>`` -> ``<layer>.<key>``."""
    base = prefix + "base_layer."
    for key in [k for k in state_dict if k.startswith(base)]:
        state_dict[prefix + key[len(base):]] = state_dict.pop(key)


def _base_names(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Load pre-hook: ``<layer>.<key>`` (a base weight under its plain name) -> ``<layer>.base_layer.<key>``."""
    own = {n.split(".")[0] for n, _ in module.named_children()}
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if rest.split(".")[0] not in own:
            state_dict[prefix + "base_layer." + rest] = state_dict.pop(key)


def merge(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base layer's weight and put the plain layer back; returns the count."""
    layers = lora_layers(model)
    for name, layer in layers:
        base = layer.get_base_layer()
        if getattr(base.weight, "quant_state", None) is not None or type(base).__module__.startswith("bitsandbytes"):
            raise ComponentOptionError(
                "merge_adapters: the base weights are 4-bit (quantization: nf4); merging would round the result to "
                "4 bits. Rebuild the model without `quantization` (same `lora`), load the adapter exports, then merge")
        layer.merge(safe_merge=True, adapter_names=[ADAPTER])
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, base)
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in vars(model):
            delattr(model, attr)
    return len(layers)
