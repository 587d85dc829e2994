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


def from_worker(exc: AnomsegError) -> AnomsegError:
    """The user's one-line message of an error re-raised from a DataLoader worker.

    torch re-raises a worker's exception as ``type(exc)("Caught X in DataLoader worker process
    N.\nOriginal Traceback ...\nmodule.X: message")``; the message a user should read is the
    last line. Anything else is returned unchanged.
    """
    text = str(exc)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return exc
    cls = type(exc)
    prefixes = (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: ")
    lines = text.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        for prefix in prefixes:
            if lines[i].startswith(prefix):
                return cls("\n".join([lines[i][len(prefix) :], *lines[i + 1 :]]).strip())
    return exc
