"""Records packed into one byte buffer, so forked data-loader workers do not copy them page by page.

A list of millions of dicts in the parent process is touched by reference counting in every worker that
reads it, which turns copy-on-write pages into copies and makes memory grow over an epoch (PyTorch issue
13246). Two numpy arrays (bytes and offsets) have no per-record objects to touch.
"""

from __future__ import annotations

import pickle

import numpy as np


class PackedRecords:
    """Read-only sequence of records (JSON-like objects) stored pickled in one uint8 buffer."""

    def __init__(self, records: list):
        blobs = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]
        self._ends = np.cumsum(np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs)))  # (n,)
        self._buf = np.frombuffer(b"".join(blobs), dtype=np.uint8)  # (total bytes,)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} out of range for {len(self)} records")
        i = i % len(self)
        start = int(self._ends[i - 1]) if i else 0
        return pickle.loads(self._buf[start : int(self._ends[i])].tobytes())

    def nbytes(self) -> int:
        """Memory held by the packed records."""
        return int(self._buf.nbytes + self._ends.nbytes)
