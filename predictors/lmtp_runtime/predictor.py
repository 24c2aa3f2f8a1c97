"""The model behind every generated ``predict.py``: load it, then answer predictions.

Cog reads a model's interface from ``predict.py``'s source (cog >= 0.22 parses it without
running it), so that file declares all of it in literals, rendered from :mod:`.inputs`::

    class Predictor(BaseRunner):
        def setup(self) -> None:
            self.model = LmtpPredictor.from_settings(SETTINGS)

        @cog.streaming
        @cog.concurrent(max=8)
        async def run(self, prompt: str | None = Input(default=None, ...), ...
                      ) -> ConcatenateIterator[str]:
            return self.model.stream(prompt=prompt, ...)

and hands every input to :meth:`LmtpPredictor.stream`. Nothing here changes what Cog sees.
The shape of ``run`` follows the model's ``config.concurrency``, as measured on coglet 0.23.1
(``bench/coglet_probe.py``):

- 1: a *sync* generator (``yield from``). Cog streams its chunks and runs one prediction at a
  time; canceling a prediction raises ``CancelationException`` in its thread, which stops its
  streams at once.
- N > 1: a coroutine that returns the chunks' sync generator. Cog then runs up to N at once and
  still streams each one's chunks from a thread of its own, and their work shares forward passes
  through one :class:`~.scheduler.BatchScheduler`. Two costs, both coglet's: canceling such a
  prediction does not stop its code (it runs to its end, then Cog reports it canceled), and an
  async generator instead would lose streaming (Cog collects its output and sends it at the
  end).

One ``run`` serves two modes, chosen by which input is given (exactly one of them):

- ``ops_batch_json``: LMTP for LMQL (LMTP.md). Every problem is answered in band, as an error
  line, because an exception reaches LMQL only as an empty result.
- ``prompt``: text generation with Replicate's LLM inputs (``system_prompt``, ``max_new_tokens``,
  ``temperature``, ``stop_sequences``...), for the ``replicate`` client, LiteLLM or promptfoo.
  The output is the text, streamed; a bad input raises, so Cog fails the prediction with a
  message naming the input, as those clients expect.

The text inputs are ignored in LMTP mode: Cog fills in their defaults on every prediction.
"""

import contextvars
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, Self

from .errors import RuntimeSetupError, SettingsError, describe_exception
from .inputs import OPS_BATCH_JSON, InputValue, input_defaults
from .offline import hub_offline
from .protocol import error_line
from .settings import ModelSettings, read_settings
from .text_request import choose_mode, text_request

# huggingface_hub reads HF_HUB_OFFLINE once, when transformers first imports it: make that first
# import happen offline (see offline.py). Everything below pulls in transformers.
with hub_offline():
    from .engine import Engine
    from .loading import load_model
    from .model_info import context_length, describe_model, eos_token_ids
    from .scheduler import BatchScheduler
    from .lmtp_mode import LmtpMode
    from .text_mode import TextMode

log = logging.getLogger(__name__)

SettingsSource = Mapping[str, Any] | str | os.PathLike[str]

NOT_READY = "the model is not loaded: the predictor's setup() has not run or failed"


