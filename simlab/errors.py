"""Domain errors. Raised deep, turned into one user-facing line by the CLI (exit code 2).

Each message says what went wrong, where, and how to fix it.
"""


class SimlabError(Exception):
    """Base class: a problem the user can fix; the CLI prints str(error) and exits 2."""


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
