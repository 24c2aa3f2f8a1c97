"""A local stand-in for the Hugging Face Hub, over real HTTP, for tests and ``make demo``.

The Hub is out of reach on the machines this project is developed on, so :class:`HubServer`
serves repos made on disk to the real ``huggingface_hub`` client (pass ``endpoint=server.endpoint``
or set ``HF_ENDPOINT``). It answers the part of the Hub's protocol that ``HfApi.model_info``,
``HfApi.list_repo_tree``, ``hf_hub_download`` and ``snapshot_download`` use:

- ``GET /api/models/{repo}[/revision/{rev}]`` → ``id``, ``sha``, ``siblings`` (with sizes, blob
  ids and LFS info when ``?blobs=true``), ``private``, ``gated``;
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=...`` → files and folders (one page);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` → ``X-Repo-Commit``, ``ETag`` (the git blob id),
  ``Content-Length`` and, for LFS files, ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``;
  never ``X-Xet-*``, so the client downloads over plain HTTP;
- errors as 404 with ``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound``, and
  401/403 with ``X-Error-Code: GatedRepo`` for file downloads from a gated repo without the right
  bearer token (the Hub lets anyone read a gated repo's metadata; private repos hide everything).

Commits are deterministic (a sha1 over the parent and the file blob ids), branches and tags move
like git refs, and every request is recorded in :attr:`HubServer.requests` so tests can assert
exactly which files a client downloaded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (
    ".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf",
    ".model", ".tflite", ".npy", ".npz", ".pkl", ".pickle", ".zip", ".tar", ".gz", ".ot",
)  # fmt: skip
"""What the Hub's default ``.gitattributes`` sends to git LFS (abridged)."""
LFS_MIN_SIZE = 10 * 1024 * 1024
"""Larger files go to LFS whatever their name, as the Hub's upload tools do."""

FileSource = Path | Mapping[str, bytes | str | Path]


@dataclass(frozen=True)
class HubRequest:
    """One request the stand-in answered."""

    method: str
    path: str
    """The URL path, percent-decoded, without the query string."""
    status: int


@dataclass(frozen=True)
class _Blob:
    content: bytes
    blob_id: str
    """The git blob id: of the content, or of the LFS pointer file for LFS files."""
    sha256: str | None
    """The LFS oid; ``None`` for files kept in git."""
    pointer_size: int | None


@dataclass(frozen=True)
class _Commit:
    sha: str
    files: dict[str, _Blob]


@dataclass
class _Repo:
    repo_id: str
    gated_token: str | None
    private: bool
    commits: dict[str, _Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    """Branch and tag names → commit shas."""

    def commit_for(self, revision: str) -> _Commit | None:
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha)


