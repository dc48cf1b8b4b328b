"""The main job's budget: wall-clock time and peak memory of `pvit run recipes/pvit_tiny.yaml`, plus its accuracies.

Runs the recipe in a subprocess (as a user would), measures wall time and the peak RSS of the process tree
(the trainer and its data-loader workers, via getrusage of the children), and prints them against the targets
(at most 5 minutes and 4 GiB on the 2-core reference machine), followed by the accuracy per task from
``metrics.json``.

    python benchmarks/bench_tiny_run.py [--recipe recipes/pvit_tiny.yaml] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIME_TARGET_S = 300
MEMORY_TARGET_GIB = 4.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/pvit_tiny.yaml")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE overrides passed to pvit run")
    args = ap.parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="pvit-bench-")) / "run"
    cmd = [sys.executable, "-m", "pvit", "run", args.recipe, f"run_dir={run_dir}", *args.overrides]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-4000:])
        print(f"pvit run failed with exit code {proc.returncode}")
        return 1
    # ru_maxrss of children: the largest resident set of any one waited-for descendant (KiB on Linux)
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"recipe {args.recipe}: wall {wall:.0f} s (target <= {TIME_TARGET_S} s: "
          f"{'ok' if wall <= TIME_TARGET_S else 'MISSED'}), peak RSS {peak_gib:.2f} GiB "
          f"(target <= {MEMORY_TARGET_GIB} GiB: {'ok' if peak_gib <= MEMORY_TARGET_GIB else 'MISSED'})")
    for st in metrics.get("stages", []):
        print(f"  stage {st.get('name')}: {st.get('steps')} steps, {st.get('seconds')} s, final loss {st.get('final_loss')}")
    for ev, res in (metrics.get("eval") or {}).items():
        accs = {k: v for k, v in res["metrics"].items() if k.startswith("accuracy")}
        print(f"  {ev} ({res.get('n')} questions): " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in accs.items()))
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
