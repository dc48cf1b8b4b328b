"""pvit.images: every image fault becomes a DataError naming path and sample (docs/reliability.md item 20)."""

from __future__ import annotations

import warnings

import pytest
from PIL import Image, ImageFile

from pvit.errors import DataError
from pvit.images import ImagePolicy, load_image


def _png(path, size=(16, 12), color=(200, 10, 30), mode="RGB"):
    Image.new(mode, size, color if mode == "RGB" else 128).save(path)
    return path


def _jpeg(path, size=(64, 48)):
    img = Image.effect_noise(size, 60).convert("RGB")
    img.save(path, quality=90)
    return path


def test_good_image_is_rgb_and_loaded(tmp_path):
    img = load_image(_png(tmp_path / "a.png", mode="L"), sample_id="s1")
    assert img.mode == "RGB"
    assert img.size == (16, 12)
    assert img.getpixel((0, 0)) == (128, 128, 128)


def test_missing_file_names_path_and_sample(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(DataError) as e:
        load_image(path, sample_id="q42", where="train.json")
    msg = str(e.value)
    assert str(path) in msg and "q42" in msg and "train.json" in msg
    assert "not found" in msg and "options that say where its images are" in msg
    assert e.value.reason == "missing"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty") as e:
        load_image(path, sample_id="s-empty")
    assert str(path) in str(e.value) and "s-empty" in str(e.value)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a JPEG\n" * 20)
    with pytest.raises(DataError, match="not a readable image") as e:
        load_image(path, sample_id="s-text")
    assert str(path) in str(e.value) and "s-text" in str(e.value)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(DataError, match="directory"):
        load_image(tmp_path, sample_id="s-dir")


@pytest.mark.parametrize("maker,suffix", [(_jpeg, "jpg"), (_png, "png")])
def test_truncated_image_detected_and_flag_untouched(tmp_path, maker, suffix):
    path = maker(tmp_path / f"full.{suffix}")
    data = path.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        load_image(cut, sample_id="s-cut")
    assert str(cut) in str(e.value) and "s-cut" in str(e.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decompression_bomb_warning_range_is_an_error(tmp_path, monkeypatch):
    path = _png(tmp_path / "big.png", size=(100, 100))  # 10,000 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # PIL would only warn (< 2x the limit)
    filters_before = list(warnings.filters)
    with pytest.raises(DataError, match="decompression bomb") as e:
        load_image(path, sample_id="s-bomb")
    assert str(path) in str(e.value) and "s-bomb" in str(e.value)
    assert Image.MAX_IMAGE_PIXELS == 6000  # global limit unchanged
    assert list(warnings.filters) == filters_before  # global warning filters unchanged


def test_decompression_bomb_error_range(tmp_path, monkeypatch):
    path = _png(tmp_path / "big.png", size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL itself raises DecompressionBombError
    with pytest.raises(DataError, match="decompression bomb"):
        load_image(path, sample_id="s-bomb2")


def test_skip_policy_reports_and_bounds(tmp_path):
    good = _png(tmp_path / "ok.png")
    policy = ImagePolicy("skip", max_skip_fraction=0.1, total=20)  # 2 skips allowed
    assert policy.load(tmp_path / "gone1.png", sample_id="a") is None
    assert policy.load(good, sample_id="b").size == (16, 12)
    assert policy.load(tmp_path / "gone2.png", sample_id="c") is None
    rep = policy.report()
    assert rep["skipped"] == 2 and rep["attempted"] == 3 and rep["skipped_ids"] == ["a", "c"]
    assert rep["reasons"] == {"missing": 2}
    with pytest.raises(DataError) as e:
        policy.load(tmp_path / "gone3.png", sample_id="d")
    msg = str(e.value)
    assert "3 skipped of 20 samples" in msg and "max_skip_fraction=0.1" in msg and "a, c, d" in msg


def test_skip_policy_unknown_total_checks_attempted_fraction(tmp_path):
    good = _png(tmp_path / "ok.png")
    policy = ImagePolicy("skip", max_skip_fraction=0.25)
    assert policy.load(tmp_path / "x.png", sample_id="x") is None  # 1 of 1: too few loads to judge yet
    for i in range(3):
        policy.load(good, sample_id=f"g{i}")
    policy.check()  # 1 of 4 = 0.25: within the bound
    with pytest.raises(DataError, match="2 skipped of 5 loads attempted"):
        policy.load(tmp_path / "y.png", sample_id="y")


def test_error_policy_raises_and_bad_policy_rejected(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ImagePolicy("error").load(tmp_path / "x.png", sample_id="x")
    with pytest.raises(DataError, match="error, skip"):
        ImagePolicy("ignore")
