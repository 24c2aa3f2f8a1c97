"""Fixtures shared by every test folder: tiny checkpoints, a Hub stand-in, an isolated HF cache.

- ``make_checkpoint(**make_model_args)``: a tiny random checkpoint, made once per session for
  each set of arguments (the session's one cache of them); ``tiny_checkpoint(shape)``: a Llama
  one of a given file layout (read-only).
- ``hub_server``: one :class:`~tests.support.hub_server.HubServer` for the session.
- ``hub_repo(files)``: publishes a checkpoint (or any files) on it under a repo id of its own.
- ``hf_cache``: an empty Hugging Face cache that ``huggingface_hub`` uses by default during the
  test, with no token sent unless a test passes one, so tests never touch the user's real cache
  or credentials.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.hub_server import HubServer

# LiteLLM (a test dependency) puts a secret-redaction filter on asyncio's logger. When an event
# loop is collected at interpreter exit, that filter runs half torn down and prints tracebacks
# after pytest's summary. Nothing here logs secrets; read at LiteLLM's import.
os.environ.setdefault("LITELLM_DISABLE_REDACT_SECRETS", "true")

CHECKPOINT_SHAPES: dict[str, dict[str, object]] = {
    "safetensors": {},
    "sharded": {"max_shard_size": "200KB"},
    "bin": {"safe_serialization": False},
    "bin-sharded": {"safe_serialization": False, "max_shard_size": "200KB"},
}
"""``make_model`` arguments per checkpoint shape; the sharded ones get three shards and an index."""

MakeCheckpoint = Callable[[str], Path]
PublishRepo = Callable[..., str]


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make_checkpoint(**make_model_args)``: a tiny random checkpoint, made once per session
    for each set of arguments (about a second each); the session's one cache of them. Treat the
    folders as read-only."""
    from lmtp_cog.tiny_models import make_model

    made: dict[str, Path] = {}

    def make(**make_model_args: Any) -> Path:
        key = json.dumps(make_model_args, sort_keys=True)
        if key not in made:
            made[key] = make_model(tmp_path_factory.mktemp("tiny"), **make_model_args)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(make_checkpoint: Callable[..., Path]) -> MakeCheckpoint:
    """``tiny_checkpoint(shape)`` → the folder of a tiny Llama checkpoint of that shape."""

    def get(shape: str = "safetensors") -> Path:
        return make_checkpoint(**CHECKPOINT_SHAPES[shape])

    return get


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubServer]:
    """A Hugging Face Hub stand-in on 127.0.0.1 for the whole session; give it ``endpoint=``."""
    with HubServer() as server:
        yield server


@pytest.fixture
def hub_repo(
    hub_server: HubServer, tiny_checkpoint: MakeCheckpoint, request: pytest.FixtureRequest
) -> PublishRepo:
    """``hub_repo(files="safetensors", *, gated_token=None, private=False)`` → a new repo id.

    ``files`` is a checkpoint shape (see ``CHECKPOINT_SHAPES``), a folder, or a mapping of repo
    paths to contents. Each call makes a repo no other test uses, so the session's shared server
    needs no cleaning: filter its log with ``hub_server.requests_for(repo_id)``.
    """
    counter = itertools.count()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-.")[:60]

    def publish(
        files: str | Path | Mapping[str, bytes | str | Path] = "safetensors",
        *,
        gated_token: str | None = None,
        private: bool = False,
    ) -> str:
        source = tiny_checkpoint(files) if isinstance(files, str) else files
        repo_id = f"tests/{stem}-{next(counter)}"
        hub_server.add_repo(repo_id, source, gated_token=gated_token, private=private)
        return repo_id

    return publish


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, the default for this test; no implicit token, not offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


def pytest_unconfigure(config: pytest.Config) -> None:
    """Keep the summary last: LMQL 0.7.3 leaves its client tasks pending when its event loop
    closes, and asyncio reports each as the loop is collected at interpreter exit."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
