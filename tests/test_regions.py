"""Tests for pvit.regions: text forms, parsing policies, validation and coordinate frames."""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from pvit import regions as R
from pvit.errors import InvalidRegionError

SETTINGS = settings(max_examples=60, deadline=None)
WHERE = "data/stage2/x.json sample 12"
GOOD = "<Region><L1><L2><L300><L400></Region>"


@st.composite
def boxes(draw, min_side=0.0):
    """Valid canonical boxes with sides of at least ``min_side``."""
    x1 = draw(st.floats(0.0, 1.0 - max(min_side, 1e-6), allow_nan=False))
    y1 = draw(st.floats(0.0, 1.0 - max(min_side, 1e-6), allow_nan=False))
    x2 = draw(st.floats(min(1.0, x1 + max(min_side, 1e-6)), 1.0, allow_nan=False))
    y2 = draw(st.floats(min(1.0, y1 + max(min_side, 1e-6)), 1.0, allow_nan=False))
    return (x1, y1, x2, y2)


grid_boxes = st.tuples(st.integers(0, 998), st.integers(0, 998)).flatmap(
    lambda a: st.tuples(st.just(a[0]), st.just(a[1]), st.integers(a[0] + 1, 999), st.integers(a[1] + 1, 999))
)


# ------------------------------------------------------------------------------------------ tokens, formats


def test_loc_tokens_and_coord_codes():
    assert len(R.LOC_TOKENS) == 1000 and R.LOC_TOKENS[0] == "<L0>" and R.LOC_TOKENS[-1] == "<L999>"
    assert R.encode_coord(0.0) == 0 and R.encode_coord(1.0) == 999 and R.encode_coord(0.204) == 204
    assert R.decode_coord(204) == 0.204 and R.decode_coord(0) == 0.0
    for bad in (-0.01, 1.01, math.nan, math.inf, "0.5"):
        with pytest.raises(InvalidRegionError):
            R.encode_coord(bad)
    for bad in (-1, 1000, 1500, 2.0, True):
        with pytest.raises(InvalidRegionError):
            R.decode_coord(bad)


def test_formats_match_pvit_and_shikra_strings():
    box = (0.204, 0.469, 0.81, 0.96)
    assert R.format_pvit(box) == "<Region><L204><L469><L810><L960></Region>"
    assert R.format_pvit((0.0, 0.032, 1.0, 1.0)) == "<Region><L0><L32><L999><L999></Region>"  # not zero-padded
    assert R.format_shikra(box) == "[0.204,0.469,0.810,0.960]"
    assert R.format_shikra((0.0, 0.0, 1.0, 1.0)) == "[0.000,0.000,1.000,1.000]"
    with pytest.raises(InvalidRegionError):
        R.format_pvit((0.5, 0.1, 0.2, 0.3))


def test_box_thinner_than_the_grid_stays_a_valid_box():
    for box in ((0.1001, 0.2, 0.1003, 0.3), (0.9996, 0.2, 1.0, 0.3)):
        (m,) = R.find_mentions(R.format_pvit(box))
        assert m.box[2] > m.box[0] and abs(m.box[0] - box[0]) <= 0.002
        (s,) = R.find_shikra(R.format_shikra(box))
        assert s.box[2] > s.box[0]


@SETTINGS
@given(boxes(min_side=0.002))
@example((0.0, 0.0, 1.0, 1.0))
@example((0.0005, 0.0015, 0.9995, 0.9985))
def test_pvit_text_round_trip(box):
    (m,) = R.find_mentions(f"look at {R.format_pvit(box)} please")
    for a, b in zip(box, m.box):
        assert abs(a - b) <= (0.0005 if a <= 0.9995 else 0.001) + 1e-9


@SETTINGS
@given(grid_boxes)
def test_pvit_text_round_trip_is_exact_on_the_grid(codes):
    box = tuple(c / 1000 for c in codes)
    assert R.format_pvit(box) == "<Region>" + "".join(f"<L{c}>" for c in codes) + "</Region>"
    assert R.find_mentions(R.format_pvit(box))[0].box == box


