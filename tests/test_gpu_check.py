"""The GPU check script runs at CPU size here (the same code as on a GPU, smaller shapes) and its JSON is
internally consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_at_cpu_size_and_writes_consistent_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "GPU_CHECK_SIZE": "cpu", "GPU_CHECK_STEPS": "1", "GPU_CHECK_OUT": str(out),
           "PYTHON": sys.executable, "PVIT_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["size"] == "cpu" and res["batch"] == 2 and res["regions_per_image"] == 4 and res["llm_layers"] == 1
    assert res["tokens_per_s"] == res["tokens_per_step"] / res["step_seconds"]
    assert res["flops_per_s"] == res["flops_per_step"] / res["step_seconds"]
    assert res["mfu"] == res["flops_per_s"] / res["peak_flops_per_s"]
    assert res["step_over_llm_step"] == res["step_seconds"] / res["llm_step_seconds"]
    reg = res["region_encoder_seconds"]
    assert res["regions_over_one_region"] == reg["4"] / reg["1"]
    assert res["peak_memory_bytes"] > 2**20 and res["sequence_length"] >= res["tokens_per_step"] // res["batch"]
    assert "MFU" in proc.stdout and f"written: {out}" in proc.stdout
