"""Training-engine costs: pvit + mmengine step vs a hand-written loop, stage-1 vs LLM-only peak memory, RSS drift.

    python benchmarks/bench_engine.py            # all three, CPU (or the GPU if there is one)
    python benchmarks/bench_engine.py --only overhead --steps 60

Prints measured ratios; targets (ISSUE "training engine"): overhead <= 1.15x, stage-1 peak memory <= 1.3x the
LLM-only step at the same sequence length, RSS at step 500 within 5% of step 50.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests" / "recipes" / "micro.yaml"
TINY = ROOT / "recipes" / "pvit_tiny.yaml"
CONFIGS = {
    # name: (recipe, overrides, batch size, steps per run)
    "tiny (micro: LLM d=32, 1 layer)": (MICRO, [], 4, 200),
    "mid (pvit_tiny: LLM d=128, 4 layers; ViT 2 layers; RegionCLIP RN)": (TINY, ["stages.{i}.optim.precision=fp32"], 8,
                                                                         50),
}


def _setup(recipe: Path, overrides: list[str], stage: str, batch: int):
    """``stage``: a stage name, or ``last``; ``{i}`` in an override is that stage's index."""
    import torch

    import pvit
    from pvit.templates import get_template
    from pvit.collate import Collator
    from pvit.recipe import options_of
    from pvit.compose import build_model

    names = [st.name for st in pvit.load_recipe(recipe).cfg.stages]
    stage = len(names) - 1 if stage == "last" else names.index(stage)
    overrides = [o.format(i=stage) for o in overrides]
    loaded = pvit.load_recipe(recipe, [*overrides, f"stages.{stage}.optim.batch_size={batch}",
                                       "engine.num_workers=0", "engine.progress=false", "engine.tensorboard=false",
                                       "engine.checkpoint_every=100000", "engine.log_every=100000"])
    cfg = loaded.cfg
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    st = cfg.stages[stage]
    ds = pvit.build("dataset", st.data.name, **options_of(st.data))
    col = Collator.for_model(model, get_template(cfg.model.template, model.llm.tokenizer), cfg.model.max_length,
                        "error", generate=False)
    return cfg, model, st, ds, col


# ------------------------------------------------------------------------------------------ overhead
def _pvit_steps(recipe, overrides, batch, steps, warm) -> float:
    """Seconds per step of run_stage (mmengine Runner), steps warm..steps."""
    from mmengine.hooks import Hook

    from pvit.engine import run_stage

    cfg, model, st, ds, col = _setup(recipe, [*overrides, f"stages.{{i}}.optim.max_steps={steps}"], "last", batch)
    stamps = {}

    class Clock(Hook):
        priority = "LOWEST"

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            stamps[runner.iter + 1] = time.perf_counter()

    import tempfile

    with tempfile.TemporaryDirectory() as work:
        run_stage(model, st, dataset=ds, collator=col, work_dir=Path(work), engine_cfg=cfg.engine, seed=0,
                  extra_hooks=(Clock(),))
    return (stamps[steps] - stamps[warm]) / (steps - warm)


def _hand_steps(recipe, overrides, batch, steps, warm) -> float:
    """Seconds per step of a minimal PyTorch loop over the same model, trainable set, loader and optimizer."""
    import torch

    from pvit.engine import param_groups, make_loader, set_trainable
    from pvit.model import batch_to

    cfg, model, st, ds, col = _setup(recipe, overrides, "last", batch)
    set_trainable(model, list(st.trainable))
    model.train()
    for slot in ("image_encoder", "region_encoder"):
        if getattr(model, slot, None) is not None and slot not in st.trainable:
            getattr(model, slot).eval()
    opt = torch.optim.AdamW(param_groups(model, st.optim.weight_decay), lr=st.optim.lr, betas=tuple(st.optim.betas))
    params = [p for p in model.parameters() if p.requires_grad]
    device = next(model.llm.parameters()).device
    it = iter(make_loader(ds, col, batch_size=batch, seed=0))
    stamps = {}
    for step in range(1, steps + 1):
        b = batch_to(next(it), device)
        loss = model(b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, st.optim.clip_grad or 1.0)
        opt.step()
        opt.zero_grad()
        float(loss.detach())  # the loop looks at its loss, as any training loop does
        stamps[step] = time.perf_counter()
    return (stamps[steps] - stamps[warm]) / (steps - warm)


def bench_overhead(steps: int | None, repeats: int) -> None:
    print("== engine overhead: time per training step (stage 2: projectors + LLM + box embedding; fp32), "
          f"median of {repeats} alternating runs, the first 20% of each run's steps excluded")
    for name, (recipe, overrides, batch, default_steps) in CONFIGS.items():
        n = steps or default_steps
        warm = max(5, n // 5)
        hand, pv = [], []
        for _ in range(repeats):
            hand.append(_hand_steps(recipe, overrides, batch, n, warm))
            pv.append(_pvit_steps(recipe, overrides, batch, n, warm))
        h, p = statistics.median(hand), statistics.median(pv)
        print(f"  {name}, batch {batch}, {n} steps: hand-written {h * 1e3:.1f} ms, pvit+mmengine {p * 1e3:.1f} ms, "
              f"ratio {p / h:.3f}x (target <= 1.15x)", flush=True)


# ------------------------------------------------------------------------------------------ memory
def _rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith(field))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")


