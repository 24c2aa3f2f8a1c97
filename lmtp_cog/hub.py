"""Pin a model's weights to one commit, choose the files loading needs, and fetch exactly those.

Two steps, with the lock file between them:

- :func:`resolve` turns ``[models.NAME] huggingface.*`` into a :class:`ResolvedModel`: the
  revision becomes a commit sha once, and every later request names that sha, so a branch that
  moves during a build cannot mix files of two commits. It lists the repo at that commit and picks
  the files with :func:`select_files`, which never reaches the network itself.
- :func:`fetch` downloads exactly those files into the Hugging Face cache (or finds them there) and
  says where each one is: one ``snapshot_download`` of the missing ones, named as exact
  ``allow_patterns``, in parallel and with one progress display; nothing at all when every file
  is cached. Everything goes through ``huggingface_hub``: its cache, its progress bars and its
  offline mode, so a model fetched here is also cached for ``transformers`` and vice versa.

Errors from ``huggingface_hub`` and ``httpx`` leave this module as :mod:`lmtp_cog.errors` errors
whose one sentence names the model and the repo and says what to do.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import json
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from huggingface_hub import (
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub import errors as hf_errors
from huggingface_hub.file_download import repo_folder_name

from lmtp_cog import errors
from lmtp_cog.config import HuggingFaceSource
from lmtp_cog.resolution import FileSelection, RepoFile, ResolvedModel

# The builder sends the Hub only the requests a build needs. huggingface_hub's telemetry would add
# a once-per-process request for its agent registry whenever it builds headers, even for a file it
# then finds in the cache: a cached rebuild or an --offline build would not be silent any more.
constants.HF_HUB_DISABLE_TELEMETRY = True

FETCH_WORKERS = 8
"""Files downloaded at once (``snapshot_download``'s ``max_workers``, its default)."""

# --- which files a checkpoint needs ---------------------------------------------------------------

METADATA_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "README.md",
        "USE_POLICY.md",
    }
)
"""Top-level files that loading, the tokenizer or the model's terms need, by exact name."""
METADATA_PATTERNS = ("chat_template.*", "*.tiktoken", "LICENSE*")

WEIGHT_FILES = {
    "safetensors": ("model.safetensors", "model.safetensors.index.json"),
    "bin": ("pytorch_model.bin", "pytorch_model.bin.index.json"),
}
"""Per format, the single file and the shard index ``from_pretrained`` looks for, in that order.

Nothing else is weights here: ``.h5``, ``.msgpack``, ``.gguf``, ``onnx/`` and ``original/``
checkpoints are for other runtimes and are never fetched.
"""

ReadIndex = Callable[[str], Mapping[str, Any]]
"""Reads a shard index (a repo path) and returns its parsed JSON."""
Select = Callable[..., list[str]]
""":func:`select_files` with the model's arguments bound: ``(paths, *, read_index)``."""
Resolution = tuple[str, tuple[RepoFile, ...]]
"""A commit and the selected files at it."""


def select_files(
    paths: Iterable[str],
    *,
    use_safetensors: bool | None,
    read_index: ReadIndex,
    trust_remote_code: bool = False,
) -> list[str]:
    """Choose, from a repo's file list, the files ``from_pretrained`` needs.

    Pure apart from ``read_index``, which is called only for the shard index that is selected,
    so the same choice can be made over a Hub listing, the cache or a local directory.

    Args:
        paths: Every file in the repo, ``/``-separated.
        use_safetensors: ``None`` prefers safetensors and falls back to ``.bin``; ``True``
            accepts only safetensors; ``False`` only ``.bin`` (as ``from_pretrained`` does).
        read_index: How to read a shard index, to follow its ``weight_map``.
        trust_remote_code: Also take the top-level ``*.py`` files custom model code lives in.

    Returns:
        The selected repo paths, sorted.

    Raises:
        NoWeightsError: No weights in the accepted formats, or a shard index that names missing
            or out-of-repo files.
    """
    available = set(paths)
    selected = {p for p in available if _is_metadata_file(p, trust_remote_code=trust_remote_code)}
    selected |= _select_weights(available, use_safetensors=use_safetensors, read_index=read_index)
    return sorted(selected)


def _is_metadata_file(path: str, *, trust_remote_code: bool) -> bool:
    if "/" in path:
        return False
    if path in METADATA_FILES or any(fnmatch.fnmatchcase(path, p) for p in METADATA_PATTERNS):
        return True
    return trust_remote_code and path.endswith(".py")


