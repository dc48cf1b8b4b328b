"""Built-in components conform to the Protocols of pvit.interfaces, declare optional attributes with their
documented types, and mark their file options so that preflight finds them (also for third-party factories)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import pvit
from pvit import plugins
from pvit.interfaces import OPTIONAL_ATTRIBUTES, PROTOCOLS, optional_attributes
from pvit.options import FileOption, file_option_values, file_options
from pvit.preflight import missing_files
from pvit.registry import KINDS
from pvit_vision.tiny import TINY_OPTIONS

MICRO = Path(__file__).parent / "recipes" / "micro.yaml"
BUILTIN_PACKAGES = {"pvit_data", "pvit_evaluators", "pvit_hf", "pvit_projectors", "pvit_regionclip", "pvit_synth",
                    "pvit_text_coords", "pvit_vision", "pvit_vit_roi", "pvit_generate"}
LLM_CONFIG = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}


def _builtin(kind: str) -> set[str]:
    return {n for n, f in pvit.components(kind).items() if f.__module__.split(".")[0] in BUILTIN_PACKAGES}


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 10), (10, 200, 30)).save(path)


def _data_files(root: Path) -> dict[str, dict]:
    """Options of every built-in dataset, over tiny files in its official format written under ``root``."""
    _img(root / "imgs/1.jpg")
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A dog."}]
    (root / "instruct.json").write_text(json.dumps([{"image": "1.jpg", "conversations": conv}]))
    (root / "coco.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg", "width": 20, "height": 10}],
        "categories": [{"id": 18, "name": "dog"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 18, "bbox": [2, 2, 8, 6], "area": 48, "iscrowd": 0}],
    }))
    (root / "gqa.json").write_text(json.dumps({"q1": {"imageId": "1", "question": "Is it a dog?", "answer": "yes",
                                                       "annotations": {"question": {}}}}))
    (root / "fine.jsonl").write_text(json.dumps({"image": "1.jpg", "instruction": "What?",
                                                 "instruction_no_region": "What?"}) + "\n")
    imgs = str(root / "imgs")
    return {
        "pvit-instruct": {"path": str(root / "instruct.json"), "image_folder": imgs},
        "coco-regions": {"annotations": str(root / "coco.json"), "image_folder": imgs},
        "gqa-regions": {"questions": str(root / "gqa.json"), "image_folder": imgs, "boxes": False},
        "fine-eval": {"path": str(root / "fine.jsonl"), "image_folder": imgs},
        "synth-regions": {"size": 2, "image_size": 32},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, dict]:
    """One built instance of every built-in component, by kind and name."""
    root = tmp_path_factory.mktemp("data")
    image = {n: pvit.build("image_encoder", n, **TINY_OPTIONS[n]) for n in _builtin("image_encoder")}
    enc = image["openclip-vit"]
    region_options = {
        "regionclip": {"model": {"layers": [1, 1, 1, 1], "width": 8, "image_size": 64, "output_dim": 16},
                       "min_size": 32, "max_size": 32},
        "vit-roi": {"image_encoder": enc}, "text-coords": {}, "none": {},
    }
    words = ["a", "dog", "what", "is", "it"]
    return {
        "image_encoder": image,
        "region_encoder": {n: pvit.build("region_encoder", n, **region_options[n]) for n in _builtin("region_encoder")},
        "projector": {n: pvit.build("projector", n, in_dim=8, out_dim=16) for n in _builtin("projector")},
        "llm": {n: pvit.build("llm", n, config=LLM_CONFIG, tokenizer={"words": words}) for n in _builtin("llm")},
        "dataset": {n: pvit.build("dataset", n, **o) for n, o in _data_files(root).items()},
        "evaluator": {n: pvit.build("evaluator", n) for n in _builtin("evaluator")},
        "generator": _generators(root),
    }


def _generators(root: Path) -> dict:
    """Every built-in generator: hf-local over a tiny random model saved offline, the others need no model."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from pvit_hf.model import build_word_tokenizer

    AutoModelForCausalLM.from_config(LlamaConfig(**LLM_CONFIG)).save_pretrained(root / "tiny-lm")
    build_word_tokenizer(["a", "dog"]).save_pretrained(root / "tiny-lm")
    options = {"template": {}, "openai-compatible": {"model": "m", "base_url": "http://127.0.0.1:9/v1"},
               "hf-local": {"model": str(root / "tiny-lm")}}
    return {n: pvit.build("generator", n, **options[n]) for n in _builtin("generator")}


def test_hf_local_generator_completes_with_token_counts(built):
    reply = built["generator"]["hf-local"].complete([{"role": "user", "content": "a dog"}], max_tokens=3,
                                                    temperature=0.0, seed=0, timeout=10)
    assert isinstance(reply.text, str) and reply.prompt_tokens > 0 and 1 <= reply.completion_tokens <= 3
    assert reply.finish_reason in ("stop", "length")


@pytest.mark.parametrize("kind", KINDS)
def test_builtin_components_conform_to_their_protocol(built, kind):
    assert set(built[kind]) == _builtin(kind)  # a new built-in component is covered here
    for name, comp in built[kind].items():
        protocol = PROTOCOLS[kind]
        assert isinstance(comp, protocol), f"{kind} {name!r} does not conform to {protocol.__name__}"


