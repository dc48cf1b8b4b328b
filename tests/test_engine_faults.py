"""Runs under faults and bad input (docs/reliability.md items 1-4, 6, 11, 12, 24) and the engine's training options
(gradient accumulation, clipping, TensorBoard, the progress display)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pvit
from pvit import engine
from pvit.checkpoints import load_export
from pvit.errors import CheckpointError, RunDirError
from pvit.compose import build_model
from pvit.resume import check_resume
from pvit.run import run_recipe
from helpers import MICRO, one_stage_recipe, stage_setup

STAGE = "stages/1-stage2"


def _quiet(*_):
    pass


def _losses(run_dir: Path) -> list:
    return json.loads((run_dir / STAGE / "stage.json").read_text())["losses"]


def _unfinish(run_dir: Path) -> None:
    """Make the stage look interrupted after its last checkpoint (its export and summary gone)."""
    shutil.rmtree(run_dir / STAGE / "export")
    (run_dir / STAGE / "stage.json").unlink()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished one-stage run with checkpoints at steps 2, 4 and 6."""
    folder = tmp_path_factory.mktemp("base")
    recipe = one_stage_recipe(folder, engine="checkpoint_every: 2, keep_checkpoints: 3, tensorboard: false")
    run_dir = folder / "run"
    run_recipe(pvit.load_recipe(recipe, [f"run_dir={run_dir}"]), log=_quiet)
    return recipe, run_dir


def _copy(base, tmp_path) -> tuple[Path, Path]:
    recipe, run_dir = base
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return recipe, dst


