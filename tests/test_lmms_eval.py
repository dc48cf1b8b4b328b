"""lmms-eval's ``pvit`` model: entry-point discovery, scoring against a direct computation, the request types in
process, and a local task (generation, multiple choice, multi-round) through the real ``lmms-eval`` command."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from inference_helpers import image, stage1_export, trained_micro
from pvit.predict import Predictor, PredictError

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install 'pvit[lmms-eval]')")

BOX = [4, 4, 30, 30]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return stage1_export(trained_micro(tmp_path_factory))


def _seeded(load):
    """The micro recipe's region encoder is frozen and has no checkpoint, so no export holds it: each load draws it
    anew. lmms-eval seeds torch with 1234 before it builds the model; loading under that seed gives the same one."""
    torch.manual_seed(1234)
    return load()


@pytest.fixture(scope="module")
def pred(export):
    return _seeded(lambda: Predictor.from_pretrained(export, device="cpu"))


def test_lmms_eval_finds_pvit_through_its_entry_point_group():
    from importlib.metadata import entry_points

    from lmms_eval.models import get_model

    from pvit_lmms_eval.model import PVIT

    ours = [ep.value for ep in entry_points(group="lmms_eval.models") if ep.name == "pvit"]
    assert ours == ["pvit_lmms_eval:manifest"]
    assert get_model("pvit") is PVIT


# ------------------------------------------------------------------------------------------ scoring
def test_score_equals_a_direct_computation_on_the_generation_prompt(pred):
    from pvit.model import batch_to
    from pvit.templates import RoleTemplate

    assert isinstance(pred.template, RoleTemplate)  # the micro recipe's vicuna template: a reply is " " + text
    img, prompt, reply = image(), "What is <region1>?", "a red square"
    enc = pred.encode(pred.sample(img, prompt, [BOX]))  # the prompt exactly as generation sees it
    reply_ids = pred.collator.tok(" " + reply, add_special_tokens=False)["input_ids"]
    ids = enc["input_ids"] + reply_ids
    batch = batch_to(pred.collator.pad([dict(enc, input_ids=ids, labels=[-100] * len(ids))]), "cpu")
    batch.pop("labels")
    with torch.no_grad():
        logp = torch.log_softmax(pred.model(batch).logits[0].float(), -1)  # (T, V)
    n = len(enc["input_ids"])
    direct = sum(float(logp[n - 1 + k, t]) for k, t in enumerate(reply_ids))
    greedy = all(int(logp[n - 1 + k].argmax()) == t for k, t in enumerate(reply_ids))

    s = pred.score(img, prompt, " " + reply, boxes=[BOX])  # a task's leading space is the template's separator
    assert s.tokens == len(reply_ids) and s.greedy == greedy
    assert math.isclose(s.logprob, direct, rel_tol=1e-5, abs_tol=1e-5) and s.logprob < 0


def test_the_greedy_reply_scores_as_greedy_and_batches_agree(pred):
    img = image()
    text = pred.predict(img, "Describe <region1>.", boxes=[BOX], max_new_tokens=6).text
    mine = pred.score(img, "Describe <region1>.", text, boxes=[BOX])
    other = pred.score(img, "Describe <region1>.", text + " zebra", boxes=[BOX])
    assert mine.greedy and not other.greedy and other.tokens > mine.tokens > 0
    batch = pred.score_batch([{"image": img, "prompt": "Describe <region1>.", "boxes": [BOX], "continuation": text},
                              {"image": img, "prompt": "Hi", "continuation": "hello there"}])
    assert batch[0] == mine
    assert math.isclose(batch[1].logprob, pred.score(img, "Hi", "hello there").logprob, rel_tol=1e-5)


def test_score_errors(pred):
    with pytest.raises(PredictError, match="empty") as e:
        pred.score(image(), "Hi", "  ")
    assert e.value.code == "invalid_request"
    with pytest.raises(PredictError, match="context length") as e:
        pred.score(image(), "Hi", "word " * 3000)
    assert e.value.code == "context_length_exceeded"


# ------------------------------------------------------------------------------------------ the model in process
def _req(kind: str, args: tuple, doc_id: int = 0):
    from lmms_eval.api.instance import Instance

    return Instance(request_type=kind, arguments=args, idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


def _text(out):
    from lmms_eval.api.instance import unwrap_generation_output

    return unwrap_generation_output(out)[0]


@pytest.fixture(scope="module")
def lmm(export):
    from pvit_lmms_eval.model import PVIT

    m = _seeded(lambda: PVIT(pretrained=str(export), device="cpu", batch_size=2, box_format="normalized"))
    m.task_dict = {"t": {"test": [{"boxes": [[0.1, 0.1, 0.5, 0.6]], "img": image()}, {"img": image(40, 40)}]}}
    return m


def _visual(doc):
    return [doc["img"]]


def test_generate_until_answers_as_the_predictor_does(lmm, pred):
    kw = {"until": ["zzz"], "max_new_tokens": 5, "temperature": 0, "num_beams": 1}
    reqs = [_req("generate_until", ("What is <region1>?", dict(kw), _visual, 0, "t", "test")),
            _req("generate_until", ("Describe the image.", dict(kw), _visual, 1, "t", "test")),
            _req("generate_until", ("Hi", {"max_new_tokens": 3}, _visual, 1, "t", "test"))]
    out = lmm.generate_until(reqs)
    want = [pred.predict(image(), "What is <region1>?", [[0.1, 0.1, 0.5, 0.6]], box_format="normalized",
                         max_new_tokens=5),
            pred.predict(image(40, 40), "Describe the image.", max_new_tokens=5),
            pred.predict(image(40, 40), "Hi", max_new_tokens=3)]
    assert [_text(o) for o in out] == [w.text for w in want] and all(w.text for w in want)
    assert out[0].token_counts.output_tokens == want[0].completion_tokens


def test_loglikelihood_is_the_predictors_score(lmm, pred):
    reqs = [_req("loglikelihood", ("What is <region1>?", " a", _visual, 0, "t", "test")),
            _req("loglikelihood", ("Describe the image.", lambda doc: "a a", _visual, 1, "t", "test")),
            _req("loglikelihood", ("", " a"))]  # unconditional: no doc, no image
    got = [_text(o) for o in lmm.loglikelihood(reqs)]
    want = [pred.score(image(), "What is <region1>?", "a", [[0.1, 0.1, 0.5, 0.6]], box_format="normalized"),
            pred.score(image(40, 40), "Describe the image.", "a a"),
            pred.score(None, "", "a")]
    for (lp, greedy), w in zip(got, want):
        assert isinstance(lp, float) and math.isfinite(lp) and isinstance(greedy, bool)
        assert math.isclose(lp, w.logprob, rel_tol=1e-6) and greedy == w.greedy


def test_multi_round_asks_until_the_task_says_stop(lmm, pred):
    seen = []

    def next_round(doc, previous_output=None, round_idx=None, previous_round_info=None):
        seen.append((round_idx, list(previous_output), previous_round_info))
        if round_idx < 3:
            return _visual(doc), f"Round {round_idx}: and <region1>?", False, previous_output, {"r": round_idx}
        return None, None, True, previous_output, None

    out = lmm.generate_until_multi_round(
        [_req("generate_until_multi_round", ("What is <region1>?", {"max_new_tokens": 4}, _visual, next_round, 0,
                                             "t", "test"))])
    prompts = ["What is <region1>?", "Round 1: and <region1>?", "Round 2: and <region1>?"]
    want = [pred.predict(image(), p, [[0.1, 0.1, 0.5, 0.6]], box_format="normalized", max_new_tokens=4).text
            for p in prompts]
    assert out == [want]
    assert [r for r, _, _ in seen] == [1, 2, 3] and seen[2][1] == want and seen[2][2] == {"r": 2}


def test_bad_requests_name_the_task_and_doc(lmm):
    with pytest.raises(PredictError, match="task t doc 1: the prompt refers to <regionN> but the doc has no 'boxes'"):
        lmm.generate_until([_req("generate_until", ("What is <region1>?", {}, _visual, 1, "t", "test"), 1)])
    with pytest.raises(PredictError, match="task t doc 0: doc_to_visual gave 2 visuals"):
        lmm.generate_until([_req("generate_until", ("Hi", {}, lambda d: [d["img"]] * 2, 0, "t", "test"))])
    with pytest.raises(PredictError, match="num_beams=4"):
        lmm.generate_until([_req("generate_until", ("Hi", {"num_beams": 4}, _visual, 0, "t", "test"))])
    from pvit_lmms_eval.model import PVIT

    with pytest.raises(ValueError, match="unknown model_args conv_template"):
        PVIT(pretrained="x", conv_template="vicuna")
    with pytest.raises(ValueError, match="did you mean 'normalized'"):
        PVIT(pretrained="x", box_format="normalised")


def test_generation_kwargs_and_doc_boxes_are_read_as_lmms_eval_writes_them():
    from pvit_lmms_eval.requests import IgnoredOptionWarning, boxes_of, decoding_of

    assert decoding_of({"until": "\n\n", "max_new_tokens": 7, "temperature": 0}, "d") == \
        (["\n\n"], {"max_new_tokens": 7, "do_sample": False})
    assert decoding_of({"do_sample": True}, "d", seed=3)[1] == \
        {"max_new_tokens": None, "do_sample": True, "temperature": 1.0, "top_p": 1.0, "seed": 3}
    assert decoding_of({"temperature": 0.7, "do_sample": False, "top_p": None}, "d")[1]["do_sample"] is False
    assert decoding_of({"temperature": 0.7, "top_p": 0.9}, "d")[1] == \
        {"max_new_tokens": None, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "seed": None}
    with pytest.warns(IgnoredOptionWarning, match="'image_aspect_ratio' is ignored"):
        decoding_of({"image_aspect_ratio": "pad"}, "d")
    with pytest.raises(PredictError, match="until is 5"):
        decoding_of({"until": 5}, "d")
    assert boxes_of({"boxes": [1, 2, 3, 4]}, "boxes", "<region1>?", "d") == [[1, 2, 3, 4]]
    assert boxes_of({"b": "[[1, 2, 3, 4], [0, 0, 5, 5]]"}, "b", "<region1> <region2>", "d") == [[1, 2, 3, 4],
                                                                                               [0, 0, 5, 5]]
    assert boxes_of({"boxes": "not read"}, "boxes", "no reference", "d") is None


# ------------------------------------------------------------------------------------------ the real command
UTILS = '''
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_choice(doc):
    return doc["choices"]


def rounds_text(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx=None, previous_round_info=None):
    if round_idx is None:
        return doc["question"]
    if round_idx < 3:
        return doc_to_visual(doc), f"Round {round_idx}: what else is in <region1>?", False, previous_output, None
    return None, None, True, previous_output, None


def process_rounds(doc, results):
    return {"rounds": len(results[0])}
'''

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output}
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.{text}
"""
TASKS = {
    "pvit_local_gen": ("generate_until", "doc_to_text", """doc_to_target: answer
generation_kwargs: {until: ["\\n"], max_new_tokens: 8, temperature: 0}
metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]
"""),
    "pvit_local_mc": ("multiple_choice", "doc_to_text", """doc_to_choice: !function utils.doc_to_choice
doc_to_target: label
metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]
"""),
    "pvit_local_rounds": ("generate_until_multi_round", "rounds_text", """doc_to_target: answer
generation_kwargs: {max_new_tokens: 6}
process_results: !function utils.process_rounds
metric_list: [{metric: rounds, aggregation: mean, higher_is_better: true}]
"""),
}
COLORS = ["red", "green", "blue", "white"]


