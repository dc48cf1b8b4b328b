"""Built-in plugin: ``hf-causal-lm``, any Hugging Face causal LM (local path, hub id, or a config for random init)."""

from typing import Annotated

import pvit
from pvit.options import HubPath, NestedOptions


def hf_causal_lm(
    path: HubPath | None = None,
    config: dict | None = None,
    tokenizer: Annotated[str | dict | None, NestedOptions("dataset", spec_key="words_from")] = None,
    dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
    seed: int | None = 0,
    gradient_checkpointing: bool = False,
    lora: dict | None = None,
    quantization: str | None = None,
):
    """A Hugging Face causal LM and its tokenizer.

    Options:
        path: local directory or hub id of a pretrained ``AutoModelForCausalLM`` (hub ids need network;
            with ``HF_HUB_OFFLINE=1`` only the local cache is used).
        config: ``{"model_type": "llama", ...}`` keyword arguments of the architecture's config, for a
            random-init model; when ``path`` is also given, it only describes the architecture for
            ``--dry-run`` plans made without the weights.
        tokenizer: a path or hub id (default: ``path``), or ``{"words": [...], "words_from": {"name": dataset,
            "options": {...}}}`` to build a word-level tokenizer offline with the ``tokenizers`` library.
        dtype: ``float32``, ``bfloat16`` or ``float16``: the dtype the weights are kept in.
        attn_implementation: passed to transformers (``sdpa``, ``eager``, ``flash_attention_2``).
        seed: seed for random initialisation (``None``: the global RNG).
        gradient_checkpointing: trade compute for memory in training.
        lora: ``{r, alpha, dropout, target_modules}`` adds LoRA adapters (``peft``; defaults r 8, alpha 16,
            dropout 0.05, target_modules null = peft's default for the architecture, q_proj/v_proj for LLaMA).
            The adapters form the trainable slot ``llm.lora``; ``merge_adapters()`` folds them into the weights.
        quantization: ``nf4`` loads the pretrained ``path`` in 4 bits (bitsandbytes, CUDA only) for QLoRA.
    """
    from pvit_hf.model import HFCausalLM

    return HFCausalLM(
        path=path,
        config=config,
        tokenizer=tokenizer,
        dtype=dtype,
        attn_implementation=attn_implementation,
        seed=seed,
        gradient_checkpointing=gradient_checkpointing,
        lora=lora,
        quantization=quantization,
    )


def _preflight(options: dict, where: str) -> list[str]:
    from pvit_hf.lora import preflight

    return preflight(options, where)


#: Recipe-time checks of option values (``pvit.preflight.check_components`` calls it before anything is built).
hf_causal_lm.preflight = _preflight


@pvit.hookimpl
def pvit_register_llms(register):
    register("hf-causal-lm", hf_causal_lm)
