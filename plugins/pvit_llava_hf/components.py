"""The three ``llava-hf`` components: one LLaVA checkpoint folder split into pvit's LLM, image encoder and projector."""

from __future__ import annotations

import contextlib
import json
import os

import torch
from torch import nn

from pvit.errors import ComponentOptionError, MissingWeightsError
from pvit.runtime import is_planning
from pvit_hf.model import _DTYPES, HFCausalLM
from pvit_projectors.projector import Projector
from pvit_vision.base import ViTImageEncoder, seeded
from pvit_vision.transform import CLIP_MEAN, CLIP_STD, check_mean_std
from pvit_vision.weights import parse_dtype

from .checkpoint import LLM_KEYS, NAME, VISION_KEYS, feature_layers, load_part, projector_tensors, read_config


class LlavaHFLanguageModel(HFCausalLM):
    """The checkpoint's language model (``language_model`` + ``lm_head``) as an ``AutoModelForCausalLM``, with the
    checkpoint's tokenizer; everything else (added tokens, embedding, forward) is
    [HFCausalLM][pvit_hf.model.HFCausalLM]'s."""

    def __init__(self, path=None, config=None, dtype: str = "float32", attn_implementation: str | None = "sdpa",
                 gradient_checkpointing: bool = False):
        nn.Module.__init__(self)
        from transformers import AutoModelForCausalLM

        where = f"{NAME} llm"
        if dtype not in _DTYPES:
            raise ComponentOptionError(f"{where}: dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
        cfg, folder = read_config(path, config, where)
        planning = is_planning()
        if folder is None and not planning:
            raise MissingWeightsError(f"{where}: {path!r} is not a local llava-hf folder; the language model needs its "
                                      "weights and tokenizer ('config' alone only plans a run)")
        self.path, self.lora, self.quantization = folder or path, None, None
        self.tokenizer = self._load_tokenizer(folder, planning) if folder is not None else None
        text = cfg.text_config
        if planning:
            self.model = AutoModelForCausalLM.from_config(text, dtype=_DTYPES[dtype])
        else:
            extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
            self.model = load_part(AutoModelForCausalLM, folder, text, LLM_KEYS, "language model", where,
                                   dtype=_DTYPES[dtype], **extra)
        if self.tokenizer is not None and len(self.tokenizer) > self.model.get_input_embeddings().num_embeddings:
            self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.hidden_size = int(self.model.get_input_embeddings().embedding_dim)


def _plain(config) -> dict:
    """A sub-config as recipe options (its ``to_dict`` without the version stamp and the folder it came from)."""
    return {k: v for k, v in config.to_dict().items() if k not in ("transformers_version", "_name_or_path")}


def _mean_std(folder: str | None) -> tuple[tuple, tuple]:
    """image_mean / image_std of the checkpoint's image processor (preprocessor_config.json, or the processor
    section of processor_config.json), else CLIP's."""
    for name, section in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        file = os.path.join(folder, name) if folder else ""
        if not os.path.isfile(file):
            continue
        with open(file, encoding="utf-8") as fh:
            data = json.load(fh)
        data = data.get(section, {}) if section else data
        if "image_mean" in data and "image_std" in data:
            return tuple(data["image_mean"]), tuple(data["image_std"])
    return CLIP_MEAN, CLIP_STD


class LlavaHFImageEncoder(ViTImageEncoder):
    """The checkpoint's CLIP vision tower; ``forward`` returns the patch tokens of ``vision_feature_layer``
    (CLS dropped: strategy ``default``), concatenated over the layers when it lists several, as LLaVA does.

    Preprocessing is pvit's: squash-resize to the tower's size (bicubic), then the checkpoint's mean/std; the
    llava-hf processor resizes the short side and centre-crops instead (the same pixels for square images).
    """

    name = NAME

    def __init__(self, path=None, config=None, frozen: bool = True, dtype: str = "float32", mean=None, std=None,
                 seed: int | None = 0):
        from transformers import CLIPVisionModel

        where = f"{NAME} image encoder"
        cfg, folder = read_config(path, config, where)
        torch_dtype = parse_dtype(dtype, where)
        vc = cfg.vision_config
        if folder is not None and not is_planning():
            backbone = load_part(CLIPVisionModel, folder, vc, VISION_KEYS, "vision tower", where, dtype=torch_dtype)
        else:  # a plan (meta device) or a random init that a self-contained export then overwrites
            with seeded(seed):
                backbone = CLIPVisionModel(vc).to(torch_dtype)
        own_mean, own_std = _mean_std(folder)
        mean, std = check_mean_std(own_mean if mean is None else mean, own_std if std is None else std, where)
        self.path = folder or path
        self.feature_layers = feature_layers(cfg)
        grid = int(vc.image_size) // int(vc.patch_size)
        super().__init__(backbone=backbone, out_dim=int(vc.hidden_size) * len(self.feature_layers),
                         grid_size=(grid, grid), image_size=(int(vc.image_size),) * 2,
                         num_layers=int(vc.num_hidden_layers), num_prefix_tokens=1,
                         select_layer=self.feature_layers[-1], mean=mean, std=std, frozen=frozen)
        for layer in self.feature_layers:
            self.layer_index(layer, option="vision_feature_layer")

    @property
    def export_options(self) -> dict:
        """Options that rebuild this encoder without the checkpoint (a self-contained export loads the weights)."""
        layer = self.feature_layers[0] if len(self.feature_layers) == 1 else list(self.feature_layers)
        config = {"vision_config": _plain(self.backbone.config), "vision_feature_layer": layer,
                  "vision_feature_select_strategy": "default"}
        return {"config": config, "mean": list(self.mean), "std": list(self.std)}

    def _hidden_states(self, pixels: torch.Tensor, indices: list[int]) -> dict[int, torch.Tensor]:
        hs = self.backbone(pixel_values=pixels, output_hidden_states=True).hidden_states  # L + 1 x (B, 1 + N, D)
        return {i: hs[i] for i in indices}

    def forward_with_maps(self, pixels: torch.Tensor, layers) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """As [ViTImageEncoder][pvit_vision.base.ViTImageEncoder]; with several feature layers the tokens are
        their concatenation (B, N, k * D), and feature maps cannot be asked for."""
        if len(self.feature_layers) == 1:
            return super().forward_with_maps(pixels, layers)
        if layers:
            raise ComponentOptionError(
                f"{NAME} image encoder: the checkpoint concatenates {len(self.feature_layers)} feature layers "
                f"{self.feature_layers}; region encoders that pool the image encoder's maps need a single layer"
            )
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, *self.image_size):
            raise ValueError(f"{NAME} image encoder: expected pixels (B, 3, {self.image_size[0]}, "
                             f"{self.image_size[1]}), got {tuple(pixels.shape)}; use this encoder's transform")
        idx = [self.layer_index(layer) for layer in self.feature_layers]
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            states = self._hidden_states(pixels.to(self._param_dtype()), sorted(set(idx)))
            return torch.cat([self._patch_tokens(states[i]) for i in idx], dim=-1), []  # (B, N, k * D)


