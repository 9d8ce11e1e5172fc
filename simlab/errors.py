"""Every domain error, and the exit codes. Raised deep, turned into one user-facing line by the CLI
and the REPL (exit code 2 for bad input).

Each message says what went wrong, where, and how to fix it.
"""

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class SimlabError(Exception):
    """Base class: a problem the user can fix; the CLI prints str(error) and exits 2."""


class BadInput(SimlabError, ValueError):
    """A file that is not safe or sensible to read (simlab.safe_yaml)."""


class ConfigError(SimlabError):
    """A bad setting in a config file, environment variable or flag."""


class UnknownModelError(SimlabError):
    """A model spec that names nothing loadable."""


class ModelUnavailableError(SimlabError):
    """A model that exists in principle but cannot be loaded here (offline, corrupt, unsafe)."""


class SamplingError(SimlabError):
    """An invalid sampling parameter."""


class ContextLengthError(SimlabError):
    """A prompt that does not fit in the model's context window."""


class PersonaError(SimlabError):
    """A persona file or card that cannot be used as it is."""


class TreeError(SimlabError, ValueError):
    """An operation that names a node the tree does not have, or breaks the tree's shape."""


class SessionError(SimlabError):
    """A session that cannot be opened, named or written as asked."""


class SessionWriteError(SessionError):
    """The disk refused a write (full, read-only, permissions): what is in memory is still whole."""


class TraceError(SimlabError):
    """A trace that cannot be captured, read or interpreted as asked."""


class RemoteError(SimlabError):
    """The server could not be reached, refused the request, or answered something unreadable."""


class ContextRefused(RemoteError):
    """The server refused a prompt as longer than its context; `limit` is its context when it said."""

    def __init__(self, message: str, limit: int | None = None):
        super().__init__(message)
        self.limit = limit


class NeedsLocalModel(SimlabError):
    """A feature that reads the model itself (residual stream, teacher-forced scoring)."""


class SteerError(SimlabError):
    """A steering vector that cannot be read, or does not fit the model it is applied to."""


class SpecError(SimlabError):
    """A compare spec that cannot be run as written."""


class SweepInterrupted(SimlabError):
    """Ctrl-C during a sweep: finished samples are saved; running again resumes."""


class ModelFailed(SimlabError):
    """The model loading in the background could not be loaded; the REPL cannot go on."""


def needs_local(what: str) -> NeedsLocalModel:
    return NeedsLocalModel(
        f"{what} needs a local model (the weights themselves); run it without "
        "--backend openai, or on a model folder"
    )