def _memory_child(kind: str, batch: int) -> dict:
    """One measurement in a fresh process: peak memory of a training step above the memory before it."""
    import torch

    from pvit.engine import param_groups, set_trainable
    from pvit.model import batch_to

    cfg, model, st, ds, col = _setup(TINY, [], "region-align", batch)  # PVIT's stage 1: region projector + new token rows
    set_trainable(model, list(st.trainable))
    model.train()
    for slot in ("image_encoder", "region_encoder", "projector", "llm"):
        if getattr(model, slot, None) is not None and slot not in st.trainable:
            getattr(model, slot).eval()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model.to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-4)
    b = batch_to(col([ds[i] for i in range(batch)]), device)
    ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]

    def step():
        if kind == "stage1":
            loss = model(b).loss
        else:  # the LLM alone on the same token ids (placeholders embedded as the tokens they are)
            loss = model.llm(inputs_embeds=model.llm.embed(ids), attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    step()  # optimizer state exists from here on, for both kinds
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        _reset_peak()
        base = _rss_kb() * 1024
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for _ in range(3):
            step()
    peak = (torch.cuda.max_memory_allocated() if cuda else _rss_kb("VmHWM") * 1024) - base
    return {"kind": kind, "seq_len": int(ids.shape[1]), "batch": batch, "peak_bytes": peak,
            "saved_for_backward_bytes": saved[0] // 3, "device": device.type}


def bench_memory(batch: int) -> None:
    results = {}
    for kind in ("llm", "stage1"):
        # glibc: every block >= 64 KiB is its own mapping, returned to the OS when freed, so RSS follows the
        # live tensors instead of the allocator's cache
        env = dict(os.environ, HF_HUB_OFFLINE="1", MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        out = subprocess.run([sys.executable, __file__, "--child-memory", kind, "--batch", str(batch)],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    a, b = results["llm"], results["stage1"]
    what = "max_memory_allocated" if a["device"] == "cuda" else "peak RSS (VmHWM)"
    print(f"== stage-1 step vs LLM-only step, pvit_tiny sizes, batch {batch}, sequence length {a['seq_len']} "
          f"({what} above the memory before the step; saved-for-backward bytes from autograd hooks)")
    print(f"  LLM only: peak {a['peak_bytes'] / 2**20:.1f} MiB, saved for backward "
          f"{a['saved_for_backward_bytes'] / 2**20:.1f} MiB")
    print(f"  stage 1:  peak {b['peak_bytes'] / 2**20:.1f} MiB, saved for backward "
          f"{b['saved_for_backward_bytes'] / 2**20:.1f} MiB")
    print(f"  ratio: peak {b['peak_bytes'] / max(a['peak_bytes'], 1):.3f}x (target <= 1.3x), saved for backward "
          f"{b['saved_for_backward_bytes'] / max(a['saved_for_backward_bytes'], 1):.3f}x", flush=True)


# ------------------------------------------------------------------------------------------ RSS drift
def bench_rss(steps: int) -> None:
    from mmengine.hooks import Hook

    from pvit.engine import run_stage

    cfg, model, st, ds, col = _setup(MICRO, [f"stages.{{i}}.optim.max_steps={steps}"], "last", 4)
    marks = sorted({50, steps // 2, steps})
    seen = {}

    class Probe(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if runner.iter + 1 in marks:
                seen[runner.iter + 1] = _rss_kb() / 1024

    import tempfile

    t0 = time.time()
    with tempfile.TemporaryDirectory() as work:
        run_stage(model, st, dataset=ds, collator=col, work_dir=Path(work), engine_cfg=cfg.engine, seed=0,
                  extra_hooks=(Probe(),))
    print(f"== RSS over {steps} steps (micro stage 2, batch 4, {time.time() - t0:.0f} s): "
          + ", ".join(f"step {k}: {v:.1f} MiB" for k, v in sorted(seen.items())))
    print(f"  step {steps} / step 50: {seen[steps] / seen[50]:.4f}x (+{seen[steps] - seen[50]:.1f} MiB; target "
          "within 5%)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["overhead", "memory", "rss"], action="append")
    ap.add_argument("--steps", type=int, default=None, help="steps per overhead run (default: per config)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="batch of the memory comparison")
    ap.add_argument("--rss-steps", type=int, default=500)
    ap.add_argument("--child-memory", choices=["llm", "stage1"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.getLogger("mmengine").setLevel(logging.ERROR)
    if args.child_memory:
        print(json.dumps(_memory_child(args.child_memory, args.batch)))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {'cuda: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
    only = args.only or ["overhead", "memory", "rss"]
    if "overhead" in only:
        bench_overhead(args.steps, args.repeats)
    if "memory" in only:
        bench_memory(args.batch)
    if "rss" in only:
        bench_rss(args.rss_steps)


if __name__ == "__main__":
    main()
