"""Batched vs one-by-one generation: 16 prompts in one left-padded batch (KV cache) against 16 single calls.

Builds the model of a recipe (default ``recipes/pvit_tiny.yaml``, random weights) and 16 prompts of its first
evaluator's data, then times ``PVITModel.generate`` for the 16 as one batch and one at a time (greedy, the same
budget; stop tokens off by default so both do the full budget and the comparison is of equal work), checks that
the texts agree, and prints the ratio. Target: batched at least 4x faster.

    python benchmarks/bench_generation.py
    python benchmarks/bench_generation.py --prompts 16 --max-new-tokens 32 --repeats 3 --stop
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGET = 4.0


def setup(recipe: Path, n: int):
    """(model, collator, prompts): the recipe's model and ``n`` samples of its first evaluator's dataset."""
    import pvit
    from pvit.templates import get_template
    from pvit.collate import Collator
    from pvit.recipe import options_of
    from pvit.recipe import load_recipe
    from pvit.compose import build_model

    cfg = load_recipe(recipe).cfg
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).eval()
    ev = cfg.eval[0]
    evaluator = pvit.build("evaluator", ev.name, **options_of(ev))
    data = dict(evaluator.data)
    dataset = pvit.build("dataset", data["name"], **dict(data.get("options") or {}))
    collator = Collator.for_model(model, get_template(cfg.model.template, model.llm.tokenizer), cfg.model.max_length,
                             cfg.model.region_policy, generate=True)
    return model, collator, [dataset[i] for i in range(n)], evaluator


def best_of(fn, repeats: int) -> tuple[float, object]:
    """Shortest wall time of ``repeats`` calls (after one warm-up call) and the last result."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "pvit_tiny.yaml")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32,
                    help="budget per prompt (the tiny recipe's synth evaluator uses 5; longer shows the decode loop)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stop", action="store_true", help="stop at EOS / end-of-turn tokens as evaluation does")
    args = ap.parse_args()

    model, collator, samples, evaluator = setup(args.recipe, args.prompts)
    stops = collator.stop_token_ids if args.stop else [len(model.llm.tokenizer) + 1]  # unreachable: full budget
    n_new = args.max_new_tokens
    print(f"recipe {args.recipe.name}: {args.prompts} prompts of {evaluator.name}, {n_new} new tokens each, greedy, "
          f"stop tokens {'on' if args.stop else 'off'}, torch threads {torch.get_num_threads()}")

    def batched():
        return model.generate(collator(samples), n_new, stop_token_ids=stops)

    def one_by_one():
        return [model.generate(collator([s]), n_new, stop_token_ids=stops)[0] for s in samples]

    t_batch, out_batch = best_of(batched, args.repeats)
    t_single, out_single = best_of(one_by_one, args.repeats)
    same = sum(a == b for a, b in zip(out_batch, out_single))
    print(f"batched:    {t_batch:.3f} s ({args.prompts * n_new / t_batch:.0f} tokens/s)")
    print(f"one by one: {t_single:.3f} s ({args.prompts * n_new / t_single:.0f} tokens/s)")
    print(f"identical texts: {same}/{len(samples)}")
    ratio = t_single / t_batch
    verdict = "ok" if ratio >= TARGET else "BELOW TARGET"
    print(f"speed-up of batching: {ratio:.1f}x  (target >= {TARGET:.0f}x: {verdict})")


if __name__ == "__main__":
    main()
