"""Conversation templates: turn a conversation into text segments, each marked as trained-on or not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pvit.errors import DataError, RecipeError

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered conversation. ``target``: its tokens get labels (assistant text);
    ``eos``: an end-of-sequence token follows the piece (and is a target when ``target``)."""

    text: str
    target: bool = False
    eos: bool = False


class Template:
    """Renders turns ``[(role, text)]`` (role ``user``/``assistant``) into segments."""

    name = "base"

    def render(self, turns: list[tuple[str, str]], add_generation_prompt: bool = False) -> list[Segment]:
        raise NotImplementedError


class RoleTemplate(Template):
    """``{system}{sep}USER: q ASSISTANT: a</s>USER: ...`` (Vicuna v1.1 style, as LLaVA/PVIT use)."""

    def __init__(self, name: str, system: str = "", user: str = "USER", assistant: str = "ASSISTANT", sep: str = " "):
        self.name, self.system, self.user, self.assistant, self.sep = name, system, user, assistant, sep

    def render(self, turns, add_generation_prompt=False):
        segs: list[Segment] = []
        prefix = self.system + self.sep if self.system else ""
        for role, text in turns:
            if role == "user":
                segs.append(Segment(f"{prefix}{self.user}: {text}{self.sep}{self.assistant}:"))
                prefix = ""
            else:
                segs.append(Segment(f" {text}", target=True, eos=True))
        if turns and turns[-1][0] == "assistant" and add_generation_prompt:
            raise DataError("a generation prompt must end with a user turn")
        return segs


class ChatTemplate(Template):
    """The tokenizer's own chat template (``tokenizer.apply_chat_template``), split into segments by
    rendering growing prefixes of the conversation."""

    name = "chat"

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise RecipeError("model.template: 'chat' needs a tokenizer with a chat_template")
        self.tok = tokenizer

    def _text(self, msgs, gen):
        return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    def render(self, turns, add_generation_prompt=False):
        msgs, segs, done = [], [], ""
        for role, text in turns:
            msgs.append({"role": role, "content": text})
            if role == "user":
                full = self._text(msgs, True)
                segs.append(Segment(full[len(done):]))
            else:
                full = self._text(msgs, False)
                segs.append(Segment(full[len(done):], target=True))
            done = full
        return segs


TEMPLATES = {
    "vicuna_v1_1": lambda tok: RoleTemplate("vicuna_v1_1", system=VICUNA_SYSTEM),
    "plain": lambda tok: RoleTemplate("plain"),
    "chat": ChatTemplate,
}


def get_template(name: str, tokenizer: Any) -> Template:
    """``auto``: the tokenizer's chat template when it has one, otherwise ``vicuna_v1_1``."""
    if name == "auto":
        name = "chat" if getattr(tokenizer, "chat_template", None) else "vicuna_v1_1"
    if name not in TEMPLATES:
        raise RecipeError(f"model.template: unknown template {name!r}; known: auto, {', '.join(TEMPLATES)}")
    return TEMPLATES[name](tokenizer)
