"""The runtime's own errors (the builder's ``lmtp_cog.errors`` is not in the image).

Setup failures subclass :class:`RuntimeError`, which Cog reports as ``SETUP_FAILED`` with the
message in the setup logs: every message is one sentence naming the file or key to look at.
Problems with a single LMTP op never become exceptions out of ``predict``; they are reported in
band (see :mod:`.protocol`).
"""

from __future__ import annotations


class RuntimeSetupError(RuntimeError):
    """The predictor could not get ready to serve."""


class SettingsError(RuntimeSetupError):
    """``model_settings.json`` is missing, unreadable or has an invalid value."""


class ModelLoadError(RuntimeSetupError):
    """The checkpoint could not be loaded, or is of a kind LMTP cannot serve."""


class UnsupportedModelError(ModelLoadError):
    """The checkpoint is not a decoder-only causal language model (e.g. an encoder-decoder)."""


def describe_exception(error: BaseException, *, limit: int = 300) -> str:
    """``"TypeName: first line of the message"``, bounded: for one-sentence, user-facing errors.

    The full traceback belongs in the log; an error line or a setup error only needs enough to
    recognise the problem (e.g. ``OutOfMemoryError: CUDA out of memory. Tried to allocate ...``).
    """
    text = str(error).strip()
    text = text.splitlines()[0] if text else "(no message)"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}"
