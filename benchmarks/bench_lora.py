"""LoRA vs full fine-tuning of the LLM: memory and time of one stage-2 training step, on CPU.

A mid-size LLaMA (TinyLlama-1.1B's widths: hidden 2048, MLP 5632, 32 heads with 4 KV heads, 32k vocabulary,
cut to ``--layers`` layers; about 220 M parameters with 2 layers) is built at random as ``hf-causal-lm``, inside
a PVITModel, and trained for a few AdamW steps on random tokens, once with ``trainable: [llm]`` (full fine-tuning)
and once with ``lora`` on and ``trainable: [llm.lora]``. Each mode runs in its own process, so peak RSS is its own.
Reported per mode: trainable parameters, the bytes of gradients plus AdamW state (tracked exactly), the growth of
peak RSS during training over the RSS after the model was built, and the median step time; then the ratios.

    python benchmarks/bench_lora.py
    python benchmarks/bench_lora.py --layers 4 --seq 256 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIG = dict(model_type="llama", hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
              num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_mode(mode: str, layers: int, batch: int, seq: int, steps: int) -> dict:
    """One mode in this process: build, train ``steps`` steps (the first untimed), measure."""
    import torch

    import pvit
    from pvit.model import PVITModel
    from pvit.slots import set_trainable

    torch.manual_seed(0)
    options = dict(config={**CONFIG, "num_hidden_layers": layers}, tokenizer={"words": ["a"]},
                   attn_implementation="sdpa")
    if mode == "lora":
        options["lora"] = LORA
    llm = pvit.build("llm", "hf-causal-lm", **options)
    model = PVITModel(llm)
    state = set_trainable(model, ["llm.lora" if mode == "lora" else "llm"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    ids = torch.randint(0, CONFIG["vocab_size"], (batch, seq))
    batch_ = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    built_rss = _rss_mb()
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        loss = model(batch_).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the gradient buffers: they are part of a step's memory
        if i:
            times.append(time.perf_counter() - t0)
    tracked = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    tracked += sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                   if torch.is_tensor(t) and t.dim() > 0)
    return {"mode": mode, "total_params": sum(p.numel() for p in model.parameters()), "trainable": state.total,
            "grad_adam_mb": tracked / 2**20, "rss_after_build_mb": built_rss, "peak_rss_mb": _rss_mb(),
            "train_rss_growth_mb": _rss_mb() - built_rss, "step_s": statistics.median(times),
            "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="steps per mode; the first is not timed")
    parser.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)  # one mode, in a child
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.layers, args.batch, args.seq, args.steps)))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    results = {}
    for mode in ("full", "lora"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--layers", str(args.layers), "--batch",
                              str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"llama {args.layers} layers, {results['full']['total_params'] / 1e6:.0f} M parameters; batch {args.batch} "
          f"x {args.seq} tokens; torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    cols = ("trainable", "grad_adam_mb", "rss_after_build_mb", "peak_rss_mb", "train_rss_growth_mb", "step_s")
    print(f"{'mode':<6}" + "".join(f"{c:>21}" for c in cols))
    for mode, r in results.items():
        print(f"{mode:<6}" + "".join(f"{r[c]:>21,.2f}" if isinstance(r[c], float) else f"{r[c]:>21,}" for c in cols))
    f, lo = results["full"], results["lora"]
    print(f"ratios lora/full: trainable {lo['trainable'] / f['trainable']:.4f}, "
          f"grads+AdamW {lo['grad_adam_mb'] / f['grad_adam_mb']:.4f}, "
          f"peak RSS {lo['peak_rss_mb'] / f['peak_rss_mb']:.3f}, RSS growth in training "
          f"{lo['train_rss_growth_mb'] / f['train_rss_growth_mb']:.3f}, step time {lo['step_s'] / f['step_s']:.3f}")


if __name__ == "__main__":
    main()
