"""The documentation site builds offline in strict mode, and every hook and error class is documented."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hookspecs() -> list[str]:
    from pvit import hookspecs

    return sorted(
        name for name, fn in vars(hookspecs).items()
        if name.startswith("pvit_") and inspect.isfunction(fn) and hasattr(fn, "pvit_spec")
    )


def test_every_hook_is_in_the_hooks_reference():
    page = (DOCS / "hooks.md").read_text()
    hooks = _hookspecs()
    assert hooks, "no hook specifications found in pvit/hookspecs.py"
    missing = [h for h in hooks if f"::: pvit.hookspecs.{h}" not in page]
    assert not missing, f"hooks not documented in docs/hooks.md (add '::: pvit.hookspecs.<hook>'): {missing}"


def test_every_error_class_is_on_the_errors_page():
    import pvit.errors

    page = (DOCS / "errors.md").read_text()
    classes = [n for n, o in vars(pvit.errors).items()
               if isinstance(o, type) and issubclass(o, Exception) and o.__module__ == "pvit.errors"]
    assert "PvitError" in classes
    missing = [c for c in classes if not re.search(rf"^## {c}$", page, re.M)]
    assert not missing, f"error classes without a section in docs/errors.md: {missing}"
    for c in classes:
        if c != "PvitError":
            assert f"<!-- pvit:error {c} -->" in page, f"docs/errors.md: {c} has no generated example"


def test_every_page_is_in_the_nav():
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("", lambda loader, suffix, node: None)  # ignore !!python tags
    nav = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)["nav"]

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    in_nav = set(pages(nav))
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")
               if not str(p.relative_to(DOCS)).startswith(("examples/", "hooks/"))}
    assert on_disk == in_nav, f"pages not in the nav: {on_disk - in_nav}; nav entries without a page: {in_nav - on_disk}"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None
    or importlib.util.find_spec("material") is None,
    reason="mkdocs, mkdocs-material and mkdocstrings[python] are not installed (pip install -e '.[docs]')",
)
def test_site_builds_strict_offline(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    assert "WARNING" not in log, log[-6000:]

    def page(rel: str) -> str:
        return (site / rel / "index.html").read_text()

    # generated content made it in: CLI, schema, components, evaluators, recipes, errors, snippets, API
    cli = page("cli")
    for command in ("pvit run", "pvit plugins", "pvit ablate", "pvit eval", "pvit data check"):
        assert f"<code>{command}</code>" in cli, command
    assert "--dry-run" in cli and "Usage: pvit run" in cli
    recipes = page("recipes")
    for key in ("max_steps", "warmup_ratio", "region_policy", "init_from", "trainable", "checkpoint_every"):
        assert f"<code>{key}</code>" in recipes, key
    assert "pvit_tiny.yaml" in recipes and "pvit:recipes" not in recipes
    concepts = page("concepts")
    for name in ("regionclip", "text-coords", "mlp2x-gelu", "hf-causal-lm", "synth-regions"):
        assert f"<code>{name}</code>" in concepts, name
    assert "region-recognition" in page("evaluation")
    errors = page("errors")
    assert "did you mean" in errors and "<!-- pvit:error" not in errors
    plugin_guide = page("plugins")
    assert "pvit_register_region_encoders" in plugin_guide and "check_region_encoder" in plugin_guide
    assert "--8&lt;--" not in plugin_guide and "--8<--" not in plugin_guide  # snippets were included
    hooks = page("hooks")
    for hook in _hookspecs():
        assert f'id="pvit.hookspecs.{hook}"' in hooks, f"no rendered section for {hook}"
    assert 'id="pvit.testing.check_region_encoder"' in page("api/testing")

    # offline: no page loads a remote stylesheet, script or font
    remote = re.compile(r"""<(?:script|link|img)[^>]+(?:src|href)=["']https?://""", re.I)
    offenders = [str(p.relative_to(site)) for p in site.rglob("*.html") if remote.search(p.read_text())]
    assert not offenders, f"pages that load remote assets: {offenders}"
