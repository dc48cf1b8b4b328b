"""pvit built-in plugin: the ``text-coords`` region encoder (boxes written as coordinate text, no features)."""

import pvit


def make_text_coords(style: str = "pvit"):
    """Build the coordinate-text baseline region encoder.

    Options:
        style: ``"pvit"`` renders ``<Region><L204><L469><L810><L960></Region>`` (6 atomic tokens per box,
            ``<L0>``..``<L999>`` and the region tags added to the tokenizer); ``"shikra"`` renders Shikra's
            plain ``[0.204,0.469,0.810,0.960]`` (no new tokens).
    """
    from pvit_text_coords.encoder import TextCoordsEncoder

    return TextCoordsEncoder(style=style)


def make_no_regions(text: str = "the region"):
    """The LLaVA baseline of the ablation: no region information at all.

    Every region mention becomes the plain words ``text`` (default "the region"): no features, no
    coordinates, no new tokens. It sets ``carries_box = False`` so the contract check does not ask different
    boxes to render differently.

    Options:
        text: the words that replace each mention.
    """
    from pvit_text_coords.encoder import NoRegionEncoder

    return NoRegionEncoder(text=text)


@pvit.hookimpl
def pvit_register_region_encoders(register):
    register("text-coords", make_text_coords)
    register("none", make_no_regions)
