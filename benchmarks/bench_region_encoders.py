"""Region-encoder throughput: regions/s, images/s, and the marginal cost of 16 vs 1 region per image.

Each encoder contributes a list of `Case`s (one per scale) in `CASES`; a case builds the encoder and a batch of
its inputs, and the same timing loop measures every case. To add an encoder, write `<name>_cases()` and add it
to `CASES`.

    python benchmarks/bench_region_encoders.py                       # every encoder, every scale
    python benchmarks/bench_region_encoders.py --encoders regionclip --scales tiny --repeats 5
    python benchmarks/bench_region_encoders.py --scales paper --device cuda
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

#: Regions per image compared for the marginal cost (PVIT samples carry a few; 16 is a busy one).
REGION_COUNTS = (1, 16)


@dataclass
class Case:
    """One encoder at one scale.

    Attributes:
        encoder: registry name of the region encoder.
        scale: "tiny" (CPU test shapes) or "paper" (the paper's shapes, random weights).
        description: what the shapes are, printed with the results.
        setup: () -> (encoder module, inputs: RegionInputs for ``images`` images, images). Called once.
    """

    encoder: str
    scale: str
    description: str
    setup: Callable[[], tuple]


def random_boxes(n_images: int, per_image: int, seed: int = 0) -> list[torch.Tensor]:
    """``per_image`` random normalised xyxy boxes (side 0.1..0.9 of the image) for each image: [(R_b, 4)]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_images):
        wh = rng.uniform(0.1, 0.9, size=(per_image, 2))
        xy = rng.uniform(0.0, 1.0, size=(per_image, 2)) * (1.0 - wh)
        out.append(torch.tensor(np.concatenate([xy, xy + wh], axis=1), dtype=torch.float32))  # (R_b, 4)
    return out


def random_pil(w: int, h: int, seed: int = 0):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------ regionclip


def _regionclip_setup(model, image_wh: tuple[int, int], n_images: int, **options) -> Callable[[], tuple]:
    def setup():
        import pvit

        enc = pvit.build("region_encoder", "regionclip", model=model, seed=0, **options)
        images = [random_pil(*image_wh, seed=i) for i in range(n_images)]
        t = time.perf_counter()
        prepared = [enc.prepare(im) for im in images]
        prep_ms = (time.perf_counter() - t) * 1e3 / n_images
        inputs = enc.collate(prepared)
        h, w = inputs.pixels.shape[-2:]
        return enc, inputs, n_images, f"input {w}x{h}, prepare {prep_ms:.1f} ms/image"

    return setup


def regionclip_cases() -> list[Case]:
    return [
        Case("regionclip", "tiny", "tiny ModifiedResNet (64 px CLIP res), 8 images 96x64 -> 96x64, RoI 4x4",
             _regionclip_setup("tiny", (96, 64), 8, min_size=64, max_size=128)),
        Case("regionclip", "paper", "RN50x4 (random weights), 1 image 640x480 -> 1067x800, RoI 18x18",
             _regionclip_setup("RN50x4", (640, 480), 1)),
    ]


# ------------------------------------------------------------------------------------------------ vit-roi

TINY_CLIP = {"image_size": 64, "patch_size": 8, "hidden_size": 64, "intermediate_size": 256,
             "num_hidden_layers": 2, "num_attention_heads": 2}
PAPER_CLIP = {"image_size": 224, "patch_size": 14, "hidden_size": 1024, "intermediate_size": 4096,
              "num_hidden_layers": 24, "num_attention_heads": 16}


def _image_encoder(config):
    import pvit

    return pvit.build("image_encoder", "hf-clip", config=config, select_layer=-2)


def _vit_roi_setup(config, n_images: int, **options) -> Callable[[], tuple]:
    def setup():
        import pvit
        from pvit.interfaces import RegionInputs

        img_enc = _image_encoder(config)
        enc = pvit.build("region_encoder", "vit-roi", image_encoder=img_enc, **options)
        pixels = torch.stack([img_enc.transform(random_pil(320, 240, seed=i)) for i in range(n_images)])
        with torch.inference_mode():
            _, maps = img_enc.forward_with_maps(pixels, enc.image_layers)
        inputs = RegionInputs(image_maps=maps, image_size=tuple(img_enc.image_size))
        return enc, inputs, n_images, f"maps {tuple(maps[0].shape)} x {len(maps)} layer(s)"

    return setup


def vit_roi_cases() -> list[Case]:
    return [
        Case("vit-roi", "tiny", "light, tiny CLIP ViT (64 px, 8x8 grid, layer -2), 8 images",
             _vit_roi_setup(TINY_CLIP, 8, variant="light", layers=[-2], output_size=2)),
        Case("vit-roi", "paper", "light, CLIP ViT-L/14 shapes (random weights, 16x16 grid, layer -2), 2 images",
             _vit_roi_setup(PAPER_CLIP, 2, variant="light", layers=[-2], output_size=2)),
    ]


