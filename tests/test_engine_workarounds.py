"""Each mmengine 0.10.x workaround in pvit.engine, with a test that fails if the workaround breaks.

Where it is cheap, a test first shows the upstream failure (so it also tells us when mmengine fixes it).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import pvit
from pvit import engine
from pvit.errors import CheckpointError, RecipeError
from helpers import MICRO, stage_setup

CUDA = torch.cuda.is_available()


@pytest.fixture
def group():
    """A one-process gloo group made the pvit way (no torch.cuda.set_device), destroyed afterwards."""
    import torch.distributed as dist

    with engine.distributed(force=True) as info:
        assert dist.is_initialized() and info.world == 1
        yield info
    assert not dist.is_initialized()  # workaround 7: destroyed at exit


# ------------------------------------------------------------------------------------------ 1 trusted resume load
def _mmengine_resume_checkpoint(path):
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance(f"pvit-test-{os.getpid()}-{id(path)}")
    hub.update_scalar("train/loss", 1.0)
    torch.save({"meta": {"iter": 1}, "message_hub": hub.state_dict(), "state_dict": {"w": torch.ones(2)}}, path)


def test_resume_checkpoints_load_only_through_the_trusted_scheme(tmp_path):
    from mmengine.runner.checkpoint import _load_checkpoint

    engine.patch_mmengine()
    path = tmp_path / "iter_1.pth"
    _mmengine_resume_checkpoint(path)
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):  # the upstream problem
        _load_checkpoint(str(path), map_location="cpu")
    ckpt = _load_checkpoint(engine.TRUSTED_PREFIX + str(path), map_location="cpu")
    assert ckpt["meta"]["iter"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(2))
    garbage = tmp_path / "iter_2.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="iter_2.pth is unreadable"):
        _load_checkpoint(engine.TRUSTED_PREFIX + str(garbage), map_location="cpu")
    with pytest.raises(CheckpointError, match="iter_9.pth does not exist"):
        _load_checkpoint(engine.TRUSTED_PREFIX + str(tmp_path / "iter_9.pth"), map_location="cpu")


# ------------------------------------------------------------------------------------------ 2 + 7 process group
@pytest.mark.skipif(CUDA, reason="shows the CPU-only failure of mmengine's init_dist")
def test_mmengine_init_dist_fails_on_cpu_but_pvit_makes_a_gloo_group(monkeypatch, group):
    import torch.distributed as dist
    from mmengine.dist import init_dist

    assert dist.get_backend() == "gloo"
    dist.destroy_process_group()
    monkeypatch.setattr("torch.multiprocessing.set_start_method", lambda *a, **k: None)
    with pytest.raises((RuntimeError, AssertionError)):
        init_dist("pytorch", backend="gloo")  # torch.cuda.set_device before the group exists
    assert not dist.is_initialized()
    engine.init_distributed(force=True)  # what pvit does instead (the fixture destroys it)
    assert dist.is_initialized() and dist.get_backend() == "gloo"


def test_distributed_context_leaves_no_group_or_environment_behind():
    import torch.distributed as dist

    before = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_PORT")}
    with engine.distributed() as info:  # not under torchrun: nothing to do
        assert info.world == 1 and not dist.is_initialized()
    with engine.distributed(force=True):
        assert dist.is_initialized()
    assert not dist.is_initialized()
    assert {k: os.environ.get(k) for k in before} == before


# ------------------------------------------------------------------------------------------ 3 DDP on CPU
@pytest.mark.skipif(CUDA, reason="CPU-only behaviour")
def test_ddp_wrapper_uses_no_device_ids_on_cpu(group):
    from mmengine.registry import MODEL_WRAPPERS
    from torch.nn.parallel import DistributedDataParallel

    with pytest.raises(ValueError, match="device_ids"):  # what mmengine's default [LOCAL_RANK] does on CPU
        DistributedDataParallel(nn.Linear(2, 2), device_ids=[0])
    cfg = engine.ddp_wrapper_cfg()
    assert cfg["device_ids"] is None
    wrapped = MODEL_WRAPPERS.build(cfg, default_args=dict(module=nn.Linear(2, 2), device_ids=[0]))
    assert isinstance(wrapped, DistributedDataParallel) and wrapped.device_ids is None


# ------------------------------------------------------------------------------------------ 4 FSDP
@pytest.mark.skipif(CUDA, reason="CPU-only behaviour")
def test_fsdp_strategy_wraps_on_cpu_and_round_trips_optimizer_state(group, tmp_path):
    from mmengine._strategy import FSDPStrategy
    from mmengine.optim import OptimWrapper
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    cls = engine.fsdp_strategy()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    strategy = cls(work_dir=str(tmp_path), state_dict_cfg=engine.fsdp_state_dict_cfg(),
                   model_wrapper=dict(type="MMFullyShardedDataParallel", use_orig_params=True))
    strategy.id_to_name = {id(p): n for n, p in model.named_parameters()}
    wrapped = strategy._wrap_model(model)
    assert isinstance(wrapped, FSDP) and wrapped.compute_device.type == "cpu"
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    wrapper = strategy.build_optim_wrapper(OptimWrapper(opt, clip_grad=dict(max_norm=1e-3)), wrapped)
    assert wrapper.optimizer is not opt and type(wrapper).__name__ == "FSDPOptimWrapper"
    strategy.model, strategy.optim_wrapper = wrapped, wrapper
    clip_calls = []
    clip = wrapped.clip_grad_norm_
    wrapped.clip_grad_norm_ = lambda **kw: clip_calls.append(kw) or clip(**kw)
    wrapper.update_params(wrapped(torch.randn(3, 4)).pow(2).sum() * 100)
    assert clip_calls == [{"max_norm": 1e-3}]  # the global norm over all shards, not each rank's own
    saved = FSDP.optim_state_dict(wrapped, wrapper.optimizer)
    moments = [v["exp_avg"].clone() for v in wrapper.optimizer.state.values()]
    with pytest.raises(TypeError):  # mmengine's call, in torch < 2.1's argument order
        FSDPStrategy.load_optim_state_dict(strategy, saved)
    wrapper.optimizer.state.clear()
    strategy.load_optim_state_dict(saved)
    assert all(torch.equal(a, b["exp_avg"]) for a, b in zip(moments, wrapper.optimizer.state.values()))
    # the clipped gradient was applied: tiny moments despite a huge loss
    assert all(v["exp_avg"].abs().max() < 1e-3 for v in wrapper.optimizer.state.values())


def test_fsdp_state_dicts_do_not_offload_on_cpu():
    cfg = engine.fsdp_state_dict_cfg()
    assert cfg["state_dict_type"] == "FULL_STATE_DICT"
    assert cfg["optim_state_dict_config"]["offload_to_cpu"] is CUDA  # offloading CPU tensors frees them (2 ranks)
    assert cfg["state_dict_config"]["offload_to_cpu"] is CUDA


def test_fsdp_refuses_row_masked_embeddings():
    loaded = pvit.load_recipe(_micro(), ["engine.strategy=fsdp"])
    from pvit.compose import build_model

    model = build_model(loaded.cfg)
    with pytest.raises(RecipeError, match="FSDP's flattened parameters bypass"):
        engine.run_stage(model, loaded.cfg.stages[1], dataset=[{}], collator=None, work_dir="unused",
                         engine_cfg=loaded.cfg.engine, seed=0)


def test_unknown_strategy_and_precision_are_recipe_errors():
    with pytest.raises(RecipeError, match="'fdsp' is not one of auto, ddp, fsdp, deepspeed; did you mean 'fsdp'"):
        engine.resolve_strategy("fdsp", 1)
    assert engine.resolve_strategy("auto", 1) == "single" and engine.resolve_strategy("ddp", 2) == "ddp"
    loaded = pvit.load_recipe(_micro(), ["stages.0.optim.precision=fp16"])
    from pvit.compose import build_model

    with pytest.raises(RecipeError, match="precision: 'fp16' is not one of fp32, bf16"):
        engine.run_stage(build_model(loaded.cfg), loaded.cfg.stages[0], dataset=[{}], collator=None,
                         work_dir="unused", engine_cfg=loaded.cfg.engine, seed=0)


# ------------------------------------------------------------------------------------------ 5 bf16 without AMP
@pytest.mark.skipif(CUDA, reason="shows the CPU-only failure of AmpOptimWrapper")
def test_amp_optim_wrapper_is_gpu_only_so_bf16_uses_autocast():
    from mmengine.optim import AmpOptimWrapper

    with pytest.raises(AssertionError, match="only available"):
        AmpOptimWrapper(optimizer=torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1))
    lin = nn.Linear(4, 4)
    with engine.autocast("bf16", torch.device("cpu")):
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with engine.autocast("fp32", torch.device("cpu")):
        assert lin(torch.randn(2, 4)).dtype == torch.float32


def test_bf16_stage_runs_the_llm_in_bf16_on_cpu(tmp_path):
    loaded = pvit.load_recipe(_micro(), ["stages.0.optim.precision=bf16", "stages.0.optim.max_steps=2"])
    model, st, ds, col = stage_setup(loaded, 0)
    dtypes = []
    head = model.llm.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    result = engine.run_stage(model, st, dataset=ds, collator=col, work_dir=tmp_path, engine_cfg=loaded.cfg.engine,
                              seed=0)
    handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32 (autocast only)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(v)) for _, v in result.losses)


# ------------------------------------------------------------------------------------------ 6 + 9 data stream
class _Recording:
    """A map-style dataset that records the epochs set on it."""

    def __init__(self, n):
        self.n, self.epoch, self.seen = n, 0, []

    def __len__(self):
        return self.n

    def set_epoch(self, e):
        self.epoch = e

    def __getitem__(self, i):
        return (self.epoch, i)


def test_stream_one_process_2b_equals_two_processes_b_each():
    one = iter(engine.StageStream(10, seed=3, rank=0, world=1))
    r0 = iter(engine.StageStream(10, seed=3, rank=0, world=2))
    r1 = iter(engine.StageStream(10, seed=3, rank=1, world=2))
    for _ in range(7):  # crosses epoch boundaries (10 samples, 4 per step)
        step = [next(one) for _ in range(4)]
        assert sorted(step) == sorted([next(r0), next(r0), next(r1), next(r1)])
    keys = [k for _, k in zip(range(20), engine.StageStream(10, seed=3))]
    assert sorted(i for e, i in keys if e == 0) == list(range(10)) and {e for e, _ in keys} == {0, 1}


def test_stream_start_skips_without_loading():
    full = [k for _, k in zip(range(30), engine.StageStream(7, seed=1))]
    s = engine.StageStream(7, seed=1)
    s.start = 11
    assert [k for _, k in zip(range(19), s)] == full[11:]


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_is_endless_and_tells_the_dataset_its_epoch(workers):
    ds = _Recording(6)
    loader = engine.make_loader(ds, lambda b: b, batch_size=4, seed=0, num_workers=workers)
    it = iter(loader)
    items = [x for _ in range(5) for x in next(it)]  # 20 samples from a 6-sample dataset: 4 epochs
    assert [e for e, _ in items] == [k // 6 for k in range(20)]  # each item was read under its own epoch
    assert sorted(i for e, i in items if e == 1) == list(range(6))


# ------------------------------------------------------------------------------------------ 8 checkpoint order
def test_old_checkpoint_is_deleted_only_after_the_new_one_exists(tmp_path):
    from mmengine.hooks import Hook

    loaded = pvit.load_recipe(_micro(), ["engine.keep_checkpoints=1", "engine.checkpoint_every=2",
                                         "stages.0.optim.max_steps=4"])
    model, st, ds, col = stage_setup(loaded, 0)
    present = []

    class Watch(Hook):
        def before_save_checkpoint(self, runner, checkpoint):
            present.append(sorted(p.name for p in tmp_path.glob("iter_*.pth")))

    engine.run_stage(model, st, dataset=ds, collator=col, work_dir=tmp_path, engine_cfg=loaded.cfg.engine, seed=0,
                     extra_hooks=(Watch(),))
    assert present == [[], ["iter_2.pth"]]  # mmengine deletes iter_2 before writing iter_4
    assert sorted(p.name for p in tmp_path.glob("iter_*")) == ["iter_4.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_4.pth")
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_atomic_save_leaves_nothing_under_the_final_name_on_failure(tmp_path):
    def failing(checkpoint, filename, file_client_args=None, backend_args=None):
        with open(filename, "wb") as f:
            f.write(b"PK\x03\x04 half")
        raise OSError("disk full")

    save = engine.atomic_checkpoint_save(failing)
    with pytest.raises(OSError, match="disk full"):
        save({}, tmp_path / "iter_5.pth")
    assert list(tmp_path.iterdir()) == []


def _micro():
    return MICRO


def test_one_step_warmup_still_reaches_the_full_learning_rate(tmp_path):
    from mmengine.hooks import Hook

    # warmup_ratio 0.05 of 20 steps = 1 step: mmengine's LinearLR over one iteration would leave the lr at
    # start_factor (1e-3 x lr) for the whole stage
    loaded = pvit.load_recipe(_micro(), ["stages.0.optim.max_steps=20", "stages.0.optim.warmup_ratio=0.05",
                                         "engine.checkpoint_every=100"])
    model, st, ds, col = stage_setup(loaded, 0)
    lrs = []

    class Lr(Hook):
        def before_train_iter(self, runner, batch_idx, data_batch=None):
            lrs.append(runner.optim_wrapper.get_lr()["lr"][0])

    engine.run_stage(model, st, dataset=ds, collator=col, work_dir=tmp_path, engine_cfg=loaded.cfg.engine, seed=0,
                     extra_hooks=(Lr(),))
    base = st.optim.lr
    assert lrs[0] < 0.01 * base and max(lrs) > 0.9 * base and lrs[-1] < lrs[3]
