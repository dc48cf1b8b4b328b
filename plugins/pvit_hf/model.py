"""``HFCausalLM``: a Hugging Face causal LM plus tokenizer behind pvit's LanguageModel interface."""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from pvit.errors import CheckpointError, ComponentOptionError, MissingWeightsError
from pvit.runtime import is_planning, offline

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BASE_WORDS = ["user", "assistant", "system", ":", ",", ".", "?", "!", "'", "-", "\n"]
SPECIALS = {"unk_token": "<unk>", "pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


def build_word_tokenizer(words: Sequence[str]):
    """A word-level tokenizer (lower-cased, split on whitespace and punctuation) over ``words``, built offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in list(SPECIALS.values()) + BASE_WORDS + sorted({w.lower() for w in words}):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIALS["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[^\w\s]"), behavior="isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)
    fast.add_special_tokens({"additional_special_tokens": []})
    return fast


class HFCausalLM(nn.Module):
    """Wraps ``AutoModelForCausalLM`` and its tokenizer (see the ``hf-causal-lm`` factory for options)."""

    def __init__(
        self,
        path: str | None = None,
        config: dict | None = None,
        tokenizer: str | dict | None = None,
        dtype: str = "float32",
        attn_implementation: str | None = "sdpa",
        seed: int | None = 0,
        gradient_checkpointing: bool = False,
        lora: dict | None = None,
        quantization: str | None = None,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM

        if path is None and config is None:
            raise ComponentOptionError("hf-causal-lm needs option 'path' (local dir or hub id) or 'config' (random init)")
        if dtype not in _DTYPES:
            raise ComponentOptionError(f"hf-causal-lm: dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
        self.path = path
        torch_dtype = _DTYPES[dtype]
        planning = is_planning()
        have_weights = path is not None and (os.path.isdir(path) or not (offline() or planning))
        if path is not None and not have_weights and not planning:
            raise MissingWeightsError(
                f"hf-causal-lm: weights {path!r} are not a local directory and the hub is offline "
                "(HF_HUB_OFFLINE=1); download them, or point 'path' at a local copy"
            )

        self.tokenizer = self._load_tokenizer(tokenizer if tokenizer is not None else path, planning)

        if quantization is not None:
            from pvit_hf.lora import preflight

            problems = preflight({"lora": lora, "quantization": quantization, "path": path}, "model.llm")
            if problems:
                raise ComponentOptionError("; ".join(problems))
        self.quantization = None if planning else quantization
        if have_weights and not planning:
            extra = {}
            if self.quantization is not None:
                from pvit_hf.lora import quantization_config

                local = int(os.environ.get("LOCAL_RANK", "0"))
                extra = {"quantization_config": quantization_config(quantization), "device_map": {"": local}}
            try:
                self.model = AutoModelForCausalLM.from_pretrained(
                    path, dtype=torch_dtype, attn_implementation=attn_implementation, local_files_only=offline(),
                    **extra,
                )
            except OSError as e:
                raise CheckpointError(f"hf-causal-lm: could not load {path!r}: {e}") from None
        else:
            if config is None:
                if not planning:
                    raise ComponentOptionError("hf-causal-lm: option 'config' is needed for a random-init model")
                cfg = AutoConfig.from_pretrained(path, local_files_only=True)
            else:
                config = dict(config)
                if self.tokenizer is not None and "vocab_size" not in config:
                    config["vocab_size"] = len(self.tokenizer)  # a random-init model sized to its tokenizer
                cfg = self._config(config)
            if attn_implementation is not None:
                cfg._attn_implementation = attn_implementation
            with torch.random.fork_rng(enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                self.model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype)
        if self.tokenizer is not None:
            n = len(self.tokenizer)
            if n > self.model.get_input_embeddings().num_embeddings:
                self.model.resize_token_embeddings(n, mean_resizing=False)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.hidden_size = int(self.model.get_input_embeddings().embedding_dim)
        self.lora = dict(lora) if lora is not None else None
        if self.lora is not None:
            from pvit_hf.lora import inject

            with torch.random.fork_rng(enabled=seed is not None):  # adapter A matrices: seeded like the weights
                if seed is not None:
                    torch.manual_seed(seed)
                inject(self.model, self.lora, quantized=self.quantization is not None,
                       gradient_checkpointing=gradient_checkpointing)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"lora": adapter parameters}`` when the model has LoRA adapters: the slot ``llm.lora``."""
        if self.lora is None:
            return {}
        from pvit_hf.lora import adapter_parameters

        return {"lora": adapter_parameters(self.model)}

    def merge_adapters(self) -> int:
        """Fold the LoRA adapters into the base weights in place, leaving a plain transformers model (the same
        outputs up to rounding); returns the number of merged layers (0 without adapters). A 4-bit base refuses."""
        if self.lora is None:
            return 0
        from pvit_hf.lora import merge

        n = merge(self.model)
        self.lora = None
        return n

    @staticmethod
    def _config(config: dict):
        from transformers import AutoConfig

        config = dict(config)
        if "model_type" not in config:
            raise ComponentOptionError(
                "hf-causal-lm: option 'config' needs a 'model_type' (e.g. llama, qwen2, gpt2) plus that config's fields"
            )
        model_type = config.pop("model_type")
        if config.get("trust_remote_code"):
            raise ComponentOptionError("hf-causal-lm: trust_remote_code is not allowed")
        try:
            return AutoConfig.for_model(model_type, **config)
        except ValueError as e:
            raise ComponentOptionError(f"hf-causal-lm: config: {e}") from None

    @staticmethod
    def _load_tokenizer(spec: Any, planning: bool):
        from transformers import AutoTokenizer

        if spec is None:
            raise ComponentOptionError("hf-causal-lm: option 'tokenizer' is needed with a 'config'-only model")
        if isinstance(spec, dict):
            unknown = set(spec) - {"words", "words_from"}
            if unknown:
                raise ComponentOptionError(
                    f"hf-causal-lm: tokenizer has unknown keys {sorted(unknown)}; accepted: words, words_from"
                )
            words = list(spec.get("words") or [])
            src = spec.get("words_from")
            if src:
                import pvit

                ds = pvit.build("dataset", src["name"], where="model.llm.options.tokenizer.words_from",
                                **dict(src.get("options") or {}))
                words += list(ds.vocabulary())
            return build_word_tokenizer(words)
        if planning and not os.path.isdir(str(spec)):
            return None
        try:
            tok = AutoTokenizer.from_pretrained(spec, local_files_only=offline() or planning)
        except (OSError, ValueError) as e:
            raise MissingWeightsError(f"hf-causal-lm: could not load tokenizer {spec!r}: {e}") from None
        if tok.pad_token is None:
            tok.pad_token = tok.unk_token or tok.eos_token
        return tok

    def add_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Add ``tokens`` as atomic special tokens; new embedding rows (input and output) start at the mean
        of the existing rows. Returns the ids of the tokens that were new."""
        if self.tokenizer is None:  # planning without a tokenizer: grow the embeddings by the count only
            emb = self.model.get_input_embeddings()
            self.model.resize_token_embeddings(emb.num_embeddings + len(tokens), mean_resizing=False)
            return []
        vocab = self.tokenizer.get_vocab()
        new = [t for t in dict.fromkeys(tokens) if t not in vocab]
        if not new:
            return []
        old_rows = self.model.get_input_embeddings().num_embeddings
        old_len = len(self.tokenizer)
        self.tokenizer.add_tokens(new, special_tokens=True)
        ids = self.tokenizer.convert_tokens_to_ids(new)
        if len(self.tokenizer) > old_rows:
            self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        with torch.no_grad():
            n_old = min(old_len, old_rows)
            index = torch.tensor(ids)
            inp = self.model.get_input_embeddings().weight
            inp[index] = inp[:n_old].mean(0, keepdim=True).to(inp.dtype)
            out = self.model.get_output_embeddings()
            if out is not None and out.weight is not inp:
                out.weight[index] = out.weight[:n_old].mean(0, keepdim=True)
                if getattr(out, "bias", None) is not None:
                    out.bias[index] = out.bias[:n_old].mean()
        return list(ids)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, D) input embeddings."""
        return self.model.get_input_embeddings()(input_ids)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels=None, **kwargs):
        """Run the LM on embeddings (B, T, D); returns the transformers output (``loss``, ``logits``)."""
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)