class LmtpPredictor:
    """Serves the model described by ``settings_path`` (``model_settings.json``): LMTP and text."""

    settings: ModelSettings | None = None
    model: Any = None
    """The loaded transformers model (after :meth:`setup`)."""
    tokenizer: Any = None
    """The loaded tokenizer (after :meth:`setup`)."""

    def __init__(self, settings: SettingsSource | None = None) -> None:
        """Nothing is loaded until :meth:`setup`.

        Args:
            settings: A ``model_settings.json`` path, or its decoded dict.
        """
        self._settings_source = settings
        self._server: LmtpMode | None = None
        self._text: TextMode | None = None

    @classmethod
    def from_settings(cls, settings: SettingsSource) -> Self:
        """A ready predictor for these settings (a ``model_settings.json`` path or its dict)."""
        predictor = cls(settings)
        predictor.setup()
        return predictor

    def setup(self) -> None:
        """Load the model, run a one-token warm-up, and get ready to serve.

        Returns only once the model answers; Cog reports ``READY`` after that, so MODEL_INFO is
        never unavailable. Any failure raises :class:`RuntimeError` (Cog: ``SETUP_FAILED``) with
        one sentence saying what to fix.
        """
        _configure_logging()
        if self._settings_source is None:
            raise SettingsError(
                "LmtpPredictor has no settings: pass model_settings.json, as the generated "
                "predict.py does (LmtpPredictor.from_settings(path))."
            )
        settings = read_settings(self._settings_source)
        try:
            loaded = load_model(settings)
            window = context_length(loaded.model.config, loaded.tokenizer)
            eos = eos_token_ids(loaded.model, loaded.tokenizer)
            engine = Engine.start(
                loaded.model,
                context_length=window,
                eos_token_ids=eos,
                prefix_cache_mb=settings.serve.prefix_cache_mb,
                prefix_cache_gpu_share=settings.serve.prefix_cache_gpu_share,
            )
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
        scheduler = BatchScheduler(engine, max_batch_size=settings.serve.max_batch_size)
        self._server = LmtpMode(
            scheduler, model_info=info, log_predictions=settings.serve.log_predictions
        )
        self._text = TextMode(scheduler, loaded.tokenizer)
        log.info(
            "ready: vocabulary %d, context window %s, end-of-sequence ids %s, batches of up to "
            "%d, up to %d predictions at once",
            engine.vocab_size,
            window,
            list(eos),
            settings.serve.max_batch_size,
            settings.serve.concurrency,
        )

    def stream(self, **inputs: InputValue) -> Iterator[str]:
        """The output chunks of one prediction with these inputs (see :mod:`.inputs`).

        ``predict.py``'s ``run`` passes every input; one not given takes its declared default,
        as Cog would fill it in. The chunks are computed in the context of this call, wherever
        they are iterated: Cog ties a prediction's log lines to it through context variables
        it sets around ``run``, and with concurrency above 1 it iterates the returned generator
        after ``run`` returned, in a thread of its own.

        Raises (text mode only, while iterating; Cog fails the prediction with the message):
            TypeError: an input that ``run`` does not declare.
            TextInputError: both or neither of ``prompt`` and ``ops_batch_json``, or a text input
                out of range or inconsistent; the message names the input.
            TextGenerationError: the model could not go on (e.g. NaN logits).
            RuntimeError: ``setup()`` has not run.
        """
        given = input_defaults()
        unknown = sorted(set(inputs) - set(given))
        if unknown:
            raise TypeError(f"unknown inputs {', '.join(unknown)}: see lmtp_runtime/inputs.py")
        given.update(inputs)
        return _in_context(contextvars.copy_context(), self._predict(given))

    def _predict(self, inputs: dict[str, InputValue]) -> Iterator[str]:
        ops = inputs.pop(OPS_BATCH_JSON)
        if choose_mode(prompt=inputs["prompt"], ops_batch_json=ops) == "lmtp":
            yield from self._lmtp(ops)
            return
        request = text_request(**inputs)  # checked before the model is needed
        if self._text is None:
            raise RuntimeError(NOT_READY)
        yield from self._text.generate(request)

    def _lmtp(self, ops_batch_json: object) -> Iterator[str]:
        if self._server is None:
            yield error_line(None, NOT_READY, kind="MSG")
            return
        yield from self._server.serve(ops_batch_json)


def _in_context(context: contextvars.Context, chunks: Iterator[str]) -> Iterator[str]:
    """``chunks``, each computed inside ``context``: the context of the ``stream`` call.

    Cog attributes log lines to a prediction through context variables it sets around ``run``;
    an async ``run``'s generator runs after the coroutine returned, in Cog's worker thread, where
    they are unset. Without this, a prediction's log lines would go to the server's log only.
    """
    try:
        while True:
            try:
                chunk = context.run(next, chunks)
            except StopIteration:
                return
            yield chunk
    finally:
        context.run(chunks.close)  # closing runs the generator's own `finally` (its log line)


def _configure_logging() -> None:
    """Send the runtime's INFO lines to stderr (Cog's logs) unless the host set up logging."""
    package = logging.getLogger(__package__)
    package.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)
