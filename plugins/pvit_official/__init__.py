"""pvit plugin: ``pvit import pvit-official``, PVIT's published delta weights (PVIT-official/PVIT) as a pvit export."""

import pvit


@pvit.hookimpl
def pvit_register_commands(app):
    from pvit_official.cli import add_commands

    add_commands(app)
