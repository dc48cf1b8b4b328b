"""COCO category synonyms and the synonym matcher used by region-recognition."""

from __future__ import annotations

from functools import lru_cache

from pvit_evaluators.normalize import normalize_answer, tokens

#: The 80 COCO 2017 category names -> common synonyms (plurals are added automatically, see [plural][]).
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("people", "man", "woman", "boy", "girl", "child", "kid", "guy", "lady", "player", "human",
               "skier", "surfer", "skateboarder", "snowboarder", "pedestrian", "baby"),
    "bicycle": ("bike", "cycle"),
    "car": ("automobile", "taxi", "sedan", "cab"),
    "motorcycle": ("motorbike", "motor bike", "moped", "scooter"),
    "airplane": ("plane", "aeroplane", "airliner", "jet", "aircraft"),
    "bus": ("coach bus", "school bus", "double decker"),
    "train": ("locomotive", "railcar", "tram"),
    "truck": ("lorry", "pickup", "pickup truck"),
    "boat": ("ship", "sailboat", "canoe", "kayak", "yacht"),
    "traffic light": ("traffic signal", "stoplight", "stop light", "signal light"),
    "fire hydrant": ("hydrant",),
    "stop sign": ("stop signal",),
    "parking meter": ("meter",),
    "bench": ("park bench",),
    "bird": ("pigeon", "seagull", "gull", "duck", "goose", "parrot"),
    "cat": ("kitten", "kitty"),
    "dog": ("puppy", "pup"),
    "horse": ("pony", "foal"),
    "sheep": ("lamb", "ram"),
    "cow": ("cattle", "bull", "calf", "ox"),
    "elephant": (),
    "bear": ("polar bear", "grizzly"),
    "zebra": (),
    "giraffe": (),
    "backpack": ("rucksack", "back pack", "knapsack"),
    "umbrella": ("parasol",),
    "handbag": ("purse", "hand bag"),
    "tie": ("necktie", "bow tie"),
    "suitcase": ("luggage", "suit case"),
    "frisbee": ("flying disc",),
    "skis": ("ski",),
    "snowboard": ("snow board",),
    "sports ball": ("ball", "soccer ball", "football", "tennis ball", "basketball", "volleyball"),
    "kite": (),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt", "baseball mitt"),
    "skateboard": ("skate board",),
    "surfboard": ("surf board",),
    "tennis racket": ("racket", "racquet", "tennis racquet"),
    "bottle": (),
    "wine glass": ("glass", "wineglass"),
    "cup": ("mug", "coffee cup"),
    "fork": (),
    "knife": (),
    "spoon": (),
    "bowl": (),
    "banana": (),
    "apple": (),
    "sandwich": ("sub", "burger", "hamburger"),
    "orange": ("tangerine",),
    "broccoli": (),
    "carrot": (),
    "hot dog": ("hotdog",),
    "pizza": (),
    "donut": ("doughnut",),
    "cake": ("cupcake",),
    "chair": ("stool",),
    "couch": ("sofa",),
    "potted plant": ("plant", "houseplant", "house plant", "pot plant"),
    "bed": (),
    "dining table": ("table", "dinner table", "kitchen table"),
    "toilet": (),
    "tv": ("television", "tv monitor", "monitor", "screen"),
    "laptop": ("laptop computer", "notebook computer"),
    "mouse": ("computer mouse",),
    "remote": ("remote control", "controller"),
    "keyboard": ("computer keyboard",),
    "cell phone": ("phone", "cellphone", "mobile phone", "smartphone"),
    "microwave": ("microwave oven",),
    "oven": ("stove",),
    "toaster": (),
    "sink": (),
    "refrigerator": ("fridge",),
    "book": (),
    "clock": (),
    "vase": (),
    "scissors": (),
    "teddy bear": ("teddy", "stuffed animal"),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer"),
    "toothbrush": ("tooth brush",),
}

_IRREGULAR = {"person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
              "knife": "knives", "calf": "calves", "ox": "oxen", "goose": "geese", "foot": "feet"}
_INVARIANT = {"sheep", "aircraft", "skis", "scissors", "broccoli", "people", "cattle", "luggage"}


def plural(phrase: str) -> str:
    """English plural of the last word of ``phrase`` ("wine glass" -> "wine glasses", "knife" -> "knives")."""
    *head, last = phrase.split()
    if last in _INVARIANT:
        word = last
    elif last in _IRREGULAR:
        word = _IRREGULAR[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        word = last + "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return " ".join(head + [word])


def names_of(category: str) -> set[str]:
    """Normalised names that count for ``category``: itself, its synonyms, and their plurals."""
    base = {category, *COCO_SYNONYMS.get(category, ())}
    return {normalize_answer(n) for b in base for n in (b, plural(b))} - {""}


@lru_cache(maxsize=64)
def _phrase_index(extra: tuple[str, ...]) -> dict[str, list[tuple[tuple[str, ...], str]]]:
    """first word -> [(phrase words, category)] for every COCO category plus ``extra`` categories."""
    index: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for cat in (*COCO_SYNONYMS, *extra):
        for name in names_of(cat):
            words = tuple(name.split())
            index.setdefault(words[0], []).append((words, cat))
    return index


def categories_in(text, extra: tuple[str, ...] = ()) -> set[str]:
    """Categories named in ``text``, counting only maximal phrases ("hot dog" names hot dog, not dog)."""
    words = tokens(text)
    index = _phrase_index(tuple(sorted(set(extra) - set(COCO_SYNONYMS))))
    spans = []
    for i, w in enumerate(words):
        for phrase, cat in index.get(w, ()):
            if tuple(words[i : i + len(phrase)]) == phrase:
                spans.append((i, i + len(phrase), cat))
    return {c for s, e, c in spans if not any(s2 <= s and e <= e2 and (s2, e2) != (s, e) for s2, e2, _ in spans)}


def synonym_match(prediction, category: str) -> bool:
    """True when ``prediction`` is a name of ``category`` (synonyms and plurals allowed), or names it and
    no other category: "it is a puppy" matches dog; "a man on a horse" matches neither person nor horse."""
    pred = normalize_answer(prediction)
    if not pred:
        return False
    if pred in names_of(category):
        return True
    return categories_in(pred, (category,)) == {category}
