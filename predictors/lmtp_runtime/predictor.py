"""The Cog predictor every generated project subclasses. Its whole ``predict.py`` is::

    from pathlib import Path
    from lmtp_runtime.predictor import LmtpPredictor

    class Predictor(LmtpPredictor):
        settings_path = Path(__file__).with_name("model_settings.json")

Cog finds ``setup`` and ``predict`` through inheritance. ``predict`` is a *sync* generator on
purpose: coglet streams the chunks of sync generators as they are yielded, but collects an
async generator's output and sends it at the end, which would defeat token streaming.
"""

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from cog import ConcatenateIterator, Input

from .errors import RuntimeSetupError, SettingsError, describe_exception
from .offline import hub_offline
from .protocol import error_line
from .settings import ModelSettings, read_settings

# huggingface_hub reads HF_HUB_OFFLINE once, when transformers first imports it: make that first
# import happen offline (see offline.py). Everything below pulls in transformers.
with hub_offline():
    from .engine import Engine
    from .loading import load_model
    from .model_info import context_length, describe_model, eos_token_ids
    from .serving import LmtpServer

try:  # recent cog releases name the base class BaseRunner; older ones only have BasePredictor
    from cog import BaseRunner as _CogBase
except ImportError:  # pragma: no cover - depends on the cog release in the image
    from cog import BasePredictor as _CogBase

log = logging.getLogger(__name__)

OPS_BATCH_JSON_DESCRIPTION = (
    "LMTP operations as a JSON string: a list of [COMMAND, ARGS] pairs with COMMAND one of "
    "GENERATE, SCORE, MODEL_INFO, as LMQL's Replicate client sends them."
)
NOT_READY = "the model is not loaded: the predictor's setup() has not run or failed"


class LmtpPredictor(_CogBase):
    """Serves LMTP for the model described by ``settings_path`` (``model_settings.json``)."""

    settings_path: ClassVar[Path | None] = None
    """Set by the generated subclass; :meth:`from_settings` can pass settings directly instead."""

    _settings_source: Mapping[str, Any] | str | os.PathLike[str] | None = None
    _server: LmtpServer | None = None
    settings: ModelSettings | None = None
    model: Any = None
    """The loaded transformers model (after :meth:`setup`)."""
    tokenizer: Any = None
    """The loaded tokenizer (after :meth:`setup`)."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | str | os.PathLike[str]) -> Self:
        """A ready predictor for these settings (a ``model_settings.json`` path or its dict)."""
        predictor = cls()
        predictor._settings_source = settings
        predictor.setup()
        return predictor

    def setup(self) -> None:
        """Load the model, run a one-token warm-up, and get ready to serve.

        Returns only once the model answers; Cog reports ``READY`` after that, so MODEL_INFO is
        never unavailable. Any failure raises :class:`RuntimeError` (Cog: ``SETUP_FAILED``) with
        one sentence saying what to fix.
        """
        _configure_logging()
        settings = read_settings(self._settings_to_read())
        try:
            loaded = load_model(settings)
            window = context_length(loaded.model.config, loaded.tokenizer)
            eos = eos_token_ids(loaded.model, loaded.tokenizer)
            engine = Engine.start(loaded.model, context_length=window, eos_token_ids=eos)
        except RuntimeSetupError:
            raise
        except Exception as error:
            raise RuntimeSetupError(
                f"Could not start serving model '{settings.name}' from {settings.checkpoint_dir}: "
                f"{describe_exception(error)}"
            ) from error
        info = describe_model(
            settings, loaded, vocab_size=engine.vocab_size, context_length=window, eos_token_ids=eos
        )
        self.settings, self.model, self.tokenizer = settings, loaded.model, loaded.tokenizer
        self._server = LmtpServer(engine, model_info=info, max_batch_size=settings.max_batch_size)
        log.info(
            "ready: vocabulary %d, context window %s, end-of-sequence ids %s, batches of up to %d",
            engine.vocab_size,
            window,
            list(eos),
            settings.max_batch_size,
        )

    def predict(
        self,
        ops_batch_json: str = Input(description=OPS_BATCH_JSON_DESCRIPTION),
    ) -> ConcatenateIterator[str]:
        """Answer one batch of LMTP ops with streamed ``TOKEN``/``MSG`` lines (see LMTP.md)."""
        yield from self._lmtp(_plain(ops_batch_json))

    def _lmtp(self, ops_batch_json: object) -> Iterator[str]:
        if self._server is None:
            yield error_line(None, NOT_READY, kind="MSG")
            return
        yield from self._server.serve(ops_batch_json)

    def _settings_to_read(self) -> Mapping[str, Any] | str | os.PathLike[str]:
        source = self._settings_source if self._settings_source is not None else self.settings_path
        if source is None:
            raise SettingsError(
                f"{type(self).__name__}.settings_path is not set: point it at model_settings.json "
                "(the generated predict.py does), or use LmtpPredictor.from_settings(...)."
            )
        return source


def _plain(value: object) -> object:
    """The value itself, or the default of an unfilled ``Input(...)``.

    Cog fills every input; a direct Python call like ``predictor.predict()`` would otherwise
    receive the ``Input(...)`` marker object itself as the value.
    """
    return getattr(value, "default", None) if type(value).__name__ == "FieldInfo" else value


def _configure_logging() -> None:
    """Send the runtime's INFO lines to stderr (Cog's logs) unless the host set up logging."""
    package = logging.getLogger(__package__)
    package.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)
