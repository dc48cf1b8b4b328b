"""The exception types pvit raises for user-facing problems; the CLI prints these without a traceback."""

from __future__ import annotations


class PvitError(Exception):
    """Base class of every error caused by user input (recipes, data, plugins, files).

    The CLI prints the message and exits with status 2, without a traceback.
    """

    exit_code = 2


class RecipeError(PvitError):
    """A recipe is invalid. ``errors`` holds every problem found, each naming its key path."""

    def __init__(self, errors: list[str] | str, source: str | None = None):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.errors) == 1:
            msg = f"recipe error{where}: {self.errors[0]}"
        else:
            lines = "\n".join(f"  - {e}" for e in self.errors)
            msg = f"{len(self.errors)} recipe errors{where}:\n{lines}"
        super().__init__(msg)


class PluginError(PvitError):
    """A plugin could not be loaded, registers a clashing name, or misuses a hook."""


class UnknownComponentError(PvitError):
    """A recipe or API call names a component that no installed plugin registers."""


class ComponentOptionError(PvitError):
    """Options given to a component do not match its factory's signature."""


class InvalidRegionError(PvitError, ValueError):
    """A region box or mention is malformed (see the Reliability page, item 17)."""


class DataError(PvitError):
    """A dataset file, sample or image is unusable."""


class SpliceError(PvitError, ValueError):
    """Placeholder tokens and features disagree in number for a sample."""


class RunDirError(PvitError):
    """A run directory cannot be used as asked (collision, missing resume target)."""


class CheckpointError(PvitError):
    """A checkpoint or weight file is missing, truncated, unsafe or does not match the model."""


class MissingWeightsError(PvitError):
    """Files a recipe needs (weights, data) are not on this machine."""


def did_you_mean(word: object, options, template: str = "; did you mean {!r}?") -> str:
    """``template`` filled with the closest of ``options`` to ``word`` (difflib), or ``""`` when none is close.

    The one place messages get their "did you mean" from: ``f"unknown slot {s!r}{did_you_mean(s, SLOTS)}"``.
    """
    import difflib

    guess = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return template.format(guess[0]) if guess else ""
