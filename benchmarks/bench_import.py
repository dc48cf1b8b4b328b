"""Import time of a llava-hf checkpoint: a random ~1B-parameter LlavaForConditionalGeneration (CLIP ViT-L/14-336
tower, a 20-layer LLaMA of width 1536) saved in bf16, then loaded by pvit's llava-hf components.

Each measurement (and the writing) runs in a fresh process (no warm caches of the process; the OS page cache is
warm after the first read, as it is on a machine that has just downloaded the weights):

- ``transformers``: ``LlavaForConditionalGeneration.from_pretrained`` (the reference);
- ``pvit compose``: ``pvit.compose.build_model`` of the three llava-hf components (what ``pvit run`` does);
- ``pvit import``: ``pvit import llava-hf`` (compose, then write the self-contained pvit folder).

    python benchmarks/bench_import.py                 # writes the checkpoint to a temp dir, prints the table
    python benchmarks/bench_import.py --layers 4      # a smaller LLM (quicker, same code path)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_checkpoint(folder: Path, layers: int) -> int:
    """Save a random bf16 llava-hf checkpoint (with a word-level tokenizer) into ``folder``; returns its parameters."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    sys.path.insert(0, str(ROOT / "plugins"))
    from pvit_hf.model import build_word_tokenizer

    tok = build_word_tokenizer(["what", "is", "this", "image"])
    tok.add_tokens(["<image>"], special_tokens=True)
    vision = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
                              num_hidden_layers=24, num_attention_heads=16, projection_dim=768)
    text = LlamaConfig(hidden_size=1536, intermediate_size=4096, num_hidden_layers=layers, num_attention_heads=12,
                       num_key_value_heads=12, vocab_size=32064, max_position_embeddings=4096)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      image_seq_length=576)
    with torch.device("meta"):
        n = sum(p.numel() for p in LlavaForConditionalGeneration(cfg).parameters())
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).to(torch.bfloat16)  # random init in fp32, kept in bf16
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return n


def _child(kind: str, folder: str, out: str) -> None:
    import resource

    import torch

    t0 = time.perf_counter()
    if kind == "transformers":
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16)
    elif kind == "pvit compose":
        from pvit.compose import build_model
        from pvit_llava_hf.importer import llava_recipe

        model = build_model(llava_recipe(folder, dtype="bfloat16"))
    else:
        from pvit_llava_hf.importer import import_checkpoint

        import_checkpoint(folder, out, dtype="bfloat16", log=lambda s: None)
        model = None
    seconds = time.perf_counter() - t0
    n = sum(p.numel() for p in model.parameters()) if model is not None else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"kind": kind, "seconds": seconds, "parameters": n, "peak_rss_gib": rss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=20, help="LLM layers (20: about 1.0B parameters in all)")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child[0] == "write":
            print(json.dumps({"parameters": write_checkpoint(Path(args.child[1]), int(args.child[2]))}))
        else:
            _child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="pvit-bench-import-") as tmp:
        folder = Path(tmp) / "llava"
        t0 = time.perf_counter()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        # every step in its own process: a child inherits its parent's peak RSS, so the parent stays small
        out = subprocess.run([sys.executable, __file__, "--child", "write", str(folder), str(args.layers)],
                             capture_output=True, text=True, env=env, check=True)
        n = json.loads(out.stdout.strip().splitlines()[-1])["parameters"]
        size = sum(f.stat().st_size for f in folder.iterdir()) / 2**30
        print(f"random llava-hf checkpoint: {n / 1e9:.2f}B parameters, {size:.2f} GiB bf16, written in "
              f"{time.perf_counter() - t0:.0f} s")
        rows = []
        for kind in ("transformers", "pvit compose", "pvit import"):
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(folder), str(Path(tmp) / "pvit")],
                                 capture_output=True, text=True, env=env, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{'step':<14} {'seconds':>8} {'peak RSS (GiB)':>15}")
        for r in rows:
            print(f"{r['kind']:<14} {r['seconds']:>8.1f} {r['peak_rss_gib']:>15.3f}")


if __name__ == "__main__":
    main()
