"""The ``pvit`` command line: help, plugin listing, user errors without tracebacks, and a dry run of the tiny recipe."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PVIT = Path(sys.executable).with_name("pvit")
COMMANDS = ("run", "plugins", "ablate", "eval", "data")


def cli(*args: str, exe: tuple[str, ...] = (str(PVIT),)) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    env.pop("PVIT_LOAD_PLUGINS", None)
    return subprocess.run([*exe, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("exe", [(str(PVIT),), (sys.executable, "-m", "pvit")], ids=["pvit", "python-m-pvit"])
def test_help_lists_the_commands(exe):
    out = cli("--help", exe=exe)
    assert out.returncode == 0, out.stderr
    listed = {m.group(1) for m in re.finditer(r"^\W*(\w+)\s{2,}\S", out.stdout, re.M)}
    assert set(COMMANDS) <= listed, out.stdout
    assert out.stderr == ""


def test_plugins_json_parses_and_lists_builtins():
    out = cli("plugins", "--json")
    assert out.returncode == 0, out.stderr
    infos = {i["name"]: i for i in json.loads(out.stdout)}
    assert infos["regionclip"]["status"] == "ok" and infos["regionclip"]["distribution"] == "pvit"
    assert infos["regionclip"]["components"] == {"region_encoder": ["regionclip"]}
    assert infos["text_coords"]["components"] == {"region_encoder": ["text-coords", "none"]}


def test_plugins_text_lists_status_and_names():
    out = cli("plugins")
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("vit_roi"))
    assert "pvit" in line and line.rstrip().endswith("ok")
    assert "region_encoder: vit-roi" in out.stdout


@pytest.mark.parametrize(
    "recipe, args, expected",
    [
        ("model: {llm: {name: hf-causal-lm}, projecter: {name: linear}}\n", [],
         "model.projecter: unknown key; did you mean 'projector'?"),
        ("model: {llm: {name: hf-causal-lm}}\n", ["stages.0.optim.lr=1"], "stages is not set in the recipe"),
        ("model: {llm: {name: hf-causal-lm, options: {trust_remote_code: true}}}\n", ["--dry-run"],
         "model.llm.options.trust_remote_code"),
        (None, ["--dry-run"], "recipe file not found"),
    ],
    ids=["unknown-key", "override-index", "remote-code", "missing-file"],
)
def test_bad_recipe_exits_2_with_a_message_and_no_traceback(tmp_path, recipe, args, expected):
    path = tmp_path / "bad.yaml"
    if recipe is not None:
        path.write_text(recipe)
    out = cli("run", str(path), *args)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and expected in out.stderr, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stdout == ""


def test_unknown_component_in_a_dry_run_lists_installed_names(monkeypatch):
    from typer.testing import CliRunner

    from pvit.cli import app

    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, ["run", "recipes/pvit_tiny.yaml", "model.image_encoder.name=openclip-vitt",
                                      "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    assert "unknown image_encoder 'openclip-vitt' at model.image_encoder (did you mean 'openclip-vit'?)" in result.stderr
    assert all(n in result.stderr for n in ("hf-clip", "timm-vit"))


def test_dry_run_of_the_tiny_recipe_prints_the_plan(monkeypatch):
    from typer.testing import CliRunner

    from pvit.cli import app

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "160")
    existed = (ROOT / "runs" / "pvit-tiny").exists()
    result = CliRunner().invoke(app, ["run", "recipes/pvit_tiny.yaml", "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "name: pvit-tiny" in out and "image_size: 64" in out  # the resolved recipe
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells:
            rows[cells[0]] = cells
    for slot, name in [("image_encoder", "openclip-vit"), ("region_encoder", "regionclip"),
                       ("projector", "mlp2x-gelu"), ("region_projector", "mlp2x-gelu"), ("llm", "hf-causal-lm")]:
        assert rows[slot][1] == name, rows.get(slot)
        assert re.fullmatch(r"\d{1,3}(,\d{3})*", rows[slot][2]), rows[slot]
    n = {s: int(rows[s][2].replace(",", "")) for s in ("image_encoder", "region_encoder", "projector",
                                                      "region_projector", "llm", "bbox_embed")}
    assert int(rows["total"][2].replace(",", "")) == sum(n.values())
    hidden = 128  # the tiny LLM's width
    assert n["bbox_embed"] == 4 * hidden + hidden  # Linear(4, hidden)
    assert n["projector"] == n["region_projector"]  # both mlp2x-gelu with BatchNorm over 64-d features
    # each stage trains exactly its slots: <Region> and </Region> are the two new rows (tied embeddings)
    expected = {"align": n["projector"] + n["llm"], "region-pretrain": n["region_encoder"] + n["region_projector"],
                "region-align": n["region_projector"] + 2 * hidden,
                "instruct": n["projector"] + n["region_projector"] + n["llm"] + n["bbox_embed"]}
    for stage, total in expected.items():
        assert rows[stage][1] == "synth-regions" and int(rows[stage][3].replace(",", "")) == total, rows[stage]
        assert rows[stage][5] == ("region-contrastive" if stage == "region-pretrain" else "lm"), rows[stage]
    assert (ROOT / "runs" / "pvit-tiny").exists() == existed  # a dry run creates no run directory
