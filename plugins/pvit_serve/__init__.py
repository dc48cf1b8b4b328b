"""pvit built-in plugin: ``pvit serve``, an OpenAI-compatible HTTP server over [pvit.predict.Predictor][]."""

from __future__ import annotations

import pvit


@pvit.hookimpl
def pvit_register_commands(app):
    from pvit_serve.cli import add_commands

    add_commands(app)
