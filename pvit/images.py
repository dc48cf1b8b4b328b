"""Safe image loading for datasets: every unusable image becomes a DataError naming the path and sample."""

from __future__ import annotations

import math
import os
import struct
import warnings
import zlib
from collections import Counter
from typing import TYPE_CHECKING

from pvit.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_POLICIES = ("error", "skip")

_HINT = (
    "check the dataset's options that say where its images are, "
    "or set the image policy to 'skip' to skip a bounded fraction of bad images"
)


def _context(path, sample_id, where) -> str:
    parts = [f"image {os.fspath(path)!r}"]
    if sample_id is not None:
        parts.append(f"sample {sample_id!r}")
    if where:
        parts.append(f"in {where}")
    return ", ".join(parts)


def _fail(ctx: str, reason: str, text: str) -> DataError:
    err = DataError(f"{ctx}: {text}")
    err.reason = reason  # short kind, counted by ImagePolicy.report
    return err


def load_image(path, *, sample_id: str | None = None, where: str | None = None) -> "Image.Image":
    """Open, fully decode and convert one image to RGB; any fault raises DataError.

    Faults covered: missing file, empty file, not an image, truncated data, and decompression bombs (more
    than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels; PIL's ``DecompressionBombWarning`` is treated as an error
    here only, global warning filters and ``MAX_IMAGE_PIXELS`` are left unchanged). ``img.load()`` runs
    inside, so truncation is found here and not later in a transform. ``ImageFile.LOAD_TRUNCATED_IMAGES``
    is never set. EXIF orientation is not applied: boxes in every supported format refer to the stored pixels.

    Args:
        path: the image file.
        sample_id: id of the sample the image belongs to, named in errors.
        where: the dataset file or option the path came from, named in errors.

    Returns:
        A PIL image in mode RGB, (W, H) = ``image.size``, fully loaded (the file is closed).
    """
    from PIL import Image

    ctx = _context(path, sample_id, where)
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise _fail(ctx, "missing", f"file not found; {_HINT}") from None
    except OSError as e:
        raise _fail(ctx, "unreadable", f"cannot be read ({e}); {_HINT}") from None
    if os.path.isdir(path):
        raise _fail(ctx, "not an image", f"is a directory, not an image file; {_HINT}")
    if size == 0:
        raise _fail(ctx, "empty", f"file is empty (0 bytes); re-download or regenerate it, or {_HINT}")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if limit is not None and w * h > limit:
                    raise Image.DecompressionBombError(f"{w * h} pixels")
                im.load()
                rgb = im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _fail(
            ctx,
            "decompression bomb",
            f"refused as a possible decompression bomb ({e}; the limit is PIL.Image.MAX_IMAGE_PIXELS={limit}); "
            f"if the image is genuine, raise that limit in your own code before loading, or {_HINT}",
        ) from None
    except Image.UnidentifiedImageError:
        raise _fail(ctx, "not an image", f"not a readable image (PIL cannot identify the format); {_HINT}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        raise _fail(
            ctx, "truncated or corrupt", f"image data is truncated or corrupt ({type(e).__name__}: {e}); {_HINT}"
        ) from None
    return rgb


class ImagePolicy:
    """What a dataset does with an unusable image: raise (``error``) or skip a bounded fraction (``skip``).

    Under ``skip`` a failed load returns None and is recorded; once the skipped count exceeds
    ``max_skip_fraction`` of ``total`` (the dataset size, when known) a DataError with the counts is raised.
    When ``total`` is unknown, the fraction of attempted loads is checked once at least ``1/max_skip_fraction``
    loads were attempted, and [check][pvit.images.ImagePolicy.check] applies it at the end.
    Counts are per process: each data-loader worker holds its own copy.
    """

    def __init__(self, policy: str = "error", max_skip_fraction: float = 0.01, total: int | None = None):
        if policy not in IMAGE_POLICIES:
            raise DataError(f"image policy {policy!r} is not one of: {', '.join(IMAGE_POLICIES)}")
        if not (0.0 <= float(max_skip_fraction) <= 1.0):
            raise DataError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction!r}")
        self.policy = policy
        self.max_skip_fraction = float(max_skip_fraction)
        self.total = total
        self.attempted = 0
        self.skipped: dict[str, str] = {}  # sample id -> message
        self.reasons: Counter = Counter()  # reason kind -> count

    def allowed(self) -> int:
        """How many skips the bound allows now."""
        n = self.total if self.total is not None else self.attempted
        return math.floor(self.max_skip_fraction * n + 1e-9)

    def load(self, path, *, sample_id: str | None = None, where: str | None = None) -> "Image.Image | None":
        """[load_image][pvit.images.load_image] under this policy: the image, or None when skipped."""
        self.attempted += 1
        try:
            return load_image(path, sample_id=sample_id, where=where)
        except DataError as e:
            if self.policy == "error":
                raise
            key = str(sample_id) if sample_id is not None else os.fspath(path)
            self.skipped[key] = str(e)
            self.reasons[getattr(e, "reason", "other")] += 1
            measurable = self.total is not None or self.attempted * self.max_skip_fraction >= 1
            if measurable and len(self.skipped) > self.allowed():
                raise self._too_many(e) from None
            return None

    def check(self) -> None:
        """Raise DataError when the skipped fraction of the loads attempted so far exceeds the bound."""
        if len(self.skipped) > self.allowed():
            raise self._too_many(None)

    def _too_many(self, last: DataError | None) -> DataError:
        of = f"of {self.total} samples" if self.total is not None else f"of {self.attempted} loads attempted"
        last_s = f"; last: {last}" if last is not None else ""
        ids = ", ".join(list(self.skipped)[:10])
        return DataError(
            f"too many unusable images: {len(self.skipped)} skipped {of}, more than max_skip_fraction="
            f"{self.max_skip_fraction} allows ({self.allowed()}); skipped ids: {ids}{last_s}"
        )

    def report(self) -> dict:
        """``{"policy", "attempted", "skipped", "allowed", "skipped_ids", "reasons"}``; reasons are counted by
        kind (missing, empty, not an image, truncated or corrupt, decompression bomb, unreadable)."""
        return {
            "policy": self.policy,
            "attempted": self.attempted,
            "skipped": len(self.skipped),
            "allowed": self.allowed(),
            "skipped_ids": list(self.skipped),
            "reasons": dict(self.reasons),
        }
