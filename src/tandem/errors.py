"""The project's own exception types. Errors from libraries are translated at the boundary."""

from __future__ import annotations


class TandemError(Exception):
    """Base class of every error tandem raises on purpose."""


class ConfigError(TandemError):
    """A configuration file, flag or option is invalid."""


class InputError(TandemError):
    """The user's input (question, file, request) is invalid."""


class ContextOverflow(InputError):
    """The prompt (or a text to score) does not fit the model's context window."""


class ModelError(TandemError):
    """A model file is missing, corrupt, or cannot be installed."""


class BackendError(TandemError):
    """An inference backend failed."""


class BackendUnavailable(BackendError):
    """The backend cannot be reached (connection refused, DNS, no server)."""


class BackendTimeout(BackendError):
    """The backend did not answer in time."""


class BackendProtocolError(BackendError):
    """The backend answered with something we cannot use (bad status, malformed stream)."""


class UnsupportedError(TandemError):
    """The backend or configuration cannot do what was asked (e.g. scoring over a chat-only API)."""


class Cancelled(TandemError):
    """The caller cancelled the run (client disconnected, timeout): every stream was closed."""
