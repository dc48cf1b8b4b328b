"""pvit.Predictor: loading runs and exports, <regionN> boxes, batching, decoding options, streaming, errors."""

from __future__ import annotations

import pytest

from inference_helpers import image, stage1_export, trained_micro
from pvit.errors import CheckpointError
from pvit.predict import Predictor, PredictError
from pvit.predict_text import reply_boxes, resolve_regions


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_micro(tmp_path_factory)


@pytest.fixture(scope="module")
def pred(run):
    return Predictor.from_pretrained(stage1_export(run))


def test_from_run_and_from_pretrained_load_every_stage(run):
    full = Predictor.from_run(run)
    last = Predictor.from_pretrained(run / "stages" / "3-stage2" / "export")
    a = full.predict(image(), "What is <region1>?", boxes=[[4, 4, 30, 30]], max_new_tokens=6)
    b = last.predict(image(), "What is <region1>?", boxes=[[4, 4, 30, 30]], max_new_tokens=6)
    assert a.text == b.text and a.prompt_tokens == b.prompt_tokens > 0


def test_from_pretrained_says_what_is_missing(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run / "stages", copy / "stages")
    shutil.rmtree(copy / "stages" / "1-align" / "export")
    with pytest.raises(CheckpointError, match="1-align"):
        Predictor.from_pretrained(copy / "stages" / "3-stage2" / "export")
    with pytest.raises(CheckpointError, match="not a pvit export"):
        Predictor.from_pretrained(tmp_path)


def test_region_refs_pixels_normalised_and_pvit_text_give_the_same_prompt(pred):
    img = image(64, 48)
    ids = []
    for prompt, boxes, fmt in [("What is <region1>?", [[16, 12, 48, 36]], "pixels"),
                               ("What is <region1>?", [[0.25, 0.25, 0.75, 0.75]], "normalized"),
                               ("What is <Region><L250><L250><L750><L750></Region>?", None, "pixels"),
                               ("What is [0.25,0.25,0.75,0.75]?", None, "pixels")]:
        ids.append(pred.encode(pred.sample(img, prompt, boxes, fmt))["input_ids"])
    assert ids[0] == ids[1] == ids[2] == ids[3]


def test_batch_equals_single_predictions(pred):
    reqs = [{"image": image(), "prompt": p} for p in ("Describe the image.", "What is at the left?", "Hi")]
    batch = pred.predict_batch(reqs, max_new_tokens=6)
    single = [pred.predict(r["image"], r["prompt"], max_new_tokens=6) for r in reqs]
    assert [r.text for r in batch] == [r.text for r in single]
    assert all(r.text and r.completion_tokens > 0 for r in batch)


def test_decoding_options(pred):
    greedy = pred.predict(image(), "Hi", max_new_tokens=8)
    assert greedy.finish_reason == "length" and greedy.completion_tokens == 8
    s1 = pred.predict(image(), "Hi", max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    s2 = pred.predict(image(), "Hi", max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    assert s1.text == s2.text
    first = greedy.text.split()[0]
    stopped = pred.predict(image(), "Hi", max_new_tokens=8, stop=[" " + first])
    assert stopped.text == first and stopped.finish_reason == "stop"


def test_stream_yields_the_same_text_as_predict(pred):
    whole = pred.predict(image(), "What is <region1>?", boxes=[[4, 4, 30, 30]], max_new_tokens=8)
    s = pred.stream(image(), "What is <region1>?", boxes=[[4, 4, 30, 30]], max_new_tokens=8)
    pieces = list(s)
    assert len(pieces) > 1 and "".join(pieces) == whole.text == s.reply.text


def test_stream_close_frees_the_model(pred):
    s = pred.stream(image(), "Hi", max_new_tokens=200)
    next(iter(s))
    s.close()
    s._thread.join(timeout=30)
    assert not s._thread.is_alive()
    assert pred.predict(image(), "Hi", max_new_tokens=2).text


@pytest.mark.parametrize("prompt, boxes, code", [
    ("What is <region2>?", [[1, 1, 5, 5]], "region_without_box"),
    ("What is <region1>?", None, "region_without_box"),
    ("What is this?", [[1, 1, 5, 5]], "box_without_mention"),
    ("What is <region1>?", [[1, 1, 500, 5]], "invalid_box"),
    ("What is <region1>?", [[5, 5, 5, 9]], "invalid_box"),
    ("What is <region1>?", [[1, 2, 3]], "invalid_box"),
    ("word " * 3000, None, "context_length_exceeded"),
])
def test_bad_requests_raise_clear_errors(pred, prompt, boxes, code):
    with pytest.raises(PredictError) as e:
        pred.predict(image(), prompt, boxes=boxes, max_new_tokens=2)
    assert e.value.code == code and str(e.value)


def test_too_many_regions_and_reply_boxes():
    with pytest.raises(PredictError, match="at most 1"):
        resolve_regions(["<region1> <region2>"], [(0, 0, 1, 1)] * 2, max_regions=1)
    assert reply_boxes("a <Region><L0><L500><L500><L1000></Region>", None, (200, 100)) == [(0.0, 50.0, 100.0, 100.0)]


def test_concurrent_streams_do_not_interfere(pred):
    from concurrent.futures import ThreadPoolExecutor

    whole = pred.predict(image(), "Hi", max_new_tokens=6).text

    def run(_):
        s = pred.stream(image(), "Hi", max_new_tokens=6)
        return "".join(s)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(run, range(4))) == [whole] * 4
