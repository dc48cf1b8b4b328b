"""Frozen-feature cache: outputs of a frozen encoder for a given input, computed once and reused.

A stage whose image or region encoder is frozen computes the same features for the same image every time it
sees it (again in a later epoch, or in the next stage). [FeatureCache][pvit.feature_cache.FeatureCache] keeps
them, per image row, keyed by

* the encoder's **weights fingerprint** (a hash of every tensor of its state, taken when the stage starts): a
  cache entry made with other weights has another key and is never used;
* the **computation**: the encoder's name and its box-independent function (``image_encoder``, or a region
  encoder's ``image_features``), the autocast dtype, and the input row's dtype and shape;
* the **input row itself** (a hash of its bytes): the preprocessed pixels, so a change of preprocessing, image
  size or augmentation is a different key.

Only box-independent work is cached: a region encoder exposes it as ``image_features(pixels)`` and pools boxes
from it in ``forward`` (``RegionInputs.features``), so box jitter keeps working. Entries live in host memory
(LRU, bounded by ``max_memory_mb``, also when the encoder runs on a GPU) and, with ``dir`` set, on disk (one
safetensors file per entry, written atomically), where a later run with the same weights finds them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import torch

from pvit.atomic import atomic_write_bytes

__all__ = ["FeatureCache", "fingerprint"]

Rows = tuple  # one row: a tuple of tensors (one per output of the cached function)


def fingerprint(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer of ``module`` (names, dtypes, shapes, values)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(module).__qualname__.encode())
    for name, t in module.state_dict(keep_vars=False).items():
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _row_hash(row: torch.Tensor) -> str:
    """SHA-256 of a row's dtype, shape and bytes (hashed in place; SHA-256 has hardware support on most CPUs)."""
    row = row.detach().cpu().contiguous()
    h = hashlib.sha256(f"{row.dtype}|{tuple(row.shape)}|".encode())
    h.update(memoryview(row.view(torch.uint8).numpy()))
    return h.hexdigest()


class FeatureCache:
    """Per-row cache of a frozen function of a batch: ``rows(namespace, fn, x, keep)``.

    Args:
        max_memory_mb: bound on the bytes held in memory; the least recently used entries go first.
        dir: a folder for the on-disk cache (None: memory only).

    Attributes:
        hits, misses: rows found / computed since creation (``stats()``).
    """

    def __init__(self, max_memory_mb: float = 1024, dir: str | Path | None = None):
        self.max_bytes = int(float(max_memory_mb) * 2**20)
        self.dir = Path(dir) if dir else None
        self._mem: OrderedDict[str, Rows] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = self.disk_hits = 0

    # ------------------------------------------------------------------------------------------ storage
    def _get(self, key: str) -> Rows | None:
        got = self._mem.get(key)
        if got is not None:
            self._mem.move_to_end(key)
            return got
        if self.dir is not None:
            path = self.dir / key[:2] / f"{key}.safetensors"
            if path.is_file():
                from safetensors.torch import load_file

                d = load_file(str(path))
                got = tuple(d[str(i)] for i in range(len(d)))
                self.disk_hits += 1
                self._put(key, got, write=False)
        return got

    def _put(self, key: str, value: Rows, write: bool = True) -> None:
        size = sum(t.numel() * t.element_size() for t in value)
        if size <= self.max_bytes:
            self._mem[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._mem.popitem(last=False)
                self._bytes -= sum(t.numel() * t.element_size() for t in old)
        if write and self.dir is not None:
            from safetensors.torch import save

            path = self.dir / key[:2] / f"{key}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, save({str(i): t.detach().cpu().contiguous() for i, t in enumerate(value)}))

    # ------------------------------------------------------------------------------------------ use
    def rows(self, namespace: str, fn: Callable, x: torch.Tensor, keep: Sequence[int] | None = None) -> list:
        """``fn(x)`` computed only for the rows of ``x`` not seen before, as a list of tensors.

        ``fn`` maps a batch (B, ...) to a list/tuple of tensors, each with B rows that depend only on the
        matching input row. ``keep``: the rows needed (the others come back as zeros); default all.
        ``namespace`` must name the weights and the computation (see the module docstring).
        """
        rows = list(range(x.shape[0])) if keep is None else list(keep)
        if not rows:
            with torch.no_grad():
                return list(fn(x[:0]))
        amp = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        prefix = f"{namespace}|amp={amp}|"
        keys = {i: hashlib.blake2b((prefix + _row_hash(x[i])).encode(), digest_size=20).hexdigest() for i in rows}
        found = {i: v for i in rows if (v := self._get(keys[i])) is not None}
        first: dict[str, int] = {}  # a row repeated within the batch is computed once
        for i in rows:
            if i not in found:
                first.setdefault(keys[i], i)
        todo = list(first.values())
        self.hits += len(rows) - len(todo)
        self.misses += len(todo)
        if todo:
            with torch.no_grad():
                outs = tuple(fn(x if len(todo) == x.shape[0] else x[todo]))
            for j, i in enumerate(todo):
                entry = tuple(o[j].detach().cpu() for o in outs)  # host memory, not the accelerator's
                self._put(keys[i], entry)
                found[i] = entry
            for i in rows:
                if i not in found:
                    found[i] = found[first[keys[i]]]
        full = [torch.zeros((x.shape[0], *t.shape), dtype=t.dtype, device=x.device) for t in found[rows[0]]]
        for i in rows:
            for f, t in zip(full, found[i]):
                f[i] = t.to(x.device)
        return full

    def stats(self) -> dict:
        total = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "disk_hits": self.disk_hits,
                "hit_rate": round(self.hits / total, 4) if total else 0.0, "entries": len(self._mem),
                "memory_mb": round(self._bytes / 2**20, 1)}
