"""One error hierarchy for the builder.

Every error's ``str()`` is one sentence a user can act on: it names the file, the model and the
key involved, and says how to fix the problem. The CLI prints it without a traceback (``-v`` adds
the traceback), so nothing else in the builder should print errors itself.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path


class LmtpCogError(Exception):
    """Root of every error the builder raises on purpose."""


# --- configuration -------------------------------------------------------------------------------


class ConfigError(LmtpCogError):
    """A problem in config.toml, located by file, model and key where known."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        model: str | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.model = model
        self.key = key
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.model is not None:
            where.append(f"model '{self.model}'")
        if self.key is not None:
            where.append(f"key '{self.key}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class ConfigNotFoundError(ConfigError):
    """config.toml does not exist."""


class ConfigErrors(ConfigError):
    """Several configuration problems, reported together so the user fixes them in one pass."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = list(errors)
        LmtpCogError.__init__(self, self._render())

    def _render(self) -> str:  # type: ignore[override]
        if len(self.errors) == 1:
            return str(self.errors[0])
        lines = [f"{len(self.errors)} problems in the configuration:"]
        lines += [f"  - {error}" for error in self.errors]
        return "\n".join(lines)


# --- Hugging Face Hub and weights ------------------------------------------------------------------


class HubError(LmtpCogError):
    """Fetching a model from the Hugging Face Hub (or a local directory) failed."""


class RepoNotFoundError(HubError):
    """The repository does not exist, or is private and no token grants access."""


class RevisionNotFoundError(HubError):
    """The branch, tag or commit named by huggingface.version does not exist."""


class GatedRepoError(HubError):
    """The repository is gated and the user has not accepted its license (or set a token)."""


class HubUnreachableError(HubError):
    """No network, or the Hub did not answer."""


class NotInCacheError(HubError):
    """An --offline build needs files that are not in the local Hugging Face cache."""


class NoWeightsError(HubError):
    """The repository has no weights file loading could use."""



# --- lock file and build ----------------------------------------------------------------------------


class LockfileError(LmtpCogError):
    """The lock file is unreadable or does not match what the build found."""


class BuildError(LmtpCogError):
    """Rendering or installing a generated project failed."""


class CogInterfaceError(LmtpCogError):
    """A project's ``predict.py`` does not declare its Cog interface the way ``cog build`` reads it."""


# --- the operating system ---------------------------------------------------------------------------

_OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full; free some space",
    errno.EDQUOT: "the disk quota is used up; free some space",
    errno.EFBIG: "a file is over this shell's file-size limit (ulimit -f); raise the limit",
    errno.EACCES: "permission denied; make it writable",
    errno.EPERM: "permission denied; make it writable",
    errno.EROFS: "it is on a read-only filesystem",
    errno.ENOTDIR: "a part of that path is a file, not a folder",
    errno.EEXIST: "a file is in the way; move it",
    errno.EISDIR: "a folder is in the way; move it",
}


def describe_os_error(error: OSError, *, doing: str, otherwise: str | None = None) -> str:
    """One sentence for an :class:`OSError` met while ``doing`` something (``"write work/x"``):
    what failed, on which path, and what to do (``otherwise``: a way around it, such as
    ``"choose another --work-dir"``), without a traceback."""
    path = error.filename if error.filename is not None else ""
    reason = _OS_ERROR_HINTS.get(error.errno or 0) or (error.strerror or str(error)).rstrip(".")
    where = f" ({path})" if path and str(path) not in doing else ""
    fix = f", or {otherwise}" if otherwise else ""
    return f"cannot {doing}{where}: {reason}{fix}."
