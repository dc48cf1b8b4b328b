"""Recipe loading under bad input (docs/reliability.md items 7, 8, 10, 12): key paths, all errors at once, layering."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pvit
from pvit.errors import RecipeError
from pvit.recipe import dump_yaml

BASE = """
name: base
model:
  llm: {name: hf-causal-lm, options: {config: {hidden_size: 8}}}
  region_encoder: {name: regionclip, options: {min_size: 64, max_size: 64}}
stages:
  - {name: s1, data: {name: synth-regions}, optim: {lr: 1.0e-3, max_steps: 10}}
  - {name: s2, data: {name: synth-regions}, optim: {lr: 2.0e-3, max_steps: 20}}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def base(tmp_path) -> Path:
    return write(tmp_path / "base.yaml", BASE)


def errors_of(path, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as e:
        pvit.load_recipe(path, overrides)
    return e.value.errors


# ------------------------------------------------------------------------------------------- item 7
def test_unknown_yaml_keys_give_full_paths_and_did_you_mean(tmp_path, base):
    path = write(tmp_path / "r.yaml", """
        base: base.yaml
        stagse: []
        model:
          projecter: {name: linear}
        engine: {num_workres: 0}
    """)
    errors = errors_of(path)
    assert len(errors) == 3, errors
    assert any(e.startswith("stagse: unknown key; did you mean 'stages'?") for e in errors)
    assert any(e.startswith("model.projecter: unknown key; did you mean 'projector'?") for e in errors)
    assert any(e.startswith("engine.num_workres: unknown key; did you mean 'num_workers'?") for e in errors)


def test_unknown_override_key_gives_full_path_and_did_you_mean(base):
    errors = errors_of(base, ["stages.0.optim.max_stepz=5", "model.regoin_encoder.name=vit-roi"])
    assert len(errors) == 2, errors
    assert any(e.startswith("stages[0].optim.max_stepz: unknown key; did you mean 'max_steps'?") for e in errors)
    assert any(e.startswith("model.regoin_encoder: unknown key; did you mean 'region_encoder'?") for e in errors)


def test_bad_recipe_fails_before_any_model_code_loads(tmp_path):
    path = write(tmp_path / "r.yaml", "model: {llm: {name: hf-causal-lm}, projecter: {name: linear}}\n")
    code = (f"import sys, pvit\ntry:\n    pvit.load_recipe({str(path)!r})\nexcept pvit.errors.RecipeError as e:\n"
            "    print('ERR', e)\nprint('MODULES=' + ','.join(m for m in ('torch', 'transformers', 'open_clip', 'timm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, modules = out.stdout.strip().splitlines()
    assert first.startswith("ERR") and "model.projecter" in first
    assert modules == "MODULES=", f"loading a bad recipe imported {modules}"


# ------------------------------------------------------------------------------------------- item 8
def test_type_missing_and_interpolation_errors_come_together(tmp_path):
    path = write(tmp_path / "r.yaml", """
        run_dir: runs/${paths.nope}
        model:
          region_encoder: {name: regionclip}
        stages:
          - {name: s1, data: {name: synth-regions}, optim: {lr: fast}}
    """)
    with pytest.raises(RecipeError) as e:
        pvit.load_recipe(path, ["stages.0.optim.max_steps=ten", "seed=1.5"])
    errors = e.value.errors
    assert str(path) in str(e.value) and f"{len(errors)} recipe errors" in str(e.value)
    expected = {
        "model.llm: missing mandatory value",
        "stages[0].optim.max_steps: expected int, got 'ten'",
        "stages[0].optim.lr: expected float, got 'fast'",
        "seed: expected int, got 1.5",
    }
    assert expected <= set(errors), errors
    assert any(e.startswith("run_dir: cannot resolve 'runs/${paths.nope}'") and "paths.nope" in e for e in errors)
    assert len(errors) == 5, errors


def test_explicit_missing_marker_and_null_are_reported(base):
    errors = errors_of(base, ["stages.1.name=???", "model.llm=null"])
    assert "stages[1].name: missing mandatory value" in errors
    assert "model.llm: may not be null" in errors


def test_interpolated_value_of_the_wrong_type_is_reported(tmp_path, base):
    path = write(tmp_path / "r.yaml", "base: base.yaml\npaths: {steps: many}\nseed: ${paths.steps}\n")
    errors = errors_of(path)
    assert len(errors) == 1 and errors[0].startswith("seed: cannot resolve '${paths.steps}'"), errors


def test_bad_override_syntax(base):
    errors = errors_of(base, ["stages.0.optim.lr", "=3"])
    assert errors == [
        "override 'stages.0.optim.lr': expected KEY=VALUE (e.g. stages.1.optim.lr=1e-5)",
        "override '=3': empty key",
    ]


# ------------------------------------------------------------------------------------------- item 10
@pytest.mark.parametrize(
    "snippet, key",
    [
        ("model: {llm: {name: hf-causal-lm, options: {config: {_target_: os.system}}}}", "model.llm.options.config._target_"),
        ("model: {llm: {name: hf-causal-lm, class_path: transformers.AutoModel}}", "model.llm.class_path"),
        ("model: {llm: {name: hf-causal-lm, options: {type: mmengine.Foo}}}", "model.llm.options.type"),
        ("model: {llm: {name: hf-causal-lm, options: {trust_remote_code: true}}}", "model.llm.options.trust_remote_code"),
        ("stages: [{name: s, data: {name: x, options: {deep: [{_target_: os.system}]}}}]", "stages[0].data.options.deep[0]._target_"),
    ],
)
def test_import_paths_in_yaml_are_rejected(tmp_path, base, snippet, key):
    path = write(tmp_path / "r.yaml", f"base: base.yaml\n{snippet}\n")
    errors = errors_of(path)
    assert any(e.startswith(f"{key} (") for e in errors), errors


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.llm.options.trust_remote_code=true", "model.llm.options.trust_remote_code"),
        ("model.llm.options={trust_remote_code: true}", "model.llm.options.trust_remote_code"),
        ("model.llm.options._target_.x=1", "model.llm.options._target_.x"),
        ("model.llm.options.config={nested: {class_path: os.system}}", "model.llm.options.config.nested.class_path"),
        ("model.llm._target_=os.system", "model.llm._target_"),
    ],
)
def test_import_paths_in_overrides_are_rejected(base, override, key):
    errors = errors_of(base, [override])
    assert any(e.startswith(f"{key} (override)") for e in errors), errors


