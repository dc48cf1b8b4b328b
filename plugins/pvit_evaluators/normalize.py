"""Answer normalisation for exact-match scoring (VQA/GQA style: case, punctuation, articles, number words)."""

from __future__ import annotations

import re

ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
# apostrophes join ("man's" -> "mans"); a point inside a number stays ("1.5"); other punctuation splits words
_APOSTROPHE = re.compile(r"['\u2019`]")
_PUNCT = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")


def tokens(text) -> list[str]:
    """Normalised words of ``text``: lower case, punctuation removed, articles dropped, number words as digits.

    ``None`` gives ``[]``.
    """
    if text is None:
        return []
    s = _APOSTROPHE.sub("", str(text).lower())
    s = _PUNCT.sub(" ", s)
    return [NUMBER_WORDS.get(w, w) for w in s.split() if w not in ARTICLES]


def normalize_answer(text) -> str:
    """``" The Two dogs."`` -> ``"2 dogs"``: what exact match compares (see [tokens][])."""
    return " ".join(tokens(text))


def exact_match(prediction, answer) -> bool:
    """True when the normalised prediction equals the normalised answer (an empty answer never matches)."""
    ref = normalize_answer(answer)
    return bool(ref) and normalize_answer(prediction) == ref
