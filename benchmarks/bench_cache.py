"""Frozen-feature cache: training step time with vs without the cache, for the tiny recipe's stages.

For each region stage of the recipe (those that train the region projector: ``region-pretrain`` with its own
objective, ``region-align``: PVIT's stage 1, ``instruct``: stage 2), the same batches
are stepped (forward, backward, AdamW) twice: with the frozen encoders' outputs taken from a warm cache (every
image seen before, as in later epochs and stages) and without the cache. Prints ms/step and the ratio, plus the
cost of a cold step (cache misses: hashing and storing on top of the compute).

    python benchmarks/bench_cache.py
    python benchmarks/bench_cache.py --steps 30 --recipe recipes/pvit_tiny.yaml
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _step_time(model, batches, optimizer, precision: str) -> float:
    import torch

    t0 = time.perf_counter()
    for b in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(b).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / len(batches) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "pvit_tiny.yaml"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    import pvit
    from pvit.collate import Collator
    from pvit.compose import build_model
    from pvit.feature_cache import FeatureCache
    from pvit.registry import build
    from pvit.slots import frozen_components, set_trainable
    from pvit.templates import get_template

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = pvit.load_recipe(args.recipe).cfg
    model = build_model(cfg)
    model.feature_cache = FeatureCache(4096)
    collator = Collator.for_model(model, get_template(cfg.model.template, model.llm.tokenizer), cfg.model.max_length)
    print(f"recipe {cfg.name}: {args.steps} steps per measurement, {args.threads} threads")
    for st in cfg.stages:
        if "region_projector" not in st.trainable:
            continue
        ds = build("dataset", st.data)
        bs = st.optim.batch_size
        batches = [collator([ds[i] for i in range(k * bs, (k + 1) * bs)]) for k in range(args.steps)]
        state = set_trainable(model, list(st.trainable))
        model.objective = st.objective
        model.train()
        for c in frozen_components(model, list(st.trainable)):
            getattr(model, c).eval()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        _step_time(model, batches[:2], opt, st.optim.precision)  # warm-up (allocations, kernels)
        model.cache_frozen([])
        plain = _step_time(model, batches, opt, st.optim.precision)
        cached = model.cache_frozen(frozen_components(model, list(st.trainable)))
        cold = _step_time(model, batches, opt, st.optim.precision)
        warm = _step_time(model, batches, opt, st.optim.precision)
        model.cache_frozen([])
        model.objective = "lm"
        state.remove()
        print(f"{st.name}: cached {', '.join(cached)}; without cache {plain:.0f} ms/step, warm cache {warm:.0f} "
              f"ms/step ({plain / warm:.2f}x faster), cold cache {cold:.0f} ms/step ({cold / plain:.2f}x of "
              "without)")
    s = model.feature_cache.stats()
    print(f"cache: {s['entries']} entries, {s['memory_mb']} MB")


if __name__ == "__main__":
    main()