def _write_tasks(d: Path) -> list[dict]:
    docs = []
    for i, color in enumerate(COLORS):
        img = Image.new("RGB", (64, 48), "black")
        ImageDraw.Draw(img).rectangle([8, 6, 40, 30], fill=color)
        img.save(d / f"img{i}.png")
        docs.append({"id": i, "image": str(d / f"img{i}.png"), "answer": color, "boxes": [[8, 6, 40, 30]],
                     "question": "What is in <region1>?" if i % 2 == 0 else "Describe the image.",
                     "choices": COLORS, "label": i})
    (d / "docs.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    (d / "utils.py").write_text(UTILS)
    for name, (output, text, rest) in TASKS.items():
        (d / f"{name}.yaml").write_text(TASK.format(name=name, data=d / "docs.jsonl", output=output, text=text) + rest)
    return docs


def _samples(out: Path, task: str) -> list[dict]:
    (path,) = out.rglob(f"*_samples_{task}.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lmms_eval_command_runs_a_local_task(export, pred, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    docs = _write_tasks(tasks)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    cmd = [str(Path(sys.executable).parent / "lmms-eval"), "--model", "pvit",
           "--model_args", f"pretrained={export},device=cpu", "--tasks", ",".join(TASKS),
           "--include_path", str(tasks), "--output_path", str(tmp_path / "out"), "--log_samples", "--batch_size", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("*_results.json")
    results = json.loads(results_file.read_text())["results"]

    def ask(doc, question=None):  # what the task asks, straight to the Predictor
        img, q = Image.open(doc["image"]).convert("RGB"), question or doc["question"]
        return img, q, (doc["boxes"] if "<region1>" in q else None)

    gen = sorted(_samples(tmp_path / "out", "pvit_local_gen"), key=lambda s: s["doc_id"])
    want = [pred.predict(*ask(d), max_new_tokens=8, stop=["\n"]).text for d in docs]
    assert [s["filtered_resps"] for s in gen] == want and all(want)
    assert results["pvit_local_gen"]["exact_match,none"] == sum(w == d["answer"] for w, d in zip(want, docs)) / 4

    mc = sorted(_samples(tmp_path / "out", "pvit_local_mc"), key=lambda s: s["doc_id"])
    hits = 0
    for s, d in zip(mc, docs):
        img, q, boxes = ask(d)
        direct = [pred.score(img, q, " " + c, boxes) for c in COLORS]
        logged = [(float(lp), str(g) == "True") for lp, g in s["filtered_resps"]]
        assert all(math.isfinite(lp) for lp, _ in logged)
        assert all(math.isclose(lp, w.logprob, rel_tol=1e-6) and g == w.greedy for (lp, g), w in zip(logged, direct))
        hits += max(range(4), key=lambda k: direct[k].logprob) == d["label"]
    assert results["pvit_local_mc"]["acc,none"] == hits / 4

    rounds = sorted(_samples(tmp_path / "out", "pvit_local_rounds"), key=lambda s: s["doc_id"])
    asked = [ask(docs[1]), ask(docs[1], "Round 1: what else is in <region1>?"),
             ask(docs[1], "Round 2: what else is in <region1>?")]
    assert rounds[1]["filtered_resps"] == [pred.predict(*a, max_new_tokens=6).text for a in asked]
    assert all(len(s["filtered_resps"]) == 3 for s in rounds)
    assert results["pvit_local_rounds"]["rounds,none"] == 3