# ------------------------------------------------------------------------------------------ 1 kill during save
KILLER = """
import os, signal, sys
from mmengine.fileio.backends import LocalBackend
put = LocalBackend.put
def dying_put(self, obj, filepath):
    if "iter_6" in str(filepath):  # half the bytes reach the disk, then the process is killed
        with open(filepath, "wb") as f:
            f.write(obj[: len(obj) // 2]); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return put(self, obj, filepath)
LocalBackend.put = dying_put
from pvit.cli import main
sys.argv = ["pvit", "run", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    recipe = one_stage_recipe(tmp_path, optim="lr: 3.0e-3, max_steps: 8, batch_size: 4",
                              engine="checkpoint_every: 3, keep_checkpoints: 1, tensorboard: false")
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-c", KILLER, str(recipe), f"run_dir={run_dir}"], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stdout[-3000:]
    engine_dir = run_dir / STAGE / "engine"
    names = sorted(x.name for x in engine_dir.iterdir() if x.name.startswith("iter_"))
    assert names[0] == "iter_3.pth" and len(names) == 2 and names[1].startswith("iter_6.pth.tmp-"), names
    # the previous checkpoint survived although keep_checkpoints=1, and the pointer still names it
    assert (engine_dir / "last_checkpoint").read_text() == str(engine_dir / "iter_3.pth")
    ckpt = torch.load(engine_dir / "iter_3.pth", weights_only=False)
    assert ckpt["meta"]["iter"] == 3
    lines: list[str] = []
    run_recipe(pvit.load_recipe(recipe, [f"run_dir={run_dir}"]), resume="auto", log=lines.append)
    assert any("removed 1 unfinished temp file" in x for x in lines), lines
    assert any("resuming from" in x and x.endswith("iter_3.pth") for x in lines), lines
    assert not list(run_dir.rglob("*.tmp-*"))
    assert [i for i, _ in _losses(run_dir)] == list(range(4, 9))


# ------------------------------------------------------------------------------------------ 2 bad checkpoints
def test_resume_auto_skips_unreadable_checkpoints_and_names_them(base, tmp_path):
    recipe, run_dir = _copy(base, tmp_path)
    _unfinish(run_dir)
    eng = run_dir / STAGE / "engine"
    data = (eng / "iter_6.pth").read_bytes()
    (eng / "iter_6.pth").write_bytes(data[: len(data) // 2])  # truncated
    (eng / "iter_4.pth").write_bytes(b"garbage" * 100)
    lines: list[str] = []
    run_recipe(pvit.load_recipe(recipe, [f"run_dir={run_dir}"]), resume="auto", log=lines.append)
    skipped = [x for x in lines if "skipped unreadable" in x]
    assert skipped and "iter_6.pth" in skipped[0] and "iter_4.pth" in skipped[0] and skipped[0].endswith("iter_2.pth")
    assert [i for i, _ in _losses(run_dir)] == [3, 4, 5, 6]
    assert _losses(run_dir) == _losses(base[1])[2:]


def test_unreadable_resume_targets_are_errors_naming_the_file(base, tmp_path):
    recipe, run_dir = _copy(base, tmp_path)
    _unfinish(run_dir)
    eng = run_dir / STAGE / "engine"
    bad = eng / "iter_4.pth"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=re.escape(str(bad))):
        run_recipe(pvit.load_recipe(recipe, [f"run_dir={run_dir}"]), resume=str(bad), log=_quiet)
    for p in eng.glob("iter_*.pth"):
        p.write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*engine \(unreadable: iter_6.pth, iter_4"):
        run_recipe(pvit.load_recipe(recipe, [f"run_dir={run_dir}"]), resume="auto", log=_quiet)


# ------------------------------------------------------------------------------------------ 3 malicious pickles
class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_and_nothing_executes(base, tmp_path):
    recipe, run_dir = _copy(base, tmp_path)
    marker = tmp_path / "pwned"
    evil = tmp_path / "mm_projector.bin"
    with open(evil, "wb") as f:
        pickle.dump({"w": _Evil(marker)}, f)
    fake_st = tmp_path / "weights.safetensors"
    shutil.copy(evil, fake_st)
    model = build_model(pvit.load_recipe(recipe).cfg)
    for path in (evil, fake_st):
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            load_export(model, path)
    with pytest.raises(CheckpointError, match="mm_projector.bin is not a readable safetensors file"):
        run_recipe(pvit.load_recipe(recipe, [f"run_dir={tmp_path / 'r2'}", f"stages.0.init_from={evil}"]), log=_quiet)
    # a resume checkpoint is unpickled, so only one inside the run directory is accepted
    with pytest.raises(RunDirError, match="only those inside the run directory are trusted"):
        run_recipe(pvit.load_recipe(recipe, [f"run_dir={run_dir}"]), resume=str(evil), log=_quiet)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ 4 exports
def test_exports_reload_without_pickle(base):
    export = base[1] / STAGE / "export"
    files = [p for p in export.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".pickle")]
    state = load_file(str(export / "weights.safetensors"))
    for p in files:
        if p.suffix == ".json":
            json.loads(p.read_text())
    fresh = build_model(pvit.load_recipe(base[0]).cfg)
    trained = ("projector.", "region_projector.", "llm.", "bbox_embed.")  # the stage's trainable slots, whole
    tied = "llm.model.lm_head.weight"  # the tiny LLM ties it to the input embedding: saved once
    assert set(state) == {k for k in fresh.state_dict() if k.startswith(trained)} - {tied}
    assert set(load_export(fresh, export)) == set(state)
    after = fresh.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())  # every tensor reloads as saved


# ------------------------------------------------------------------------------------------ 6 changed recipe
def _cfg(**stage_optim) -> dict:
    optim = {"lr": 1e-3, "batch_size": 4, "max_steps": 6, **stage_optim}
    return {"seed": 0, "model": {"llm": {"name": "hf"}}, "engine": {"strategy": "auto", "log_every": 10},
            "stages": [{"name": "a", "data": {"name": "d", "options": {"size": 8}}, "trainable": ["llm"],
                        "optim": optim},
                       {"name": "b", "data": {"name": "d", "options": {"size": 8}}, "trainable": ["llm"],
                        "optim": dict(optim)}]}


def test_resume_rules_per_key():
    old = _cfg()
    same = check_resume(old, _cfg(), finished={0}, old_world=1, new_world=1)
    assert not (same.errors or same.warnings or same.notes)
    new = _cfg(batch_size=8)
    new["seed"] = 5
    new["engine"]["log_every"] = 1
    new["stages"][1]["data"]["options"]["size"] = 16
    new["model"]["llm"]["name"] = "other"
    res = check_resume(old, new, finished={0}, old_world=1, new_world=2)
    errors, warnings = "\n".join(res.errors), "\n".join(res.warnings)
    assert "model.llm.name" in errors and "stages[1].data.options.size" in errors
    assert "stages[0].optim.batch_size" in warnings and "already finished" in warnings  # stage a is done
    assert "stages[1].optim.batch_size: 4 -> 8: the global batch" in warnings
    assert "seed: 0 -> 5; resuming keeps the run's seed 0" in warnings and res.keep == {"seed": 0}
    assert "processes: 1 -> 2" in warnings
    assert res.notes == ["engine.log_every: 10 -> 1"]
    renamed = _cfg()
    renamed["stages"][1]["name"] = "c"
    assert "only appending stages is allowed" in check_resume(old, renamed, finished=set(), old_world=1,
                                                              new_world=1).errors[0]


def test_resume_with_a_changed_recipe_warns_or_refuses(base, tmp_path):
    recipe, run_dir = _copy(base, tmp_path)
    _unfinish(run_dir)
    with pytest.raises(RunDirError, match=r"stages\[0\].data.options.size: 64 -> 32: stage 'stage2' was started"):
        run_recipe(pvit.load_recipe(recipe, [f"run_dir={run_dir}", "stages.0.data.options.size=32"]),
                   resume="auto", log=_quiet)
    with pytest.raises(RunDirError, match=r"model.llm.options.config.hidden_size: 32 -> 16"):
        run_recipe(pvit.load_recipe(recipe, [f"run_dir={run_dir}", "model.llm.options.config.hidden_size=16"]),
                   resume="auto", log=_quiet)
    (run_dir / STAGE / "engine" / "iter_6.pth").unlink()  # resume from step 4
    lines: list[str] = []
    run_recipe(pvit.load_recipe(recipe, [f"run_dir={run_dir}", "seed=7", "stages.0.optim.lr=1e-3"]),
               resume="auto", log=lines.append)
    assert any("warning: resume: seed: 0 -> 7; resuming keeps the run's seed 0" in x for x in lines), lines
    assert any("stages[0].optim.lr: 0.003 -> 0.001: ignored for stage 'stage2'" in x for x in lines), lines
    history = json.loads((run_dir / "resumes.json").read_text())
    assert len(history) == 1 and history[0]["overrides"][1:] == ["seed=7", "stages.0.optim.lr=1e-3"]
    assert any(w.startswith("seed:") for w in history[0]["warnings"])
    assert "seed: 0" in (run_dir / "resolved.yaml").read_text()  # the run's provenance is kept
    # the seed was kept (the data order is the uninterrupted run's) and the lr came from the checkpoint
    assert _losses(run_dir) == _losses(base[1])[4:]


def test_missing_or_foreign_resume_targets_are_errors_naming_the_path(base, tmp_path):
    recipe, run_dir = _copy(base, tmp_path)
    missing = run_dir / STAGE / "engine" / "iter_99.pth"
    with pytest.raises(RunDirError, match=re.escape(f"--resume {missing}: no such checkpoint")):
        run_recipe(pvit.load_recipe(recipe, [f"run_dir={run_dir}"]), resume=str(missing), log=_quiet)
    with pytest.raises(RunDirError, match="holds no run to resume"):
        run_recipe(pvit.load_recipe(recipe, [f"run_dir={tmp_path / 'none'}"]), resume=str(missing), log=_quiet)


def test_resume_auto_says_what_it_does(base, tmp_path):
    recipe, run_dir = _copy(base, tmp_path)
    lines: list[str] = []
    fresh = tmp_path / "fresh"
    run_recipe(pvit.load_recipe(recipe, [f"run_dir={fresh}", "stages.0.optim.max_steps=1"]), resume="auto",
               log=lines.append)
    assert any("holds no run yet; starting it from the beginning" in x for x in lines)
    _unfinish(fresh)
    for p in (fresh / STAGE / "engine").glob("iter_*.pth"):
        p.unlink()
    lines.clear()
    run_recipe(pvit.load_recipe(recipe, [f"run_dir={fresh}", "stages.0.optim.max_steps=1"]), resume="auto",
               log=lines.append)
    assert any("no checkpoint in" in x and "training it from step 0" in x for x in lines), lines


# ------------------------------------------------------------------------------------------ 11 run directories
def test_overwrite_replaces_the_run_and_writes_provenance(base, tmp_path):
    recipe, run_dir = _copy(base, tmp_path)
    (run_dir / "stray.txt").write_text("old")
    with pytest.raises(RunDirError, match="already exists; pass --resume auto"):
        run_recipe(pvit.load_recipe(recipe, [f"run_dir={run_dir}"]), log=_quiet)
    run_recipe(pvit.load_recipe(recipe, [f"run_dir={run_dir}", "stages.0.optim.max_steps=1"]), overwrite=True,
               log=_quiet)
    assert not (run_dir / "stray.txt").exists()
    for name in ("recipe.yaml", "resolved.yaml", "overrides.txt", "versions.json", "plugins.json", "launch.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "launch.json").read_text())["world_size"] == 1
    assert "stages.0.optim.max_steps=1" in (run_dir / "overrides.txt").read_text()


# ------------------------------------------------------------------------------------------ 12 secrets + TB
def test_secrets_stay_out_of_every_run_file_and_log(tmp_path, monkeypatch, capsys):
    secret = "hf_SECRETVALUE_4242"
    monkeypatch.setenv("PVIT_TEST_HUB_TOKEN", secret)
    recipe = one_stage_recipe(tmp_path, optim="lr: 3.0e-3, max_steps: 2, batch_size: 4",
                              engine="checkpoint_every: 1, tensorboard: true, log_every: 1")
    run_dir = tmp_path / "run"
    lines: list[str] = []
    run_recipe(pvit.load_recipe(recipe, [f"run_dir={run_dir}", "paths.hub_token=${oc.env:PVIT_TEST_HUB_TOKEN}"]),
               log=lines.append)
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name.startswith("events.out.tfevents") for p in files)  # TensorBoard through the visualizer
    assert any(p.suffix == ".log" for p in files) and any(p.name.startswith("iter_") for p in files)
    leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaks
    assert secret not in "\n".join(lines) + capsys.readouterr().out
    assert "<redacted: from $PVIT_TEST_HUB_TOKEN>" in (run_dir / "resolved.yaml").read_text()


def test_tensorboard_logs_the_loss(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loaded = pvit.load_recipe(MICRO, ["stages.0.optim.max_steps=3", "engine.tensorboard=true", "engine.log_every=1"])
    model, st, ds, col = stage_setup(loaded, 0)
    engine.run_stage(model, st, dataset=ds, collator=col, work_dir=tmp_path, engine_cfg=loaded.cfg.engine, seed=0)
    events = list(tmp_path.rglob("events.out.tfevents*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert {"loss", "lr", "ce"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3]


# ------------------------------------------------------------------------------------------ options
def test_gradient_accumulation_and_clipping(tmp_path):
    """accum 2: one optimizer step whose gradient is the mean of the two micro-batches'; clip: the applied
    gradient has the clip norm."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    for accum, clip in ((2, None), (1, 1e-3)):
        loaded = pvit.load_recipe(MICRO, [f"stages.0.optim.grad_accum={accum}", "stages.0.optim.max_steps=1",
                                          "stages.0.optim.batch_size=2", f"stages.0.optim.clip_grad={clip or 'null'}",
                                          "engine.checkpoint_every=100", "engine.measure_flops=false"])
        model, st, ds, col = stage_setup(loaded, 0)
        reference, _, _, _ = stage_setup(loaded, 0)  # the same initial weights
        batches, steps = [], []

        def recording(samples):
            batches.append(col(samples))
            return batches[-1]

        def at_step(opt, args, kwargs):
            steps.append([p.grad.clone() for g in opt.param_groups for p in g["params"]])

        handle = register_optimizer_step_pre_hook(at_step)
        try:
            result = engine.run_stage(model, st, dataset=ds, collator=recording, work_dir=tmp_path / str(accum),
                                      engine_cfg=loaded.cfg.engine, seed=0)
        finally:
            handle.remove()
        assert result.steps == accum and len(batches) == accum and len(steps) == 1  # one optimizer step
        engine.set_trainable(reference, list(st.trainable))
        trainer = engine.wrap_model(reference, "fp32", list(st.trainable), 1).train()
        for b in batches:
            (trainer(**b)["loss"] / accum).backward()
        params = engine.param_groups(trainer, 0.0)
        expected = [p.grad for g in params for p in g["params"]]
        norm = torch.norm(torch.stack([g.norm() for g in expected]))
        if clip:
            assert norm > 10 * clip  # clipping binds
            expected = [g * (clip / norm) for g in expected]
            got = torch.norm(torch.stack([g.norm() for g in steps[0]]))
            assert abs(got - clip) < 1e-6
        for a, b in zip(steps[0], expected):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-8)


