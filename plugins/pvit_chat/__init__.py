"""pvit built-in plugin: ``pvit chat``, a terminal chat over [pvit.predict.Predictor][]."""

from __future__ import annotations

import pvit


@pvit.hookimpl
def pvit_register_commands(app):
    from pvit_chat.cli import add_commands

    add_commands(app)
