"""Model FLOP utilisation: FLOPs of a training step counted by torch, and the machine's peak from a matmul probe.

MFU here is *achieved FLOP/s / measured peak FLOP/s*, where the peak is the best of a few large matrix
multiplications in the stage's precision on the stage's device (not a datasheet number: on a CPU there is none
that means much). The probe runs once per (device, dtype, thread count, torch version) and is cached in
``$PVIT_CACHE_DIR`` (default ``~/.cache/pvit``) as ``peak_flops.json``. A probe taken while other work loads the
machine reads low (and every MFU after it high): ``python -m pvit.flops`` probes again and replaces the entry.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from pvit.atomic import atomic_write_text


def cache_dir() -> Path:
    """Where pvit caches small machine facts (``$PVIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/pvit``)."""
    root = os.environ.get("PVIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pvit")
    return Path(root)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu:{platform.processor() or platform.machine()}"


def probe_peak(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] | None = None,
               seconds: float = 0.5) -> float:
    """Best FLOP/s of square matmuls in ``dtype`` on ``device``, about ``seconds`` per size."""
    sizes = sizes or ((4096, 8192) if device.type == "cuda" else (1024, 2048))
    return max(_probe(device, dtype, n, seconds) for n in sizes)


def _probe(device: torch.device, dtype: torch.dtype, size: int, seconds: float) -> float:
    a = torch.randn(size, size, device=device).to(dtype)  # (n, n)
    b = torch.randn(size, size, device=device).to(dtype)  # (n, n)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2.0 * size ** 3 / best


def peak_flops(device: torch.device, dtype: torch.dtype, refresh: bool = False) -> dict:
    """``{"flops": peak FLOP/s, "key": what it was measured for, "cached": bool}``, probed once and cached
    (``refresh``: probe again and replace the cached value)."""
    key = f"{_device_name(device)}|{str(dtype).replace('torch.', '')}|threads={torch.get_num_threads()}|" \
          f"torch={torch.__version__}"
    path = cache_dir() / "peak_flops.json"
    try:
        table = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        table = {}
    if key in table and not refresh:
        return {"flops": float(table[key]), "key": key, "cached": True}
    flops = probe_peak(device, dtype)
    table[key] = flops
    try:
        atomic_write_text(path, json.dumps(table, indent=2))
    except OSError:  # a read-only home: measure again next time
        pass
    return {"flops": flops, "key": key, "cached": False}


class StepFlops:
    """Counts the FLOPs (forward, backward, optimiser) of the code between ``start()`` and ``stop()``.

    A ``torch.utils.flop_counter.FlopCounterMode`` (a dispatch mode: the ops run exactly as without it).
    """

    def __init__(self):
        from torch.utils.flop_counter import FlopCounterMode

        self.mode = FlopCounterMode(display=False)
        self.active = False
        self.total: int | None = None

    def start(self) -> None:
        self.mode.__enter__()
        self.active = True

    def stop(self) -> int:
        if self.active:
            self.mode.__exit__(None, None, None)
            self.active = False
            self.total = int(self.mode.get_total_flops())
        return int(self.total or 0)


def format_flops(x: float) -> str:
    """``1.23 GFLOP``-style text (k, M, G, T, P)."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} "


def main() -> None:
    """``python -m pvit.flops``: probe the peak again (run it on an otherwise idle machine) and cache it."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float32, torch.bfloat16):
            peak = peak_flops(device, dtype, refresh=True)
            print(f"{peak['key']}: {format_flops(peak['flops'])}FLOP/s")
    print(f"cached in {cache_dir() / 'peak_flops.json'}")


if __name__ == "__main__":
    main()
