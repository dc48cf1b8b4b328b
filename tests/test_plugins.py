"""Plugin loading and the registry under bad input (docs/reliability.md items 9, 13-16) and the built-in plugins."""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pvit
from pvit import hookspecs, plugins
from pvit.errors import ComponentOptionError, PluginError, RecipeError, UnknownComponentError
from pvit.plugins import PluginWarning

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "pvit_tiny.yaml"
PVIT = Path(sys.executable).with_name("pvit")

BUILTINS = {
    "vision": {"image_encoder": {"openclip-vit", "hf-clip", "timm-vit"}},
    "projectors": {"projector": {"linear", "mlp2x-gelu"}},
    "hf": {"llm": {"hf-causal-lm"}},
    "regionclip": {"region_encoder": {"regionclip"}},
    "vit_roi": {"region_encoder": {"vit-roi"}},
    "text_coords": {"region_encoder": {"text-coords", "none"}},
    "synth": {"dataset": {"synth-regions"}},
    "pvit_data": {"dataset": {"pvit-instruct", "coco-regions", "gqa-regions", "fine-eval"}},
    "evaluators": {"evaluator": {"synth-regions", "region-recognition", "region-qa", "fine-eval"}},
}


@pytest.fixture
def fresh(monkeypatch):
    """Plugins load again from entry points in this test, and again (unpatched) after it."""
    monkeypatch.delenv("PVIT_LOAD_PLUGINS", raising=False)
    plugins.reset()
    yield monkeypatch
    for name in [m for m in sys.modules if m.startswith("pvit_fake_")]:
        del sys.modules[name]
    plugins.reset()


