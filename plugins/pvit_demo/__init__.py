"""pvit built-in plugin: ``pvit demo``, a web page to draw boxes on an image and ask [pvit.predict.Predictor][]."""

from __future__ import annotations

import pvit


@pvit.hookimpl
def pvit_register_commands(app):
    from pvit_demo.cli import add_commands

    add_commands(app)
