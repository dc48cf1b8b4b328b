"""Atomic file writes: a temp file in the target's folder, fsync, then rename; the one writer pvit uses.

A kill at any moment leaves either the old file or the new one under the target name, never a half-written
file; the temp file (``.NAME.tmp-PID``) is removed on error, and run directories delete stale ones at the next
start (their names match ``*.tmp-*``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, hidden: bool = True) -> Iterator[str]:
    """Yield a temp path beside ``path``; write it inside the block, and it replaces ``path`` on a clean exit.

    ``hidden`` names it ``.NAME.tmp-PID`` (else ``NAME.tmp-PID``). The folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f"{'.' if hidden else ''}{path.name}.tmp-{os.getpid()}"))
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
