"""Data throughput vs training speed: does the loader + collator keep the tiny model's training step fed?

Builds the model and the stage-2 data of a recipe (default ``recipes/pvit_tiny.yaml``), then measures:

1. loader batches/s: a DataLoader with the recipe's ``engine.num_workers`` and the stage's batch size,
   the recipe's collator, nothing else running (after the first batch, which includes worker start-up);
2. the training step (forward, backward, AdamW step, the stage's trainable slots and precision) on batches
   already in memory;
3. the two together, as training runs: the time the loop waits for the loader per step.

The target is a ratio (1) / (steps/s of 2) of at least 5.

    python benchmarks/bench_data.py
    python benchmarks/bench_data.py --batches 40 --steps 10 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGET = 5.0


def setup(recipe: Path, stage_index: int):
    """(cfg, model, stage, dataset, collator) for one stage of ``recipe``."""
    import pvit
    from pvit.templates import get_template
    from pvit.collate import Collator
    from pvit.recipe import options_of
    from pvit.recipe import load_recipe
    from pvit.compose import build_model

    cfg = load_recipe(recipe).cfg
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    stage = cfg.stages[stage_index]
    dataset = pvit.build("dataset", stage.data.name, **options_of(stage.data))
    collator = Collator.for_model(model, get_template(cfg.model.template, model.llm.tokenizer), cfg.model.max_length,
                             cfg.model.region_policy, generate=False)
    return cfg, model, stage, dataset, collator


def make_loader(dataset, collator, batch_size: int, workers: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g, collate_fn=collator,
                                       num_workers=workers, persistent_workers=workers > 0, drop_last=True)


def loader_rate(loader, batches: int) -> float:
    """Batches per second after the first batch (worker start-up excluded)."""
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t0)


def trainer(model, stage):
    """A step function as the engine runs the stage: trainable slots, precision, AdamW, gradient clipping."""
    from pvit.engine import set_trainable

    set_trainable(model, list(stage.trainable), where=f"stages[{stage.name}]")
    model.train()
    for slot in ("image_encoder", "region_encoder"):
        if slot not in stage.trainable and getattr(model, slot, None) is not None:
            getattr(model, slot).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(stage.optim.lr))
    bf16 = stage.optim.precision == "bf16"

    def step(batch):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = model(batch).loss
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "pvit_tiny.yaml")
    ap.add_argument("--stage", type=int, default=2, help="stage index (default 2: stage 2)")
    ap.add_argument("--workers", type=int, default=None,
                    help="loader workers (default: the recipe's engine.num_workers)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the training process")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg, model, stage, dataset, collator = setup(args.recipe, args.stage)
    workers = cfg.engine.num_workers if args.workers is None else args.workers
    bs = int(stage.optim.batch_size)
    print(f"recipe {args.recipe.name}, stage {stage.name}: {stage.data.name} ({len(dataset)} samples), batch {bs}, "
          f"{workers} loader worker(s), precision {stage.optim.precision}, torch threads {torch.get_num_threads()}")

    rate = loader_rate(make_loader(dataset, collator, bs, workers), args.batches)
    print(f"loader + collator: {rate:.1f} batches/s ({1000 / rate:.0f} ms per batch of {bs})")

    step = trainer(model, stage)
    batches = list(zip(range(args.steps + 2), make_loader(dataset, collator, bs, 0, seed=1)))
    seq = max(b["input_ids"].shape[1] for _, b in batches)
    for _, b in batches[:2]:
        step(b)  # warm-up
    t0 = time.perf_counter()
    for _, b in batches[2:]:
        step(b)
    step_s = (time.perf_counter() - t0) / args.steps
    print(f"training step: {1000 * step_s:.0f} ms ({1 / step_s:.2f} steps/s; sequences up to {seq} tokens)")

    wait = 0.0
    it = iter(make_loader(dataset, collator, bs, workers, seed=2))
    next(it)
    t_all = time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        b = next(it)
        wait += time.perf_counter() - t0
        step(b)
    total = time.perf_counter() - t_all
    print(f"training with the loader: {1000 * total / args.steps:.0f} ms per step, of which "
          f"{1000 * wait / args.steps:.1f} ms waiting for data ({100 * wait / total:.1f}%)")

    ratio = rate * step_s
    verdict = "ok" if ratio >= TARGET else "BELOW TARGET"
    print(f"ratio (loader batches/s / training steps/s): {ratio:.1f}x  (target >= {TARGET:.0f}x: {verdict})")


if __name__ == "__main__":
    main()