@SETTINGS
@given(boxes(min_side=0.002))
@example((0.0, 0.0, 1.0, 1.0))
def test_shikra_text_round_trip(box):
    (m,) = R.find_shikra(f"it is at {R.format_shikra(box)}.")
    assert all(abs(a - b) <= 0.0005 + 1e-9 for a, b in zip(box, m.box))


@SETTINGS
@given(grid_boxes)
def test_shikra_round_trip_is_exact_for_three_decimals(codes):
    box = tuple(c / 1000 for c in codes)
    assert R.find_shikra(R.format_shikra(box))[0].box == box


# ------------------------------------------------------------------------------------------------ parsing


def test_find_mentions_in_order_with_whitespace_and_generation_form():
    text = (
        "<image>\nWhat is in <Region> <L204> <L469>\n<L810><L960> </Region> and "
        "<Region>[0.064, 0.345, 0.202, 0.599]</Region>? " + GOOD
    )
    ms = R.find_mentions(text)
    assert [m.box for m in ms] == [(0.204, 0.469, 0.81, 0.96), (0.064, 0.345, 0.202, 0.599), (0.001, 0.002, 0.3, 0.4)]
    assert [m.index for m in ms] == [0, 1, 2]
    assert all(text[m.start : m.end] == m.text for m in ms)
    assert R.find_mentions("no regions here [0.1,0.2,0.3,0.4]") == []


def test_find_shikra_multi_box_gives_one_mention_per_box():
    text = "two dogs [0.1,0.2,0.3,0.4;0.5,0.5,0.6,0.7] and a list [1, 2] and [0.100, 0.2, 0.3, 0.5]"
    ms = R.find_shikra(text)
    assert [m.box for m in ms] == [(0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.6, 0.7), (0.1, 0.2, 0.3, 0.5)]
    assert ms[0].start == ms[1].start and ms[0].text == ms[1].text == "[0.1,0.2,0.3,0.4;0.5,0.5,0.6,0.7]"
    assert [m.index for m in ms] == [0, 1, 2]


MALFORMED_PVIT = [
    ("<Region></Region>", "no box"),
    ("<Region><L1><L2><L3></Region>", "3 coordinates"),
    ("<Region><L1><L2><L1500><L4></Region>", "<L1500>"),
    ("<Region><L500><L2><L300><L400></Region>", "x2=0.3 < x1=0.5"),
    ("<Region><L100><L200><L100><L400></Region>", "zero area"),
    ("<Region><Lx><L2><L3><L4></Region>", "<Lx>"),
    ("<Region>[0.1, 0.2, nan, 0.5]</Region>", "x2=nan"),
    ("<Region>[0.1, 0.2, 0.3, inf]</Region>", "y2=inf"),
    ("<Region>[-0.1, 0.2, 0.3, 0.5]</Region>", "x1=-0.1 is negative"),
    ("<Region>[0.1, 0.2, 0.3, 1.2]</Region>", "y2=1.2 is beyond the image"),
    ("<Region><L1><L2><L3><L4>", "no matching </Region>"),
    ("stray </Region>", "no matching <Region>"),
]


@pytest.mark.parametrize("bad, fragment", MALFORMED_PVIT)
def test_malformed_pvit_mention_raises_naming_where_index_and_value(bad, fragment):
    with pytest.raises(InvalidRegionError) as e:
        R.find_mentions(f"first {GOOD} then {bad} end", where=WHERE)
    msg = str(e.value)
    assert WHERE in msg and "box 1" in msg and fragment in msg
    assert "0 <= x1 < x2 <= 1" in msg or "<L0>..<L999>" in msg  # says what would be valid


MALFORMED_SHIKRA = [
    ("[0.1,0.2,0.3]", "3 coordinates"),
    ("[1, 2, 3, 4]", "beyond the image"),
    ("[-0.1,0.2,0.3,0.4]", "negative"),
    ("[0.5,0.2,0.3,0.4]", "x2=0.3 < x1=0.5"),
    ("[0.1,0.2,0.1,0.4]", "zero area"),
    ("[0.1,0.2,0.3,nan]", "y2=nan"),
]


