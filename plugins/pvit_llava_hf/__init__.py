"""Built-in plugin: ``llava-hf``, a transformers ``LlavaForConditionalGeneration`` checkpoint (llava-hf/llava-1.5-7b-hf)
as pvit's LLM, image encoder and projector; and ``pvit import llava-hf``.

The three components share one name and read the same folder, so a recipe starts from a LLaVA-1.5 model with::

    model:
      llm: {name: llava-hf, options: {path: /models/llava-1.5-7b-hf}}
      image_encoder: {name: llava-hf, options: {path: /models/llava-1.5-7b-hf}}
      projector: {name: llava-hf, options: {path: /models/llava-1.5-7b-hf}}
      template: plain      # USER: <image>\\n... ASSISTANT: (llava-hf's prompt format)
"""

from __future__ import annotations

import pvit
from pvit.options import HubPath


def llava_hf_llm(path: HubPath | None = None, config: dict | None = None, dtype: str = "float32",
                 attn_implementation: str | None = "sdpa", gradient_checkpointing: bool = False):
    """The language model (``language_model`` + ``lm_head``) and tokenizer of a llava-hf checkpoint.

    Options:
        path: the checkpoint folder (``config.json`` with ``model_type: llava``, safetensors, tokenizer), or a hub
            id found in the local Hugging Face cache (downloaded only when the hub is on).
        config: the checkpoint's ``config.json`` fields (``vision_config``, ``text_config``, ...), used only to
            plan a run (``--dry-run``) when the folder is not on this machine.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        attn_implementation: passed to transformers (``sdpa``, ``eager``, ``flash_attention_2``).
        gradient_checkpointing: trade compute for memory in training.
    """
    from .components import LlavaHFLanguageModel

    return LlavaHFLanguageModel(path=path, config=config, dtype=dtype, attn_implementation=attn_implementation,
                                gradient_checkpointing=gradient_checkpointing)


def llava_hf_image_encoder(path: HubPath | None = None, config: dict | None = None, frozen: bool = True,
                           dtype: str = "float32", mean: list | None = None, std: list | None = None,
                           seed: int | None = 0):
    """The CLIP vision tower of a llava-hf checkpoint, honouring its ``vision_feature_layer`` (one layer, or
    several concatenated) and ``vision_feature_select_strategy`` (``default``: CLS dropped; ``full`` is refused).

    Options:
        path: the checkpoint folder or a cached hub id (see the llava-hf LLM).
        config: the checkpoint's ``config.json`` fields: plans a run without the folder; without ``path`` it
            builds a random tower of that shape (what a self-contained pvit export rebuilds before loading).
        frozen: no grads, eval mode (LLaVA and PVIT freeze the tower).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        mean, std: normalisation; default the checkpoint's image processor values (CLIP's).
        seed: seed of a random init (``config`` only).
    """
    from .components import LlavaHFImageEncoder

    return LlavaHFImageEncoder(path=path, config=config, frozen=frozen, dtype=dtype, mean=mean, std=std, seed=seed)


def llava_hf_projector(in_dim: int, out_dim: int, path: HubPath | None = None, config: dict | None = None):
    """LLaVA's ``multi_modal_projector`` (``linear_1``, ``projector_hidden_act``, ``linear_2``) with its weights.

    Options (``in_dim`` / ``out_dim`` are wired by pvit and must match the checkpoint's):
        path: the checkpoint folder or a cached hub id (see the llava-hf LLM).
        config: the checkpoint's ``config.json`` fields: plans without the folder; without ``path`` it builds a
            random projector of that shape.
    """
    from .components import build_projector

    return build_projector(in_dim, out_dim, path=path, config=config)


@pvit.hookimpl
def pvit_register_llms(register):
    register("llava-hf", llava_hf_llm)


@pvit.hookimpl
def pvit_register_image_encoders(register):
    register("llava-hf", llava_hf_image_encoder)


@pvit.hookimpl
def pvit_register_projectors(register):
    register("llava-hf", llava_hf_projector)


@pvit.hookimpl
def pvit_register_commands(app):
    from pvit.cli import command_group

    from .importer import import_llava_hf

    command_group(app, "import").command("llava-hf")(import_llava_hf)
