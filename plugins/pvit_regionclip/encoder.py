"""RegionCLIP region encoder: CLIP ResNet up to layer3, RoIAlign per box, then layer4 + attnpool per RoI."""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn
from torchvision.ops import roi_align

from pvit.errors import ComponentOptionError, InvalidRegionError
from pvit.interfaces import REGION_END, REGION_PATCH_TOKEN, REGION_START, RegionInputs, Regions
from pvit_regionclip.attnpool import mean_query_attnpool
from pvit_regionclip.config import ResNetConfig
from pvit_regionclip.preprocess import collate_images, prepare_image

#: Nominal stride of ``res4`` (layer3 output); RegionCLIP uses 1/16 even where convs floor odd sizes.
RES4_STRIDE = 16


def build_visual(cfg: ResNetConfig, seed: int | None = None) -> nn.Module:
    """A random-init open_clip ModifiedResNet for ``cfg``, with BatchNorm replaced by FrozenBatchNorm2d."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.utils import freeze_batch_norm_2d

    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        visual = ModifiedResNet(
            layers=list(cfg.layers), output_dim=cfg.output_dim, heads=cfg.heads, image_size=cfg.image_size, width=cfg.width
        )
    return freeze_batch_norm_2d(visual)


class RegionCLIPEncoder(nn.Module):
    """PVIT's RegionCLIP prompt encoder (detectron2-free): one ``out_dim`` feature per box.

    Attributes:
        visual: the open_clip ModifiedResNet (FrozenBatchNorm2d).
        tokens_per_region: 1.
        out_dim: attnpool output width (640 for RN50x4).
        roi_size: S, the RoIAlign output side (18 for RN50x4); layer4 halves it to the attnpool grid.
        frozen: when True, parameters never need grad, ``train()`` keeps eval mode, forward runs under no_grad.
    """

    def __init__(self, visual: nn.Module, cfg: ResNetConfig, min_size: int = 800, max_size: int = 1333, frozen: bool = True):
        super().__init__()
        self.visual = visual
        self.cfg = cfg
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.roi_size = cfg.roi_size
        self.frozen = bool(frozen)
        self.tokens_per_region = 1
        self.out_dim = cfg.output_dim
        self.special_tokens = [REGION_START, REGION_END]
        self.image_layers: list[int] = []
        self.uses_own_pixels = True
        rows = visual.attnpool.positional_embedding.shape[0]
        if rows != cfg.pos_emb_rows:
            raise ComponentOptionError(f"regionclip: attnpool has {rows} positional rows, config says {cfg.pos_emb_rows}")
        if self.frozen:
            self.visual.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "RegionCLIPEncoder":
        """Set train mode; a frozen encoder stays in eval mode whatever the parent asks."""
        return super().train(False if self.frozen else mode)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable groups: ``head``, the per-RoI part (layer4 and the attnpool) that sits after the RoIAlign.
        Training only it leaves ``res4`` fixed: no backward pass through the backbone, and its output stays
        cacheable."""
        return {"head": [*self.visual.layer4.parameters(), *self.visual.attnpool.parameters()]}

    def region_text(self, box: Sequence[float]) -> str:
        """``<Region><region_patch></Region>``: one feature slot per mention, whatever the box."""
        return REGION_START + REGION_PATCH_TOKEN + REGION_END

    def prepare(self, image) -> torch.Tensor | None:
        """PIL image -> (3, h, w): ResizeShortestEdge(min_size, max_size) with PIL bilinear, CLIP-normalised."""
        if image is None:
            return None
        return prepare_image(image, self.min_size, self.max_size)

    def collate(self, prepared: list) -> RegionInputs:
        """List of ``prepare`` outputs -> RegionInputs(pixels (B, 3, H, W) zero-padded, sizes (B, 2) = (h, w))."""
        return collate_images(prepared)

    def res4(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 16*width, ~H/16, ~W/16): stem + layer1..layer3 (detectron2's ``res4``)."""
        v = self.visual
        return v.layer3(v.layer2(v.layer1(v.stem(pixels))))

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The box-independent part, per image: (B, 3, H, W) -> res4 (B, C, h, w), what the frozen-feature
        cache keeps (``RegionInputs.features``)."""
        param = self.visual.conv1.weight
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            return self.res4(pixels.to(device=param.device, dtype=param.dtype))

    def roi_features(self, res4: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """res4 (B, C, h, w), rois (R, 5) = (batch_idx, x1, y1, x2, y2) in input pixels -> (R, C, S, S).

        One RoIAlign for all boxes, as RegionCLIP's ROIAlignV2: aligned=True, sampling_ratio=0, scale 1/16,
        computed in fp32 (autocast off) and returned in res4's dtype.
        """
        with torch.autocast(res4.device.type, enabled=False):
            pooled = roi_align(
                res4.float(), rois.float(), (self.roi_size, self.roi_size), 1.0 / RES4_STRIDE, 0, True
            )  # (R, C, S, S)
        return pooled.to(res4.dtype)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """(R, C, S, S) -> (R, out_dim): layer4 then the attnpool, one pass over all RoIs."""
        x = self.visual.layer4(pooled)  # (R, 2C, S/2, S/2)
        return mean_query_attnpool(self.visual.attnpool, x)  # (R, out_dim), = visual.attnpool(x)

    def _rois(self, inputs: RegionInputs, regions: Regions, keep: list[int], device: torch.device) -> torch.Tensor:
        """Normalised boxes of the kept images -> (R, 5) rois in resized-image pixels, batch index into ``keep``."""
        sizes = inputs.sizes.to(device="cpu", dtype=torch.long)  # (B_i, 2) = (h, w)
        empty = [i for i in keep if int(sizes[i].min()) <= 0]
        if empty:
            i = empty[0]
            raise InvalidRegionError(
                f"regionclip: image {i} of the batch has no pixels but {int(regions.counts[i])} boxes"
            )
        slot = torch.full((len(regions.counts),), -1, dtype=torch.long)  # (B_i,) position of each image in keep
        slot[keep] = torch.arange(len(keep))
        image_index = regions.image_index.cpu()  # (R,)
        hw = sizes[image_index].to(device=device, dtype=torch.float32)  # (R, 2)
        scale = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)  # (R, 4) = (w, h, w, h)
        idx = slot[image_index].to(device=device, dtype=torch.float32).unsqueeze(1)  # (R, 1)
        b = regions.boxes.to(device=device, dtype=torch.float32)  # (R, 4)
        return torch.cat([idx, b * scale], dim=1)  # (R, 5)

    def forward(self, inputs: RegionInputs, regions: Regions) -> torch.Tensor:
        """The batch's Regions (boxes xyxy in [0, 1] of the original image) -> (R, 1, out_dim).

        Rows follow ``regions.boxes`` (image order, then box order). Images without boxes are skipped (no
        backbone pass). The output has the weights' dtype (fp32 unless the module was cast), also under autocast.
        """
        if inputs.pixels is None or inputs.sizes is None:
            raise ValueError("regionclip needs RegionInputs.pixels and .sizes from its own prepare/collate")
        n_img = inputs.pixels.shape[0]
        if len(regions.counts) != n_img:
            raise InvalidRegionError(f"regionclip: got regions of {len(regions.counts)} images but the batch has "
                                     f"{n_img} images; give RegionInputs and Regions of the same images")
        param = self.visual.conv1.weight
        keep = [i for i, n in enumerate(regions.counts.tolist()) if n > 0]
        if not keep:
            return param.new_zeros((0, 1, self.out_dim))  # (0, 1, D)
        grad = torch.no_grad() if self.frozen else contextlib.nullcontext()
        with grad:
            rois = self._rois(inputs, regions, keep, param.device)  # (R, 5)
            if inputs.features is not None:  # computed (or cached) already
                res4 = inputs.features if len(keep) == n_img else inputs.features[keep]  # (B', C, h, w)
            else:
                pixels = inputs.pixels if len(keep) == n_img else inputs.pixels[keep]  # (B', 3, H, W)
                res4 = self.res4(pixels.to(device=param.device, dtype=param.dtype))
            feats = self.head(self.roi_features(res4, rois))  # (R, D)
        return feats.to(param.dtype).unsqueeze(1)  # (R, 1, D), in the weights' dtype even under autocast