def _select_weights(
    available: set[str], *, use_safetensors: bool | None, read_index: ReadIndex
) -> set[str]:
    formats = {None: ("safetensors", "bin"), True: ("safetensors",), False: ("bin",)}
    for weight_format in formats[use_safetensors]:
        single, index = WEIGHT_FILES[weight_format]
        if single in available:
            return {single}
        if index in available:
            return {index, *_shards(index, available, read_index)}
    if use_safetensors is True and available & set(WEIGHT_FILES["bin"]):
        raise errors.NoWeightsError(
            "the repo has only .bin weights but config.use_safetensors = true asks for "
            "safetensors; remove that setting to load the .bin weights."
        )
    if use_safetensors is False:
        raise errors.NoWeightsError(
            "config.use_safetensors = false asks for .bin weights but the repo has none; "
            "remove that setting to load its safetensors."
        )
    raise errors.NoWeightsError(
        "the repo has no weights transformers can load (model.safetensors or "
        "pytorch_model.bin, single or sharded with an index); point huggingface.repo at a "
        "transformers checkpoint."
    )


def _shards(index: str, available: set[str], read_index: ReadIndex) -> set[str]:
    """The files an index's ``weight_map`` names, relative to the index's folder."""
    weight_map = read_index(index).get("weight_map")
    if not isinstance(weight_map, Mapping) or not weight_map:
        raise errors.NoWeightsError(f"{index} has no weight_map, so its shards are unknown.")
    shards = set()
    for shard in set(weight_map.values()):
        path = posixpath.normpath(posixpath.join(posixpath.dirname(index), str(shard)))
        if path.startswith(("/", "../")) or path == "..":
            raise errors.NoWeightsError(f"{index} names a shard outside the repo ({shard}).")
        if path not in available:
            raise errors.NoWeightsError(
                f"{index} names the shard {path}, which the repo lacks at this revision."
            )
        shards.add(path)
    return shards


# --- resolve: revision → commit → files -----------------------------------------------------------

_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class _Origin:
    """One model's repo on one endpoint, and how to talk to it: the context of every request."""

    model_name: str
    repo: str
    revision: str | None
    locked_commit: str | None
    token: str | None
    endpoint: str | None
    cache_dir: Path | None

    @property
    def where(self) -> str:
        return f"model '{self.model_name}'"

    @property
    def where_with_repo(self) -> str:
        return f"model '{self.model_name}' ({self.repo})"

    @property
    def hub_url(self) -> str:
        return (self.endpoint or constants.ENDPOINT).rstrip("/")

    def api(self) -> HfApi:
        return HfApi(endpoint=self.endpoint, token=self.token)

    def snapshot_dir(self, commit: str) -> Path:
        cache = Path(self.cache_dir or constants.HF_HUB_CACHE).expanduser()
        return cache / repo_folder_name(repo_id=self.repo, repo_type="model") / "snapshots" / commit


def resolve(
    source: HuggingFaceSource,
    *,
    model_name: str,
    locked_commit: str | None = None,
    offline: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: Path | None = None,
    use_safetensors: bool | None = None,
    trust_remote_code: bool = False,
) -> ResolvedModel:
    """Pin a model's source to one commit and list the files loading needs.

    Args:
        source: Where the model comes from (a Hub repo, or a local directory).
        model_name: The ``[models.NAME]`` name, for messages.
        locked_commit: The lock file's commit: used as is, without asking the Hub where the
            branch is now.
        offline: Use only the local Hugging Face cache: the locked commit, or the commit the
            cache last saw the revision at.
        token: A Hub token; ``None`` lets ``huggingface_hub`` use ``HF_TOKEN`` or the stored
            ``hf auth login``. Never logged.
        endpoint: The Hub's URL; ``None`` means ``HF_ENDPOINT`` or https://huggingface.co.
        cache_dir: The Hugging Face cache; ``None`` means ``HF_HUB_CACHE``.
        use_safetensors: See :func:`select_files`.
        trust_remote_code: See :func:`select_files`.

    Returns:
        The commit and the selected files (sorted by path) with their sizes and hashes;
        ``repo`` and ``revision`` as config.toml wrote them. For a local directory ``commit``
        is ``None`` and each file's ``sha256`` is computed from its content.

    Raises:
        RepoNotFoundError, RevisionNotFoundError, GatedRepoError, HubUnreachableError,
        NotInCacheError, NoWeightsError, HubError.
    """
    select = partial(
        select_files, use_safetensors=use_safetensors, trust_remote_code=trust_remote_code
    )
    if source.local_dir is not None:
        return _resolve_local(source, model_name=model_name, select=select)
    origin = _Origin(
        model_name=model_name,
        repo=source.repo,
        revision=source.revision,
        locked_commit=locked_commit,
        token=token,
        endpoint=endpoint,
        cache_dir=cache_dir,
    )
    commit, files = (_resolve_cached if offline else _resolve_remote)(origin, select)
    return ResolvedModel(
        name=model_name,
        repo=source.repo,
        revision=source.revision,
        commit=commit,
        files=files,
        selection=FileSelection(
            use_safetensors=use_safetensors, trust_remote_code=trust_remote_code
        ),
    )


