"""What the builder found for one model: the commit and the exact files it will ship.

Produced by :mod:`lmtp_cog.hub`, recorded by :mod:`lmtp_cog.lockfile`, rendered by
:mod:`lmtp_cog.render`. A plain value object so that those three stay independent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RepoFile:
    """One file the generated project ships in ``checkpoints/``."""

    path: str
    """Path inside the repo (``/``-separated); subfolders named by a shard index are kept."""
    size: int
    sha256: str | None = None
    """The LFS sha256 for large files on the Hub, or the content hash for local files."""
    blob_id: str | None = None
    """The git blob id for small (non-LFS) files on the Hub."""


@dataclass(frozen=True)
class FileSelection:
    """The config.toml settings that decide which files of a commit are shipped.

    Recorded with the files so that a locked entry is reused only for the same choice.
    """

    use_safetensors: bool | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True)
class ResolvedModel:
    """A model's source pinned to one commit, with the files loading needs."""

    name: str
    repo: str
    revision: str | None
    """What config.toml asked for (``huggingface.version``), ``None`` for the default branch."""
    commit: str | None
    """The commit sha on the Hub; ``None`` for a local directory."""
    files: tuple[RepoFile, ...]
    selection: FileSelection = FileSelection()

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def weight_format(self) -> str:
        """``"safetensors"`` or ``"bin"``: which weights were selected."""
        if any(f.path.endswith(".safetensors") for f in self.files):
            return "safetensors"
        return "bin"