def test_target_is_never_imported_or_run(tmp_path, base, monkeypatch):
    marker = tmp_path / "ran"
    write(tmp_path / "pvit_sentinel_module.py", f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(tmp_path / "r.yaml", f"""
        base: base.yaml
        model:
          llm: {{name: hf-causal-lm, options: {{_target_: os.system, command: "touch {marker}"}}}}
          image_encoder: {{name: hf-clip, _target_: pvit_sentinel_module.run}}
    """)
    errors = errors_of(path)
    assert len([e for e in errors if "_target_" in e]) == 2
    assert not marker.exists() and "pvit_sentinel_module" not in sys.modules


def test_trust_remote_code_false_is_allowed(base):
    loaded = pvit.load_recipe(base, ["model.llm.options.trust_remote_code=false"])
    assert loaded.cfg.model.llm.options.trust_remote_code is False


# ------------------------------------------------------------------------------------------- layering
def test_base_relative_to_the_file_and_lists_of_bases(tmp_path, base):
    write(tmp_path / "ablations" / "extra.yaml", "seed: 7\nname: extra\n")
    path = write(tmp_path / "ablations" / "variant.yaml", """
        base: [../base.yaml, extra.yaml]
        name: variant
        stages:
          - {name: only, data: {name: synth-regions}}
    """)
    loaded = pvit.load_recipe(path)
    assert loaded.cfg.seed == 7 and loaded.cfg.name == "variant"  # later layers win
    assert [s.name for s in loaded.cfg.stages] == ["only"]  # lists replace
    assert loaded.cfg.model.llm.options.config.hidden_size == 8  # from base.yaml, two folders up
    assert loaded.layers == [base.resolve(), (tmp_path / "ablations" / "extra.yaml").resolve(), path.resolve()]


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: sub/c.yaml\n")
    write(tmp_path / "sub" / "c.yaml", "base: ../a.yaml\n")
    errors = errors_of(tmp_path / "a.yaml")
    assert len(errors) == 1 and "cycle" in errors[0]
    assert all(n in errors[0] for n in ("a.yaml", "b.yaml", "c.yaml")), errors


def test_missing_files_are_named(tmp_path):
    errors = errors_of(tmp_path / "nope.yaml")
    assert errors == [f"{(tmp_path / 'nope.yaml').resolve()}: recipe file not found"]
    path = write(tmp_path / "r.yaml", "base: missing_base.yaml\n")
    (err,) = errors_of(path)
    assert "missing_base.yaml: recipe file not found" in err and f"in {path.resolve()}" in err


def test_not_a_mapping_and_bad_yaml(tmp_path):
    assert "mapping" in errors_of(write(tmp_path / "list.yaml", "- a\n- b\n"))[0]
    assert "invalid YAML" in errors_of(write(tmp_path / "bad.yaml", "model: {llm: [\n"))[0]


@pytest.mark.parametrize(
    "layer, expected",
    [
        ("region_encoder: {name: text-coords, options: {style: pvit}}", {"style": "pvit"}),
        ("region_encoder: {name: text-coords}", {}),
        ("region_encoder: {options: {max_size: 32}}", {"min_size": 64, "max_size": 32}),
        ("region_encoder: {name: regionclip, options: {max_size: 32}}", {"min_size": 64, "max_size": 32}),
    ],
    ids=["rename-with-options", "rename-alone", "options-only", "same-name"],
)
def test_rename_rule_in_layers(tmp_path, base, layer, expected):
    path = write(tmp_path / "r.yaml", f"base: base.yaml\nmodel:\n  {layer}\n")
    assert dict(pvit.load_recipe(path).cfg.model.region_encoder.options) == expected


@pytest.mark.parametrize(
    "overrides, name, expected",
    [
        (["model.region_encoder.name=text-coords"], "text-coords", {}),
        (["model.region_encoder.options.style=pvit", "model.region_encoder.name=text-coords"], "text-coords",
         {"style": "pvit"}),
        (["model.region_encoder={name: vit-roi, options: {output: pooled}}"], "vit-roi", {"output": "pooled"}),
        (["model.region_encoder.name=regionclip", "model.region_encoder.options.max_size=32"], "regionclip",
         {"min_size": 64, "max_size": 32}),
    ],
)
def test_rename_rule_in_overrides(base, overrides, name, expected):
    enc = pvit.load_recipe(base, overrides).cfg.model.region_encoder
    assert enc.name == name and dict(enc.options) == expected


def test_list_index_overrides(base):
    cfg = pvit.load_recipe(base, ["stages.1.optim.lr=1e-5", "stages.0.trainable=[projector, llm]"]).cfg
    assert cfg.stages[1].optim.lr == 1e-5 and cfg.stages[0].optim.lr == 1e-3
    assert list(cfg.stages[0].trainable) == ["projector", "llm"] and cfg.stages[1].optim.max_steps == 20
    errors = errors_of(base, ["stages.2.optim.lr=1e-5", "stages.x.name=a"])
    assert sorted(errors) == [
        "override stages.2.optim.lr: stages.2: index 2 out of range (the list has 2 items)",
        "override stages.x.name: stages is a list; index it with a number",
    ]


# ------------------------------------------------------------------------------------------- item 12
def test_secrets_from_the_environment_are_redacted(tmp_path, base, monkeypatch):
    secret, data_dir = "hf_supersecret123", "/data/pvit-example-dir"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("PVIT_DATA_DIR", data_dir)
    monkeypatch.setenv("MY_HUB", "another-secret-value")
    path = write(tmp_path / "r.yaml", """
        base: base.yaml
        run_dir: runs/${paths.token}
        paths: {token: "${oc.env:HF_TOKEN}", data: "${oc.env:PVIT_DATA_DIR}"}
        model:
          llm: {name: hf-causal-lm, options: {hub_token: "${oc.env:MY_HUB}", path: "${paths.data}/llm", max_new_tokens: 8}}
    """)
    loaded = pvit.load_recipe(path)
    assert loaded.cfg.paths.token == secret  # the values are usable...
    text = loaded.to_yaml()  # ...but never dumped
    assert secret not in text and "another-secret-value" not in text
    assert "<redacted: from $HF_TOKEN>" in text and "<redacted: from $MY_HUB>" in text
    assert f"path: {data_dir}/llm" in text and f"data: {data_dir}" in text and "max_new_tokens: 8" in text
    assert dump_yaml(loaded.cfg) == text
    assert "${oc.env:HF_TOKEN}" in loaded.to_yaml(resolve=False)


def test_secrets_do_not_leak_into_error_messages(tmp_path, base, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret123")
    path = write(tmp_path / "r.yaml", "base: base.yaml\nseed: ${oc.env:HF_TOKEN}\n")
    with pytest.raises(RecipeError) as e:
        pvit.load_recipe(path)
    assert "seed" in str(e.value) and "hf_supersecret123" not in str(e.value)


def test_short_secrets_are_only_redacted_where_interpolated():
    from pvit.secrets import scrub

    secrets = {"hf_supersecret123": "HF_TOKEN", "abc": "SHORT_TOKEN"}
    assert scrub("abc hf_supersecret123 abc", secrets) == "abc <redacted: from $HF_TOKEN> abc"


def test_names_that_moved_stay_importable_from_pvit_recipe():
    from pvit import recipe, recipe_layers, recipe_schema, secrets

    for name in ("Recipe", "Stage", "Optim", "Model", "Engine", "Component"):
        assert getattr(recipe, name) is getattr(recipe_schema, name)
    assert recipe.FORBIDDEN_KEYS is recipe_layers.FORBIDDEN_KEYS
    assert (recipe._scrub, recipe._secret_env_values) == (secrets.scrub, secrets.secret_env_values)
