"""``pvit eval RECIPE --checkpoint PATH`` end to end on the micro recipe: metrics JSON, per-sample JSONL, a table."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from pvit.cli import app
from pvit_evaluators.base import COORDINATE_FORMAT
from pvit_evaluators.fine_eval import FineEvalEvaluator
from pvit_evaluators.normalize import exact_match
from pvit_evaluators.synth import SynthRegionsEvaluator
from pvit.recipe import load_recipe
from pvit.regions import format_pvit
from pvit.run import run_recipe

from helpers import MICRO


def _fine_eval(tmp_path: Path) -> Path:
    folder = tmp_path / "fine_eval"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (40, 30), (10, 200, 30)).save(folder / "images" / "0000.jpg")
    region = format_pvit((0.1, 0.2, 0.5, 0.6))
    lines = [{"image": "0000.jpg", "instruction": f"what is in {region}?", "instruction_no_region": "what?"},
             {"image": "0000.jpg", "instruction": "and its color?", "instruction_no_region": "color?"}]
    (folder / "instructions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder / "instructions.jsonl"


def test_pvit_eval_writes_metrics_per_sample_records_and_a_table(tmp_path):
    steps = [f"stages.{i}.optim.max_steps=1" for i in range(3)]
    loaded = load_recipe(MICRO, ["eval=[]", f"run_dir={tmp_path / 'run'}", *steps])
    run_recipe(loaded, overwrite=True, log=lambda s: None)
    exports = sorted((tmp_path / "run" / "stages").glob("*/export"))
    assert [p.parent.name for p in exports] == ["1-align", "2-stage1", "3-stage2"]

    fine = _fine_eval(tmp_path)
    evals = (f"eval=[{{name: synth-regions, options: {{split: test, size: 6, image_size: 32}}}}, "
             f"{{name: fine-eval, options: {{dataset_options: {{path: '{fine}'}}, max_new_tokens: 40}}}}]")
    args = ["eval", str(MICRO), *sum((["--checkpoint", str(p)] for p in exports), []), "--out", str(tmp_path / "ev"),
            evals]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "ev"

    summary = json.loads((out / "metrics.json").read_text())
    synth = summary["eval"]["synth-regions"]
    assert synth["n"] == 6
    for res in summary["eval"].values():  # every result says how it was measured
        p = res["protocol"]
        assert p["template"] == "plain" and p["coordinate_format"] == COORDINATE_FORMAT
        assert p["region_text"] == "<Region><region_patch></Region>" and p["decoding"] == {"do_sample": False}
    assert summary["eval"]["fine-eval"]["protocol"]["max_new_tokens"] == 40
    assert synth["protocol"]["matcher"] == SynthRegionsEvaluator.matcher
    assert summary["eval"]["fine-eval"]["protocol"]["matcher"] == FineEvalEvaluator.matcher

    rows = [json.loads(x) for x in (out / "synth-regions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    assert all({"id", "prompt", "prediction", "answer", "correct"} <= set(r) for r in rows)
    assert all(r["correct"] is exact_match(r["prediction"], r["answer"]) for r in rows)  # the matcher's verdict
    assert synth["metrics"]["accuracy"] == sum(r["correct"] for r in rows) / 6  # the records' mean, exactly
    assert "<Region><L" in "".join(r["prompt"] for r in rows)  # prompts as the dataset wrote them

    released = [json.loads(x) for x in (out / "pvit.jsonl").read_text().splitlines()]  # PVIT's fine-eval format
    assert [list(r) for r in released] == [["image", "instruction", "output"]] * 2
    assert released[0]["image"] == "0000.jpg" and released[1]["instruction"] == "and its color?"
    assert summary["eval"]["fine-eval"]["files"] == ["fine-eval.jsonl", "pvit.jsonl"]

    table = (out / "metrics.md").read_text()
    assert "| evaluator | metric | value |" in table and "| synth-regions | accuracy |" in table
    assert "template `plain`" in table
    assert "| synth-regions | accuracy |" in (out / "report.md").read_text()
