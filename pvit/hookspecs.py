"""The hook specifications a pvit plugin implements: one ``pvit_register_<kind>s(register)`` per component kind."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("pvit")
hookimpl = pluggy.HookimplMarker("pvit")

#: Bumped when a hook signature or a component interface changes incompatibly.
#: A plugin may declare ``PVIT_PLUGIN_API = <int>`` in its module; a mismatch is reported clearly.
#: API 2: a region encoder's ``forward(inputs, regions)`` takes one ``Regions`` (API 1: a list of boxes per image).
PLUGIN_API_VERSION = 2


@hookspec
def pvit_register_image_encoders(register):
    """Register image encoders: ``register(name, factory)``.

    ``factory(**options)`` returns an [ImageEncoder][pvit.interfaces.ImageEncoder].
    """


@hookspec
def pvit_register_region_encoders(register):
    """Register region encoders: ``register(name, factory)``.

    ``factory(**options)`` returns a [RegionEncoder][pvit.interfaces.RegionEncoder]. Factories that
    pool the image encoder's features may accept an ``image_encoder`` keyword, which the core fills in.
    """


@hookspec
def pvit_register_projectors(register):
    """Register projectors: ``register(name, factory)``; ``factory(in_dim, out_dim, **options)``.

    ``in_dim`` and ``out_dim`` are wired by the core from the encoders and the LLM, never written in recipes.
    """


@hookspec
def pvit_register_llms(register):
    """Register language models: ``register(name, factory)``.

    ``factory(**options)`` returns a [LanguageModel][pvit.interfaces.LanguageModel].
    """


@hookspec
def pvit_register_datasets(register):
    """Register datasets: ``register(name, factory)``; ``factory(**options)`` returns a map-style dataset of samples."""


@hookspec
def pvit_register_evaluators(register):
    """Register evaluators: ``register(name, factory)``; ``factory(**options)`` returns an [Evaluator][pvit.interfaces.Evaluator]."""


@hookspec
def pvit_register_generators(register):
    """Register data generators for ``pvit generate``: ``register(name, factory)``; ``factory(**options)`` returns an
    object with ``complete(messages, *, max_tokens, temperature, seed, timeout)`` giving a reply with ``text``,
    ``finish_reason``, ``prompt_tokens`` and ``completion_tokens`` (see docs/generate.md).
    """


@hookspec
def pvit_register_commands(app):
    """Add sub-commands to the ``pvit`` command line: ``app`` is the root ``typer.Typer``."""
