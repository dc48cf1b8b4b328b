"""pvit built-in plugin: region-level instruction data generation (``pvit generate``) and the generator kind."""

from __future__ import annotations

import pvit
from pvit_generate.generators import make_hf_local, make_openai_compatible, make_template


@pvit.hookimpl
def pvit_register_generators(register):
    register("openai-compatible", make_openai_compatible)
    register("hf-local", make_hf_local)
    register("template", make_template)


@pvit.hookimpl
def pvit_register_commands(app):
    from pvit_generate.cli import add_commands

    add_commands(app)
