"""Splice overhead: a PVIT forward's embedding splice vs the plain LLM forward at the same sequence length.

Both sides run the same LLM on the same token ids; the PVIT side also overwrites the image and region
placeholder embeddings with (precomputed) projected features through ``PVITModel.embed_inputs``'s masked
assignments and count checks. Encoders are excluded: this measures what the splice adds. Prints the ratio for a
tiny and a mid-size config (target: at most 1.05x).

    python benchmarks/bench_splice.py [--repeats 10] [--backward]
"""

from __future__ import annotations

import argparse
import time

import torch

from pvit.interfaces import RegionInputs
from pvit.model import PVITModel


class _Stub(torch.nn.Module):
    """Returns fixed features (so only the splice is measured)."""

    def __init__(self, feats, **attrs):
        super().__init__()
        self.feats = feats
        for k, v in attrs.items():
            setattr(self, k, v)

    def forward(self, *args, **kwargs):
        return self.feats


def build(hidden, layers, heads, seq, batch, n_img, n_reg):
    import pvit

    words = [f"w{i}" for i in range(200)]
    llm = pvit.build("llm", "hf-causal-lm", config={
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": heads, "max_position_embeddings": seq + 8},
        tokenizer={"words": words})
    img_feats = torch.randn(batch, n_img, hidden)  # (B, N, D) already projected
    reg_feats = torch.randn(batch * n_reg, 1, hidden)  # (R, 1, D)
    image = _Stub(img_feats, num_tokens=n_img, out_dim=hidden, image_size=(224, 224), transform=None)
    region = _Stub(reg_feats, tokens_per_region=1, out_dim=hidden, special_tokens=["<Region>", "</Region>"],
                   image_layers=[], uses_own_pixels=False)
    model = PVITModel(llm, image, region, torch.nn.Identity(), torch.nn.Identity())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (batch, seq), generator=g)  # (B, T)
    ids[:, 1:1 + n_img] = model.image_patch_id
    for r in range(n_reg):
        ids[:, 10 + n_img + 7 * r] = model.region_patch_id
    batch_d = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": None,
               "pixels": torch.zeros(batch, 3, 2, 2), "image_sample": torch.arange(batch),
               "boxes": [torch.rand(n_reg, 4) for _ in range(batch)], "n_regions": torch.full((batch,), n_reg),
               "region_inputs": RegionInputs(), "ids": [str(i) for i in range(batch)]}
    return model, batch_d


def time_pair(model, batch, repeats, backward):
    llm = model.llm

    def plain():
        out = llm(inputs_embeds=llm.embed(batch["input_ids"]), attention_mask=batch["attention_mask"])
        if backward:
            out.logits.float().mean().backward()

    def spliced():
        out = llm(inputs_embeds=model.embed_inputs(batch), attention_mask=batch["attention_mask"])
        if backward:
            out.logits.float().mean().backward()

    best = {plain: [], spliced: []}
    ctx = torch.enable_grad() if backward else torch.inference_mode()
    with ctx:
        plain(), spliced()
        for _ in range(repeats):
            for f in (plain, spliced):
                t = time.perf_counter()
                f()
                best[f].append(time.perf_counter() - t)
    return min(best[plain]), min(best[spliced])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--backward", action="store_true", help="time forward + backward")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {'fwd+bwd' if args.backward else 'fwd'}")
    configs = {
        "tiny (hidden 128, 4 layers, seq 128, batch 32, 64 image + 3 region tokens)": (128, 4, 4, 128, 32, 64, 3),
        "mid (hidden 1024, 8 layers, seq 512, batch 4, 256 image + 8 region tokens)": (1024, 8, 16, 512, 4, 256, 8),
    }
    for name, cfg in configs.items():
        model, batch = build(*cfg)
        p, s = time_pair(model, batch, args.repeats, args.backward)
        print(f"{name}: plain {p * 1e3:.1f} ms, with splice {s * 1e3:.1f} ms, ratio {s / p:.3f}x (target <= 1.05x)")


if __name__ == "__main__":
    main()