def test_progress_lines_show_loss_lr_and_throughput(tmp_path, capsys):
    loaded = pvit.load_recipe(MICRO, ["stages.0.optim.max_steps=4", "engine.progress=true", "engine.log_every=2"])
    model, st, ds, col = stage_setup(loaded, 0)
    engine.run_stage(model, st, dataset=ds, collator=col, work_dir=tmp_path, engine_cfg=loaded.cfg.engine, seed=0)
    out = capsys.readouterr().out
    lines = re.findall(r"align \[\s*(\d)/4\] loss \d+\.\d{4} lr \S+ [\d.]+ it/s [\d.]+ samples/s", out)
    assert lines == ["2", "4"], out


def test_trainable_budget_is_reported(tmp_path):
    lines: list[str] = []
    run_recipe(pvit.load_recipe(MICRO, [f"run_dir={tmp_path}/run", "eval=[]", "stages.0.optim.max_steps=1",
                                        "stages.1.optim.max_steps=1", "stages.2.optim.max_steps=1"]),
               log=lines.append)
    budget = [x for x in lines if re.search(r"trainable .*\([\d,]+ parameters\)", x)]
    model = build_model(pvit.load_recipe(MICRO).cfg)
    emb = model.llm.model.get_input_embeddings().weight
    assert model.llm.model.get_output_embeddings().weight is emb  # tied: the new rows are counted once

    def n(*modules):  # distinct parameters, counted once
        return sum(p.numel() for p in {id(p): p for m in modules for p in m.parameters()}.values())

    new_rows = len(model.trainable_token_ids) * emb.shape[1]
    assert budget == [
        f"stage 1/3 align: 64 samples, trainable projector, llm ({n(model.projector, model.llm):,} parameters)",
        f"stage 2/3 stage1: 64 samples, trainable region_projector, new_token_embeddings "
        f"({n(model.region_projector) + new_rows:,} parameters)",
        f"stage 3/3 stage2: 64 samples, trainable projector, region_projector, llm, bbox_embed "
        f"({n(model.projector, model.region_projector, model.llm, model.bbox_embed):,} parameters)",
    ]


