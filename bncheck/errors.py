"""Errors a user can cause. Each carries a one-line message; the CLI maps them to exit codes."""


class BncheckError(Exception):
    """Base class: ``str(error)`` is the whole one-line message shown to the user."""


class ModelReadError(BncheckError):
    """An input exists but cannot be read as a model: wrong format, corrupt, truncated.

    Raised by readers with the reason only; the runner adds the path.
    """


class UsageError(BncheckError):
    """Bad options or configuration (exit code 2)."""