def _resolve_remote(origin: _Origin, select: Select) -> Resolution:
    api = origin.api()
    with _hub_errors(origin):
        commit = origin.locked_commit or _commit_of(api, origin)
        # At this point the revision is a commit sha: every request below is pinned to it.
        info = api.model_info(origin.repo, revision=commit, files_metadata=True)
        listing = {sibling.rfilename: _hub_file(sibling) for sibling in info.siblings or ()}
        read_index = partial(_download_json, origin, commit=commit)
        selected = _select_in_context(select, listing, read_index, where=origin.where_with_repo)
        if info.gated:
            # The Hub shows a gated repo's files to anyone; find out now, before any download,
            # whether this token may fetch them.
            get_hf_file_metadata(
                hf_hub_url(origin.repo, selected[0], revision=commit, endpoint=origin.endpoint),
                token=origin.token,
            )
    return commit, tuple(listing[path] for path in selected)


def _commit_of(api: HfApi, origin: _Origin) -> str:
    """The commit the revision names now; also recorded in the cache for later offline builds."""
    resolved = api.resolve_revision(
        origin.repo, revision=origin.revision, cache_dir=origin.cache_dir
    )
    return resolved.resolved


def _hub_file(sibling: Any) -> RepoFile:
    if sibling.lfs is not None:
        return RepoFile(path=sibling.rfilename, size=sibling.lfs.size, sha256=sibling.lfs.sha256)
    return RepoFile(path=sibling.rfilename, size=sibling.size, blob_id=sibling.blob_id)


def _download_json(origin: _Origin, path: str, *, commit: str) -> Mapping[str, Any]:
    local = hf_hub_download(
        origin.repo,
        path,
        revision=commit,
        cache_dir=origin.cache_dir,
        endpoint=origin.endpoint,
        token=origin.token,
    )
    return _read_json(Path(local), what=f"{origin.repo}'s {path}")


def _resolve_cached(origin: _Origin, select: Select) -> Resolution:
    """Resolve from the Hugging Face cache alone, as an ``--offline`` build must."""
    commit = origin.locked_commit
    if commit is None:
        try:
            resolved = origin.api().resolve_revision(
                origin.repo,
                revision=origin.revision,
                cache_dir=origin.cache_dir,
                local_files_only=True,
            )
        except hf_errors.RevisionResolutionError:
            raise _not_in_cache(origin, detail="the cache has never seen this revision") from None
        commit = resolved.resolved
    snapshot = origin.snapshot_dir(commit)
    if not snapshot.is_dir():
        raise _not_in_cache(origin, commit=commit, detail="no file of this commit is cached")
    listing = _walk(snapshot)
    read_index = lambda path: _read_json(listing[path], what=f"the cached {path}")  # noqa: E731
    try:
        selected = select(listing, read_index=read_index)
    except errors.NoWeightsError as error:
        # Whatever the Hub has, the cache lacks weights or shards this build needs.
        raise _not_in_cache(origin, commit=commit, detail=str(error).rstrip(".")) from error
    except errors.HubError as error:
        raise type(error)(f"{origin.where_with_repo}: {error}") from error
    return commit, tuple(_cached_file(path, listing[path]) for path in selected)


