"""The shipped recipes/generate/ recipes run offline on synth inputs; their output passes `pvit data check` and
trains with `pvit run` unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import pvit
from pvit_generate.runner import run_job

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "tests" / "recipes" / "micro.yaml"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    out = {}
    for name in ("convert", "task_specific", "multi_turn"):
        over = [f"generate.output={root / name}"] + [f"generate.sources.{i}.options.size=4" for i in range(2 if name == "convert" else 1)]
        out[name] = (run_job(REPO / "recipes" / "generate" / f"{name}.yaml", over, log=lambda s: None), root / name)
    return out


@pytest.mark.parametrize("name", ["convert", "task_specific", "multi_turn"])
def test_shipped_recipe_output_reads_back_unchanged(outputs, name):
    manifest, folder = outputs[name]
    assert manifest["status"] == "complete" and manifest["counts"]["accepted"] > 0
    ds = pvit.build("dataset", "pvit-instruct", path=str(folder))
    assert len(ds) == manifest["counts"]["accepted"]
    assert all("<Region><L" in ds[i]["conversations"][0]["value"] for i in range(len(ds)))
    assert ds[0]["image"] is not None


def test_output_is_clean_under_data_check_and_trains(outputs, tmp_path):
    folder = outputs["task_specific"][1]
    recipe = tmp_path / "train.yaml"
    recipe.write_text(f"""base: {MICRO}
name: micro-generated
run_dir: {tmp_path / 'run'}
stages:
  - name: stage2
    data: {{name: pvit-instruct, options: {{path: {folder}}}}}
    trainable: [projector, region_projector, llm, bbox_embed]
    optim: {{lr: 3.0e-3, max_steps: 2, batch_size: 4}}
eval: []
""")
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    check = subprocess.run([sys.executable, "-m", "pvit", "data", "check", str(recipe)], capture_output=True,
                           text=True, env=env, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
    assert "0 invalid boxes, 0 truncated, 0 dropped, 0 bad images, 0 bad samples" in check.stdout
    run = subprocess.run([sys.executable, "-m", "pvit", "run", str(recipe)], capture_output=True, text=True,
                         env=env, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "final loss" in run.stdout
