"""Command-line start-up time: the median wall time of ``pvit --help`` and ``pvit plugins`` against their targets.

Each command runs as a fresh subprocess (Python start-up, imports, plugin discovery and loading included), once
to warm the file cache and then ``--repeats`` times; the median is compared with the target.

    python benchmarks/bench_cli.py
    python benchmarks/bench_cli.py --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: (arguments, target median in seconds): `pvit --help` must feel instant; `pvit plugins` loads every plugin.
TARGETS = ((("--help",), 1.0), (("plugins",), 3.0))


def time_command(exe: str, args: tuple[str, ...], repeats: int) -> list[float]:
    """Wall times in seconds of ``repeats`` runs of ``exe args`` (after one untimed warm-up run)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        out = subprocess.run([exe, *args], capture_output=True, text=True, env=env)
        elapsed = time.perf_counter() - t0
        if out.returncode != 0:
            raise SystemExit(f"{exe} {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
        if i:
            times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per command (default 5)")
    parser.add_argument("--exe", default=str(Path(sys.executable).with_name("pvit")), help="the pvit executable")
    args = parser.parse_args()
    print(f"{'command':<16} {'median s':>9} {'min s':>7} {'max s':>7} {'target s':>9}  verdict")
    failed = False
    for cmd, target in TARGETS:
        times = time_command(args.exe, cmd, args.repeats)
        median = statistics.median(times)
        ok = median < target
        failed |= not ok
        print(f"{'pvit ' + ' '.join(cmd):<16} {median:>9.3f} {min(times):>7.3f} {max(times):>7.3f} "
              f"{'< ' + format(target, 'g'):>9}  {'ok' if ok else 'TOO SLOW'}")
    print(f"({args.repeats} runs each, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
