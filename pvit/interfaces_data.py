"""Data-side interfaces: the ``Sample`` a dataset yields and the ``Dataset`` protocol the core reads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypedDict, Union, runtime_checkable

if TYPE_CHECKING:  # keep `import pvit` light
    from PIL import Image


#: One conversation turn: ``from`` is ``human`` / ``user`` or ``gpt`` / ``assistant``, ``value`` its text
#: (functional form: ``from`` is a Python keyword).
Turn = TypedDict("Turn", {"from": str, "value": str})


class _SampleRequired(TypedDict):
    id: Any
    image: Union["Image.Image", str, None]
    conversations: list[Turn]


class Sample(_SampleRequired, total=False):
    """What ``Dataset.__getitem__`` returns.

    Keys:
        id: a stable identifier of the sample (string or int), written into evaluation records.
        image: a PIL RGB image, a path to one (opened by the core), or None for a text-only sample.
        conversations: ``[{"from": "human" | "gpt", "value": text}, ...]``; region mentions are written
            ``<Region><L#><L#><L#><L#></Region>`` (see docs/concepts.md). For evaluation the last gpt turn is
            the reference answer and the prompt is the conversation up to the last human turn.
        boxes: optional canonical boxes (xyxy in [0, 1]) of the sample's regions, in mention order.
        meta: optional dict passed unchanged into evaluation records (``task``, ``answer``, ``category``, ...).
    """

    boxes: list
    meta: dict


@runtime_checkable
class Dataset(Protocol):
    """A map-style dataset of [Sample][pvit.interfaces_data.Sample]s.

    Optional attributes (read with ``getattr``; see ``OPTIONAL_ATTRIBUTES["dataset"]`` in [pvit.interfaces][]):

    - ``set_epoch(epoch)``: called at the start of every training epoch (box jitter per epoch). Absent: the
      samples do not depend on the epoch.
    - ``metainfo``: dict handed to the training engine's dataset wrapper. Absent: ``{}``.
    - ``region_stats``: a [RegionStats][pvit.boxes.RegionStats] of boxes the dataset clipped or dropped,
      counted by ``pvit data check``. Absent: only the collator's counts are reported.
    - ``report()``: ``{"images": {"skipped": n, ...}, ...}``; images skipped under the dataset's own
      ``image_policy: skip`` are counted by ``pvit data check``. Absent: none are counted.
    """

    def __len__(self) -> int:
        """Number of samples."""

    def __getitem__(self, index: int) -> Sample:
        """The sample at ``index`` (images are opened here, not at construction)."""


@runtime_checkable
class Generator(Protocol):
    """A data generator for ``pvit generate`` (kind ``generator``; see docs/generate.md).

    ``complete`` returns an object with ``text``, ``finish_reason`` (``"stop"`` or ``"length"``), ``prompt_tokens``
    and ``completion_tokens``. It raises ``pvit_generate.generators.RetryableError`` (optionally with
    ``retry_after`` seconds) for failures worth retrying and ``GenerationError`` for the others; pvit retries.
    Optional: ``describe()`` -> dict written to the manifest (never a secret).
    """

    def complete(self, messages: list, *, max_tokens: int, temperature: float, seed: int, timeout: float) -> Any:
        """One chat completion of ``messages`` (``[{"role", "content"}]``)."""