def _cached_file(path: str, local: Path) -> RepoFile:
    """What the Hub listed for a cached file, read back from the cache's blob name.

    The cache names each blob by the ETag the Hub sent: the sha256 for LFS files, the git blob
    id for the others, the same hashes a Hub listing gives.
    """
    size = local.stat().st_size
    blob = Path(os.readlink(local)).name if local.is_symlink() else ""
    if _SHA256.fullmatch(blob):
        return RepoFile(path=path, size=size, sha256=blob)
    if _GIT_SHA1.fullmatch(blob):
        return RepoFile(path=path, size=size, blob_id=blob)
    return RepoFile(path=path, size=size, sha256=_sha256(local))


def offline_wanted(flag: bool) -> bool:
    """``--offline``, or the Hub's own switch for it, ``HF_HUB_OFFLINE=1``, which
    huggingface_hub reads when it is imported."""
    return flag or bool(constants.HF_HUB_OFFLINE)


def _not_in_cache(
    origin: _Origin, *, detail: str, commit: str | None = None
) -> errors.NotInCacheError:
    at = f"commit {commit[:12]}" if commit else f"revision '{origin.revision or 'main'}'"
    return errors.NotInCacheError(
        f"{origin.where}: {origin.repo} at {at} is not in the Hugging Face cache ({detail}); "
        "build once without --offline (and without HF_HUB_OFFLINE=1) to download it."
    )


def _resolve_local(source: HuggingFaceSource, *, model_name: str, select: Select) -> ResolvedModel:
    root = source.local_dir
    assert root is not None
    if not root.is_dir():
        raise errors.RepoNotFoundError(
            f"model '{model_name}': the local directory {root} does not exist; fix "
            "huggingface.repo or make the checkpoint there."
        )
    listing = _walk(root)
    read_index = lambda path: _read_json(listing[path], what=str(listing[path]))  # noqa: E731
    where = f"model '{model_name}' ({root})"
    selected = _select_in_context(select, listing, read_index, where=where)
    files = tuple(
        RepoFile(path=path, size=listing[path].stat().st_size, sha256=_sha256(listing[path]))
        for path in selected
    )
    return ResolvedModel(
        name=model_name, repo=source.repo, revision=source.revision, commit=None, files=files
    )


def _walk(root: Path) -> dict[str, Path]:
    """Every file under ``root`` by its ``/``-separated path, skipping hidden folders (.git)."""
    files = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in names:
            path = Path(folder, name)
            if path.is_file():
                files[path.relative_to(root).as_posix()] = path
    return files


