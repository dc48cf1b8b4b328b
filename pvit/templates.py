"""Conversation templates: turn a conversation into text segments, each marked as trained-on or not.

A template renders turns ``[(role, text)]`` (roles alternate ``user``, ``assistant``, starting with ``user``)
into ONE LIST OF SEGMENTS PER TURN. The collator tokenises each segment on its own and gives labels to the
tokens of ``target`` segments only, so exactly the assistant replies and the end-of-turn token are trained on.

- [RoleTemplate][pvit.templates.RoleTemplate]: named templates written in Python (``vicuna_v1_1``, as
  LLaVA and PVIT train with, and ``plain``).
- [ChatTemplate][pvit.templates.ChatTemplate]: the tokenizer's own jinja ``chat_template``, split into
  segments by rendering the conversation once with marker contents (see the class).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pvit.errors import DataError, RecipeError, did_you_mean
from pvit.interfaces import IMAGE_PATCH_TOKEN, REGION_END, REGION_PATCH_TOKEN, REGION_START

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_OURS = re.compile(r"^<L\d+>$")  # location tokens of text-coords: ours, never an end of turn


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered conversation. ``target``: its tokens get labels (assistant text);
    ``eos``: an end-of-sequence token follows the piece (and is a target when ``target``)."""

    text: str
    target: bool = False
    eos: bool = False


class Template:
    """Renders turns ``[(role, text)]`` (role ``user``/``assistant``) into segments, one list per turn.

    Attributes:
        name: the template's name, recorded in evaluation protocols.
        end_tokens: token strings that end an assistant turn besides the tokenizer's EOS (generation stops
            at them).
    """

    name = "base"
    end_tokens: tuple[str, ...] = ()

    def render(self, turns: list[tuple[str, str]], add_generation_prompt: bool = False) -> list[list[Segment]]:
        """``turns`` -> one list of segments per turn. With ``add_generation_prompt`` the turns end with a
        user turn and its segments end with the assistant header the model continues from."""
        raise NotImplementedError


def _check_turns(turns, add_generation_prompt: bool) -> None:
    for i, (role, _) in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise DataError(f"turn {i} has role {role!r} where {want!r} was expected; turns alternate user, assistant")
    if add_generation_prompt and turns and turns[-1][0] != "user":
        raise DataError("a generation prompt must end with a user turn")


class RoleTemplate(Template):
    """``{system}{sep}USER: q ASSISTANT: a</s>USER: ...`` (LLaVA's ``conv_vicuna_v1``, which PVIT uses).

    The reply (with its leading space) and the EOS after it are the targets; ``USER: .. ASSISTANT:`` is not.
    """

    def __init__(self, name: str, system: str = "", user: str = "USER", assistant: str = "ASSISTANT", sep: str = " "):
        self.name, self.system, self.user, self.assistant, self.sep = name, system, user, assistant, sep

    def render(self, turns, add_generation_prompt=False):
        _check_turns(turns, add_generation_prompt)
        out: list[list[Segment]] = []
        prefix = self.system + self.sep if self.system else ""
        for role, text in turns:
            if role == "user":
                out.append([Segment(f"{prefix}{self.user}: {text}{self.sep}{self.assistant}:")])
                prefix = ""
            else:
                out.append([Segment(f" {text}", target=True, eos=True)])
        return out