@pytest.mark.parametrize("bad, fragment", MALFORMED_SHIKRA)
def test_malformed_shikra_box_raises(bad, fragment):
    with pytest.raises(InvalidRegionError) as e:
        R.find_shikra(f"at [0.1,0.1,0.2,0.2] and {bad}", where=WHERE)
    assert WHERE in str(e.value) and "box 1" in str(e.value) and fragment in str(e.value)


@pytest.mark.parametrize(
    "box, fragment",
    [
        ((0.1, 0.2, 0.3), "3 coordinates"),
        ((0.1, 0.2, 0.3, math.nan), "not finite"),
        ((0.1, 0.2, math.inf, 0.4), "not finite"),
        ((-0.01, 0.2, 0.3, 0.4), "negative"),
        ((0.1, 0.2, 1.0001, 0.4), "beyond the image"),
        ((0.3, 0.2, 0.1, 0.4), "x2=0.1 < x1=0.3"),
        ((0.1, 0.4, 0.3, 0.4), "zero area"),
        ((0.1, "0.2", 0.3, 0.4), "not a number"),
        (None, "not a sequence"),
    ],
)
def test_validate_box_never_clamps_silently(box, fragment):
    with pytest.raises(InvalidRegionError) as e:
        R.validate_box(box, where=WHERE, index=3)
    assert WHERE in str(e.value) and "box 3" in str(e.value) and fragment in str(e.value)


def test_validate_box_accepts_numpy_scalars_and_returns_floats():
    out = R.validate_box(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))
    assert isinstance(out, tuple) and all(type(v) is float for v in out)
    assert out == pytest.approx((0.1, 0.2, 0.3, 0.4))


def test_clip_policy_counts_and_replaces_dropped_text():
    text = (
        "a " + GOOD  # kept
        + " b <Region><L1><L2><L1500><L4></Region>"  # x2 = 1.5 -> clipped to 1.0
        + " c <Region><L500><L2><L300><L400></Region>"  # reversed -> dropped, not swapped
        + " d <Region>[1.2, 0.1, 1.5, 0.2]</Region>"  # zero width after clipping -> dropped
        + " e <Region>[-0.2, 0.1, 0.5, 0.2]</Region>"  # clipped
    )
    stats = R.RegionStats()
    new, got = R.rewrite_mentions(text, R.format_shikra, policy="clip", where=WHERE, stats=stats)
    assert (stats.total, stats.clipped, stats.dropped) == (5, 2, 2)
    assert got == [(0.001, 0.002, 0.3, 0.4), (0.001, 0.002, 1.0, 0.004), (0.0, 0.1, 0.5, 0.2)]
    assert new.count(R.DROPPED_REGION_TEXT) == 2 and "<Region>" not in new
    assert new.startswith("a [0.001,0.002,0.300,0.400] b [0.001,0.002,1.000,0.004] c the region d the region e")
    assert all(WHERE in ex for ex in stats.examples) and len(stats.examples) == 4
    assert [m.index for m in R.find_mentions(text, policy="clip")] == [0, 1, 4]


def test_drop_policy_drops_what_clip_would_repair():
    text = "a " + GOOD + " b <Region><L1><L2><L1500><L4></Region> c <Region></Region> </Region>"
    stats = R.RegionStats()
    new, got = R.rewrite_mentions(text, R.format_pvit, policy="drop", stats=stats)
    assert got == [(0.001, 0.002, 0.3, 0.4)]
    assert (stats.total, stats.clipped, stats.dropped) == (4, 0, 3)
    assert new == "a " + GOOD + " b the region c the region "  # a stray </Region> is just removed
    stats2 = R.RegionStats()
    assert len(R.find_shikra("[0.1,0.2,0.3] [0.1,0.2,0.3,0.4]", policy="drop", stats=stats2)) == 1
    assert (stats2.total, stats2.dropped) == (2, 1)


def test_unknown_policy_and_stats_merge():
    with pytest.raises(ValueError, match="error, clip, drop"):
        R.find_mentions(GOOD, policy="fix")
    a, b = R.RegionStats(total=3, clipped=1), R.RegionStats(total=2, dropped=1, examples=["x"])
    assert a.merge(b).as_dict() == {"total": 5, "clipped": 1, "dropped": 1, "examples": ["x"]}
    assert "5 boxes" in a.summary()


