"""A Hugging Face weight folder read one shard at a time: ``pytorch_model*.bin`` pickles (``weights_only=True``) or
``*.safetensors``, single file or sharded with an ``*.index.json``. Used by the llava-hf components and the
official PVIT release importer."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Iterator

import torch

from pvit.errors import CheckpointError

#: (index file, single file) of the layouts read, in order of preference.
LAYOUTS = (("model.safetensors.index.json", "model.safetensors"),
           ("pytorch_model.bin.index.json", "pytorch_model.bin"))


class WeightFolder:
    """The tensors of a Hugging Face model folder, by name, loaded shard by shard.

    Attributes:
        root: the folder.
        shards: ``{file name: [tensor names]}`` in file order.
        what: how messages name the folder (``--delta``, ``--base``).
    """

    def __init__(self, root: str | Path, what: str):
        self.root = Path(root)
        self.what = what
        self._cache: tuple[str, Any] | None = None  # the one shard kept loaded
        self.shards = self._shards()

    def _shards(self) -> dict[str, list[str]]:
        for index_name, single in LAYOUTS:
            index = self.root / index_name
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (ValueError, KeyError, TypeError) as e:
                    raise CheckpointError(f"{self.what} {index}: not a weight index (needs a 'weight_map' of tensor "
                                          f"name -> shard file): {type(e).__name__}: {e}") from None
                shards: dict[str, list[str]] = {}
                for name, file in weight_map.items():
                    shards.setdefault(file, []).append(name)
                missing = [f for f in shards if not (self.root / f).is_file()]
                if missing:
                    raise CheckpointError(f"{self.what} {self.root}: {len(missing)} of the {len(shards)} weight shards "
                                          f"that {index_name} lists are missing: {', '.join(sorted(missing))}; "
                                          "download the whole folder again")
                return shards
            if (self.root / single).is_file():
                return {single: list(self._read(single))}
        found = sorted(p.name for p in self.root.glob("*"))[:12]
        raise CheckpointError(
            f"{self.what} {self.root}: no weights found: expected {' or '.join(n for pair in LAYOUTS for n in pair)} "
            f"(files there: {', '.join(found) or 'none'})")

    def _read(self, file: str):
        if self._cache is not None and self._cache[0] == file:
            return self._cache[1]
        path = self.root / file
        if file.endswith(".safetensors"):
            state = _Lazy(path, self.what)
        else:
            state = _load_pickle(path, self.what)
        self._cache = (file, state)
        return state

    def keys(self) -> list[str]:
        return [k for names in self.shards.values() for k in names]

    def shard_of(self, name: str) -> str | None:
        for file, names in self.shards.items():
            if name in names:
                return file
        return None

    def get(self, name: str) -> torch.Tensor:
        """One tensor (its shard is loaded, and kept until another shard is asked for)."""
        file = self.shard_of(name)
        if file is None:
            raise KeyError(name)
        state = self._read(file)
        if name not in state:
            raise CheckpointError(f"{self.what} {self.root / file}: the index puts {name!r} in this shard, but it "
                                  "is not there; the folder is inconsistent")
        return state[name]

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, without reading its data where the format allows."""
        file = self.shard_of(name)
        if file is None:
            raise KeyError(name)
        state = self._read(file)
        if isinstance(state, _Lazy) and name in state:
            return tuple(state.handle.get_slice(name).get_shape())
        return tuple(self.get(name).shape)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every (name, tensor), shard by shard."""
        for file, names in self.shards.items():
            state = self._read(file)
            for name in names:
                if name not in state:
                    raise CheckpointError(f"{self.what} {self.root / file}: the index puts {name!r} in this shard, "
                                          "but it is not there; the folder is inconsistent")
                yield name, state[name]


class _Lazy:
    """A safetensors file as a read-only mapping whose tensors are read when asked for."""

    def __init__(self, path: Path, what: str):
        from safetensors import safe_open

        try:
            self.handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as e:
            raise CheckpointError(f"{what} {path}: not a readable safetensors file: {e}") from None
        self.names = set(self.handle.keys())

    def __contains__(self, name) -> bool:
        return name in self.names

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.handle.get_tensor(name)

    def __iter__(self):
        return iter(self.names)


def _load_pickle(path: Path, what: str) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``, memory-mapped when the file allows; anything but tensors is refused."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # an old (pre-zip) file cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{what} {path}: refused: it holds pickled objects other than tensors, so it cannot be "
                              f"loaded safely (torch.load weights_only=True): {e}") from None
    except Exception as e:
        raise CheckpointError(f"{what} {path}: not a readable PyTorch weight file (truncated?): "
                              f"{type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} {path}: expected a dict of tensor name -> tensor")
    return state