class ChatTemplate(Template):
    """The tokenizer's own chat template (``tokenizer.apply_chat_template``), split into segments.

    The template is rendered once per role pattern with marker strings as message contents; the text between
    the markers is the template's scaffolding (system prompt, role headers, separators). A conversation is
    then ``scaffold_0 + content_0 + scaffold_1 + content_1 + ...``, checked against a real render of it. Of
    the scaffolding that follows an assistant reply, the leading special token (``<|im_end|>``, ``<|eot_id|>``,
    ``</s>``...) is the reply's end token and a target; the rest opens the next turn and is not. A template that
    closes replies with no special token gets the tokenizer's EOS appended after each reply instead.
    Templates that strip message contents are supported; ones that otherwise rewrite them raise DataError.
    """

    name = "chat"

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise RecipeError("model.template: 'chat' needs a tokenizer with a chat_template")
        self.tok = tokenizer
        self._scaffolds: dict[tuple, tuple[list[str], str]] = {}
        self._specials = self._special_tokens(tokenizer)
        scaffold, _ = self._scaffold(("user", "assistant"), False)
        end = self._end_token(scaffold[2])
        self.end_tokens = (end,) if end else ()

    @staticmethod
    def _special_tokens(tok) -> list[str]:
        """Special tokens of the tokenizer that may close a turn (pvit's own placeholders excluded), longest first."""
        names = set(getattr(tok, "all_special_tokens", []) or [])
        decoder = getattr(tok, "added_tokens_decoder", {}) or {}
        names |= {t.content for t in decoder.values() if getattr(t, "special", False)}
        ours = {IMAGE_PATCH_TOKEN, REGION_PATCH_TOKEN, REGION_START, REGION_END}
        return sorted((n for n in names if n and n not in ours and not _OURS.match(n)), key=len, reverse=True)

    def _apply(self, msgs, gen: bool) -> str:
        try:
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        except Exception as e:  # jinja raises its own types (e.g. "roles must alternate")
            raise DataError(f"the tokenizer's chat template failed to render a conversation: {e}") from None

    def _scaffold(self, roles: tuple[str, ...], gen: bool) -> tuple[list[str], str]:
        """(scaffold pieces: len(roles) + 1 strings, content mode ``verbatim`` | ``strip``) for a role pattern."""
        key = (roles, gen)
        hit = self._scaffolds.get(key)
        if hit is not None:
            return hit
        marks = [f"PvitMsg{i}x" for i in range(len(roles))]  # mixed case: a case change shows
        bare = self._apply([{"role": r, "content": m} for r, m in zip(roles, marks)], gen)
        pieces, cursor = [], 0
        for m in marks:
            j = bare.find(m, cursor)
            if j < 0:
                raise DataError(
                    f"the tokenizer's chat template drops or rewrites message contents (roles {list(roles)}); "
                    "set model.template to a named template (vicuna_v1_1, plain)"
                )
            pieces.append(bare[cursor:j])
            cursor = j + len(m)
        pieces.append(bare[cursor:])
        padded = self._apply([{"role": r, "content": f" {m} "} for r, m in zip(roles, marks)], gen)
        if padded == bare:
            mode = "strip"
        elif padded == self._join(pieces, [f" {m} " for m in marks]):
            mode = "verbatim"
        else:
            raise DataError(
                "the tokenizer's chat template rewrites message contents (beyond stripping whitespace), so pvit "
                "cannot tell prompt from reply; set model.template to a named template (vicuna_v1_1, plain)"
            )
        self._scaffolds[key] = (pieces, mode)
        return pieces, mode

    @staticmethod
    def _join(pieces: list[str], contents: list[str]) -> str:
        return pieces[0] + "".join(c + p for c, p in zip(contents, pieces[1:]))

    def _end_token(self, after: str) -> str | None:
        """The special token that closes a reply: the first one in ``after`` with only spaces before it."""
        body = after.lstrip(" ")
        for s in self._specials:
            if body.startswith(s):
                return s
        return None

    def render(self, turns, add_generation_prompt=False):
        _check_turns(turns, add_generation_prompt)
        roles = tuple(r for r, _ in turns)
        pieces, mode = self._scaffold(roles, add_generation_prompt)
        contents = [t.strip() if mode == "strip" else t for _, t in turns]
        real = self._apply([{"role": r, "content": t} for r, t in turns], add_generation_prompt)
        if real != self._join(pieces, contents):
            raise DataError(
                "the tokenizer's chat template renders this conversation differently from its role pattern "
                "(it depends on the message text); set model.template to a named template (vicuna_v1_1, plain)"
            )
        out: list[list[Segment]] = []
        carry = pieces[0]
        for k, (role, content) in enumerate(zip(roles, contents)):
            after = pieces[k + 1]
            if role == "user":
                out.append([Segment(carry + content + after)])
                carry = ""
                continue
            end = self._end_token(after)
            if end is None:  # no end token in the template: EOS after the reply, the scaffolding opens the next turn
                out.append([Segment(content, target=True, eos=True)])
                carry = after
                continue
            gap = after[: len(after) - len(after.lstrip(" "))]
            segs = [Segment(content, target=True)]
            if gap:
                segs.append(Segment(gap))
            segs.append(Segment(end, target=True))
            out.append(segs)
            carry = after[len(gap) + len(end):]
        # what follows the last reply (e.g. a newline) opens no turn: left out
        return out


TEMPLATES = {
    "vicuna_v1_1": lambda tok: RoleTemplate("vicuna_v1_1", system=VICUNA_SYSTEM),
    "plain": lambda tok: RoleTemplate("plain"),
    "chat": ChatTemplate,
}


def stop_token_ids(tokenizer, template) -> list[int]:
    """Where a reply ends: the tokenizer's EOS and the template's end-of-turn tokens, in that order, once each."""
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.eos_token_id] + [vocab.get(t) for t in getattr(template, "end_tokens", ())]
    return list(dict.fromkeys(i for i in ids if i is not None))


def get_template(name: str, tokenizer: Any) -> Template:
    """``auto``: the tokenizer's chat template when it has one, otherwise ``vicuna_v1_1``."""
    if name == "auto":
        name = "chat" if getattr(tokenizer, "chat_template", None) else "vicuna_v1_1"
    if name not in TEMPLATES:
        hint = did_you_mean(name, ["auto", *TEMPLATES], " (did you mean {!r}?)")
        raise RecipeError(f"model.template: unknown template {name!r}{hint}; valid: auto, {', '.join(TEMPLATES)}")
    return TEMPLATES[name](tokenizer)
