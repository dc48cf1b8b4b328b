"""Stages on mmengine: freezing, exports, init_from, run directories, and kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import pvit
from pvit.checkpoints import load_export
from pvit.engine import run_stage, set_trainable
from pvit.errors import RecipeError, RunDirError
from pvit.compose import build_model
from pvit.run import run_recipe

from helpers import MICRO, stage_setup


def test_stage1_changes_only_region_projector_and_new_token_rows(tmp_path):
    loaded = pvit.load_recipe(MICRO)
    model, st, ds, col = stage_setup(loaded, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_stage(model, st, dataset=ds, collator=col, work_dir=tmp_path / "engine", engine_cfg=loaded.cfg.engine,
              seed=0)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    region_proj = {k for k in before if k.startswith("region_projector.")}
    emb = "llm.model.model.embed_tokens.weight"
    assert region_proj <= changed, region_proj - changed
    # the tiny LLM ties its output embedding to the input one, so both names show the same change
    assert changed - region_proj == {emb, "llm.model.lm_head.weight"}, changed - region_proj
    diff_rows = (before[emb] != after[emb]).any(1).nonzero().flatten().tolist()
    assert diff_rows and set(diff_rows) <= set(model.trainable_token_ids)
    # only these required gradients during the stage (the embedding matrix gets a row-masked gradient)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.region_projector.named_parameters(prefix="region_projector")} | {emb}


def test_unknown_slot_and_frozen_encoder_are_recipe_errors():
    loaded = pvit.load_recipe(MICRO)
    model = build_model(loaded.cfg)
    with pytest.raises(RecipeError, match="unknown slot 'region_projecter'; did you mean 'region_projector'"):
        set_trainable(model, ["region_projecter"])
    with pytest.raises(RecipeError, match="region_encoder belongs to region_encoder, which was built frozen"):
        set_trainable(model, ["region_encoder"])
    # a declared group of a frozen-built encoder too: its forward runs without gradient, so it could not learn
    with pytest.raises(RecipeError, match="region_encoder.head belongs to region_encoder, which was built frozen; "
                                          "set model.region_encoder.options.frozen=false"):
        set_trainable(model, ["region_encoder.head"])


def test_two_stage_run_exports_and_next_stage_starts_from_them(tmp_path):
    run_dir = tmp_path / "run"
    loaded = pvit.load_recipe(MICRO, [f"run_dir={run_dir}"])
    summary = run_recipe(loaded, log=lambda *_: None)
    for i, name in enumerate(["align", "stage1", "stage2"]):
        export = run_dir / "stages" / f"{i + 1}-{name}" / "export"
        state = load_file(str(export / "weights.safetensors"))  # safetensors: no pickle
        assert state and all(torch.isfinite(t.float()).all() for t in state.values())
        assert (export / "tokenizer").is_dir()
    s1 = load_file(str(run_dir / "stages/2-stage1/export/weights.safetensors"))
    assert {k.split(".")[0] for k in s1} == {"region_projector", "llm"}
    for f in ("recipe.yaml", "resolved.yaml", "versions.json", "plugins.json", "metrics.json", "report.md",
              "plots/loss.png"):
        assert (run_dir / f).is_file(), f
    assert [s["name"] for s in summary["stages"]] == ["align", "stage1", "stage2"]
    assert "accuracy" in summary["eval"]["synth-regions"]["metrics"]

    # a fresh model loading stage 1's export reproduces stage 1's trained tensors
    fresh = build_model(loaded.cfg)
    load_export(fresh, run_dir / "stages/2-stage1/export")
    own = fresh.state_dict()
    for k, v in s1.items():
        assert torch.equal(own[k], v), k

    # same run dir again: refused without --resume/--overwrite
    with pytest.raises(RunDirError, match="already exists"):
        run_recipe(pvit.load_recipe(MICRO, [f"run_dir={run_dir}"]), log=lambda *_: None)
    # --resume auto: finished stages are loaded, not retrained
    lines = []
    run_recipe(pvit.load_recipe(MICRO, [f"run_dir={run_dir}"]), resume="auto", log=lines.append)
    assert sum("already finished" in str(x) for x in lines) == 3


def test_stage_alone_with_init_from_an_export(tmp_path):
    run_dir = tmp_path / "run"
    run_recipe(pvit.load_recipe(MICRO, [f"run_dir={run_dir}", "eval=[]"]), log=lambda *_: None)
    export = run_dir / "stages/2-stage1/export"
    loaded = pvit.load_recipe(MICRO, [f"run_dir={tmp_path / 'alone'}", "eval=[]"])
    from pvit.ablate import keep_stages

    keep_stages(loaded.cfg, 2, init_from=export)
    summary = run_recipe(loaded, log=lambda *_: None)
    assert [s["name"] for s in summary["stages"]] == ["stage2"]


def _run_cli(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "pvit", "run", str(MICRO), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tmp_path):
    """k steps, SIGKILL, resume to 2k: the same losses and final weights as an uninterrupted 2k-step run."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    common = ["eval=[]", "stages=[${stages_2}]"]  # placeholder replaced below
    k = 4
    # attention dropout in the trained LLM: exactness needs the RNG state restored from the checkpoint
    over = ["eval=[]", f"stages.2.optim.max_steps={2 * k}", f"engine.checkpoint_every={k}",
            "model.llm.options.config.attention_dropout=0.2"]
    straight = tmp_path / "straight"
    p = _run_cli([f"run_dir={straight}", *over], env)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out

    killed = tmp_path / "killed"
    p = _run_cli([f"run_dir={killed}", *over], env)
    ckpt = killed / "stages/3-stage2/engine" / f"iter_{k}.pth"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), p.communicate()[0]
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "stages/3-stage2/export/weights.safetensors").exists()
    p = _run_cli([f"run_dir={killed}", *over, "--resume", "auto"], env)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out

    s_losses = json.loads((straight / "stages/3-stage2/stage.json").read_text())["losses"]
    r_losses = json.loads((killed / "stages/3-stage2/stage.json").read_text())["losses"]
    assert [i for i, _ in r_losses] == list(range(k + 1, 2 * k + 1))
    assert r_losses == s_losses[k:]
    a = load_file(str(straight / "stages/3-stage2/export/weights.safetensors"))
    b = load_file(str(killed / "stages/3-stage2/export/weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    del common
