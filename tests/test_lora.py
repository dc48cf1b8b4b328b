"""LoRA / QLoRA on ``hf-causal-lm`` (peft): the ``llm.lora`` slot, exports, resume, merging, recipe-time checks."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import pvit
from pvit.checkpoints import export_stage, load_export
from pvit.compose import build_model
from pvit.engine import run_stage
from pvit.errors import ComponentOptionError, RecipeError
from pvit.preflight import check_components
from pvit.run import run_recipe
from pvit.slots import count, select, set_trainable

from helpers import MICRO, one_stage_recipe, stage_setup

pytest.importorskip("peft", reason="LoRA needs peft (pip install 'pvit[lora]')")

LORA = "model.llm.options.lora={r: 4, alpha: 8, dropout: 0.0}"
SLOTS = "[projector,region_projector,llm.lora]"


def _adapter_names(model) -> set[str]:
    return {n for n in model.state_dict() if ".lora_A." in n or ".lora_B." in n}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Micro's stage 2 with LoRA adapters, training only adapters and projectors: (model, before, collator, st)."""
    loaded = pvit.load_recipe(MICRO, [LORA, f"stages.2.trainable={SLOTS}"])
    check_components(loaded.cfg)
    model, st, ds, col = stage_setup(loaded, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_stage(model, st, dataset=ds, collator=col, work_dir=tmp_path_factory.mktemp("lora") / "engine",
              engine_cfg=loaded.cfg.engine, seed=0)
    return model, before, col, ds, loaded


def test_lora_stage_changes_only_adapters_and_projectors(trained):
    model, before, *_ = trained
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    adapters = _adapter_names(model)
    # llama's default targets: q_proj and v_proj of the one layer, an A and a B matrix each
    assert len(adapters) == 4 and adapters <= changed, adapters - changed
    projectors = {k for k in before if k.startswith(("projector.", "region_projector."))}
    assert changed == adapters | projectors, changed ^ (adapters | projectors)
    # the base weights keep their plain names (the adapter layer's base_layer is renamed in state dicts)
    assert "llm.model.model.layers.0.self_attn.q_proj.weight" in after
    assert not any("base_layer" in k for k in after)


def test_lora_slot_is_declared_and_export_holds_only_its_tensors(trained, tmp_path):
    model, _before, _col, _ds, loaded = trained
    counts = count(select(model, ["llm.lora"]))
    n = sum(p.numel() for p in model.llm.parameter_groups()["lora"])
    assert counts == {"llm.lora": n} and n == 2 * 2 * 4 * 32  # q and v: A (4 x 32) and B (32 x 4) each
    export_stage(model, ["llm.lora"], tmp_path / "export", {})
    state = load_file(str(tmp_path / "export" / "weights.safetensors"))
    assert set(state) == _adapter_names(model)
    fresh = build_model(loaded.cfg)
    assert set(load_export(fresh, tmp_path / "export")) == set(state)
    own = fresh.state_dict()
    for k, v in state.items():
        assert torch.equal(own[k], v), k


def test_merge_adapters_gives_the_same_logits_and_a_plain_model(trained):
    model, _before, col, ds, loaded = trained
    model.eval()
    batch = col([ds[i] for i in range(4)])
    with torch.no_grad():
        adapted = model(batch).logits
        assert model.llm.merge_adapters() == 2
        merged = model(batch).logits
    assert (adapted - merged).abs().max().item() < 1e-5
    plain = build_model(pvit.load_recipe(MICRO).cfg)
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert type(model.llm.model) is type(plain.llm.model) and not hasattr(model.llm.model, "peft_config")
    assert model.llm.parameter_groups() == {} and model.llm.merge_adapters() == 0
    with pytest.raises(RecipeError, match="unknown slot 'llm.lora'"):
        select(model, ["llm.lora"])


def test_plain_exports_load_into_a_lora_model_and_back(tmp_path):
    plain = build_model(pvit.load_recipe(MICRO).cfg)
    with torch.no_grad():
        for p in plain.llm.parameters():
            p.add_(0.01)
    export_stage(plain, ["llm"], tmp_path / "plain", {})
    lora = build_model(pvit.load_recipe(MICRO, [LORA]).cfg)
    loaded = load_export(lora, tmp_path / "plain")
    own = lora.state_dict()
    for k, v in plain.state_dict().items():
        if k.startswith("llm."):
            assert torch.equal(own[k], v), k
    assert not any(".lora_" in k for k in loaded)
    export_stage(lora, ["llm"], tmp_path / "lora", {})  # whole LLM of a LoRA model: base + adapter tensors
    back = build_model(pvit.load_recipe(MICRO, [LORA]).cfg)
    assert any(".lora_A." in k for k in load_export(back, tmp_path / "lora"))
    for k, v in back.state_dict().items():
        if k.startswith("llm."):
            assert torch.equal(own[k], v), k


def test_lora_resumes_exactly(tmp_path):
    recipe = one_stage_recipe(tmp_path, engine="checkpoint_every: 2, keep_checkpoints: 3, tensorboard: false")
    over = [LORA.replace("dropout: 0.0", "dropout: 0.3"), f"stages.0.trainable={SLOTS}"]  # dropout: RNG restored
    straight = tmp_path / "straight"
    run_recipe(pvit.load_recipe(recipe, [f"run_dir={straight}", *over]), log=lambda *_: None)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    stage = resumed / "stages/1-stage2"
    shutil.rmtree(stage / "export")
    (stage / "stage.json").unlink()
    run_recipe(pvit.load_recipe(recipe, [f"run_dir={resumed}", *over]), resume=str(stage / "engine/iter_2.pth"),
               log=lambda *_: None)

    def losses(run):
        return json.loads((run / "stages/1-stage2/stage.json").read_text())["losses"]

    assert [i for i, _ in losses(resumed)] == [3, 4, 5, 6]
    assert losses(resumed) == losses(straight)[2:]
    a = load_file(str(straight / "stages/1-stage2/export/weights.safetensors"))
    b = load_file(str(stage / "export/weights.safetensors"))
    assert a.keys() == b.keys() and any(".lora_B." in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_lora_options_are_checked_at_recipe_time():
    bad = pvit.load_recipe(MICRO, ["model.llm.options.lora={r: 0, alpah: 8, target_modules: q_proj}"])
    with pytest.raises(RecipeError) as e:
        check_components(bad.cfg)
    msg = str(e.value)
    assert "lora.r: the adapter rank must be a positive int, got 0" in msg
    assert "unknown key 'alpah'; did you mean 'alpha'?" in msg
    assert "lora.target_modules: a list of module names" in msg
    with pytest.raises(ComponentOptionError, match="target module"):
        build_model(pvit.load_recipe(MICRO, ["model.llm.options.lora={target_modules: [no_such_proj]}"]).cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message; on CUDA the QLoRA test runs instead")
def test_qlora_on_cpu_is_a_recipe_time_error():
    cfg = pvit.load_recipe(MICRO, [LORA, "model.llm.options.quantization=nf4"]).cfg
    with pytest.raises(RecipeError, match=r"quantization: 'nf4' \(QLoRA's 4-bit base\) needs a CUDA GPU"):
        check_components(cfg)


def test_qlora_trains_adapters_on_a_4bit_base(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("QLoRA needs CUDA: bitsandbytes' 4-bit kernels (the CPU message is tested above)")
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install 'pvit[qlora]')")
    base = build_model(pvit.load_recipe(MICRO).cfg)
    base.llm.model.save_pretrained(tmp_path / "llm")
    base.llm.tokenizer.save_pretrained(tmp_path / "llm")
    cfg = pvit.load_recipe(MICRO, [LORA, "model.llm.options.quantization=nf4", f"model.llm.options.path={tmp_path}/llm",
                                   "model.llm.options.config=null", "model.llm.options.tokenizer=null",
                                   f"stages.2.trainable={SLOTS}"]).cfg
    check_components(cfg)
    model = build_model(cfg).to("cuda")
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.llm.modules())
    set_trainable(model, list(cfg.stages[2].trainable))
    _m, _st, ds, col = stage_setup(pvit.load_recipe(MICRO), 2)
    from pvit.model import batch_to

    out = model(batch_to(col([ds[i] for i in range(4)]), "cuda"))
    out.loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".lora_" in n or n.startswith(("projector.", "region_projector.")) for n in grads), grads
    with pytest.raises(ComponentOptionError, match="4-bit"):
        model.llm.merge_adapters()
