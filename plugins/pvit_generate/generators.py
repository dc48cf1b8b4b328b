"""Generators (the ``generator`` component kind): an OpenAI-compatible chat client, a local Hugging Face causal
LM, and ``template``, a rule-based stand-in that needs no model (for offline runs and tests)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from pvit.errors import ComponentOptionError


@dataclass
class Reply:
    """One completion: its text, finish reason (``stop`` | ``length``) and token counts."""

    text: str
    finish_reason: str | None = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RetryableError(Exception):
    """A failure worth retrying (429, 5xx, timeout, dropped connection); ``retry_after`` in seconds if the server said."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class GenerationError(Exception):
    """A failure not worth retrying (bad request, authentication, unknown model)."""


def _retry_after(headers) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class OpenAICompatible:
    """Chat completions from any OpenAI-compatible server (``openai`` package, its own retries off: pvit retries).

    The API key is read from the environment variable ``api_key_env`` when the generator is built; it is never
    written to outputs or logs (the manifest records the variable's name only).
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 extra_body: dict | None = None):
        import openai

        key = os.environ.get(api_key_env)
        if key is None and base_url is None:
            raise ComponentOptionError(f"generator openai-compatible: environment variable {api_key_env!r} is not "
                                       "set (it holds the API key; set it, or set api_key_env to another variable)")
        self.model, self.base_url, self.extra_body = model, base_url, extra_body or {}
        self.client = openai.OpenAI(api_key=key or "unused", base_url=base_url, max_retries=0)
        self._openai = openai

    def describe(self) -> dict:
        return {"name": "openai-compatible", "model": self.model, "base_url": self.base_url}

    def complete(self, messages, *, max_tokens: int, temperature: float, seed: int, timeout: float) -> Reply:
        o = self._openai
        try:
            r = self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                timeout=timeout, extra_body=self.extra_body or None)
        except o.APIStatusError as e:
            if e.status_code == 429 or e.status_code >= 500:
                raise RetryableError(f"HTTP {e.status_code}", _retry_after(e.response.headers)) from None
            raise GenerationError(f"HTTP {e.status_code}: {str(e)[:200]}") from None
        except (o.APITimeoutError, o.APIConnectionError) as e:
            raise RetryableError(f"{type(e).__name__}: {str(e)[:120]}") from None
        except o.APIResponseValidationError as e:
            raise RetryableError(f"invalid response: {str(e)[:120]}") from None
        if not r.choices:
            raise RetryableError("the response has no choices")
        c = r.choices[0]
        usage = r.usage
        return Reply(c.message.content or "", c.finish_reason,
                     getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)


class HFLocal:
    """Any causal LM through transformers (``model`` is a local folder or a cached hub id; chat template used
    when the tokenizer has one). Calls are serialised: one model answers one request at a time."""

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = model
        self.tok = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()
        self.device, self.lock = device, threading.Lock()

    def describe(self) -> dict:
        return {"name": "hf-local", "model": self.name}

    def _prompt(self, messages) -> str:
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages) + "\n\nASSISTANT: "

    def complete(self, messages, *, max_tokens: int, temperature: float, seed: int, timeout: float) -> Reply:
        import torch

        with self.lock:
            torch.manual_seed(seed)
            ids = self.tok(self._prompt(messages), return_tensors="pt").to(self.device)
            out = self.model.generate(**ids, max_new_tokens=max_tokens, do_sample=temperature > 0,
                                      temperature=temperature if temperature > 0 else None,
                                      pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        hit_eos = len(new) < max_tokens or (self.tok.eos_token_id is not None and int(new[-1]) == self.tok.eos_token_id)
        return Reply(self.tok.decode(new, skip_special_tokens=True), "stop" if hit_eos else "length",
                     int(ids["input_ids"].shape[1]), int(len(new)))


def make_openai_compatible(model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                           extra_body: dict | None = None):
    """OpenAI-compatible chat server: ``model``, ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``; default
    OpenAI's), ``api_key_env`` (the variable holding the key), ``extra_body`` (server-specific fields)."""
    return OpenAICompatible(model, base_url, api_key_env, extra_body)


def make_hf_local(model: str, device: str = "cpu", dtype: str = "auto"):
    """A local causal LM through transformers: ``model`` (folder or cached hub id), ``device``, ``dtype``."""
    return HFLocal(model, device, dtype)


def make_template(fail_every: int = 0):
    """A rule-based stand-in for an LLM, answering from the serialised context (no model, no network).
    ``fail_every`` > 0 makes the replies whose request seed is a multiple of it invent a box (to see validation reject it)."""
    from pvit_generate.template import TemplateGenerator

    return TemplateGenerator(fail_every)
