"""GPU check: PVIT's paper-shape components with random weights, one stage-2 training step after another.

Builds CLIP ViT-L/14 (layer -2), RegionCLIP RN50x4 and a LLaMA-7B-shaped LLM cut to a few layers from the
paper recipe's own component configs (random init, no files), runs forward + backward in bf16 on a synthetic
batch (one image and several regions per sample, PVIT's prompt layout), and prints and writes as JSON:
tokens/s, FLOPs per step, achieved FLOP/s and MFU against a measured matmul peak, peak memory, and two
overhead ratios: the whole step over the same LLM step on the same token ids (the encoders + splice cost), and
the region encoder with ``--regions`` boxes per image over one box (the marginal cost of regions).

    python benchmarks/gpu_check.py --size paper --out gpu_check.json   # on a GPU (bf16, ~a minute)
    python benchmarks/gpu_check.py --size cpu --out gpu_check.json     # reduced shapes, any machine (CI)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["what", "is", "in", "the", "region", "a", "red", "blue", "cat", "dog", "left", "of", "and", "it"]
SIZES = {
    # the paper's shapes, the LLM cut to a few of its 32 layers
    "paper": dict(layers=4, batch=4, regions=8, overrides=[]),
    # the same code path at shapes a 2-core CPU runs in seconds
    "cpu": dict(layers=1, batch=2, regions=4, overrides=[
        "model.llm.options.config={model_type: llama, hidden_size: 128, intermediate_size: 256, "
        "num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 4, vocab_size: 32000, "
        "max_position_embeddings: 2048, tie_word_embeddings: false}",
        "model.image_encoder.options.config={image_size: 56, patch_size: 14, hidden_size: 64, "
        "intermediate_size: 128, num_hidden_layers: 3, num_attention_heads: 4, projection_dim: 32}",
        "model.region_encoder.options={model: tiny, min_size: 64, max_size: 96}",
    ]),
}


def build(size: str, device: torch.device):
    """The paper recipe's model with random weights (no files) at ``size``; returns (model, collator)."""
    import pvit
    from pvit.collate import Collator
    from pvit.compose import build_model
    from pvit.templates import get_template

    spec = SIZES[size]
    over = ["model.llm.options.path=null", "model.image_encoder.options.path=null",
            "model.region_encoder.options.checkpoint=null", "model.projector.options.checkpoint=null",
            f"model.llm.options.tokenizer={{words: [{', '.join(WORDS)}]}}",
            "model.llm.options.attn_implementation=sdpa", *spec["overrides"]]
    if size == "paper":
        over.append(f"model.llm.options.config.num_hidden_layers={spec['layers']}")
    cfg = pvit.load_recipe(ROOT / "recipes" / "pvit_full.yaml", over).cfg
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    collator = Collator.for_model(model, get_template("vicuna_v1_1", model.llm.tokenizer), 4096)
    return model, collator


def samples(n: int, regions: int, seed: int = 0) -> list[dict]:
    """``n`` samples with a random image and ``regions`` region mentions each."""
    from pvit.regions import format_pvit
    from pvit.testing import random_images

    out = []
    g = torch.Generator().manual_seed(seed)
    for i, img in enumerate(random_images(n, seed=seed)):
        boxes = []
        for _ in range(regions):
            x1, y1 = (torch.rand(2, generator=g) * 0.6).tolist()
            boxes.append((x1, y1, x1 + 0.3, y1 + 0.3))
        mentions = " and ".join(format_pvit(b) for b in boxes)
        out.append({"id": str(i), "image": img.resize((640, 480)), "conversations": [
            {"from": "human", "value": f"<image>\nwhat is in the region {mentions} ?"},
            {"from": "gpt", "value": "a red cat is left of a blue dog"}]})
    return out


