"""``pvit export`` and ``pvit import llava-hf``: the self-contained pvit folder and the transformers LLaVA folder give
the same tokens as the model they came from; what cannot be exported says why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import MICRO, trained_micro
from llava_helpers import tiny_llava
from PIL import Image
from transformers.generation.streamers import BaseStreamer

import pvit
from pvit.errors import CheckpointError
from pvit.export import export, write
from pvit.predict import Predictor, run_batch

ROOT = Path(__file__).resolve().parents[1]


class _Ids(BaseStreamer):
    """Collects the generated token ids (the prompt, when generate sends it first, is skipped)."""

    def __init__(self):
        self.ids, self.first = [], True

    def put(self, value):
        if not (self.first and value.dim() > 1 and value.shape[-1] > 1):
            self.ids += value.reshape(-1).tolist()
        self.first = False

    def end(self):
        pass


def _image(w=40, h=32, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _pvit_ids(pred: Predictor, image, prompt: str, boxes=None, n: int = 8) -> list[int]:
    ids = _Ids()
    enc = pred.encode(pred.sample(image, prompt, boxes))
    run_batch(pred.model, pred.collator, [enc], max_new_tokens=n, streamer=ids)
    return ids.ids


def _teacher_forced_logits(pred: Predictor, image, prompt: str, answer: str, boxes=None) -> torch.Tensor:
    from pvit.collate import Collator

    coll = Collator.for_model(pred.model, pred.template, pred.collator.max_length)
    sample = pred.sample(image, [{"role": "user", "content": prompt}], boxes)
    sample["conversations"].append({"from": "gpt", "value": answer})
    with torch.no_grad():
        return pred.model(coll([sample])).logits


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_llava(tmp_path_factory.mktemp("llava") / "tiny")


def test_llava_hf_import_then_hf_export_generates_like_transformers(tmp_path, ckpt):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from pvit_llava_hf.importer import import_checkpoint

    folder = import_checkpoint(str(ckpt), tmp_path / "pvit", log=lambda s: None)
    pred = Predictor.from_pretrained(folder)
    assert json.loads((folder / "pvit.json").read_text())["format"] == "pvit-pretrained"
    image = _image(32, 32)
    ours = _pvit_ids(pred, image, "what is this")
    assert len(ours) >= 3

    export(folder, tmp_path / "hf", "hf", log=lambda s: None)
    hf = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    for backend in ("pil", None):  # a square image at the tower's size: both backends give pvit's pixels
        proc = AutoProcessor.from_pretrained(str(tmp_path / "hf"), **({"backend": backend} if backend else {}))
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this"}]}]
        prompt = proc.apply_chat_template(conv, add_generation_prompt=True)
        assert prompt == "USER: <image>\nwhat is this ASSISTANT:"
        inputs = proc(images=image, text=prompt, return_tensors="pt")
        enc = pred.encode(pred.sample(image, "what is this"))
        image_id = hf.config.image_token_id
        assert inputs["input_ids"][0].tolist() == [image_id if t == pred.model.image_patch_id else t
                                                   for t in enc["input_ids"]]
        with torch.no_grad():
            out = hf.generate(**inputs, max_new_tokens=8, do_sample=False)
        assert out[0, inputs["input_ids"].shape[1]:].tolist() == ours
    # and the checkpoint pvit started from, in transformers, answers the same
    original = LlavaForConditionalGeneration.from_pretrained(str(ckpt)).eval()
    with torch.no_grad():
        out = original.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == ours


@pytest.fixture(scope="module")
def llava_region_run(tmp_path_factory, ckpt) -> Path:
    """Stage 1 (vit-roi region encoder) on a private copy of the tiny checkpoint; the copy is deleted afterwards."""
    from pvit.run import run_recipe

    base = tmp_path_factory.mktemp("llava-region")
    copy = Path(shutil.copytree(ckpt, base / "ckpt"))
    loaded = pvit.load_recipe(ROOT / "tests/recipes/llava_hf_micro.yaml", [f"paths.llava={copy}",
                                                                        f"run_dir={base / 'run'}"])
    run_recipe(loaded, log=lambda s: None)
    return base / "run"


def test_hf_format_of_a_region_model_writes_the_pvit_folder(tmp_path, llava_region_run):
    # (before the next test, which deletes the checkpoint the run needs)
    said = []
    out = export(llava_region_run, tmp_path / "hf", "hf", log=said.append)
    assert (out / "pvit.json").is_file() and (out / "llm" / "config.json").is_file()
    assert any("has no transformers class" in s for s in said)


def test_region_model_pvit_folder_is_self_contained(tmp_path, llava_region_run):
    from transformers import AutoModelForCausalLM

    before = Predictor.from_run(llava_region_run)
    out = export(llava_region_run, tmp_path / "exp", "pvit", log=lambda s: None)
    import yaml

    model_section = yaml.safe_load((out / "recipe.yaml").read_text())["model"]
    assert str(llava_region_run.parent / "ckpt") not in json.dumps(model_section)  # no option names the checkpoint
    assert model_section["llm"] == {"name": "hf-causal-lm", "options": {"path": "llm", "dtype": "float32",
                                                                        "attn_implementation": "sdpa"}}
    moved = Path(shutil.move(str(out), tmp_path / "moved"))
    shutil.rmtree(llava_region_run.parent / "ckpt")  # the checkpoint the run started from is gone
    after = Predictor.from_pretrained(moved)
    image, boxes = _image(), [[2, 3, 30, 20]]
    prompt = "what is <region1>?"
    assert _pvit_ids(after, image, prompt, boxes) == _pvit_ids(before, image, prompt, boxes)
    assert torch.equal(_teacher_forced_logits(after, image, prompt, "a red square", boxes),
                       _teacher_forced_logits(before, image, prompt, "a red square", boxes))
    llm = AutoModelForCausalLM.from_pretrained(str(moved / "llm")).eval()
    ids = torch.tensor([[1, 5, 9, 12, before.model.new_token_ids[-1]]])
    with torch.no_grad():
        assert torch.allclose(llm(input_ids=ids).logits, before.model.llm.model(input_ids=ids).logits, atol=1e-6)
    assert (moved / "preprocessor_config.json").is_file()


def test_multi_stage_run_exports_without_its_stage_chain(tmp_path, tmp_path_factory):
    """The micro run (open_clip tower, RegionCLIP, three stages): one folder replaces the chain of stage exports."""
    run = trained_micro(tmp_path_factory)
    before = Predictor.from_run(run)
    out = export(run / "stages" / "3-stage2" / "export", tmp_path / "exp", log=lambda s: None)
    after = Predictor.from_pretrained(out)
    image, boxes, prompt = _image(64, 48), [[4, 4, 40, 30]], "what is <region1>?"
    assert torch.equal(_teacher_forced_logits(after, image, prompt, "a red circle", boxes),
                       _teacher_forced_logits(before, image, prompt, "a red circle", boxes))
    assert _pvit_ids(after, image, prompt, boxes) == _pvit_ids(before, image, prompt, boxes)
    # an export of the export is the same folder again
    again = export(out, tmp_path / "again", log=lambda s: None)
    assert (again / "recipe.yaml").read_text() == (out / "recipe.yaml").read_text()


def test_lora_adapters_are_merged_before_writing(tmp_path):
    pytest.importorskip("peft", reason="LoRA needs peft (pip install 'pvit[lora]')")
    from transformers import AutoModelForCausalLM

    from pvit.compose import build_model
    from pvit.templates import get_template

    loaded = pvit.load_recipe(MICRO, ["model.llm.options.lora={r: 4, alpha: 8, dropout: 0.0}"])
    model = build_model(loaded.cfg).eval()
    with torch.no_grad():  # adapters that change the outputs (B starts at zero)
        for name, p in model.llm.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        want = model.llm.model(input_ids=ids).logits
    said = []
    write(model, loaded.cfg, get_template("plain", model.llm.tokenizer), tmp_path / "exp", log=said.append)
    assert any("merged the LLM's LoRA adapters" in s for s in said)
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "exp" / "llm")).eval()
    assert not any("lora" in k for k in plain.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, want, atol=1e-5)


def test_hf_format_names_what_llava_cannot_hold(tmp_path):
    from pvit.compose import build_model
    from pvit.templates import get_template

    loaded = pvit.load_recipe(MICRO, ["model.region_encoder=null"])
    model = build_model(loaded.cfg)
    with pytest.raises(CheckpointError) as e:
        write(model, loaded.cfg, get_template("plain", model.llm.tokenizer), tmp_path / "hf", fmt="hf")
    msg = str(e.value)
    assert "'openclip-vit' is not a transformers CLIPVisionModel" in msg and "hf-clip and llava-hf" in msg
    assert "input_norm 'batch'" in msg and "--format pvit" in msg
    assert not (tmp_path / "hf").exists() and not list(tmp_path.iterdir())


def test_cli_import_group_and_export_errors(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    exe = str(Path(sys.executable).with_name("pvit"))

    def cli(*args):
        return subprocess.run([exe, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)

    out = cli("import", "--help")
    assert out.returncode == 0 and "llava-hf" in out.stdout, out.stdout + out.stderr
    out = cli("export", str(tmp_path), str(tmp_path / "out"), "--format", "onnx")
    assert out.returncode == 2 and "export format 'onnx' is unknown" in out.stderr and "Traceback" not in out.stderr
    out = cli("export", str(tmp_path), str(tmp_path))
    assert out.returncode == 2 and "already exists" in out.stderr and "--overwrite" in out.stderr


def test_from_run_rebuilds_unseeded_random_parts_as_the_run_did(tmp_path_factory):
    """Frozen random parts with no seed of their own (micro's RegionCLIP) are in no stage export: the Predictor
    rebuilds them under the recipe's seed, as the run did, whatever the global RNG state."""
    from pvit.compose import build_model

    run = trained_micro(tmp_path_factory)
    cfg = pvit.load_recipe(run / "resolved.yaml").cfg
    torch.manual_seed(cfg.seed)  # what pvit.run does right before building the model
    built = build_model(cfg).region_encoder.state_dict()
    for noise in (1, 2):
        torch.manual_seed(1000 + noise)
        loaded = Predictor.from_run(run).model.region_encoder.state_dict()
        assert all(torch.equal(built[k], loaded[k]) for k in built)


@pytest.mark.parametrize("projector,template", [("mlp2x-gelu", "vicuna_v1_1"), ("linear", "plain")])
def test_hf_clip_model_exports_to_llava(tmp_path, projector, template):
    """hf-clip + hf-causal-lm (tied embeddings, word-level tokenizer without <image>) + an mlp2x-gelu or linear
    projector: transformers generates from the exported folder what pvit generates."""
    from omegaconf import OmegaConf
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from pvit.compose import build_model
    from pvit.recipe_schema import Recipe
    from pvit.templates import get_template

    llm = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 2, "tie_word_embeddings": True}
    clip = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2}
    model_cfg = {"llm": {"name": "hf-causal-lm", "options": {"config": llm, "tokenizer": {
                     "words": ["what", "is", "this"], "words_from": {"name": "synth-regions", "options": {}}}}},
                 "image_encoder": {"name": "hf-clip", "options": {"config": clip}},
                 "projector": {"name": projector}, "template": template, "max_length": 128}
    cfg = OmegaConf.merge(OmegaConf.structured(Recipe), {"model": model_cfg})
    model = build_model(cfg).eval()
    with torch.no_grad():  # weights far from zero: no near ties in greedy decoding
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.15)
    pred = Predictor(model, get_template(template, model.llm.tokenizer), max_length=128)
    image = _image(32, 32)
    ours = _pvit_ids(pred, image, "what is this")
    write(model, cfg, pred.template, tmp_path / "hf", fmt="hf", log=lambda s: None)

    hf = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    proc = AutoProcessor.from_pretrained(str(tmp_path / "hf"), backend="pil")
    assert hf.config.image_token_id == model.image_patch_id  # <im_patch> renamed <image>, same row
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]},
            {"role": "user", "content": "what is this"}]
    # the exported chat template renders a conversation as pvit's template does (EOS after each reply)
    turns = pred.template.render([("user", "<image>\nwhat is this"), ("assistant", "a red circle"),
                                  ("user", "what is this")], add_generation_prompt=True)
    eos = model.llm.tokenizer.eos_token
    assert proc.apply_chat_template(conv, add_generation_prompt=True) == \
        "".join(s.text + (eos if s.eos else "") for turn in turns for s in turn)
    prompt = proc.apply_chat_template(conv[:1], add_generation_prompt=True)
    inputs = proc(images=image, text=prompt, return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == pred.encode(pred.sample(image, "what is this"))["input_ids"]
    with torch.no_grad():
        out = hf.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == ours and len(ours) >= 3