def _read_json(path: Path, *, what: str) -> Mapping[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise errors.HubError(f"{what} is not valid JSON ({error}).") from error
    if not isinstance(value, Mapping):
        raise errors.HubError(f"{what} is not a JSON object.")
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _select_in_context(
    select: Select, listing: Iterable[str], read_index: ReadIndex, *, where: str
) -> list[str]:
    """Run a selection, naming the model in its errors (select_files cannot know it)."""
    try:
        return select(listing, read_index=read_index)
    except errors.HubError as error:
        raise type(error)(f"{where}: {error}") from error


# --- fetch: files → local paths -------------------------------------------------------------------


def fetch(
    resolved: ResolvedModel,
    *,
    local_dir: Path | None = None,
    offline: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Path]:
    """Download exactly ``resolved.files`` at ``resolved.commit``, or find them in the cache.

    A file already cached at that commit costs no request at all, so a rebuild is silent.

    Args:
        local_dir: The directory a model without a commit was resolved from
            (``source.local_dir``); required for those, ignored for Hub models.
        offline: Never touch the network; missing files raise :class:`NotInCacheError`.
        token, endpoint, cache_dir: As for :func:`resolve`.

    Returns:
        Each repo path → its local file: the cache's snapshot entry (a link to the blob), or
        the file in the local directory of a model resolved from one.

    Raises:
        GatedRepoError, RepoNotFoundError, HubUnreachableError, NotInCacheError, HubError.
    """
    if resolved.commit is None:
        if local_dir is None:
            raise ValueError(f"{resolved.name} was resolved from a local directory: pass local_dir")
        return _local_files(resolved, local_dir)
    origin = _Origin(
        model_name=resolved.name,
        repo=resolved.repo,
        revision=resolved.revision,
        locked_commit=resolved.commit,
        token=token,
        endpoint=endpoint,
        cache_dir=cache_dir,
    )
    snapshot = origin.snapshot_dir(resolved.commit)
    local = {file.path: snapshot / file.path for file in resolved.files}
    missing = [path for path, file in local.items() if not file.is_file()]
    if not missing:
        return local
    if offline:
        raise _not_in_cache(origin, commit=resolved.commit, detail=f"missing {_few(missing)}")
    with _hub_errors(origin):
        snapshot_download(
            origin.repo,
            revision=resolved.commit,
            # Exact paths: glob.escape keeps a '[' or '*' in a file name from matching others.
            allow_patterns=[glob.escape(path) for path in missing],
            cache_dir=cache_dir,
            endpoint=endpoint,
            token=token,
            max_workers=FETCH_WORKERS,
        )
    absent = [path for path, file in local.items() if not file.is_file()]
    if absent:
        raise errors.HubError(
            f"{origin.where}: {_few(absent)} did not arrive from {origin.repo} at commit "
            f"{resolved.commit}; run ./build --update to resolve the revision again."
        )
    return local


def _local_files(resolved: ResolvedModel, root: Path) -> dict[str, Path]:
    local = {file.path: root / file.path for file in resolved.files}
    gone = [path for path, file in local.items() if not file.is_file()]
    if gone:
        raise errors.HubError(
            f"model '{resolved.name}': {_few(gone)} disappeared from {root} since it was "
            "resolved; build again."
        )
    return local


def _few(paths: list[str]) -> str:
    shown = ", ".join(paths[:3])
    return shown if len(paths) <= 3 else f"{shown} and {len(paths) - 3} more"


# --- errors ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _hub_errors(origin: _Origin) -> Iterator[None]:
    """Turn ``huggingface_hub``/``httpx`` errors into ours, each one actionable sentence."""
    try:
        yield
    except hf_errors.GatedRepoError as error:
        raise errors.GatedRepoError(
            f"{origin.where}: {origin.repo} is gated: accept its license at "
            f"{origin.hub_url}/{origin.repo}, then set HF_TOKEN or run `hf auth login`."
        ) from error
    except hf_errors.RepositoryNotFoundError as error:
        raise errors.RepoNotFoundError(
            f"{origin.where}: the Hub has no repo {origin.repo} (or it is private); check "
            "huggingface.repo's spelling, and for a private repo set HF_TOKEN or run "
            "`hf auth login`."
        ) from error
    except hf_errors.RevisionNotFoundError as error:
        raise errors.RevisionNotFoundError(_revision_message(origin)) from error
    except hf_errors.HFValidationError as error:
        raise errors.RepoNotFoundError(
            f"{origin.where}: '{origin.repo}' is not a Hub repo id ({error}); write "
            "huggingface.repo as owner/name."
        ) from error
    except hf_errors.RemoteEntryNotFoundError as error:
        raise errors.HubError(
            f"{origin.where}: a file listed at commit {origin.locked_commit} of {origin.repo} "
            "cannot be downloaded any more; run ./build --update to resolve the revision again."
        ) from error
    except (
        httpx.TransportError,
        hf_errors.OfflineModeIsEnabled,
        hf_errors.LocalEntryNotFoundError,
        hf_errors.RevisionResolutionError,
        hf_errors.FileMetadataError,
    ) as error:
        raise _unreachable(origin, error) from error
    except hf_errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status is not None and status >= 500:
            raise _unreachable(origin, error) from error
        raise errors.HubError(
            f"{origin.where}: the Hub at {origin.hub_url} refused a request for {origin.repo} "
            f"(HTTP {status}); check HF_TOKEN's permissions, or try again later."
        ) from error


def _revision_message(origin: _Origin) -> str:
    if origin.locked_commit is not None:
        revision = f"'{origin.revision}'" if origin.revision else "the default branch"
        return (
            f"{origin.where}: the locked commit {origin.locked_commit} no longer exists in "
            f"{origin.repo}; run ./build --update to resolve {revision} again."
        )
    return (
        f"{origin.where}: {origin.repo} has no branch, tag or commit '{origin.revision}'; fix "
        "huggingface.version."
    )


def _unreachable(origin: _Origin, error: BaseException) -> errors.HubUnreachableError:
    return errors.HubUnreachableError(
        f"{origin.where}: cannot reach the Hugging Face Hub at {origin.hub_url} "
        f"({_root_cause(error)}) to fetch {origin.repo}; check the network, or build with "
        "--offline to use the files already in the Hugging Face cache."
    )


def _root_cause(error: BaseException) -> str:
    """The name of the first cause worth showing (``ConnectError``, not a wrapper of it)."""
    while error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, hf_errors.HfHubHTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code}"
    return type(error).__name__
