"""The one error type users see: bad input (spec, dataset, flags). The CLI prints it and exits 2."""


class FrostError(Exception):
    """A problem with what the user gave us, phrased for them (no traceback is shown)."""


class TrainingError(RuntimeError):
    """Training itself failed (e.g. a non-finite loss). The CLI exits 1."""


# A user's value in a message is cut to this many characters: a line names the problem, it does not replay a
# megabyte of input (or flood a terminal with it).
SHOWN_CHARS = 200


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """repr(value) for a message, cut to `limit` characters and saying how long it was."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
