"""The served model's own tokenizer, in ./serve's process, for the OpenAI-compatible API.

OpenAI's clients send text; the model speaks token ids (LMTP). So ./serve tokenizes prompts and
chat messages, and detokenizes what the model generates, with the very tokenizer the model loads:
the project's ``checkpoints/`` (from ``model_settings.json``, read with the runtime's
:func:`~lmtp_runtime.settings.read_settings`), loaded the way the runtime loads it (local files
only, ``trust_remote_code`` as configured).

Importing transformers and loading a tokenizer takes seconds, so :class:`TokenizerLoad` does it on
a thread while Cog's ``setup()`` loads the model. A project without a tokenizer (a stand-in model,
a broken checkpoint) is still served: only the OpenAI-compatible API is unavailable, and says why.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtp_runtime.errors import SettingsError
from lmtp_runtime.settings import SETTINGS_FILE, read_settings

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""Any one of these marks a folder that holds a tokenizer."""


@dataclass(frozen=True)
class ProjectTokenizer:
    """The project's tokenizer, or why there is none (one sentence)."""

    tokenizer: Any | None
    problem: str | None = None


def load_tokenizer(project_dir: Path) -> ProjectTokenizer:
    """The tokenizer of ``project_dir``'s checkpoint; never raises."""
    try:
        settings = read_settings(project_dir / SETTINGS_FILE)
    except SettingsError as error:
        return ProjectTokenizer(None, str(error))
    directory = settings.checkpoint_dir
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return ProjectTokenizer(None, f"{directory} holds no tokenizer: run ./build again")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            str(directory),
            local_files_only=True,
            trust_remote_code=settings.load.trust_remote_code,
        )
    except Exception as error:  # whatever transformers or the tokenizer's own code raise
        log.debug("loading the tokenizer failed", exc_info=True)
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        return ProjectTokenizer(None, f"the tokenizer in {directory} cannot be loaded: {reason}")
    return ProjectTokenizer(tokenizer)


class TokenizerLoad:
    """:func:`load_tokenizer` on a thread of its own; :meth:`result` waits for it."""

    def __init__(self, project_dir: Path) -> None:
        self._project_dir = project_dir
        self._result: ProjectTokenizer | None = None
        self._thread = threading.Thread(target=self._load, name="tokenizer-load", daemon=True)

    def start(self) -> TokenizerLoad:
        self._thread.start()
        return self

    def result(self) -> ProjectTokenizer:
        self._thread.join()
        return self._result or ProjectTokenizer(None, "loading the tokenizer failed; see the log")

    def _load(self) -> None:
        try:
            self._result = load_tokenizer(self._project_dir)
        except Exception:  # a bug here must not take the other APIs down
            log.exception("loading the tokenizer failed")
