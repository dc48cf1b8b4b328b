"""The documented third-party plugin (docs/examples/pvit-boxstats) installs, is discovered, passes the contract and trains.

The example is pip-installed (no dependencies, no network) into a temporary folder that is put on
``sys.path``; pvit's plugin manager is reset so entry points are read again. Nothing is installed into the
virtual environment, and the fixture removes the folder, the module and the plugin afterwards.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pvit
from pvit import plugins

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "pvit-boxstats"


def _forget_module() -> None:
    for name in [m for m in sys.modules if m == "pvit_boxstats" or m.startswith("pvit_boxstats.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Install the example into a temporary target folder and make pvit discover it."""
    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("pip and setuptools are needed to install the example plugin")
    src = tmp_path_factory.mktemp("src") / "pvit-boxstats"  # build in a copy: pip leaves build/ and *.egg-info
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
         "--target", str(target), str(src)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, f"pip install of the example failed:\n{proc.stdout}\n{proc.stderr}"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PVIT_LOAD_PLUGINS", raising=False)
        mp.syspath_prepend(str(target))  # also invalidates import caches
        _forget_module()
        plugins.reset()
        try:
            yield target
        finally:
            _forget_module()
    importlib.invalidate_caches()
    plugins.reset()


def test_entry_point_is_discovered(installed):
    infos = {i.name: i for i in plugins.plugin_infos()}
    assert "boxstats" in infos, f"the example's entry point was not found; plugins: {sorted(infos)}"
    info = infos["boxstats"]
    assert (info.distribution, info.version, info.status) == ("pvit-boxstats", "0.1.0", "ok"), info.error
    assert info.components == {"region_encoder": ["box-stats"]}
    assert pvit.components("region_encoder")["box-stats"].__module__ == "pvit_boxstats"


def test_contract(installed):
    from pvit.testing import check_region_encoder

    report = check_region_encoder(pvit.build("region_encoder", "box-stats"), n_images=3)
    assert report["tokens_per_region"] == 1 and report["out_dim"] == 12
    assert report["regions"] == 7 and report["output_shape"] == (7, 1, 12)  # 2 + 3 + 2 boxes on 3 images
    assert report["region_text"] == "<Region><region_patch></Region>"


def _example_tests():
    spec = importlib.util.spec_from_file_location("example_test_boxstats", EXAMPLE / "tests" / "test_boxstats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: fn for name, fn in vars(module).items() if name.startswith("test_") and callable(fn)}


@pytest.mark.parametrize("name", sorted(_example_tests()))
def test_the_examples_own_tests(installed, name):
    _example_tests()[name]()


def test_recipe_with_the_plugin_trains(installed, tmp_path):
    from pvit.run import run_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
base: {EXAMPLE / 'boxstats_tiny.yaml'}
name: boxstats-test
run_dir: {tmp_path / 'run'}
stages:
  - name: regions
    data: {{name: synth-regions, options: {{split: train, size: 80, task: [recognition, attribute], image_size: 64}}}}
    trainable: [projector, region_projector, llm, bbox_embed]
    optim: {{lr: 2.0e-3, max_steps: 10, batch_size: 8, warmup_ratio: 0.0, schedule: constant}}
eval:
  - name: synth-regions
    options: {{split: test, size: 4, task: attribute, image_size: 64}}
engine: {{num_workers: 0, log_every: 5, checkpoint_every: 1000, tensorboard: false, progress: false}}
"""
    )
    loaded = pvit.load_recipe(recipe)
    assert loaded.cfg.model.region_encoder.name == "box-stats"
    assert dict(loaded.cfg.model.region_encoder.options) == {"resolution": 32}  # regionclip's options dropped
    lines: list[str] = []
    summary = run_recipe(loaded, log=lines.append)
    (stage,) = summary["stages"]
    losses = [loss for _step, loss in stage["losses"]]
    assert len(losses) == 10 and all(math.isfinite(v) for v in losses), losses
    assert sum(losses[-3:]) / 3 < losses[0], f"loss did not fall: {losses}"
    components = {c["slot"]: c["name"] for c in summary["plan"]["components"]}
    assert components["region_encoder"] == "box-stats"
    run_dir = tmp_path / "run"
    assert (run_dir / "report.md").is_file() and (run_dir / "metrics.json").is_file()
    assert "accuracy" in summary["eval"]["synth-regions"]["metrics"], summary["eval"]
