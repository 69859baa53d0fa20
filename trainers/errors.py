"""The one error type users see: bad input (spec, dataset, flags). The CLI prints it and exits 2."""


class FrostError(Exception):
    """A problem with what the user gave us, phrased for them (no traceback is shown)."""


class TrainingError(RuntimeError):
    """Training itself failed (e.g. a non-finite loss). The CLI exits 1."""
