"""Errors of ``./serve``, under the builder's one root error.

Like every :class:`~lmtp_cog.errors.LmtpCogError`, each message is one sentence a user can act on;
the command line prints it without a traceback.
"""

from __future__ import annotations

from ..errors import LmtpCogError


class ServeError(LmtpCogError):
    """Serving a built model locally failed."""


class ProjectNotFoundError(ServeError):
    """``work/NAME`` does not exist or is not a project made by ``./build``."""