class _ErrorAnswer(Exception):
    """An answer the stand-in gives as an HTTP error, the way the Hub does."""

    def __init__(self, status: HTTPStatus, code: str, message: str, *, commit: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.commit = commit


class HubServer:
    """A Hugging Face Hub stand-in on ``127.0.0.1`` (a free port), for use as a context manager.

    Example::

        with HubServer() as hub:
            hub.add_repo("acme/tiny", model_dir)
            hf_hub_download("acme/tiny", "config.json", endpoint=hub.endpoint, cache_dir=tmp)
            assert hub.downloaded("acme/tiny") == ["config.json"]
    """

    def __init__(self) -> None:
        self._repos: dict[str, _Repo] = {}
        self._requests: list[HubRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="hub-stand-in", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        assert self._thread is not None
        self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The base URL to hand to ``huggingface_hub`` (``endpoint=`` or ``HF_ENDPOINT``)."""
        if self._httpd is None:
            raise RuntimeError("the Hub stand-in is not running; call start() first")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # --- content ---------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: FileSource,
        *,
        branch: str = "main",
        gated_token: str | None = None,
        private: bool = False,
    ) -> str:
        """Create a model repo whose first commit on ``branch`` holds ``files``.

        Args:
            files: A directory (every file under it, recursively) or a mapping of repo paths to
                contents (bytes, text, or a file to read).
            gated_token: Make the repo gated: downloading its files needs this bearer token.
            private: Hide the repo, metadata included, from requests without ``gated_token``.

        Returns:
            The commit sha.
        """
        with self._lock:
            if repo_id in self._repos:
                raise ValueError(f"repo {repo_id} already exists; use commit() to change it")
            if private and gated_token is None:
                raise ValueError("a private repo needs a token that grants access (gated_token=)")
            self._repos[repo_id] = _Repo(repo_id, gated_token=gated_token, private=private)
        return self.commit(repo_id, files, branch=branch)

    def commit(self, repo_id: str, files: FileSource, *, branch: str = "main") -> str:
        """Add a commit whose tree is exactly ``files`` on ``branch`` (created if new).

        Returns:
            The new commit sha; the branch now points to it.
        """
        blobs = {path: _blob(path, content) for path, content in sorted(_read_files(files).items())}
        with self._lock:
            repo = self._known(repo_id)
            parent = repo.refs.get(branch, "")
            digest = hashlib.sha1(f"parent {parent}\n".encode())
            for path, blob in blobs.items():
                digest.update(f"{blob.blob_id} {path}\n".encode())
            sha = digest.hexdigest()
            repo.commits[sha] = _Commit(sha, blobs)
            repo.refs[branch] = sha
        return sha

    def tag(self, repo_id: str, name: str, *, revision: str = "main") -> str:
        """Point the tag (or branch) ``name`` at ``revision``; returns the commit sha."""
        with self._lock:
            repo = self._known(repo_id)
            commit = repo.commit_for(revision)
            if commit is None:
                raise ValueError(f"{repo_id} has no revision {revision}")
            repo.refs[name] = commit.sha
            return commit.sha

    def head(self, repo_id: str, branch: str = "main") -> str:
        """The commit sha ``branch`` points to."""
        with self._lock:
            return self._known(repo_id).refs[branch]

    def _known(self, repo_id: str) -> _Repo:
        repo = self._repos.get(repo_id)
        if repo is None:
            raise ValueError(f"the stand-in has no repo {repo_id}; call add_repo() first")
        return repo

    # --- request log -----------------------------------------------------------------------------

    @property
    def requests(self) -> list[HubRequest]:
        """Every request answered so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, repo_id: str) -> list[HubRequest]:
        """The requests that named ``repo_id``, API and file downloads alike."""
        api = f"/api/models/{repo_id}"
        files = f"/{repo_id}/resolve/"
        return [
            r for r in self.requests
            if r.path == api or r.path.startswith((api + "/", files))
        ]  # fmt: skip

    def downloaded(self, repo_id: str) -> list[str]:
        """Repo paths of the files whose bytes were sent (successful ``GET``), sorted."""
        prefix = f"/{repo_id}/resolve/"
        paths = {
            r.path[len(prefix) :].split("/", 1)[1]
            for r in self.requests_for(repo_id)
            if r.method == "GET" and r.status == HTTPStatus.OK and r.path.startswith(prefix)
        }
        return sorted(paths)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, request: HubRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # --- answering -------------------------------------------------------------------------------

    def _find_repo(self, segments: list[str]) -> tuple[_Repo, list[str]]:
        """Split URL segments into a known repo (``owner/name`` or ``name``) and the rest."""
        with self._lock:
            for length in (2, 1):
                repo = self._repos.get("/".join(segments[:length]))
                if repo is not None and len(segments) >= length:
                    return repo, segments[length:]
        raise _ErrorAnswer(HTTPStatus.NOT_FOUND, "RepoNotFound", "Repository not found")

    def _commit(self, repo: _Repo, revision: str) -> _Commit:
        with self._lock:
            commit = repo.commit_for(revision)
        if commit is None:
            raise _ErrorAnswer(
                HTTPStatus.NOT_FOUND, "RevisionNotFound", f"Invalid rev id: {revision}"
            )
        return commit


def _read_files(files: FileSource) -> dict[str, bytes]:
    if isinstance(files, Path):
        return {
            p.relative_to(files).as_posix(): p.read_bytes()
            for p in sorted(files.rglob("*"))
            if p.is_file()
        }
    contents = {}
    for path, value in files.items():
        if isinstance(value, Path):
            value = value.read_bytes()
        contents[path] = value.encode() if isinstance(value, str) else value
    return contents


def _git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _blob(path: str, content: bytes) -> _Blob:
    if len(content) < LFS_MIN_SIZE and not path.endswith(LFS_SUFFIXES):
        return _Blob(content, _git_blob_id(content), sha256=None, pointer_size=None)
    sha256 = hashlib.sha256(content).hexdigest()
    pointer = (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(content)}\n"
    ).encode()
    return _Blob(content, _git_blob_id(pointer), sha256=sha256, pointer_size=len(pointer))


