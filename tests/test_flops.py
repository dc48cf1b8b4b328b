"""FLOP counting and MFU: exact counts for a known step, a cached peak, and no effect on training."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import pvit
from pvit.compose import build_model
from pvit.flops import StepFlops, peak_flops
from pvit.run import run_recipe

MICRO = Path(__file__).parent / "recipes" / "micro.yaml"


def test_a_linear_training_step_counts_forward_and_backward_matmuls():
    lin = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64, requires_grad=True)  # (B, D_in)
    counter = StepFlops()
    counter.start()
    lin(x).sum().backward()
    flops = counter.stop()
    assert flops == 3 * 2 * 8 * 64 * 32  # forward, grad of the input, grad of the weight


def test_peak_is_probed_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PVIT_CACHE_DIR", str(tmp_path))
    first = peak_flops(torch.device("cpu"), torch.float32)
    second = peak_flops(torch.device("cpu"), torch.float32)
    assert not first["cached"] and second["cached"] and second["flops"] == first["flops"]
    table = json.loads((tmp_path / "peak_flops.json").read_text())
    assert table == {first["key"]: first["flops"]} and "float32" in first["key"]


def test_measuring_flops_changes_no_loss_and_reports_consistent_mfu(tmp_path, monkeypatch):
    monkeypatch.setenv("PVIT_CACHE_DIR", str(tmp_path / "cache"))
    runs = {}
    for measure in (True, False):
        loaded = pvit.load_recipe(MICRO, [f"run_dir={tmp_path / str(measure)}", f"engine.measure_flops={measure}",
                                          "eval=[]", "engine.tensorboard=false"])
        runs[measure] = run_recipe(loaded, log=lambda *_: None)
    for a, b in zip(runs[True]["stages"], runs[False]["stages"]):
        assert a["losses"] == b["losses"]
        assert b["flops"] is None
        f = a["flops"]
        assert f["flops_per_s"] == f["flops_per_step"] * f["steps_per_s"]
        assert f["mfu"] == f["flops_per_s"] / f["peak_flops_per_s"]
    # every stage runs the LLM forward on batch_size samples of at least one token each: a lower bound
    llm_params = sum(p.numel() for p in build_model(pvit.load_recipe(MICRO).cfg).llm.parameters())
    for st in runs[True]["stages"]:
        assert st["flops"]["flops_per_step"] >= 2 * llm_params * 4
    report = (tmp_path / "True" / "report.md").read_text()
    assert "## Throughput" in report and "MFU" in report