@pytest.mark.parametrize("kind", KINDS)
def test_optional_attributes_have_their_documented_types(built, kind):
    for name, comp in built[kind].items():
        for attr in OPTIONAL_ATTRIBUTES[kind]:
            if not hasattr(comp, attr.name):
                continue
            value = getattr(comp, attr.name)
            if attr.method:
                assert callable(value), f"{kind} {name!r}: {attr.name} must be a method"
            else:
                assert attr.check(value), f"{kind} {name!r}: {attr.name}={value!r} is not {attr.type}"
        groups = getattr(comp, "parameter_groups", None)
        if callable(groups):
            assert all(isinstance(g, str) for g in dict(groups()))


def test_datasets_yield_samples(built):
    for name, ds in built["dataset"].items():
        sample = ds[0]
        assert {"id", "image", "conversations"} <= set(sample), name
        assert sample["image"] is None or isinstance(sample["image"], (Image.Image, str)), name
        assert all({"from", "value"} <= set(t) for t in sample["conversations"]), name


def test_optional_attribute_table_covers_every_kind():
    assert set(OPTIONAL_ATTRIBUTES) == set(KINDS)
    assert {"set_epoch", "metainfo", "region_stats", "report"} <= set(optional_attributes("dataset"))
    assert {"generation", "write"} <= set(optional_attributes("evaluator"))
    assert {"frozen", "num_layers", "parameter_groups"} <= set(optional_attributes("image_encoder"))
    assert optional_attributes("image_encoder")["frozen"].default is False


def test_file_options_of_builtin_datasets():
    found = {n: {k: (m.hub, m.tag, m.mapping) for k, m in file_options(f).items()}
             for n, f in pvit.components("dataset").items() if n in _builtin("dataset")}
    plain = (False, False, False)
    assert found == {
        "pvit-instruct": {"path": plain, "image_folder": plain, "image_roots": (False, False, True), "root": plain},
        "coco-regions": {"annotations": plain, "image_folder": plain, "root": plain},
        "gqa-regions": {"questions": plain, "image_folder": plain, "scene_graphs": plain, "root": plain},
        "fine-eval": {"path": plain, "image_folder": plain, "root": plain},
        "synth-regions": {},
    }


def test_file_options_of_model_components():
    flavour = lambda kind, name: {k: (m.hub, m.tag) for k, m in file_options(pvit.components(kind)[name]).items()}  # noqa: E731
    assert flavour("llm", "hf-causal-lm") == {"path": (True, False)}
    assert flavour("image_encoder", "hf-clip") == {"path": (True, False)}
    assert flavour("image_encoder", "openclip-vit") == {"pretrained": (False, True)}
    assert flavour("image_encoder", "timm-vit") == {"checkpoint": (False, False)}
    assert flavour("region_encoder", "regionclip") == {"checkpoint": (False, False)}
    assert flavour("projector", "linear") == flavour("projector", "mlp2x-gelu") == {"checkpoint": (False, False)}


def test_evaluator_dataset_options_are_followed():
    values = file_option_values("evaluator", "region-recognition",
                                {"dataset_options": {"annotations": "a.json", "image_folder": "imgs", "max_samples": 3}},
                                where="eval[0]")
    assert [(k, v) for k, v, _ in values] == [("eval[0].options.dataset_options.annotations", "a.json"),
                                              ("eval[0].options.dataset_options.image_folder", "imgs")]
    other = file_option_values("evaluator", "region-qa", {"dataset": "fine-eval", "dataset_options": {"path": "x"}})
    assert [(k, v) for k, v, _ in other] == [("dataset_options.path", "x")]


class _FilePlugin:
    """A throwaway third-party plugin whose dataset factory marks its file options with pvit.LocalPath."""

    @pvit.hookimpl
    def pvit_register_datasets(self, register):
        def make_files(weights: pvit.LocalPath, extra: pvit.LocalPath | None = None, size: int = 2):
            return [{"id": i, "image": None, "conversations": []} for i in range(size)]

        register("test-local-files", make_files)


@pytest.fixture
def file_plugin():
    plugins.register_plugin(_FilePlugin(), "test-local-files")
    yield
    plugins.unregister_plugin("test-local-files")


def test_third_party_local_path_is_found_by_preflight(file_plugin, tmp_path):
    assert file_options(pvit.components("dataset")["test-local-files"]) == {"weights": FileOption(),
                                                                           "extra": FileOption()}
    present = tmp_path / "present.bin"
    present.write_bytes(b"")
    values = file_option_values("dataset", "test-local-files", {"weights": "w/x.bin", "size": 1}, where="d")
    assert values == [("d.options.weights", "w/x.bin", FileOption())]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
base: {MICRO}
stages:
  - name: only
    data: {{name: test-local-files, options: {{weights: {tmp_path / 'absent.bin'}, extra: {present}}}}}
    trainable: [projector]
    optim: {{lr: 1.0e-3, max_steps: 1, batch_size: 1}}
eval: []
""")
    cfg = pvit.load_recipe(recipe).cfg
    assert missing_files(cfg) == [("stages[0].data.options.weights", str(tmp_path / "absent.bin"))]