def build_projector(in_dim: int, out_dim: int, path=None, config=None) -> Projector:
    """``linear_1 -> act -> linear_2`` (LLaVA's ``multi_modal_projector``) with the checkpoint's weights."""
    from transformers.activations import ACT2FN

    where = f"{NAME} projector"
    cfg, folder = read_config(path, config, where)
    want_in = int(cfg.vision_config.hidden_size) * len(feature_layers(cfg))
    want_out = int(cfg.text_config.hidden_size)
    if (in_dim, out_dim) != (want_in, want_out):
        raise ComponentOptionError(
            f"{where}: the checkpoint's projector maps {want_in} -> {want_out}, but pvit wired {in_dim} -> {out_dim} "
            "from the image encoder and the LLM; use the llava-hf image encoder and LLM of the same checkpoint"
        )
    act, bias = str(cfg.projector_hidden_act), bool(cfg.multimodal_projector_bias)
    if act not in ACT2FN:
        raise ComponentOptionError(f"{where}: projector_hidden_act {act!r} is unknown to transformers")
    body = nn.Sequential(nn.Linear(in_dim, out_dim, bias=bias), ACT2FN[act], nn.Linear(out_dim, out_dim, bias=bias))
    proj = Projector(NAME, in_dim, out_dim, body)
    proj.act_name = act  # the LLaVA activation name, for exports
    proj.export_options = {"config": {  # rebuilds it without the checkpoint (a self-contained export)
        **{k: _plain(getattr(cfg, k)) for k in ("vision_config", "text_config")},
        "vision_feature_layer": cfg.vision_feature_layer, "projector_hidden_act": act,
        "multimodal_projector_bias": bias}}
    if folder is not None and not is_planning():
        tensors = projector_tensors(folder, where)
        state = {k.replace("linear_1.", "0.").replace("linear_2.", "2."): v for k, v in tensors.items()}
        own = body.state_dict()
        bad = [k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
        if bad or set(state) - set(own):
            from pvit.errors import CheckpointError

            raise CheckpointError(f"{where}: {folder}: projector tensors {sorted(tensors)} do not fit "
                                  f"Linear({in_dim}, {out_dim}) -> Linear({out_dim}, {out_dim}) (bias {bias})")
        body.load_state_dict(state)
    return proj