# ---------------------------------------------------------------------------------------- coordinate frames

sizes = st.tuples(st.integers(1, 2000), st.integers(1, 2000))


@SETTINGS
@given(boxes(), sizes)
def test_pixel_coco_and_square_round_trips(box, wh):
    w, h = wh
    assert R.from_pixels(R.to_pixels(box, w, h), w, h) == pytest.approx(box, abs=1e-9)
    assert R.from_coco_xywh(R.to_coco_xywh(box, w, h), w, h) == pytest.approx(box, abs=1e-9)
    sq = R.to_square(box, w, h)
    assert all(-1e-9 <= v <= 1 + 1e-9 for v in sq)
    assert R.from_square(sq, w, h) == pytest.approx(box, abs=1e-9)


def test_coco_and_square_reference_values():
    assert R.from_coco_xywh((10, 20, 30, 40), 100, 200) == (0.1, 0.1, 0.4, 0.3)
    # 100 x 50 image: pasted at y = 25 on a 100 x 100 canvas; 50 x 101: at x = 25 on 101 x 101
    assert R.to_square((0.0, 0.0, 1.0, 1.0), 100, 50) == (0.0, 0.25, 1.0, 0.75)
    assert R.square_offsets(50, 101) == (101, 25, 0)
    assert R.square_offsets(101, 50) == (101, 0, 25)


def _mask(w, h, xyxy):
    m = np.zeros((h, w), dtype=np.uint8)
    x1, y1, x2, y2 = (int(round(v)) for v in xyxy)
    m[y1:y2, x1:x2] = 255
    return m


def _expand2square(img):  # LLaVA / Shikra placement, written independently of pvit.regions
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), 0)
    canvas.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return canvas


@st.composite
def pixel_box_in_image(draw):
    w, h = draw(st.integers(2, 40)), draw(st.integers(2, 40))
    x1, y1 = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
    x2, y2 = draw(st.integers(x1 + 1, w)), draw(st.integers(y1 + 1, h))
    return w, h, (x1, y1, x2, y2)


@settings(max_examples=40, deadline=None)
@given(pixel_box_in_image(), st.integers(1, 4), st.integers(1, 4), st.integers(0, 7), st.integers(0, 7))
def test_box_covers_the_same_pixels_after_resize_pad_and_square(case, sx, sy, pad_r, pad_b):
    w, h, px = case
    box = R.from_pixels(px, w, h)  # canonical
    img = Image.fromarray(_mask(w, h, px))

    # resize (integer factors, nearest): the resized box covers exactly the resized marked pixels
    big = np.asarray(img.resize((w * sx, h * sy), Image.NEAREST))
    assert np.array_equal(big, _mask(w * sx, h * sy, R.to_pixels(box, w * sx, h * sy)))
    assert np.array_equal(big, _mask(w * sx, h * sy, R.resize_box_pixels(px, (w, h), (w * sx, h * sy))))

    # zero-pad right / bottom (RegionCLIP batching): pixel coordinates are unchanged
    padded = Image.new("L", (w + pad_r, h + pad_b), 0)
    padded.paste(img, (0, 0))
    assert np.array_equal(np.asarray(padded), _mask(w + pad_r, h + pad_b, R.to_pixels(box, w, h)))

    # expand2square: the square-frame box covers the marked pixels of the square canvas
    sq = _expand2square(img)
    side = sq.size[0]
    assert np.array_equal(np.asarray(sq), _mask(side, side, R.to_pixels(R.to_square(box, w, h), side, side)))


def test_box_and_frame_names_stay_importable_from_pvit_regions():
    from pvit import boxes, frames

    for module, names in ((boxes, ("POLICIES", "RegionStats", "validate_box", "Box")),
                          (frames, ("to_pixels", "from_pixels", "to_coco_xywh", "from_coco_xywh", "square_offsets",
                                    "to_square", "from_square", "resize_box_pixels"))):
        assert all(getattr(R, n) is getattr(module, n) for n in names), module
