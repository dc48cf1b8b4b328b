"""`pvit ablate`: same recipe with only the region encoder changed; shared stages run once; one table."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from pvit.ablate import ablation_table, shared_prefix, whole_encoder_slots
from pvit.cli import app
from pvit.recipe import load_recipe

from helpers import MICRO


def test_shared_prefix_is_the_alignment_stage():
    assert shared_prefix(load_recipe(MICRO).cfg) == 1


def test_table_has_mean_and_spread_over_seeds():
    runs = {"regionclip": [{"eval": {"synth-regions": {"metrics": {"accuracy": 0.5}}}},
                           {"eval": {"synth-regions": {"metrics": {"accuracy": 0.7}}}}],
            "none": [{"eval": {"synth-regions": {"metrics": {"accuracy": 0.2}}}},
                     {"eval": {"synth-regions": {"metrics": {"accuracy": 0.2}}}}]}
    table = ablation_table(runs).splitlines()
    assert table[0] == "| variant | accuracy |"
    assert table[2] == "| regionclip | 60.0 ± 14.1 |"
    assert table[3] == "| none | 20.0 ± 0.0 |"


def test_ablate_cli_runs_variants_and_prints_one_table(tmp_path):
    result = CliRunner().invoke(app, [
        "ablate", "--recipe", str(MICRO), "--region-encoder", "text-coords", "--region-encoder", "none",
        f"run_dir={tmp_path / 'abl'}", "stages.1.optim.max_steps=2", "stages.2.optim.max_steps=2",
        "stages.0.optim.max_steps=2"])
    assert result.exit_code == 0, result.output
    out = result.output
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["regionclip", "text-coords", "none"]
    cols = [c.strip() for c in rows[0].split("|")[2:-1]]
    assert cols[0] == "accuracy" and "accuracy/recognition" in cols, cols
    assert all(c.startswith("accuracy") for c in cols), cols  # counts and chance levels stay out of the table
    for row in rows[1:]:  # one seed: one percentage per column, no spread
        cells = [c.strip() for c in row.split("|")[2:-1]]
        assert len(cells) == len(cols) and all(re.fullmatch(r"\d{1,3}\.\d", c) for c in cells), row
    assert out.count("reuses the shared stages") == 2  # the alignment stage ran once
    table = (tmp_path / "abl-ablation" / "ablation.md").read_text()
    assert [line for line in table.splitlines() if line.startswith("| ")] == rows  # the file is the printed table
    assert not (tmp_path / "abl-ablation" / "none-seed0" / "stages" / "1-align").exists()


def test_a_variant_trains_its_whole_region_encoder_where_the_base_trained_a_group_of_its_own():
    cfg = load_recipe(MICRO, ["model.region_encoder.options.frozen=false",
                              "stages.1.trainable=[region_encoder.head, region_projector, region_encoder.head]"]).cfg
    logs: list[str] = []
    whole_encoder_slots(cfg, logs.append)
    assert list(cfg.stages[1].trainable) == ["region_encoder", "region_projector"]
    assert list(cfg.stages[2].trainable) == ["projector", "region_projector", "llm", "bbox_embed"]  # untouched
    assert logs == ["ablate: stage stage1 trains region_encoder, region_projector (region_encoder.head is a group of the "
                    "base recipe's region encoder)"]
