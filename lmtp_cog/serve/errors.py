"""Errors of ``./serve``, under the builder's one root error.

Like every :class:`~lmtp_cog.errors.LmtpCogError`, each message is one sentence a user can act on;
the command line prints it without a traceback.
"""

from __future__ import annotations

from typing import Any

from ..errors import LmtpCogError


class ServeError(LmtpCogError):
    """Serving a built model locally failed."""


class ProjectNotFoundError(ServeError):
    """``work/NAME`` does not exist or is not a project made by ``./build``."""


class CogRefused(ServeError):
    """Cog refused a prediction (422: the input fails the schema); ``status``, ``body``: why."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"Cog answered {status}: {body}")
        self.status = status
        self.body = body


class CogUnreachable(ServeError, ConnectionError):
    """The Cog server cannot be reached; ``str()`` is the one sentence that says so.

    A ``ConnectionError`` too: whatever handles a lost connection to Cog handles this one. Each
    API answers it its own way (a 503, an LMTP error line) with this same sentence.
    """


class CogDown(CogUnreachable):
    """The Cog server died; ``str()`` is the one sentence that says so (and names its log)."""
