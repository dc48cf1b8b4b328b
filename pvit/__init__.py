"""pvit: a plugin framework for region-aware multimodal LLMs (PVIT, arXiv 2308.13437).

Public API: ``hookimpl``, ``load_recipe``, ``Predictor``, ``components``, ``build``, ``testing``, ``LocalPath``.
Heavy libraries (torch, transformers) are imported only when a component is built.
"""

from __future__ import annotations

from pvit.hookspecs import hookimpl
from pvit.options import LocalPath
from pvit.registry import KINDS, build, components

__version__ = "0.1.0"
__all__ = ["hookimpl", "load_recipe", "components", "build", "testing", "KINDS", "LocalPath", "Predictor", "Reply", "__version__"]


def load_recipe(path, overrides=()):
    """Load a recipe file with its ``base:`` layers and ``KEY=VALUE`` overrides; see [pvit.recipe][]."""
    from pvit.recipe import load_recipe as _load

    return _load(path, overrides)


def __getattr__(name):
    if name == "testing":
        import importlib

        return importlib.import_module("pvit.testing")
    if name in ("Predictor", "Reply"):
        from pvit import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'pvit' has no attribute {name!r}")
