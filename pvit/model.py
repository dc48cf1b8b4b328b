"""PVITModel: composes encoders, projectors and an LLM, and splices projected features into the token stream."""

from __future__ import annotations


import torch
from torch import nn

from pvit.errors import SpliceError
from pvit.interfaces import IMAGE_PATCH_TOKEN, REGION_PATCH_TOKEN, RegionInputs, Regions
from pvit.objectives import objective_loss


class PVITModel(nn.Module):
    """Image encoder + region encoder + projectors + LLM.

    ``forward(batch)`` takes a batch from [Collator][pvit.collate.Collator] and returns the LM output
    (with ``loss`` when the batch has labels). Projected image features replace the ``<im_patch>``
    placeholders and projected region features (one row per box of the batch's
    [Regions][pvit.interfaces.Regions], plus the optional box-position embedding) replace the
    ``<region_patch>`` placeholders, each with one vectorised masked assignment after a count check.
    """

    def __init__(self, llm, image_encoder=None, region_encoder=None, projector=None, region_projector=None,
                 bbox_embed: bool = False):
        super().__init__()
        self.llm = llm
        self.image_encoder = image_encoder
        self.region_encoder = region_encoder
        self.projector = projector
        self.region_projector = region_projector
        tokens: list[str] = []
        if image_encoder is not None:
            tokens.append(IMAGE_PATCH_TOKEN)
        k = self.tokens_per_region
        if k > 0:
            tokens.append(REGION_PATCH_TOKEN)
        if region_encoder is not None:
            tokens += list(region_encoder.special_tokens)
        self.new_token_ids: list[int] = llm.add_tokens(tokens)
        tok = llm.tokenizer
        vocab = tok.get_vocab() if tok is not None else {}
        self.image_patch_id = vocab.get(IMAGE_PATCH_TOKEN, -1)
        self.region_patch_id = vocab.get(REGION_PATCH_TOKEN, -1)
        self.feature_cache = None  # a pvit.feature_cache.FeatureCache, set by the run
        self._cached: dict[str, str] = {}  # component -> cache namespace (its weights fingerprint)
        self.objective = "lm"  # what forward's loss is: set per stage by the engine (pvit.objectives)
        self.bbox_embed = None
        if bbox_embed and k > 0:
            # PVIT's stage-2 ``bbox_fc`` (Linear(4, D)); zero-initialised here so that adding it leaves the
            # features of an earlier stage unchanged until it learns.
            self.bbox_embed = nn.Linear(4, llm.hidden_size)
            nn.init.zeros_(self.bbox_embed.weight)
            nn.init.zeros_(self.bbox_embed.bias)

    @property
    def trainable_token_ids(self) -> list[int]:
        """Added tokens whose embedding rows the ``new_token_embeddings`` slot trains: the region tags and
        location tokens; the placeholders are left out, since their embeddings are always overwritten."""
        placeholders = {self.image_patch_id, self.region_patch_id}
        return [i for i in self.new_token_ids if i not in placeholders]

    @property
    def tokens_per_region(self) -> int:
        return int(self.region_encoder.tokens_per_region) if self.region_encoder is not None else 0

    @property
    def num_image_tokens(self) -> int:
        return int(self.image_encoder.num_tokens) if self.image_encoder is not None else 0

    def cache_frozen(self, components: list[str]) -> list[str]:
        """Cache the outputs of these (frozen) encoders from now on, keyed by their current weights; ``[]``
        stops caching. Returns the components cached (those present, and only with a ``feature_cache``)."""
        from pvit.feature_cache import fingerprint

        names = [c for c in components if c in ("image_encoder", "region_encoder") and getattr(self, c) is not None]
        if self.feature_cache is None:
            names = []
        self._cached = {c: f"{c}:{fingerprint(getattr(self, c))}" for c in names}
        return names

    def _image_tokens(self, pixels: torch.Tensor, layers: list) -> tuple[torch.Tensor, list]:
        """Image encoder tokens (B_i, N, D_v) and the maps of ``layers``, through the cache when frozen."""
        enc = self.image_encoder

        def run(p):
            if layers:
                tokens, maps = enc.forward_with_maps(p, layers)
                return (tokens, *maps)
            return (enc(p),)

        ns = self._cached.get("image_encoder")
        out = self.feature_cache.rows(f"{ns}|layers={layers}", run, pixels) if ns else list(run(pixels))
        return out[0], list(out[1:])

    def _region_inputs(self, rin: RegionInputs, regions: Regions) -> RegionInputs:
        """Adds the region encoder's box-independent ``image_features`` from the cache when it is frozen."""
        ns = self._cached.get("region_encoder")
        fn = getattr(self.region_encoder, "image_features", None)
        if not ns or not callable(fn) or rin.pixels is None or rin.features is not None:
            return rin
        keep = (regions.counts > 0).nonzero().flatten().tolist()
        feats = self.feature_cache.rows(f"{ns}|image_features", lambda p: (fn(p),), rin.pixels, keep)[0]
        return RegionInputs(rin.pixels, rin.sizes, rin.image_maps, rin.image_size, feats)

    # --------------------------------------------------------------------------------------------- forward
    def _check_counts(self, input_ids, token_id, expected, what, ids):
        counts = (input_ids == token_id).sum(1)  # (B,)
        if not torch.equal(counts, expected.to(counts.device)):
            b = int((counts != expected.to(counts.device)).nonzero()[0])
            sid = ids[b] if ids is not None else b
            raise SpliceError(
                f"sample {sid}: {int(counts[b])} {what} placeholder tokens in the text but {int(expected[b])} "
                f"{what} feature vectors; the text and the {what} inputs disagree"
            )

    def embed_inputs(self, batch: dict) -> torch.Tensor:
        """Token embeddings with projected image and region features spliced in: (B, T, D)."""
        input_ids = batch["input_ids"]
        embeds = self.llm.embed(input_ids)  # (B, T, D)
        B = input_ids.shape[0]
        ids = batch.get("ids")
        pixels = batch.get("pixels")
        image_sample = batch.get("image_sample")
        maps: list[torch.Tensor] = []
        if self.image_encoder is not None:
            expected = torch.zeros(B, dtype=torch.long)
            if pixels is not None and len(pixels):
                expected[image_sample.cpu()] = self.num_image_tokens
            self._check_counts(input_ids, self.image_patch_id, expected, "image", ids)
            if pixels is not None and len(pixels):
                layers = list(getattr(self.region_encoder, "image_layers", []) or [])
                tokens, maps = self._image_tokens(pixels, layers)  # (B_i, N, D_v), [(B_i, C, gh, gw)]
                feats = self.projector(tokens)  # (B_i, N, D)
                mask = (input_ids == self.image_patch_id).unsqueeze(-1)  # (B, T, 1)
                embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
        k = self.tokens_per_region
        if k > 0:
            regions: Regions = batch.get("regions") or Regions.empty()
            self._check_counts(input_ids, self.region_patch_id, regions.per_sample(B) * k, "region", ids)
            if len(regions) > 0:
                reg = self.region_features(batch, maps)  # (R, K, D)
                if self.bbox_embed is not None:
                    flat = regions.boxes.to(reg.device).to(reg.dtype)  # (R, 4)
                    reg = reg + self.bbox_embed(flat).unsqueeze(1)  # (R, K, D)
                mask = (input_ids == self.region_patch_id).unsqueeze(-1)  # (B, T, 1)
                embeds = embeds.masked_scatter(mask, reg.to(embeds.dtype))
        return embeds

    def region_features(self, batch: dict, maps: list | None = None) -> torch.Tensor:
        """Projected region features of the batch's regions, (R, K, D), without the box embedding.

        ``maps``: the image encoder's maps of the region encoder's ``image_layers`` when already computed
        (``embed_inputs``); otherwise they are computed here for an encoder that pools them (ViT-RoI).
        """
        regions: Regions = batch["regions"]
        rin: RegionInputs = batch.get("region_inputs") or RegionInputs()
        layers = list(getattr(self.region_encoder, "image_layers", []) or [])
        if maps is None and layers and self.image_encoder is not None and batch.get("pixels") is not None:
            maps = self._image_tokens(batch["pixels"], layers)[1]
        if maps:
            rin = RegionInputs(rin.pixels, rin.sizes, maps, tuple(self.image_encoder.image_size))
        feats = self.region_encoder(self._region_inputs(rin, regions), regions)  # (R, K, D_r)
        return self.region_projector(feats)  # (R, K, D)

    def forward(self, batch: dict):
        """LM output for a collated batch; ``.loss`` is the mean over assistant tokens. Under another
        ``objective`` (a stage's, see [pvit.objectives][]) the output carries that objective's loss."""
        if self.objective != "lm":
            return objective_loss(self, batch)
        embeds = self.embed_inputs(batch)
        return self.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch.get("labels"))

    @torch.no_grad()
    def generate(
        self,
        batch: dict,
        max_new_tokens: int,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop_token_ids: list[int] | None = None,
        seed: int | None = None,
        streamer=None,
        stopping_criteria=None,
    ) -> list[str]:
        """Continue every prompt of a left-padded batch with the KV cache; returns one decoded reply per row.

        Args:
            batch: a [Collator][pvit.collate.Collator] batch built with ``generate=True``: ``input_ids``
                and ``attention_mask`` (B, T), left padded, plus pixels / regions as in ``forward``.
            max_new_tokens: the budget per reply (the evaluator's); rows that end earlier are padded.
            do_sample: sample instead of greedy decoding.
            temperature, top_p: sampling temperature and nucleus mass (used only when ``do_sample``).
            stop_token_ids: token ids that end a reply (default: the tokenizer's EOS); the collator's
                ``stop_token_ids`` adds the template's end-of-turn token.
            seed: seeds sampling (the global RNG state is restored afterwards); None uses the global RNG.
            streamer, stopping_criteria: passed to Hugging Face ``generate`` (token streaming, cancellation).

        Returns:
            B strings: the tokens up to the first stop token, decoded without padding, BOS/EOS or placeholder
            tokens (region and location tokens are kept, so generated boxes can be parsed).
        """
        from transformers import GenerationConfig

        if int(max_new_tokens) < 1:
            raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens!r}")
        if do_sample and not (temperature > 0 and 0 < top_p <= 1):
            raise ValueError(f"generate: sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        tok = self.llm.tokenizer
        stops = [int(i) for i in (stop_token_ids or [tok.eos_token_id]) if i is not None]
        pad = tok.pad_token_id if tok.pad_token_id is not None else (stops[0] if stops else 0)
        options = dict(max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample), num_beams=1, use_cache=True,
                       pad_token_id=pad, eos_token_id=stops or None, bos_token_id=tok.bos_token_id)
        if do_sample:
            options.update(temperature=float(temperature), top_p=float(top_p), top_k=0)
        embeds = self.embed_inputs(batch)  # (B, T, D)
        devices = [embeds.device.index] if embeds.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(int(seed))
            out = self.llm.model.generate(
                inputs_embeds=embeds,
                attention_mask=batch["attention_mask"],
                generation_config=GenerationConfig(**options),
                streamer=streamer,
                stopping_criteria=stopping_criteria,
            )  # (B, new), only the new tokens when generating from embeddings
        drop = {pad, tok.bos_token_id, tok.eos_token_id, self.image_patch_id, self.region_patch_id} | set(stops)
        texts = []
        for row in out.tolist():
            cut = next((j for j, t in enumerate(row) if t in stops), len(row))
            keep = [t for t in row[:cut] if t not in drop]
            texts.append(tok.decode(keep, skip_special_tokens=False).strip())
        return texts


def batch_to(batch: dict, device) -> dict:
    """Move every tensor of a batch (and its Regions and RegionInputs) to ``device``."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, (Regions, RegionInputs)):
            out[k] = v.to(device)
        elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            out[k] = [t.to(device) for t in v]
        else:
            out[k] = v
    return out


