"""Generation: batched (left padding, KV cache) equals one by one, the evaluator's budget, sampling options."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import pvit
from pvit.collate import Collator
from pvit.templates import get_template
from pvit.evaluate import generate_records, generation_options, run_evaluations
from pvit.compose import build_model
from pvit.model import PVITModel
from pvit.regions import format_pvit

WORDS = "what is the object in a red blue circle square color of image left right yes no".split()
LLM = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
IMAGE = {"name": "openclip-vit", "options": {"model": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                                        "head_width": 16}}}
REGION = {"none": None, "text-coords": {"name": "text-coords", "options": {"style": "pvit"}}}


def build(region: str) -> PVITModel:
    torch.manual_seed(0)
    return build_model(OmegaConf.create({
        "llm": {"name": "hf-causal-lm", "options": {"config": LLM, "tokenizer": {"words": WORDS}}},
        "image_encoder": IMAGE, "region_encoder": REGION[region],
        "projector": {"name": "mlp2x-gelu", "options": {}}, "region_projector": {"name": "linear", "options": {}},
        "bbox_embed": False,
    })).eval()


@pytest.fixture(scope="module", params=list(REGION))
def model(request):
    return build(request.param)


def collator(m: PVITModel, generate=True) -> Collator:
    tok = m.llm.tokenizer
    return Collator(tok, get_template("vicuna_v1_1", tok), image_transform=m.image_encoder.transform,
                    num_image_tokens=m.num_image_tokens, region_encoder=m.region_encoder, max_length=200,
                    generate=generate)


def prompts(m: PVITModel) -> list[dict]:
    """Prompts of different lengths; with a region encoder some mention regions; one is text-only."""
    def q(i, text, image=True):
        return {"id": f"q{i}", "image": Image.new("RGB", (40, 30), (30 * i % 255, 90, 20)) if image else None,
                "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "red"}]}

    region = format_pvit((0.1, 0.2, 0.6, 0.7)) if m.region_encoder is not None else "the circle"
    return [q(0, "<image>\nwhat is the color ?"), q(1, f"what is the object in {region} left of {region} ?"),
            q(2, "what color is red or blue ?", image=False), q(3, "<image>\nis it a square ?")]


def test_batched_greedy_equals_one_by_one(model):
    col = collator(model)
    samples = prompts(model)
    batch = col(samples)
    lengths = [len(col.encode(s)["input_ids"]) for s in samples]
    T = max(lengths)
    assert batch["attention_mask"].tolist() == [[0] * (T - n) + [1] * n for n in lengths]  # left padding
    assert len(set(lengths)) > 1  # so some rows are padded
    batched = model.generate(batch, 6, stop_token_ids=col.stop_token_ids)
    single = [model.generate(col([s]), 6, stop_token_ids=col.stop_token_ids)[0] for s in samples]
    assert batched == single
    assert any(batched)


def test_the_evaluators_budget_rules_not_a_fixed_cap():
    m = build("none")
    lengths, configs = [], []
    real = m.llm.model.generate

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        lengths.append(out.shape[1])
        configs.append(kwargs["generation_config"])
        return out

    m.llm.model.generate = spy
    col = collator(m)
    col.stop_token_ids = [len(m.llm.tokenizer) + 7]  # an id the model cannot produce: it runs the whole budget
    recs = generate_records(m, prompts(m), col, max_new_tokens=40, batch_size=3)
    assert [c.max_new_tokens for c in configs] == [40, 40] and lengths == [40, 40]
    assert [r["id"] for r in recs] == ["q0", "q1", "q2", "q3"]
    assert recs[0]["prompt"] == "<image>\nwhat is the color ?" and recs[0]["answer"] == "red"


def test_a_prompt_too_long_is_recorded_as_skipped_not_lost():
    m = build("none")
    col = collator(m)
    col.max_length = len(col.encode(prompts(m)[2])["input_ids"])  # the text-only prompt fits, the image ones do not
    with pytest.warns(UserWarning, match="longer than max_length"):
        recs = generate_records(m, prompts(m), col, max_new_tokens=2)
    assert [bool(r.get("skipped")) for r in recs] == [True, True, False, True]
    assert recs[0]["prediction"] == "" and recs[0]["answer"] == "red" and recs[0]["prompt"].startswith("<image>")


def test_sampling_options_seed_temperature_top_p():
    m = build("text-coords")
    col = collator(m)
    batch = col(prompts(m))
    greedy = m.generate(batch, 8)
    s1 = m.generate(batch, 8, do_sample=True, temperature=1.5, top_p=1.0, seed=3)
    assert s1 == m.generate(batch, 8, do_sample=True, temperature=1.5, top_p=1.0, seed=3)
    others = [m.generate(batch, 8, do_sample=True, temperature=1.5, top_p=1.0, seed=s) for s in (4, 5)]
    assert any(o != s1 for o in others) and s1 != greedy
    assert m.generate(batch, 8, do_sample=True, temperature=1e-4, seed=1) == greedy  # a cold sampler is greedy
    assert m.generate(batch, 8, do_sample=True, top_p=1e-6, seed=1) == greedy  # so is a one-token nucleus
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(batch, 0)


class _Echo:
    """An evaluator that takes the decoding options as recipe options, as built-in evaluators may."""

    def __init__(self, **options):
        self.name = "echo"
        self.data = {"name": "synth-regions", "options": {"split": "test", "size": 3, "image_size": 32}}
        self.max_new_tokens = options.pop("max_new_tokens")
        self.__dict__.update(options)

    def score(self, records):
        return {"metrics": {"count": float(len(records))}, "records": records,
                "protocol": {"template": None, "coordinate_format": "pvit", "matcher": "none"}}


class _EchoPlugin:
    @pvit.hookimpl
    def pvit_register_evaluators(self, register):
        def make_echo(do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                      batch_size: int = 16, max_new_tokens: int = 4):
            """Echo evaluator with decoding options."""
            return _Echo(do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed,
                         batch_size=batch_size, max_new_tokens=max_new_tokens)

        register("echo", make_echo)


def test_decoding_options_reach_generation_from_the_recipe(tmp_path):
    m = build("text-coords")
    pvit.plugins.register_plugin(_EchoPlugin(), "test-echo")
    try:
        cfg = OmegaConf.create([{"name": "echo", "options": {"do_sample": True, "temperature": 0.7, "top_p": 0.9,
                                                             "seed": 5, "batch_size": 2, "max_new_tokens": 3}}])
        ev = pvit.build("evaluator", "echo", **cfg[0].options)
        assert generation_options(ev) == {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "seed": 5,
                                          "batch_size": 2}
        seen = []
        real = m.generate
        m.generate = lambda batch, n, **kw: seen.append((len(batch["ids"]), n, kw)) or real(batch, n, **kw)
        res = run_evaluations(m, list(cfg), get_template("vicuna_v1_1", m.llm.tokenizer), max_length=200,
                              region_policy="error", out_dir=tmp_path, log=lambda s: None)
    finally:
        pvit.plugins.unregister_plugin("test-echo")
    assert [(b, n) for b, n, _ in seen] == [(2, 3), (1, 3)]
    assert seen[0][2]["do_sample"] is True and seen[0][2]["temperature"] == 0.7 and seen[0][2]["top_p"] == 0.9
    proto = res["echo"]["protocol"]
    assert proto["decoding"] == {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "seed": 5}
    assert proto["template"] == "vicuna_v1_1" and proto["coordinate_format"] == "pvit" and proto["matcher"] == "none"
    assert proto["region_text"].startswith("<Region><L100><L200>")
    assert (tmp_path / "echo.jsonl").read_text().count("\n") == 3
    assert generation_options(object()) == {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": None,
                                            "batch_size": 16}
