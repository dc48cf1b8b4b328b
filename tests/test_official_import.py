"""``pvit import pvit-official`` on a tiny synthetic release in PVIT's published layout (tests/official_release.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import pvit
from pvit.checkpoints import load_export
from pvit.compose import build_model
from pvit.errors import CheckpointError
from pvit.predict import Predictor
from pvit_official.convert import import_release

from official_release import ADDED, hand_merge, make_release


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "pvit-7b"
    import_release(release.delta, release.base, release.regionclip, release.clip, out, regionclip_model="tiny",
                   dtype="float32", log=lambda *_: None)
    return out


def _llm_state(folder) -> dict:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_file(str(folder / shard)))
    return state


def test_llm_weights_are_base_plus_delta_tensor_by_tensor(release, imported):
    expected = hand_merge(release)
    got = _llm_state(imported / "llm")
    assert got.keys() == expected.keys()  # no rotary buffer, no multimodal tensor in the LLM
    for k, v in expected.items():
        assert torch.equal(got[k], v.float()), k
        # what PVIT trained, up to the fp16 rounding of its delta (target - base was taken in fp16)
        assert torch.allclose(v.float(), release.target[k].float(), rtol=2e-3, atol=1e-3), k
    n = expected["model.embed_tokens.weight"].shape[0]
    assert torch.equal(got["model.embed_tokens.weight"][-len(ADDED):],
                       release.target["model.embed_tokens.weight"][-len(ADDED):].float())  # added rows as stored
    cfg = json.loads((imported / "llm/config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["vocab_size"] == n and "mm_use_region_clip" not in cfg
    assert cfg.get("pad_token_id") is None  # the release's -1 is not a row


def test_multimodal_tensors_map_to_pvit_components(release, imported):
    state = load_file(str(imported / "weights.safetensors"))
    pairs = {"projector.body": "model.mm_projector", "region_projector.body": "model.prompt_projector",
             "bbox_embed": "model.bbox_fc"}
    assert set(state) == {f"{a}.{p}" for a in pairs for p in ("weight", "bias")}
    for ours, theirs in pairs.items():
        for p in ("weight", "bias"):
            assert torch.equal(state[f"{ours}.{p}"], release.target[f"{theirs}.{p}"]), ours
    bin_ = torch.load(imported / "llm/mm_projector.bin", weights_only=True)
    assert set(bin_) == {"model.mm_projector.weight", "model.mm_projector.bias"}


def test_predictor_loads_the_export_gives_hand_logits_and_answers(release, imported):
    from transformers import LlamaConfig, LlamaForCausalLM

    predictor = Predictor.from_pretrained(imported)
    model = predictor.model
    tok = model.llm.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in ADDED] == list(range(len(tok) - len(ADDED) - 1, len(tok) - 1))
    assert torch.equal(model.projector.body.weight, release.target["model.mm_projector.weight"].float())
    assert torch.equal(model.bbox_embed.bias, release.target["model.bbox_fc.bias"].float())

    hand = hand_merge(release)
    cfg = json.loads((release.delta / "config.json").read_text())
    ref = LlamaForCausalLM(LlamaConfig(vocab_size=cfg["vocab_size"], hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                       rms_norm_eps=cfg["rms_norm_eps"], tie_word_embeddings=False))
    ref.load_state_dict({k: v.float() for k, v in hand.items()})
    ids = tok("what is in the <Region> region </Region> ?", return_tensors="pt")["input_ids"]
    assert (ids == tok.convert_tokens_to_ids("<Region>")).sum() == 1  # the region tag is one token
    with torch.no_grad():
        got = model.llm.model(input_ids=ids).logits[..., : cfg["vocab_size"]]
        want = ref.eval()(input_ids=ids).logits
    assert (got - want).abs().max().item() < 1e-5

    img = Image.new("RGB", (64, 48), (200, 30, 30))
    reply = predictor.predict(img, "what is in <region1> ?", boxes=[[2, 2, 30, 30]], max_new_tokens=4)
    assert reply.completion_tokens >= 1 and reply.prompt_tokens > 0 and isinstance(reply.text, str)


def test_llm_folder_serves_as_the_llava_path_of_the_paper_recipes(release, imported):
    """What docs/pretrained.md tells `pvit eval` to do: recipes/eval/* with paths.llava=<export>/llm."""
    over = [f"paths.llava={imported / 'llm'}", f"paths.clip={release.clip}", f"paths.regionclip={release.regionclip}",
            "model.region_encoder.options.model=tiny", "model.llm.options.dtype=float32",
            "model.image_encoder.options.dtype=float32"]
    cfg = pvit.load_recipe("recipes/eval/gqa.yaml", over).cfg
    model = build_model(cfg)
    load_export(model, imported)
    ours = Predictor.from_pretrained(imported).model.state_dict()
    theirs = model.state_dict()
    for k in ("projector.body.weight", "region_projector.body.bias", "bbox_embed.weight",
              "llm.model.model.embed_tokens.weight", "llm.model.lm_head.weight"):
        assert torch.equal(ours[k], theirs[k].to(ours[k].dtype)), k


# ---------------------------------------------------------------------------------------------- errors
def _import(release, out, **over):
    args = dict(delta=release.delta, base=release.base, regionclip=release.regionclip, clip=release.clip)
    args.update(over)
    return import_release(args["delta"], args["base"], args["regionclip"], args["clip"], out,
                          regionclip_model="tiny", dtype="float32", log=lambda *_: None)


def test_wrong_folders_are_named(release, tmp_path):
    with pytest.raises(CheckpointError, match=r"model_type 'llama' \(that is a plain LLaMA: pass it as --base\)"):
        _import(release, tmp_path / "o", delta=release.base)
    with pytest.raises(CheckpointError, match="--delta .*nowhere: not a folder \\(it does not exist\\)"):
        _import(release, tmp_path / "o", delta=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="--delta .*empty: no config.json"):
        _import(release, tmp_path / "o", delta=tmp_path / "empty")
    with pytest.raises(CheckpointError, match="--base .* model_type 'llava'"):
        _import(release, tmp_path / "o", base=release.delta)
    with pytest.raises(CheckpointError, match="--clip .*: not a folder"):
        _import(release, tmp_path / "o", clip=tmp_path / "no-clip")
    with pytest.raises(CheckpointError, match="--regionclip .*: no such file"):
        _import(release, tmp_path / "o", regionclip=tmp_path / "rc.pth")
    assert not (tmp_path / "o").exists()  # nothing written before every input is checked


def test_missing_shard_and_non_pvit_config(release, tmp_path):
    delta = tmp_path / "delta"
    shutil.copytree(release.delta, delta)
    (delta / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match="1 of the 2 weight shards .* missing: pytorch_model-00002-of-00002.bin"):
        _import(release, tmp_path / "o", delta=delta)
    shutil.copy(release.delta / "pytorch_model-00002-of-00002.bin", delta)
    cfg = json.loads((delta / "config.json").read_text())
    cfg.pop("mm_use_region_clip")
    (delta / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not a PVIT checkpoint"):
        _import(release, tmp_path / "o", delta=delta)


def test_delta_that_does_not_fit_the_base(release, tmp_path):
    from official_release import _save_llama

    from pvit_hf.model import build_word_tokenizer
    from official_release import WORDS

    other = tmp_path / "other"
    _save_llama(other, build_word_tokenizer(WORDS), seed=5, intermediate_size=48)
    with pytest.raises(CheckpointError, match="--base: config.json has intermediate_size=48 but the delta was made"):
        _import(release, tmp_path / "o", base=other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 64}))  # a config that lies
    shapes = r"model.layers.0.mlp.down_proj.weight: delta \(32, 64\) vs base \(32, 48\)"
    with pytest.raises(CheckpointError, match=r"do not match: 6 tensors have other shapes \(e.g. " + shapes):
        _import(release, tmp_path / "o", base=other)
    assert not (tmp_path / "o").exists()


def test_cli_reports_errors_without_traceback(release, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "pvit", "import", "pvit-official", str(tmp_path / "o"),
                        "--delta", str(release.base), "--base", str(release.base), "--regionclip",
                        str(release.regionclip), "--clip", str(release.clip)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "error: --delta" in p.stderr and "pass it as --base" in p.stderr and "Traceback" not in p.stderr
