"""The collator: templates and assistant-only labels, padding, region rendering, and docs/reliability.md items 17-22."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import pvit
from pvit.collate import Collator
from pvit.templates import ChatTemplate, get_template
from pvit.errors import DataError, InvalidRegionError, RecipeError, SpliceError
from pvit.interfaces import IGNORE_INDEX, IMAGE_PATCH_TOKEN, REGION_END, REGION_PATCH_TOKEN, REGION_START, Regions
from pvit.regions import format_pvit

WORDS = ("what is the color of this red blue green circle square a long story about shapes and more words here "
         "like or region left yes").split()
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
N_IMG = 4
R = format_pvit((0.1, 0.2, 0.5, 0.6))


def word_tokenizer(chat_template=None, extra_special=()):
    from pvit_hf.model import build_word_tokenizer

    tok = build_word_tokenizer(WORDS)
    if extra_special:
        tok.add_special_tokens({"additional_special_tokens": list(extra_special)})
    tok.add_tokens([IMAGE_PATCH_TOKEN, REGION_PATCH_TOKEN, REGION_START, REGION_END], special_tokens=True)
    if chat_template:
        tok.chat_template = chat_template
    return tok


class StubRegionEncoder:
    """K placeholders per region; ``emit`` can lie about how many region_text writes (item 18)."""

    uses_own_pixels = False
    image_layers: list = []
    special_tokens = [REGION_START, REGION_END]
    out_dim = 8

    def __init__(self, k=1, emit=None):
        self.tokens_per_region = k
        self.emit = k if emit is None else emit

    def region_text(self, box):
        return REGION_START + REGION_PATCH_TOKEN * self.emit + REGION_END

    def prepare(self, image):
        return None

    def collate(self, prepared):
        return pvit.interfaces.RegionInputs()


def collator(tok=None, template="plain", encoder="stub", **kw):
    tok = tok or word_tokenizer()
    enc = StubRegionEncoder() if encoder == "stub" else encoder
    kw.setdefault("image_transform", lambda im: torch.zeros(3, 8, 8))
    return Collator(tok, get_template(template, tok), num_image_tokens=N_IMG, region_encoder=enc, **kw)


def img(w=20, h=16):
    return Image.new("RGB", (w, h), (200, 10, 10))


def conv(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def sample(*values, image=True, sid="s0", **extra):
    return {"id": sid, "image": img() if image else None, "conversations": conv(*values),
            "meta": {"file": "data/train.json"}, **extra}


def labelled(batch, b=0):
    lab = batch["labels"][b]
    return lab[lab != IGNORE_INDEX].tolist()


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------ templates, labels


def test_vicuna_multi_turn_labels_are_the_replies_and_eos():
    tok = word_tokenizer()
    col = collator(tok, template="vicuna_v1_1")
    batch = col([sample(f"what is the color of {R} ?", "red", "and this square ?", "blue circle")])
    assert labelled(batch) == ids(tok, "red") + [tok.eos_token_id] + ids(tok, "blue circle") + [tok.eos_token_id]
    assert batch["input_ids"][0, 0] == tok.bos_token_id
    text = tok.decode(batch["input_ids"][0])
    assert "user" in text.lower() and "assistant" in text.lower()


@pytest.mark.parametrize("trim", [False, True], ids=["verbatim", "trims-content"])
def test_chat_template_labels_exactly_replies_and_end_token(trim):
    tmpl = CHATML.replace("m['content']", "m['content'] | trim") if trim else CHATML
    tok = word_tokenizer(tmpl, extra_special=("<|im_start|>", "<|im_end|>"))
    t = get_template("auto", tok)
    assert isinstance(t, ChatTemplate) and t.end_tokens == ("<|im_end|>",)
    col = Collator(tok, t, image_transform=lambda im: torch.zeros(3, 8, 8), num_image_tokens=N_IMG,
                   region_encoder=StubRegionEncoder())
    s = sample(f"what is the color of {R} ?", "red", "and this square ?", "a blue circle")
    batch = col([s])
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert labelled(batch) == ids(tok, "red") + [end] + ids(tok, "a blue circle") + [end]
    # the whole sequence is the tokenizer's own rendering (pvit's placeholders in place of <image> and the region)
    rendered = [{"role": "user", "content": f"{IMAGE_PATCH_TOKEN * N_IMG}\nwhat is the color of "
                 f"{REGION_START}{REGION_PATCH_TOKEN}{REGION_END} ?"}, {"role": "assistant", "content": "red"},
                {"role": "user", "content": "and this square ?"}, {"role": "assistant", "content": "a blue circle"}]
    want = ids(tok, tok.apply_chat_template(rendered, tokenize=False))
    assert batch["input_ids"][0].tolist() == want
    gen = Collator(tok, t, image_transform=lambda im: torch.zeros(3, 8, 8), num_image_tokens=N_IMG,
                   region_encoder=StubRegionEncoder(), generate=True)
    g = gen([s])
    prompt = ids(tok, tok.apply_chat_template(rendered[:3], tokenize=False, add_generation_prompt=True))
    assert g["input_ids"][0].tolist() == prompt and g["answers"] == ["a blue circle"]
    assert end in gen.stop_token_ids and tok.eos_token_id in gen.stop_token_ids


def test_chat_template_without_end_token_appends_eos():
    tok = word_tokenizer("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n{% endfor %}")
    col = collator(tok, template="chat")
    batch = col([sample("what is this ?", "red", "and this ?", "blue")])
    assert labelled(batch) == ids(tok, "red") + [tok.eos_token_id] + ids(tok, "blue") + [tok.eos_token_id]


def test_unknown_template_names_the_valid_ones_and_the_closest():
    with pytest.raises(RecipeError, match=r"'vicuna_v11' \(did you mean 'vicuna_v1_1'\?\); valid: auto, vicuna_v1_1, "):
        get_template("vicuna_v11", word_tokenizer())


def test_chat_template_that_rewrites_contents_is_refused():
    tok = word_tokenizer("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}")
    with pytest.raises(DataError, match="rewrites message contents"):
        get_template("chat", tok)


def test_dynamic_padding_right_for_training_left_for_generation():
    col = collator()
    short, long = sample("what ?", "red", sid="a"), sample("what is the color of this long story ?", "blue", sid="b")
    batch = col([short, long])
    lengths = batch["attention_mask"].sum(1).tolist()
    assert batch["input_ids"].shape[1] == max(lengths) and lengths[0] < lengths[1]
    assert batch["attention_mask"][0, -1] == 0 and batch["attention_mask"][0, 0] == 1
    alone = col([short])
    assert alone["input_ids"].shape[1] == lengths[0]  # padded to the batch's longest, not to max_length
    gen = collator(generate=True)([short, long])
    assert gen["attention_mask"][0, 0] == 0 and gen["attention_mask"][0, -1] == 1


def test_regions_are_rendered_by_the_region_encoder():
    tok = word_tokenizer()
    r2 = format_pvit((0.5, 0.5, 0.9, 0.8))
    batch = collator(tok, encoder=StubRegionEncoder(k=2))([sample(f"is {R} left of {r2} ?", "red")])
    assert (batch["input_ids"] == tok.convert_tokens_to_ids(REGION_PATCH_TOKEN)).sum() == 4
    regions = batch["regions"]
    assert torch.equal(regions.boxes, torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 0.9, 0.8]]))
    assert regions.counts.tolist() == [2] and regions.image_index.tolist() == [0, 0]
    assert regions.sample_index.tolist() == [0, 0] and regions.per_sample(1).tolist() == [2]
    text_coords = pvit.build("region_encoder", "text-coords")
    tok2 = word_tokenizer()
    tok2.add_tokens(text_coords.special_tokens, special_tokens=True)
    b2 = collator(tok2, encoder=text_coords)([sample(f"is {R} red ?", "red")])
    toks = tok2.convert_ids_to_tokens(b2["input_ids"][0])
    assert toks[toks.index(REGION_START):toks.index(REGION_END) + 1] == [
        REGION_START, "<L100>", "<L200>", "<L500>", "<L600>", REGION_END]
    assert REGION_PATCH_TOKEN not in toks



def test_regions_record_of_a_batch():
    a, b = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.3, 0.3, 0.9, 0.7]])
    regions = Regions.from_per_image([a, torch.zeros(0, 4), b], image_sample=[0, 2, 3])  # images of rows 0, 2, 3
    assert len(regions) == 3 and regions.counts.tolist() == [2, 0, 1]
    assert regions.image_index.tolist() == [0, 0, 2] and regions.sample_index.tolist() == [0, 0, 3]
    assert regions.per_sample(5).tolist() == [2, 0, 0, 1, 0]
    assert [t.tolist() for t in regions.per_image()] == [a.tolist(), [], b.tolist()]
    assert regions.to("cpu").boxes.tolist() == torch.cat([a, b]).tolist()
    empty = Regions.empty(2)
    assert len(empty) == 0 and empty.counts.tolist() == [0, 0] and tuple(empty.boxes.shape) == (0, 4)
    with pytest.raises(ValueError, match=r"image 1 have shape \(3,\); valid: \(R_b, 4\)"):
        Regions.from_per_image([a, torch.zeros(3)])
    with pytest.raises(ValueError, match=r"counts \[1\] sum to 1, but there are 2 boxes"):
        Regions(a, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"image_index has shape \(1,\); valid: \(2,\)"):
        Regions(a, torch.zeros(1, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.tensor([2]))
    assert IGNORE_INDEX == pvit.interfaces.IGNORE_INDEX == -100

# ------------------------------------------------------------------------------------------ item 17: boxes

BAD = {
    "x2 < x1": "<Region><L600><L200><L500><L600></Region>",
    "zero area": "<Region><L100><L200><L100><L600></Region>",
    "nan": "<Region>[nan, 0.2, 0.5, 0.6]</Region>",
    "inf": "<Region>[0.1, 0.2, inf, 0.6]</Region>",
    "negative": "<Region>[-0.1, 0.2, 0.5, 0.6]</Region>",
    "beyond": "<Region>[0.1, 0.2, 1.5, 0.6]</Region>",
    "L1500": "<Region><L100><L200><L1500><L600></Region>",
    "three coordinates": "<Region><L100><L200><L500></Region>",
    "no box": "<Region></Region>",
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_box_raises_naming_file_sample_box_and_value(case):
    bad = BAD[case]
    with pytest.raises(InvalidRegionError) as e:
        collator()([sample(f"is {R} like {bad} ?", "red", sid="s7")])
    msg = str(e.value)
    assert "data/train.json" in msg and "sample s7" in msg and "box 1" in msg
    assert bad in msg or bad.replace("<Region>", "").replace("</Region>", "") in msg


def test_clip_and_drop_are_opt_in_and_counted():
    s = sample(f"is {R} like {BAD['beyond']} or {BAD['x2 < x1']} ?", "red")
    clip = collator(region_policy="clip")
    b = clip([s])
    assert clip.region_stats.clipped == 1 and clip.region_stats.dropped == 1 and len(b["regions"]) == 2
    assert b["regions"].boxes[1].tolist() == pytest.approx([0.1, 0.2, 1.0, 0.6])
    drop = collator(region_policy="drop")
    b = drop([s])
    assert drop.region_stats.dropped == 2 and b["regions"].counts.tolist() == [1]
    assert "the region" in drop.tok.decode(b["input_ids"][0])


# ------------------------------------------------------------------------------------------ item 18: counts


def test_explicit_boxes_must_match_the_mentions():
    s = sample(f"is {R} left of {R} ?", "yes", boxes=[(0.1, 0.1, 0.3, 0.3)], sid="x9")
    with pytest.raises(DataError, match=r"sample x9 of data/train.json: 2 region mention\(s\) in the text but 1 box"):
        collator()([s])
    s["boxes"] = [(0.1, 0.1, 0.3, 0.3), (0.123456, 0.2, 0.9, 0.95)]
    batch = collator()([s])
    assert torch.equal(batch["regions"].boxes, torch.tensor(s["boxes"]))  # the sample's boxes, at full precision
    s["boxes"][1] = (0.9, 0.2, 0.1, 0.95)
    with pytest.raises(InvalidRegionError, match="box 1"):
        collator()([s])
    grounding = sample(f"where is {R} ?", f"left of {R}", boxes=[(0.1, 0.1, 0.3, 0.3), (0.5, 0.5, 0.7, 0.7)])
    held_out = collator(generate=True)([grounding])  # the answer's box is held out with the answer
    assert torch.equal(held_out["regions"].boxes, torch.tensor([[0.1, 0.1, 0.3, 0.3]]))
    assert held_out["answers"] == [f"left of {R}"]


def test_region_text_with_the_wrong_placeholder_count_is_a_collation_error():
    with pytest.raises(DataError, match=r"sample s0 of data/train.json: .* 2 <region_patch> placeholders but "
                                        r"declares tokens_per_region=1"):
        collator(encoder=StubRegionEncoder(k=1, emit=2))([sample(f"what is {R} ?", "red")])


def test_literal_placeholder_in_the_data_is_a_collation_error_not_a_splice_error():
    s = sample(f"what is {R} {REGION_PATCH_TOKEN} ?", "red", sid="lit")
    with pytest.raises(DataError, match=r"sample lit of data/train.json: 2 region placeholder tokens .* but 1") as e:
        collator()([s])
    assert not isinstance(e.value, SpliceError)
    with pytest.raises(DataError, match=r"sample lit2 .*: the text has 2 <image> placeholders"):
        collator()([sample("<image> what <image> ?", "red", sid="lit2")])


# ------------------------------------------------------------------------------------------ item 19: length


def test_truncation_never_cuts_a_span_and_never_leaves_a_masked_sample():
    """Every max_length: the sample is dropped (counted) or kept with targets and consistent placeholders."""
    tok = word_tokenizer()
    long_reply = f"a long story about {R} and more words here and {R} shapes"
    s = sample(f"what is {R} ?", "red", "and more ?", long_reply)
    full = len(collator(tok)([s])["input_ids"][0])
    outcomes = set()
    for max_length in range(1, full + 2):
        col = collator(tok, max_length=max_length)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            enc = col.encode(s)
        if enc is None:
            assert col.stats["dropped_too_long"] == 1 and any("dropped" in str(x.message) for x in w)
            outcomes.add("dropped")
            continue
        assert len(enc["input_ids"]) <= max_length
        assert any(v != IGNORE_INDEX for v in enc["labels"])
        n_patch = enc["input_ids"].count(tok.convert_tokens_to_ids(REGION_PATCH_TOKEN))
        assert n_patch == len(enc["boxes"])  # no region span cut in half
        starts = enc["input_ids"].count(tok.convert_tokens_to_ids(REGION_START))
        ends = enc["input_ids"].count(tok.convert_tokens_to_ids(REGION_END))
        assert starts == ends == n_patch
        outcomes.add(f"{n_patch} regions")
        if max_length <= full - 1:
            assert col.stats["truncated"] == 1 and any("truncated" in str(x.message) for x in w)
            outcomes.add("truncated")
    # dropped; cut after the first reply; cut inside the long reply before, between and after its two regions
    assert outcomes == {"dropped", "truncated", "1 regions", "2 regions", "3 regions"}


def test_a_batch_of_only_too_long_samples_is_an_error():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="every sample of a batch was dropped"):
            collator(max_length=3)([sample("what is the color ?", "red")])


# ------------------------------------------------------------------------------------------ item 20: images


def _write_stage(tmp_path, images: dict[str, bytes | None]):
    """A single-file pvit-instruct dataset: one record per image name (None = text-only)."""
    folder = tmp_path / "images"
    folder.mkdir()
    recs = []
    for name, data in images.items():
        if data is not None:
            (folder / name).write_bytes(data)
        rec = {"conversations": conv(f"what is {R} ?" if name != "text" else "what is red ?", "red")}
        if name != "text":
            rec["image"] = name
        recs.append(rec)
    path = tmp_path / "train.json"
    path.write_text(json.dumps(recs))
    return path, folder


def _png(size=(20, 16)):
    import io

    buf = io.BytesIO()
    img(*size).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "not an image", "bomb"])
def test_bad_images_through_a_dataset_name_path_and_sample(tmp_path, monkeypatch, case):
    data = {"missing": None, "empty": b"", "truncated": _png()[:60], "not an image": b"hello, not a png",
            "bomb": _png((64, 64))}[case]
    path, folder = _write_stage(tmp_path, {"ok.png": _png(), "bad.png": data})
    if case == "missing":
        (folder / "bad.png").unlink(missing_ok=True)
    if case == "bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    ds = pvit.build("dataset", "pvit-instruct", path=str(path), image_folder=str(folder))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collator())
    with pytest.raises(DataError) as e:
        next(iter(loader))
    assert str(folder / "bad.png") in str(e.value) and "'train/1'" in str(e.value)


def test_skip_policy_is_bounded_and_reported(tmp_path):
    names = {f"{i}.png": _png() for i in range(7)} | {"bad.png": b""}
    path, folder = _write_stage(tmp_path, names)
    ds = pvit.build("dataset", "pvit-instruct", path=str(path), image_folder=str(folder), image_policy="skip",
                    max_skip_fraction=0.2)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collator()))
    assert sum(len(b["ids"]) for b in batches) == 8 and ds.report()["images"]["skipped"] == 1
    strict = pvit.build("dataset", "pvit-instruct", path=str(path), image_folder=str(folder), image_policy="skip",
                        max_skip_fraction=0.1)
    with pytest.raises(DataError, match="too many unusable images"):
        list(torch.utils.data.DataLoader(strict, batch_size=4, collate_fn=collator()))


def test_image_path_in_a_sample_is_loaded_safely(tmp_path):
    s = sample("what ?", "red", sid="p1")
    s["image"] = str(tmp_path / "nope.png")
    with pytest.raises(DataError, match=r"nope\.png.*sample 'p1'"):
        collator()([s])
    (tmp_path / "ok.png").write_bytes(_png())
    s["image"] = str(tmp_path / "ok.png")
    assert collator()([s])["pixels"].shape == (1, 3, 8, 8)


# ------------------------------------------------------------------------------------------ item 21: frames


@pytest.fixture(scope="module")
def regionclip():
    return pvit.build("region_encoder", "regionclip", model={"layers": [1, 1, 1, 1], "width": 8, "image_size": 64,
                                                             "output_dim": 16}, min_size=40, max_size=72)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(w=st.integers(12, 90), h=st.integers(12, 90), fx=st.tuples(*[st.floats(0, 1)] * 4),
       other=st.tuples(st.integers(12, 90), st.integers(12, 90)))
def test_box_covers_the_same_pixels_after_regionclip_resize_and_pad(regionclip, w, h, fx, other):
    """A white box painted on black: after prepare (resize) and collate (pad with a differently sized image), the
    box the encoder pools from (its RoIs, boxes -> pixels) covers the white pixels and nothing else."""
    import numpy as np

    x1, x2 = sorted(round(v * w) for v in fx[:2])
    y1, y2 = sorted(round(v * h) for v in fx[2:])
    if x2 - x1 < 4 or y2 - y1 < 4:
        x1, y1, x2, y2 = 0, 0, w, h
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[y1:y2, x1:x2] = 255
    box = (x1 / w, y1 / h, x2 / w, y2 / h)
    s = {"id": "f", "image": Image.fromarray(arr), "conversations": conv(f"what is {format_pvit(box)} ?", "red")}
    s2 = {"id": "g", "image": img(*other), "conversations": conv("what ?", "blue")}
    tok = word_tokenizer()
    col = Collator(tok, get_template("plain", tok), image_transform=lambda im: torch.zeros(3, 8, 8),
                   num_image_tokens=N_IMG, region_encoder=regionclip, region_policy="error")
    batch = col([s2, s])
    inputs = batch["region_inputs"]
    exact = [torch.tensor([box])]  # the canonical box at full precision; the text carries it to 1/1000
    assert batch["regions"].image_index.tolist() == [1] and batch["regions"].counts.tolist() == [0, 1]
    assert torch.allclose(batch["regions"].boxes, exact[0], atol=1.01e-3)  # <L999> is the last grid step
    rois = regionclip._rois(inputs, Regions.from_per_image([torch.zeros(0, 4)] + exact), [1], torch.device("cpu"))
    assert rois.shape == (1, 5) and rois[0, 0].item() == 0.0  # batch index 0: the only image with a box
    _, bx1, by1, bx2, by2 = rois[0].tolist()
    hh, ww = inputs.sizes[1].tolist()
    std, mean = torch.tensor([0.26862954, 0.26130258, 0.27577711]), torch.tensor([0.48145466, 0.4578275, 0.40821073])
    pix = inputs.pixels[1] * std.view(3, 1, 1) + mean.view(3, 1, 1)  # (3, H, W) back in [0, 1]
    padding = inputs.pixels[1][:, hh:, :].abs().sum() + inputs.pixels[1][:, :, ww:].abs().sum()
    assert padding == 0  # zero padding right and bottom only: the box's pixels did not move
    gray = pix[:, :hh, :ww].mean(0)  # (hh, ww)
    ys, xs = torch.meshgrid(torch.arange(hh) + 0.5, torch.arange(ww) + 0.5, indexing="ij")  # pixel centres
    m = 1.0 + max(ww / w, hh / h)  # bilinear blur at the edges, in resized pixels
    inside = (xs > bx1 + m) & (xs < bx2 - m) & (ys > by1 + m) & (ys < by2 - m)
    outside = (xs < bx1 - m) | (xs > bx2 + m) | (ys < by1 - m) | (ys > by2 + m)
    if inside.any():
        assert gray[inside].min() > 0.9
    if outside.any():
        assert gray[outside].max() < 0.1


# ------------------------------------------------------------------------------------------ item 22: text-only


def test_text_only_samples_pass_through_a_region_dataset_and_a_mixed_batch_trains(tmp_path):
    from pvit.compose import build_model
    from omegaconf import OmegaConf

    path, folder = _write_stage(tmp_path, {"a.png": _png(), "text": None, "b.png": _png((30, 12)), "text2": None})
    recs = json.loads(path.read_text())
    recs[3] = {"conversations": conv("what is blue ?", "blue")}
    path.write_text(json.dumps(recs))
    ds = pvit.build("dataset", "pvit-instruct", path=str(path), image_folder=str(folder))
    assert ds[1]["image"] is None
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({
        "llm": {"name": "hf-causal-lm", "options": {"config": {
            "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256},
            "tokenizer": {"words": WORDS}}},
        "image_encoder": {"name": "openclip-vit", "options": {"model": {
            "image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16}}},
        "region_encoder": {"name": "regionclip", "options": {
            "model": {"layers": [1, 1, 1, 1], "width": 8, "image_size": 64, "output_dim": 16},
            "min_size": 32, "max_size": 32}},
        "projector": {"name": "mlp2x-gelu", "options": {}}, "region_projector": {"name": "linear", "options": {}},
        "bbox_embed": True,
    }))
    col = Collator(model.llm.tokenizer, get_template("plain", model.llm.tokenizer),
                   image_transform=model.image_encoder.transform, num_image_tokens=model.num_image_tokens,
                   region_encoder=model.region_encoder, max_length=64)
    batch = col([ds[i] for i in range(4)])
    assert batch["image_sample"].tolist() == [0, 2] and batch["regions"].per_sample(4).tolist() == [1, 0, 1, 0]
    assert batch["regions"].sample_index.tolist() == [0, 2] and batch["regions"].image_index.tolist() == [0, 1]
    assert col.stats["text_only"] == 2 and col.stats["with_image"] == 2
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        if not losses:  # the image samples' regions reach the loss
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.region_projector.parameters())
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.7 * losses[0], losses
