"""A tiny random llava-hf checkpoint (``LlavaForConditionalGeneration.save_pretrained`` + tokenizer + processor),
built offline for the llava-hf import and the export tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

IMAGE_SIZE, PATCH = 32, 8


def tiny_llava(folder: Path, *, seed: int = 0, layer=-2, legacy: bool = False, scale: float = 0.15) -> Path:
    """Write a 2-layer CLIP tower + 2-layer LLaMA LLaVA into ``folder``; its tokenizer knows synth-regions' words.

    ``legacy``: rewrite the weights in the hub's layout (``vision_tower.vision_model.*``). ``scale``: the weights'
    standard deviation (larger than transformers' 0.02, so that greedy decoding has no near ties).
    """
    import pvit
    from pvit_hf.model import build_word_tokenizer
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    words = pvit.build("dataset", "synth-regions", split="train", size=4, image_size=IMAGE_SIZE).vocabulary()
    tok = build_word_tokenizer(list(words) + ["what", "is", "this", "image"])
    tok.add_tokens(["<image>"], special_tokens=True)
    image_id = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                      image_seq_length=(IMAGE_SIZE // PATCH) ** 2, vision_feature_layer=layer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" not in name:
                    p.normal_(0.0, scale)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    image_processor = CLIPImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False,
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=3)
    LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=PATCH,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(str(folder))
    image_processor.save_pretrained(str(folder))
    if legacy:
        from safetensors.torch import load_file, save_file

        file = folder / "model.safetensors"
        state = load_file(str(file))
        assert not any(k.startswith("vision_tower.vision_model.") for k in state)
        state = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in state.items()}
        save_file(state, str(file), metadata={"format": "pt"})
    json.loads((folder / "config.json").read_text())  # written and readable
    return folder
