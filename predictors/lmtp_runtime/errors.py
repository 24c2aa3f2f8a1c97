"""Every error the runtime raises on purpose (the builder's ``lmtp_cog.errors`` is not in the
image), each one sentence saying what to fix.

- Setup failures subclass :class:`RuntimeError`, which Cog reports as ``SETUP_FAILED`` with the
  message in the setup logs, naming the file or key to look at.
- Text mode's: a bad input (:class:`TextInputError`) or a generation that cannot go on
  (:class:`TextGenerationError`) fail the prediction with their message, as Replicate's LLM
  clients expect.
- LMTP's never leave ``run``: a batch that cannot be read (:class:`BatchFormatError`) and a bad
  op are answered in band (see :mod:`.protocol`).
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


class BatchFormatError(ValueError):
    """``ops_batch_json`` as a whole is unusable; one ``MSG`` error, stream id null, answers it."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid ops_batch_json: {reason}")


class TextInputError(ValueError):
    """A text-mode input is missing, out of range or inconsistent; the message names it."""


class TextGenerationError(RuntimeError):
    """The model could not go on generating (e.g. it produced NaN logits)."""


class SchedulerStopped(RuntimeError):
    """The scheduler's thread is gone (closed, or killed by a bug): nothing will answer."""


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