# ------------------------------------------------------------------------------------------ 24 memory
@pytest.mark.slow
def test_memory_stays_flat_over_many_steps(tmp_path):
    import gc

    from mmengine.hooks import Hook

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024

    loaded = pvit.load_recipe(MICRO, ["stages.2.optim.max_steps=160", "engine.checkpoint_every=1000"])
    model, st, ds, col = stage_setup(loaded, 2)
    seen = {}

    class Probe(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if runner.iter + 1 in (40, 160):
                gc.collect()
                tensors = sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))
                seen[runner.iter + 1] = (rss_mb(), tensors)

    engine.run_stage(model, st, dataset=ds, collator=col, work_dir=tmp_path, engine_cfg=loaded.cfg.engine, seed=0,
                     extra_hooks=(Probe(),))
    (rss40, t40), (rss160, t160) = seen[40], seen[160]
    assert t160 - t40 <= 2, (t40, t160)  # no tensor is kept per step
    assert rss160 - rss40 < 0.01 * rss40 + 8, (rss40, rss160)


def test_loader_holds_no_images(tmp_path, monkeypatch):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    records = []
    for i in range(24):
        Image.new("RGB", (64, 48), (i * 10, 30, 90)).save(images / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png",
                        "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                          {"from": "gpt", "value": "A square."}]})
    (tmp_path / "data.json").write_text(json.dumps(records))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    ds = pvit.build("dataset", "pvit-instruct", path=str(tmp_path / "data.json"), image_folder=str(images))
    assert opened == []
    assert len(pickle.dumps(ds)) < 20_000  # records only: 24 decoded images would be 220 kB
    loader = engine.make_loader(ds, lambda b: b, batch_size=4, seed=0)
    batch = next(iter(loader))
    assert len(batch) == 4 and len(opened) == 4


def test_frozen_encoders_keep_no_activations_for_backward():
    """Stage 1: the frozen encoders run in eval mode under no_grad; autograd saves nothing inside them."""
    loaded = pvit.load_recipe(MICRO)
    model, st, ds, col = stage_setup(loaded, 1)
    engine.set_trainable(model, list(st.trainable))
    trainer = engine.wrap_model(model, "fp32", list(st.trainable), 1).train()
    assert not model.image_encoder.training and not model.region_encoder.training
    inside, saved = [False], {"encoders": 0, "elsewhere": 0}
    for enc in (model.image_encoder, model.region_encoder):
        enc.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
        enc.register_forward_hook(lambda *_: inside.__setitem__(0, False))

    def pack(t):
        saved["encoders" if inside[0] else "elsewhere"] += t.numel()
        return t

    batch = col([ds[i] for i in range(4)])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer(**batch)["loss"].backward()
    assert saved["encoders"] == 0 and saved["elsewhere"] > 0, saved


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    from rich.progress import Progress

    display = engine.Display("stage1", total=4, start=0, enabled=True, every=1)
    assert isinstance(display.bar, Progress)
    assert (display.bar.tasks[0].total, display.bar.tasks[0].completed) == (4, 0)
    display.update(2, 1.2345, 1e-3, 3.0, 12.0)
    assert display.bar.tasks[0].completed == 2
    display.close()
    assert display.bar is None
    out = capsys.readouterr().out
    assert "stage1" in out and "loss 1.2345" in out and "samples/s" in out