def vit_roi_backbone_overhead(config, n_images: int, regions: int, repeats: int) -> float:
    """time(image encoder pass with maps + vit-roi on ``regions`` boxes per image) / time(image encoder alone)."""
    import pvit

    img_enc = _image_encoder(config)
    enc = pvit.build("region_encoder", "vit-roi", image_encoder=img_enc, variant="light", layers=[-2], output_size=2)
    pixels = torch.stack([img_enc.transform(random_pil(320, 240, seed=i)) for i in range(n_images)])
    from pvit.interfaces import RegionInputs, Regions

    boxes = Regions.from_per_image(random_boxes(n_images, regions))

    def alone():
        img_enc(pixels)

    def with_regions():
        tokens, maps = img_enc.forward_with_maps(pixels, enc.image_layers)
        enc(RegionInputs(image_maps=maps, image_size=tuple(img_enc.image_size)), boxes)

    best = {alone: [], with_regions: []}
    with torch.inference_mode():
        alone(), with_regions()
        for _ in range(repeats):
            for f in best:
                t = time.perf_counter()
                f()
                best[f].append(time.perf_counter() - t)
    return min(best[with_regions]) / min(best[alone])


# ------------------------------------------------------------------------------------------------ text-coords


def _text_coords_setup() -> Callable[[], tuple]:
    def setup():
        import pvit
        from pvit.interfaces import RegionInputs

        return pvit.build("region_encoder", "text-coords"), RegionInputs(), 8, "no features (K = 0): text only"

    return setup


def text_coords_cases() -> list[Case]:
    return [Case("text-coords", "tiny", "coordinates as text, 8 images", _text_coords_setup())]


#: encoder name -> its cases.
CASES: dict[str, Callable[[], list[Case]]] = {
    "regionclip": regionclip_cases,
    "vit-roi": vit_roi_cases,
    "text-coords": text_coords_cases,
}


# ------------------------------------------------------------------------------------------------ timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_forwards(enc, inputs, box_sets: dict, repeats: int, device: str) -> dict:
    """Best-of-``repeats`` seconds of ``enc(inputs, boxes)`` per entry of ``box_sets``, after one warm-up each.

    The entries are timed in turn within each repeat, so a load change on a shared machine hits all alike, and
    the minimum (as timeit reports) is the least disturbed by other processes.
    """
    times = {k: [] for k in box_sets}
    with torch.inference_mode():
        for boxes in box_sets.values():
            enc(inputs, boxes)
        for _ in range(repeats):
            for k, boxes in box_sets.items():
                _sync(device)
                t = time.perf_counter()
                enc(inputs, boxes)
                _sync(device)
                times[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in times.items()}


def run_case(case: Case, repeats: int, device: str) -> dict:
    enc, inputs, n_images, shape_note = case.setup()
    enc, inputs = enc.to(device), inputs.to(device)
    print(f"\n== {case.encoder} [{case.scale}] on {device}: {case.description}; {shape_note}")
    print(f"{'regions/img':>12} {'batch ms':>10} {'regions/s':>10} {'images/s':>9}")
    from pvit.interfaces import Regions

    box_sets = {k: Regions.from_per_image(random_boxes(n_images, k)).to(device) for k in REGION_COUNTS}
    secs = time_forwards(enc, inputs, box_sets, repeats, device)
    for k, s in secs.items():
        print(f"{k:>12} {s * 1e3:>10.1f} {k * n_images / s:>10.1f} {n_images / s:>9.2f}")
    ratio = secs[REGION_COUNTS[-1]] / secs[REGION_COUNTS[0]]
    print(f"marginal cost time({REGION_COUNTS[-1]} regions/img) / time({REGION_COUNTS[0]} region/img) = {ratio:.2f}x")
    return {"encoder": case.encoder, "scale": case.scale, "device": device, "seconds": secs, "ratio": ratio}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", default=",".join(CASES), help=f"comma list from: {', '.join(CASES)}")
    ap.add_argument("--scales", default="tiny,paper", help="comma list from: tiny, paper")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}")
    scales = set(args.scales.split(","))
    results = []
    for name in args.encoders.split(","):
        if name not in CASES:
            raise SystemExit(f"unknown encoder {name!r}; benchmarked: {', '.join(CASES)}")
        for case in CASES[name]():
            if case.scale in scales:
                results.append(run_case(case, args.repeats, args.device))
    if "vit-roi" in args.encoders.split(",") and args.device == "cpu":
        for scale, cfg, n in (("tiny", TINY_CLIP, 8), ("paper", PAPER_CLIP, 2)):
            if scale in scales:
                r = vit_roi_backbone_overhead(cfg, n, 8, args.repeats)
                print(f"\nvit-roi [{scale}]: (image encoder + vit-roi at 8 regions/img) / (image encoder alone) = "
                      f"{r:.3f}x (target <= 1.1x: no second backbone pass)")
    return results


if __name__ == "__main__":
    main()
