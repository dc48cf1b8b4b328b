"""``pvit data check RECIPE``: counts of samples, regions, invalid boxes, truncations and bad images."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from pvit.cli import app
from pvit.datacheck import check_data
from pvit.regions import format_pvit

from helpers import MICRO

GOOD = format_pvit((0.1, 0.2, 0.5, 0.6))
BAD = "<Region><L600><L200><L500><L600></Region>"  # x2 < x1


def _recipe(tmp_path: Path) -> Path:
    """A micro recipe whose one stage reads PVIT-format data with a bad box, a missing image and a long reply."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (40, 30), (200, 30, 30)).save(images / name)

    def rec(image, *turns):
        r = {"conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]}
        return {**r, "image": image} if image else r

    long_reply = " ".join(["red circle"] * 200)  # 400 tokens: more than the recipe's max_length of 256
    records = [
        rec("a.png", f"<image>\nwhat color is {GOOD} ?", "red"),
        rec("b.png", f"what is {BAD} left of {GOOD} ?", "a circle"),
        rec("missing.png", "<image>\nwhat is it ?", "a square"),
        rec(None, "what color is the sky ?", "blue"),
        rec("c.png", f"what is {GOOD} ?", "a circle", "describe it ?", long_reply),
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    recipe = tmp_path / "check.yaml"
    recipe.write_text(
        f"base: {MICRO}\n"
        "stages:\n"
        "  - name: stage2\n"
        f"    data: {{name: pvit-instruct, options: {{path: {tmp_path / 'train.json'}, image_folder: {images}}}}}\n"
        "    trainable: [projector]\n"
    )
    return recipe


def test_data_check_counts_through_the_cli(tmp_path):
    recipe = _recipe(tmp_path)
    result = CliRunner().invoke(app, ["data", "check", str(recipe)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert ("stages[0] stage2 (pvit-instruct): 4/5 samples ok, 3 with image, 1 text-only, 3 regions, 1 invalid boxes, "
            "1 truncated, 0 dropped, 1 bad images, 0 bad samples") in out
    assert str(tmp_path / "images" / "missing.png") in out and "'train/2'" in out  # the bad image, by path and sample
    assert "train.json sample 1" in out and "box 0" in out and "x2=0.5 < x1=0.6" in out  # the bad box
    assert "eval[0] synth-regions (synth-regions): 8/8 samples ok" in out


def test_data_check_report(tmp_path):
    report = check_data(_recipe(tmp_path), ["eval=[]"], log=lambda s: None)
    assert list(report) == ["stages[0] stage2"]
    counts = report["stages[0] stage2"]["counts"]
    assert counts == {"samples": 5, "checked": 4, "with_image": 3, "text_only": 1, "regions": 3, "invalid_boxes": 1,
                      "truncated": 1, "dropped_too_long": 0, "dropped_no_target": 0, "bad_images": 1,
                      "bad_samples": 0}
    small = check_data(_recipe(tmp_path), ["eval=[]", "model.max_length=12"], log=lambda s: None)
    small = small["stages[0] stage2"]["counts"]
    assert small["dropped_too_long"] == 3 and small["checked"] == 4  # image samples no longer fit at all
