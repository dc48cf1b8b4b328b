"""``pvit export --format hf``: a model without region features as a transformers ``LlavaForConditionalGeneration``.

The folder holds ``config.json`` (LlavaConfig), the weights in the layout llava-hf checkpoints use
(``vision_tower.vision_model.*``, ``multi_modal_projector.linear_1/linear_2``, ``language_model.model.*``,
``language_model.lm_head.weight``; sharded safetensors), the tokenizer with an ``<image>`` token (pvit's
``<im_patch>`` renamed, same id and embedding), the processor (``processor_config.json``, ``preprocessor_config.json``:
pvit's squash resize and normalisation) and a chat template rendering pvit's conversation template.

What maps: an image encoder whose backbone is a transformers ``CLIPVisionModel`` (``hf-clip``, ``llava-hf``); a
projector ``llava-hf``, ``mlp2x-gelu`` (hidden width = LLM width) or ``linear`` (exported as ``linear_1`` and an
identity ``linear_2``), without input normalisation; any LLM transformers' LLaVA can hold (its ``AutoModel``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pvit.errors import CheckpointError
from pvit.interfaces import IMAGE_PATCH_TOKEN
from pvit.templates import stop_token_ids

IMAGE_TOKEN = "<image>"


def _vision_problems(model) -> list[str]:
    enc = model.image_encoder
    if enc is None:
        return ["the model has no image encoder (LLaVA needs one)"]
    backbone = getattr(enc, "backbone", None)
    if type(backbone).__name__ != "CLIPVisionModel" or getattr(enc, "num_prefix_tokens", None) != 1:
        name = getattr(enc, "name", type(enc).__name__)
        return [f"the image encoder {name!r} is not a transformers CLIPVisionModel; "
                "--format hf takes the hf-clip and llava-hf image encoders"]
    return []


def _projector(proj) -> tuple[dict, str, bool]:
    """(linear_1/linear_2 tensors, LLaVA activation name, bias) of a projector; CheckpointError when it has none."""
    name = getattr(proj, "name", type(proj).__name__)
    norm, body = getattr(proj, "norm", None), getattr(proj, "body", None)
    if not isinstance(norm, nn.Identity):
        norm_name = getattr(proj, "input_norm", "?")
        raise CheckpointError(f"the projector {name!r} normalises its input (input_norm {norm_name!r}), which "
                              "LLaVA's projector cannot; use input_norm none")
    if isinstance(body, nn.Linear):
        out = body.out_features
        eye = torch.eye(out, dtype=body.weight.dtype)
        l1 = {"weight": body.weight, "bias": body.bias}
        l2 = {"weight": eye, "bias": None if body.bias is None else torch.zeros(out, dtype=body.weight.dtype)}
        act, bias = "linear", body.bias is not None
    elif isinstance(body, nn.Sequential) and len(body) == 3 and isinstance(body[0], nn.Linear) \
            and isinstance(body[2], nn.Linear):
        act = getattr(proj, "act_name", None)
        if act is None and isinstance(body[1], nn.GELU) and body[1].approximate == "none":
            act = "gelu"
        if act is None or body[2].in_features != body[2].out_features:
            raise CheckpointError(f"the projector {name!r} is not LLaVA's Linear -> GELU -> Linear(D, D) (hidden_dim "
                                  "must equal the LLM width)")
        l1 = {"weight": body[0].weight, "bias": body[0].bias}
        l2 = {"weight": body[2].weight, "bias": body[2].bias}
        bias = body[0].bias is not None
        if (body[2].bias is not None) != bias:
            raise CheckpointError(f"the projector {name!r} has a bias on one linear layer only")
    else:
        raise CheckpointError(f"the projector {name!r} has no LLaVA equivalent; --format hf takes llava-hf, "
                              "mlp2x-gelu and linear projectors")
    tensors = {f"linear_{i}.{k}": v for i, part in ((1, l1), (2, l2)) for k, v in part.items() if v is not None}
    return tensors, act, bias


def check_llava(model, template) -> None:
    """Raise CheckpointError naming every part of ``model`` a transformers LLaVA cannot hold."""
    problems = _vision_problems(model)
    if model.projector is not None:
        try:
            _projector(model.projector)
        except CheckpointError as e:
            problems.append(str(e))
    if problems:
        raise CheckpointError("--format hf writes a transformers LlavaForConditionalGeneration, but " +
                              "; ".join(problems) + ". Use --format pvit (self-contained pvit folder) instead")


def image_processor(encoder):
    """pvit's preprocessing of ``encoder`` as a transformers CLIP image processor: squash-resize (bicubic), scale,
    normalise (no centre crop)."""
    from transformers import CLIPImageProcessor

    h, w = (int(v) for v in encoder.image_size)
    return CLIPImageProcessor(do_resize=True, size={"height": h, "width": w}, resample=3, do_center_crop=False,
                              crop_size={"height": h, "width": w}, do_rescale=True, rescale_factor=1 / 255,
                              do_normalize=True, image_mean=list(encoder.mean), image_std=list(encoder.std),
                              do_convert_rgb=True)


def chat_template(template, eos: str) -> str | None:
    """A jinja chat template that renders pvit's role template (``plain``, ``vicuna_v1_1``) the way pvit does;
    message contents may be text or llava-hf style lists of ``{"type": "image"}`` / ``{"type": "text"}``."""
    if not all(hasattr(template, a) for a in ("system", "user", "assistant", "sep")):
        return None
    q = json.dumps
    head = q(template.system + template.sep) if template.system else q("")
    return (
        "{{- " + head + " -}}"
        "{%- for message in messages -%}"
        "{%- if message['content'] is string -%}{%- set text = message['content'] -%}{%- set images = 0 -%}"
        "{%- else -%}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
        " | join(' ') -%}"
        "{%- set images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
        "{%- endif -%}"
        "{%- if message['role'] == 'user' -%}{{- " + q(template.user + ": ") + " + " + q(IMAGE_TOKEN + "\n")
        + " * images + text -}}"
        "{%- if not loop.last or add_generation_prompt -%}{{- " + q(template.sep + template.assistant + ":") + " -}}"
        "{%- endif -%}"
        "{%- elif message['role'] == 'assistant' -%}{{- ' ' + text + " + q(eos) + " -}}{%- endif -%}"
        "{%- endfor -%}"
    )


def _rename_placeholder(folder: Path) -> None:
    """In the saved tokenizer files, call pvit's ``<im_patch>`` ``<image>`` (same id, same embedding row)."""
    def swap(node):
        if isinstance(node, dict):
            return {(IMAGE_TOKEN if k == IMAGE_PATCH_TOKEN else k): swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return IMAGE_TOKEN if node == IMAGE_PATCH_TOKEN else node

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        f = folder / name
        if f.is_file():
            f.write_text(json.dumps(swap(json.loads(f.read_text(encoding="utf-8"))), ensure_ascii=False, indent=2),
                         encoding="utf-8")


def _tokenizer(model, template, folder: Path, log: Callable[[str], None]):
    """Save the tokenizer with an atomic ``<image>`` token; returns (tokenizer, image token id)."""
    from transformers import AutoTokenizer

    src = model.llm.tokenizer
    src.save_pretrained(str(folder))
    vocab = src.get_vocab()
    if IMAGE_TOKEN not in vocab:
        _rename_placeholder(folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    image_id = vocab.get(IMAGE_TOKEN, model.image_patch_id)
    if tok.convert_tokens_to_ids(IMAGE_TOKEN) != image_id or \
            tok(IMAGE_TOKEN, add_special_tokens=False)["input_ids"] != [image_id]:
        raise CheckpointError(f"the exported tokenizer does not read {IMAGE_TOKEN} as the single token {image_id} "
                              "(a tokenizer without tokenizer.json?); use --format pvit")
    if template.name != "chat" and tok.bos_token_id is not None:  # pvit starts such prompts with BOS
        if tok("a")["input_ids"][:1] != [tok.bos_token_id]:
            try:
                tok.add_bos_token = True
            except (AttributeError, ValueError):
                pass
        if tok("a")["input_ids"][:1] != [tok.bos_token_id]:
            log(f"note: the exported tokenizer does not add BOS ({tok.bos_token}); start prompts with it")
    return tok, image_id


def write_llava(model, template, folder: Path, log: Callable[[str], None] = print) -> None:
    """Write ``model`` (checked with [check_llava][pvit.export_hf.check_llava]) as a LLaVA folder into ``folder``."""
    from huggingface_hub import save_torch_state_dict
    from transformers import GenerationConfig, LlavaConfig, LlavaProcessor

    check_llava(model, template)
    enc, causal = model.image_encoder, model.llm.model
    state = {}
    for k, v in enc.backbone.state_dict().items():
        state["vision_tower." + (k if k.startswith("vision_model.") else "vision_model." + k)] = v
    proj, act, bias = _projector(model.projector)
    state.update({f"multi_modal_projector.{k}": v for k, v in proj.items()})
    text = causal.config.get_text_config() if hasattr(causal.config, "get_text_config") else causal.config
    tied = bool(getattr(text, "tie_word_embeddings", False))
    prefix = causal.base_model_prefix + "."
    for k, v in causal.state_dict().items():
        key = "language_model.model." + k[len(prefix):] if k.startswith(prefix) else "language_model." + k
        if not (tied and key == "language_model.lm_head.weight"):
            state[key] = v
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_torch_state_dict(state, str(folder), metadata={"format": "pt"})

    tok, image_id = _tokenizer(model, template, folder, log)
    tpl = chat_template(template, tok.eos_token or "")
    if tpl is None:
        tpl = getattr(tok, "chat_template", None)
        log(f"note: template {template.name!r} is the tokenizer's own chat template; write the image as "
            f"'{IMAGE_TOKEN}\\n' at the start of the first user message")
    tok.chat_template = tpl
    tok.save_pretrained(str(folder))

    layers = list(getattr(enc, "feature_layers", None) or [enc.select_layer])
    rows = causal.get_input_embeddings().num_embeddings
    text_dict = {**text.to_dict(), "vocab_size": rows, "pad_token_id": tok.pad_token_id}
    cfg = LlavaConfig(vision_config=enc.backbone.config.to_dict(), text_config=text_dict, image_token_index=image_id,
                      image_seq_length=enc.num_tokens, projector_hidden_act=act, multimodal_projector_bias=bias,
                      vision_feature_layer=layers[0] if len(layers) == 1 else layers,
                      vision_feature_select_strategy="default", tie_word_embeddings=tied)
    cfg.architectures = ["LlavaForConditionalGeneration"]
    cfg.dtype = str(next(causal.parameters()).dtype).replace("torch.", "")
    cfg.save_pretrained(str(folder))
    stops = stop_token_ids(tok, template)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=stops if len(stops) > 1 else stops[0],
                     pad_token_id=tok.pad_token_id).save_pretrained(str(folder))
    ip = image_processor(enc)
    LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=int(enc.backbone.config.patch_size),
                   vision_feature_select_strategy="default", chat_template=tpl, image_token=IMAGE_TOKEN,
                   num_additional_image_tokens=1).save_pretrained(str(folder))
    ip.save_pretrained(str(folder))