def fake_distribution(root: Path, dist: str, entry: str, module: str, code: str, version: str = "0.3") -> Path:
    """A minimal installed distribution (``*.dist-info`` + module) declaring a ``pvit`` entry point under ``root``."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[pvit]\n{entry} = {module}\n")
    (root / f"{module}.py").write_text(code)
    return root


BROKEN_IMPORT = "import pvit_missing_dependency_xyz  # not installed\n"


class _Projectors:
    """A throwaway plugin registering projectors under the given names."""

    def __init__(self, *names: str):
        self.names = names

    @pvit.hookimpl
    def pvit_register_projectors(self, register):
        for n in self.names:
            register(n, make_scaled_linear)


def make_scaled_linear(in_dim: int, out_dim: int, scale: float = 1.0):
    """``scale * Linear(in_dim, out_dim)``: (..., in_dim) -> (..., out_dim).

    Options: scale: factor applied to the output.
    """
    import torch

    class ScaledLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(in_dim, out_dim)
            self.scale = scale

        def forward(self, x):
            return self.linear(x) * self.scale  # (..., out_dim)

    return ScaledLinear()


@pytest.fixture
def registered():
    """Register throwaway plugins by name for one test; every one is unregistered afterwards."""
    names = []

    def add(plugin, name):
        plugins.register_plugin(plugin, name)
        names.append(name)

    yield add
    for n in names:
        plugins.unregister_plugin(n)


# ------------------------------------------------------------------------------------------- built-ins
def test_builtin_plugins_are_listed_with_distribution_version_and_names():
    infos = {i.name: i for i in plugins.plugin_infos()}
    assert set(BUILTINS) <= set(infos), sorted(infos)
    version = md.version("pvit")
    for name, expected in BUILTINS.items():
        info = infos[name]
        assert (info.distribution, info.version, info.status) == ("pvit", version, "ok"), (name, info.error)
        for kind, names in expected.items():
            assert names <= set(info.components.get(kind, [])), (name, info.components)
            assert names <= set(pvit.components(kind)), kind


def test_listing_plugins_imports_no_heavy_library():
    code = ("import sys, pvit.plugins as p; p.plugin_infos(); "
            "print(','.join(m for m in ('torch', 'transformers', 'open_clip', 'timm', 'PIL', 'mmengine') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"heavy modules imported by loading plugins: {out.stdout}"


# ------------------------------------------------------------------------------------------- item 13
@pytest.mark.parametrize(
    "code, cause",
    [
        (BROKEN_IMPORT, ["ModuleNotFoundError", "pvit_missing_dependency_xyz"]),
        ("import pvit\n@pvit.hookimpl\ndef pvit_register_region_encoder(register):\n    pass\n",
         ["pvit_register_region_encoder", "did you mean 'pvit_register_region_encoders'"]),
        ("PVIT_PLUGIN_API = 99\n", ["API 99", f"API {hookspecs.PLUGIN_API_VERSION}"]),
    ],
    ids=["import-error", "misspelt-hook", "api-version"],
)
def test_entry_point_that_fails_is_reported_and_the_others_load(fresh, tmp_path, code, cause):
    fresh.syspath_prepend(str(fake_distribution(tmp_path, "pvit-broken-fake", "broken", "pvit_fake_broken", code)))
    with pytest.warns(PluginWarning) as caught:
        infos = {i.name: i for i in plugins.plugin_infos()}
    warning = " ".join(str(w.message) for w in caught)
    assert "pvit-broken-fake" in warning and "'broken'" in warning
    assert all(c in warning for c in cause), warning
    assert infos["broken"].status == "failed"
    assert infos["broken"].distribution == "pvit-broken-fake" and infos["broken"].version == "0.3"
    assert all(c in infos["broken"].error for c in cause), infos["broken"].error
    assert all(infos[n].status == "ok" for n in BUILTINS)
    assert {"linear", "mlp2x-gelu"} <= set(pvit.components("projector"))


def test_recipe_needing_a_failed_plugin_names_it(fresh, tmp_path):
    from pvit.preflight import check_components

    fresh.syspath_prepend(str(fake_distribution(tmp_path, "pvit-broken-fake", "broken", "pvit_fake_broken",
                                                BROKEN_IMPORT)))
    with pytest.warns(PluginWarning):
        plugins.get_plugin_manager()
    loaded = pvit.load_recipe(TINY, ["model.region_encoder.name=broken-encoder"])
    with pytest.raises(RecipeError) as e:
        check_components(loaded.cfg)
    msg = str(e.value)
    assert "unknown region_encoder 'broken-encoder' at model.region_encoder;" in msg
    assert "broken (distribution pvit-broken-fake)" in msg and "pvit_missing_dependency_xyz" in msg
    assert "regionclip" in msg  # the installed names of the kind


def test_failed_plugin_does_not_break_the_cli(fresh, tmp_path):
    from typer.testing import CliRunner

    from pvit.cli import app

    fake_distribution(tmp_path, "pvit-broken-fake", "broken", "pvit_fake_broken", BROKEN_IMPORT)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("PVIT_LOAD_PLUGINS", None)

    def pvit_cli(*args):
        return subprocess.run([str(PVIT), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)

    helped = pvit_cli("--help")
    assert helped.returncode == 0 and "plugins" in helped.stdout
    assert "warning: pvit plugin 'broken' (distribution pvit-broken-fake 0.3) failed to load" in helped.stderr
    assert "ModuleNotFoundError" in helped.stderr and "Traceback" not in helped.stderr
    listed = pvit_cli("plugins")
    assert listed.returncode == 0, listed.stderr
    broken_line = next(line for line in listed.stdout.splitlines() if line.startswith("broken"))
    assert "FAILED" in broken_line and "pvit_missing_dependency_xyz" in broken_line
    assert "regionclip" in listed.stdout and "broken (failed)" in listed.stderr
    # a run that needs it (in process, to share the torch import with the other tests)
    fresh.syspath_prepend(str(tmp_path))
    with pytest.warns(PluginWarning):
        used = CliRunner().invoke(app, ["run", str(TINY), "model.region_encoder.name=broken-encoder", "--dry-run"])
    assert used.exit_code == 2 and used.stdout == ""
    assert "pvit-broken-fake" in used.stderr and "broken-encoder" in used.stderr
    assert "Traceback" not in used.output


# ------------------------------------------------------------------------------------------- item 14
def test_two_plugins_registering_one_name_is_an_error_naming_both(registered):
    registered(_Projectors("dup-proj"), "test-dup-a")
    registered(_Projectors("dup-proj", "only-b"), "test-dup-b")
    with pytest.warns(PluginWarning, match="dup-proj"):
        infos = {i.name: i for i in plugins.plugin_infos()}
    with pytest.raises(PluginError) as e:
        pvit.build("projector", "dup-proj", in_dim=4, out_dim=4)
    assert "'test-dup-a'" in str(e.value) and "'test-dup-b'" in str(e.value)
    assert "dup-proj" not in pvit.components("projector")
    assert infos["test-dup-a"].status == infos["test-dup-b"].status == "conflict"
    only_b = pvit.build("projector", "only-b", in_dim=4, out_dim=2, scale=2.0)  # the rest works
    assert (only_b.scale, only_b.linear.in_features, only_b.linear.out_features) == (2.0, 4, 2)
    linear = pvit.build("projector", "linear", in_dim=4, out_dim=2)
    assert (linear.name, linear.in_dim, linear.out_dim) == ("linear", 4, 2)


def test_clash_with_a_builtin_names_both_and_clears_when_removed(registered):
    registered(_Projectors("linear"), "test-clash")
    with pytest.warns(PluginWarning):
        plugins.registry()
    with pytest.raises(PluginError, match=r"by 'projectors' \(distribution pvit\) and by 'test-clash'"):
        plugins.get_component("projector", "linear", where="model.region_projector")
    plugins.unregister_plugin("test-clash")
    assert plugins.get_component("projector", "linear").plugin == "projectors"
    assert {i.name: i.status for i in plugins.plugin_infos()}["projectors"] == "ok"


# ------------------------------------------------------------------------------------------- item 15
class _Misspelt:
    @pvit.hookimpl
    def pvit_register_region_encoder(self, register):  # missing the final "s"
        register("never", make_scaled_linear)


class _WrongArgument:
    @pvit.hookimpl
    def pvit_register_llms(self, reg):
        reg("never", make_scaled_linear)


@pytest.mark.parametrize(
    "plugin, expected",
    [
        (_Misspelt(), ["'test-bad-hook'", "'pvit_register_region_encoder'", "did you mean 'pvit_register_region_encoders'"]),
        (_WrongArgument(), ["'test-bad-hook'", "'pvit_register_llms'", "(reg)", "pvit_register_llms(register)"]),
    ],
    ids=["misspelt", "wrong-argument"],
)
def test_bad_hook_is_an_error_at_registration_naming_plugin_and_hook(plugin, expected, registered):
    with pytest.raises(PluginError) as e:
        plugins.register_plugin(plugin, "test-bad-hook")
    assert all(x in str(e.value) for x in expected), str(e.value)
    assert plugins.get_plugin_manager().get_plugin("test-bad-hook") is None
    assert "test-bad-hook" not in {i.name for i in plugins.plugin_infos()}
    registered(_Projectors("after-bad-hook"), "test-after-bad-hook")  # the manager is still usable
    assert "after-bad-hook" in pvit.components("projector")


@pytest.mark.parametrize("bad_name", ["Bad_Name", "x y", ""])
def test_plugin_registering_a_bad_name_fails_alone(bad_name, registered):
    registered(_Projectors("fine-before", bad_name), "test-bad-name")
    with pytest.warns(PluginWarning, match="test-bad-name"):
        infos = {i.name: i for i in plugins.plugin_infos()}
    assert infos["test-bad-name"].status == "failed" and "kebab-case" in infos["test-bad-name"].error
    assert "pvit_register_projectors" in infos["test-bad-name"].error
    assert "fine-before" not in pvit.components("projector")  # a failing hook registers nothing
    assert "linear" in pvit.components("projector")


# ------------------------------------------------------------------------------------------- item 16
def test_plugin_for_another_api_version_names_both_versions():
    class Future:
        PVIT_PLUGIN_API = 99

    with pytest.raises(PluginError) as e:
        plugins.register_plugin(Future(), "test-future")
    msg = str(e.value)
    assert "'test-future'" in msg and "API 99" in msg and f"API {hookspecs.PLUGIN_API_VERSION}" in msg
    assert plugins.get_plugin_manager().get_plugin("test-future") is None


# ------------------------------------------------------------------------------------------- PVIT_LOAD_PLUGINS
def test_load_plugins_env_restricts_loading(fresh):
    fresh.setenv("PVIT_LOAD_PLUGINS", "projectors, hf")
    infos = {i.name: i for i in plugins.plugin_infos()}
    assert infos["projectors"].status == infos["hf"].status == "ok"
    assert infos["regionclip"].status == "skipped" and "PVIT_LOAD_PLUGINS" in infos["regionclip"].error
    assert pvit.components("region_encoder") == {}
    assert set(pvit.components("projector")) == {"linear", "mlp2x-gelu"}
    with pytest.raises(UnknownComponentError, match="not loaded because of PVIT_LOAD_PLUGINS: .*regionclip"):
        pvit.build("region_encoder", "regionclip")


def test_load_plugins_env_by_distribution_and_unknown_names(fresh):
    fresh.setenv("PVIT_LOAD_PLUGINS", "pvit,no-such-plugin")
    with pytest.warns(PluginWarning, match="'no-such-plugin'"):
        infos = {i.name: i for i in plugins.plugin_infos()}
    assert all(infos[n].status == "ok" for n in BUILTINS)
    fresh.delenv("PVIT_LOAD_PLUGINS")
    plugins.reset()
    assert all(i.status == "ok" for i in plugins.plugin_infos() if i.name in BUILTINS)


# ------------------------------------------------------------------------------------------- item 9 + options
def test_unknown_component_lists_installed_names_of_its_kind():
    with pytest.raises(UnknownComponentError) as e:
        pvit.build("region_encoder", "regionclp", where="model.region_encoder")
    msg = str(e.value)
    assert "model.region_encoder" in msg and "did you mean 'regionclip'" in msg
    installed = msg.split("installed region_encoders: ")[1].split(";")[0].split(", ")
    assert {"regionclip", "vit-roi", "text-coords", "none"} <= set(installed)
    assert "hf-clip" not in msg  # only names of the kind asked for
    with pytest.raises(UnknownComponentError, match="did you mean 'projector'"):
        pvit.components("projectors")


def test_unknown_option_lists_accepted_ones():
    with pytest.raises(ComponentOptionError) as e:
        pvit.build("projector", "linear", in_dim=4, out_dim=8, input_nrom="batch")
    msg = str(e.value)
    assert "unknown option 'input_nrom'" in msg and "did you mean 'input_norm'" in msg
    assert "accepted: input_norm, bias" in msg


def test_recipe_options_are_checked_with_key_paths():
    from pvit.preflight import check_components

    loaded = pvit.load_recipe(TINY, ["model.projector.options.in_dim=8", "model.region_projector.options.hiden_dim=8"])
    with pytest.raises(RecipeError) as e:
        check_components(loaded.cfg)
    errors = e.value.errors
    assert len(errors) == 2, errors
    assert any("model.projector.options" in x and "'in_dim'" in x and "wired by pvit" in x for x in errors)
    assert any("model.region_projector.options" in x and "did you mean 'hidden_dim'" in x for x in errors)


# ------------------------------------------------------------------------------------------- a plugin in a test
def test_throwaway_plugin_is_used_by_a_recipe(registered):
    import torch

    from pvit.preflight import check_components

    class ScaledLinearPlugin:
        @pvit.hookimpl
        def pvit_register_projectors(self, register):
            register("scaled-linear", make_scaled_linear)

    registered(ScaledLinearPlugin(), "test-scaled-linear")
    info = {i.name: i for i in plugins.plugin_infos()}["test-scaled-linear"]
    assert info.status == "ok" and info.components == {"projector": ["scaled-linear"]}
    loaded = pvit.load_recipe(TINY, ["model.projector={name: scaled-linear, options: {scale: 2.0}}"])
    check_components(loaded.cfg)
    comp = loaded.cfg.model.projector
    proj = pvit.build("projector", comp.name, in_dim=6, out_dim=3, **comp.options)
    x = torch.randn(2, 5, 6)  # (B, N, D_in)
    assert proj(x).shape == (2, 5, 3)
    assert torch.allclose(proj(x), 2.0 * proj.linear(x))
    bad = pvit.load_recipe(TINY, ["model.projector.name=scaled-linear", "model.projector.options.scael=3"])
    with pytest.raises(RecipeError, match="did you mean 'scale'"):
        check_components(bad.cfg)
    plugins.unregister_plugin("test-scaled-linear")
    with pytest.raises(UnknownComponentError):
        pvit.build("projector", "scaled-linear", in_dim=6, out_dim=3)


def test_registry_names_stay_importable_from_pvit_plugins():
    from pvit import registry

    names = ("KINDS", "WIRED_OPTIONS", "Component", "accepted_options", "build", "check_options", "components",
             "get_component", "registry")
    assert all(getattr(plugins, n) is getattr(registry, n) for n in names)
    assert (pvit.build, pvit.components, pvit.KINDS) == (registry.build, registry.components, registry.KINDS)
    with pytest.raises(AttributeError, match="no attribute 'bulid'"):
        plugins.bulid