@dataclass(frozen=True)
class _Response:
    status: HTTPStatus
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any) -> _Response:
        body = json.dumps(value).encode()
        return cls(HTTPStatus.OK, body, {"Content-Type": "application/json"})

    @classmethod
    def error(cls, error: _ErrorAnswer) -> _Response:
        headers = {"X-Error-Code": error.code, "X-Error-Message": str(error)}
        if error.commit is not None:
            headers["X-Repo-Commit"] = error.commit
        return cls(error.status, json.dumps({"error": str(error)}).encode(), headers)


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer  # set on the subclass made by HubServer.start()
    server_version = "HubStandIn/1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read :attr:`HubServer.requests` instead of stderr."""

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def _answer(self) -> None:
        url = urlsplit(self.path)
        try:
            response = self._route(url.path, parse_qs(url.query))
        except _ErrorAnswer as error:
            response = _Response.error(error)
        # Recorded before the client can see the answer, so a test reading the log right after
        # a call returns sees every request that call made.
        self.hub._record(HubRequest(self.command, unquote(url.path), int(response.status)))
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _route(self, raw_path: str, query: dict[str, list[str]]) -> _Response:
        # Split before decoding: a revision like "refs/pr/1" arrives as one %2F-quoted segment.
        segments = [unquote(s) for s in raw_path.strip("/").split("/")]
        if segments[:2] == ["api", "models"] and self.command == "GET":
            return self._api(segments[2:], query)
        repo, rest = self.hub._find_repo(segments)
        if len(rest) >= 3 and rest[0] == "resolve":
            return self._resolve(repo, revision=rest[1], path="/".join(rest[2:]))
        raise _ErrorAnswer(HTTPStatus.NOT_FOUND, "EntryNotFound", "Not found")

    # --- /api/models/... ---

    def _api(self, segments: list[str], query: dict[str, list[str]]) -> _Response:
        repo, rest = self.hub._find_repo(segments)
        self._check_visible(repo)
        if not rest:
            return self._info(repo, "main", blobs=_flag(query, "blobs"))
        if rest[0] == "revision" and len(rest) == 2:
            return self._info(repo, rest[1], blobs=_flag(query, "blobs"))
        if rest[0] == "tree" and len(rest) >= 2:
            folder = "/".join(rest[2:])
            return self._tree(repo, rest[1], folder=folder, recursive=_flag(query, "recursive"))
        raise _ErrorAnswer(HTTPStatus.NOT_FOUND, "EntryNotFound", "Not found")

    def _info(self, repo: _Repo, revision: str, *, blobs: bool) -> _Response:
        commit = self.hub._commit(repo, revision)
        siblings = []
        for path, blob in commit.files.items():
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling |= {"size": len(blob.content), "blobId": blob.blob_id}
                if blob.sha256 is not None:
                    sibling["lfs"] = {
                        "sha256": blob.sha256,
                        "size": len(blob.content),
                        "pointerSize": blob.pointer_size,
                    }
            siblings.append(sibling)
        return _Response.json(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": commit.sha,
                "private": repo.private,
                "gated": "manual" if repo.gated_token is not None and not repo.private else False,
                "disabled": False,
                "tags": [],
                "siblings": siblings,
            }
        )

    def _tree(self, repo: _Repo, revision: str, *, folder: str, recursive: bool) -> _Response:
        commit = self.hub._commit(repo, revision)
        prefix = f"{folder}/" if folder else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, blob in commit.files.items():
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            # Every folder between `folder` and the file, then the file itself when in reach.
            for depth in range(1, len(parts)):
                name = prefix + "/".join(parts[:depth])
                entries.setdefault(name, {"type": "directory", "oid": _tree_id(name), "path": name})
                if not recursive:
                    break
            if recursive or len(parts) == 1:
                entries[path] = _tree_file(path, blob)
        if folder and not entries:
            raise _ErrorAnswer(HTTPStatus.NOT_FOUND, "EntryNotFound", f"{folder} does not exist")
        return _Response.json([entries[name] for name in sorted(entries)])

    # --- /{repo}/resolve/{rev}/{path} ---

    def _resolve(self, repo: _Repo, *, revision: str, path: str) -> _Response:
        self._check_visible(repo)
        self._check_gate(repo)
        commit = self.hub._commit(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise _ErrorAnswer(
                HTTPStatus.NOT_FOUND, "EntryNotFound", f"{path} does not exist", commit=commit.sha
            )
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{blob.blob_id}"',
            "Content-Type": "application/octet-stream",
        }
        if blob.sha256 is not None:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(len(blob.content))
        return _Response(HTTPStatus.OK, blob.content, headers)

    # --- access ---

    def _bearer(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value[len("Bearer ") :] if value.startswith("Bearer ") else None

    def _check_visible(self, repo: _Repo) -> None:
        if repo.private and self._bearer() != repo.gated_token:
            # The Hub does not reveal that a private repo exists.
            raise _ErrorAnswer(HTTPStatus.UNAUTHORIZED, "RepoNotFound", "Repository not found")

    def _check_gate(self, repo: _Repo) -> None:
        if repo.gated_token is None or repo.private:
            return
        token = self._bearer()
        if token != repo.gated_token:
            # 401 without a token, 403 with one that has not been granted access.
            status = HTTPStatus.UNAUTHORIZED if token is None else HTTPStatus.FORBIDDEN
            raise _ErrorAnswer(status, "GatedRepo", "Access to this model is restricted")


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true")


def _tree_id(path: str) -> str:
    return hashlib.sha1(f"tree {path}".encode()).hexdigest()


def _tree_file(path: str, blob: _Blob) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": "file",
        "oid": blob.blob_id,
        "size": len(blob.content),
        "path": path,
    }
    if blob.sha256 is not None:
        entry["lfs"] = {
            "oid": blob.sha256,
            "size": len(blob.content),
            "pointerSize": blob.pointer_size,
        }
    return entry