def timed(fn, device: torch.device, steps: int) -> float:
    """Median seconds of ``fn()`` over ``steps`` runs after one warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def check(size: str, steps: int) -> dict:
    from pvit.flops import StepFlops, peak_flops
    from pvit.model import batch_to
    from pvit.slots import set_trainable

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = SIZES[size]
    model, collator = build(size, device)
    set_trainable(model, ["projector", "region_projector", "llm", "bbox_embed"])  # PVIT's stage 2
    model.train()
    batch = batch_to(collator(samples(spec["batch"], spec["regions"])), device)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16)

    def full_step():
        with bf16:
            loss = model(batch).loss
        loss.float().backward()
        model.zero_grad(set_to_none=True)

    def llm_step():  # the same LLM on the same ids, placeholders embedded as the tokens they are
        with bf16:
            loss = model.llm(inputs_embeds=model.llm.embed(ids), attention_mask=mask, labels=labels).loss
        loss.float().backward()
        model.zero_grad(set_to_none=True)

    def regions(k: int):
        rin = batch["region_inputs"]
        boxes = torch.tensor([[0.1, 0.1, 0.6, 0.6]], device=device).repeat(k, 1)  # (k, 4)
        per_image = [boxes for _ in range(rin.pixels.shape[0])]
        return lambda: _region_forward(model, rin, per_image)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    counter = StepFlops()
    counter.start()
    full_step()
    flops = counter.stop()
    t_full = timed(full_step, device, steps)
    t_llm = timed(llm_step, device, steps)
    t_reg_many = timed(regions(spec["regions"]), device, steps)
    t_reg_one = timed(regions(1), device, steps)
    peak = peak_flops(device, torch.bfloat16)
    tokens = int(mask.sum())
    memory = (torch.cuda.max_memory_allocated() if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "size": size, "device": str(device), "device_name": peak["key"].split("|")[0],
        "torch": torch.__version__, "batch": spec["batch"], "regions_per_image": spec["regions"],
        "llm_layers": model.llm.model.config.num_hidden_layers, "sequence_length": int(ids.shape[1]),
        "tokens_per_step": tokens, "step_seconds": t_full, "tokens_per_s": tokens / t_full,
        "flops_per_step": flops, "flops_per_s": flops / t_full, "peak_flops_per_s": peak["flops"],
        "mfu": flops / t_full / peak["flops"], "peak_memory_bytes": int(memory),
        "memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process max RSS",
        "llm_step_seconds": t_llm, "step_over_llm_step": t_full / t_llm,
        "region_encoder_seconds": {"1": t_reg_one, str(spec["regions"]): t_reg_many},
        "regions_over_one_region": t_reg_many / t_reg_one,
    }


def _region_forward(model, rin, boxes):
    from pvit.interfaces import Regions

    with torch.no_grad(), torch.autocast(rin.pixels.device.type, dtype=torch.bfloat16):
        return model.region_encoder(rin, Regions.from_per_image(boxes).to(rin.pixels.device))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="paper" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median)")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = ap.parse_args(argv)
    res = check(args.size, args.steps)
    from pvit.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(res, indent=2))
    print(f"gpu check ({res['size']} shapes on {res['device_name']}, torch {res['torch']}):")
    print(f"  step: {res['step_seconds'] * 1e3:.1f} ms for {res['tokens_per_step']} tokens -> "
          f"{res['tokens_per_s']:.0f} tokens/s")
    print(f"  {res['flops_per_step'] / 1e12:.3f} TFLOP/step, {res['flops_per_s'] / 1e12:.3f} TFLOP/s, MFU "
          f"{100 * res['mfu']:.1f}% of a measured bf16 matmul peak of {res['peak_flops_per_s'] / 1e12:.2f} TFLOP/s")
    print(f"  peak memory ({res['memory_kind']}): {res['peak_memory_bytes'] / 2**30:.2f} GiB")
    print(f"  whole step / LLM-only step: {res['step_over_llm_step']:.2f}x; region encoder "
          f"{res['regions_per_image']} regions / 1 region per image: {res['regions_over_one_region']:.2f}x")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
