"""User-facing errors.

Every error a user can cause (bad path, bad image, wrong checkpoint, out-of-range field) is raised
as an ``AnomsegError`` whose message names the thing and what was expected. The CLI prints the
message without a traceback; the dashboard shows it in a toast.
"""


class AnomsegError(Exception):
    """An error caused by user input; its message is meant to be shown as is."""


class InputError(AnomsegError, ValueError):
    """A file or value given by the user is not what was expected."""


class CheckpointError(AnomsegError):
    """A checkpoint does not match the model it is loaded into, or is unsafe."""


class DatasetError(AnomsegError):
    """A dataset root or one of its files is missing or malformed."""
