"""The Cog predictor every generated project subclasses. Its whole ``predict.py`` is::

    from pathlib import Path
    from lmtp_runtime.predictor import LmtpPredictor

    class Predictor(LmtpPredictor):
        settings_path = Path(__file__).with_name("model_settings.json")

Cog finds ``setup`` and ``predict`` through inheritance. The shape of ``predict`` depends on the
model's ``serve.concurrency``, as measured on coglet 0.23.1 (``bench/coglet_probe.py``):

- 1: a *sync* generator. Cog streams its chunks and runs one prediction at a time; canceling a
  prediction raises ``CancelationException`` in its thread, which stops its streams at once.
- N > 1: a coroutine that returns that sync generator, declared ``@cog.concurrent(max=N)``
  (:meth:`LmtpPredictor.__init_subclass__` gives the subclass this twin of ``predict`` when
  ``predict.py`` is imported). Cog then runs up to N at once and still streams each one's chunks
  from a thread of its own, and their work shares forward passes through one
  :class:`~.scheduler.BatchScheduler`. Two costs, both coglet's: canceling such a prediction
  does not stop its code (it runs to its end, then Cog reports it canceled), and an async
  generator instead would lose streaming (Cog collects its output and sends it at the end).

Python callers (tests, benchmarks) use :meth:`LmtpPredictor.stream`.

One ``predict`` serves two modes, chosen by which input is given (exactly one of them):

- ``ops_batch_json``: LMTP for LMQL (LMTP.md). Every problem is answered in band, as an error
  line, because an exception reaches LMQL only as an empty result.
- ``prompt``: text generation with Replicate's LLM inputs (``system_prompt``, ``max_new_tokens``,
  ``temperature``, ``stop_sequences``...), for the ``replicate`` client, LiteLLM or promptfoo.
  The output is the text, streamed; a bad input raises, so Cog fails the prediction with a
  message naming the input, as those clients expect.

The text inputs are ignored in LMTP mode: Cog fills in their defaults on every prediction.
"""

import contextvars
import inspect
import logging
import os
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from cog import ConcatenateIterator, Input

from .errors import RuntimeSetupError, SettingsError, describe_exception
from .offline import hub_offline
from .protocol import error_line
from .settings import ModelSettings, read_concurrency, read_settings
from .text_request import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MIN_NEW_TOKENS,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    choose_mode,
    text_request,
)

# huggingface_hub reads HF_HUB_OFFLINE once, when transformers first imports it: make that first
# import happen offline (see offline.py). Everything below pulls in transformers.
with hub_offline():
    from .engine import Engine
    from .loading import load_model
    from .model_info import context_length, describe_model, eos_token_ids
    from .scheduler import BatchScheduler
    from .serving import LmtpServer
    from .text_mode import TextGenerator

try:  # recent cog releases name the base class BaseRunner; older ones only have BasePredictor
    from cog import BaseRunner as _CogBase
except ImportError:  # pragma: no cover - depends on the cog release in the image
    from cog import BasePredictor as _CogBase

try:  # @cog.concurrent came with coglet; cog.yaml pins an SDK that has it (build.sdk_version)
    from cog import concurrent as _cog_concurrent
except ImportError:  # pragma: no cover - depends on the cog release in the image
    _cog_concurrent = None

log = logging.getLogger(__name__)

OPS_BATCH_JSON_DESCRIPTION = (
    "LMTP operations as a JSON string: a list of [COMMAND, ARGS] pairs with COMMAND one of "
    "GENERATE, SCORE, MODEL_INFO, as LMQL's Replicate client sends them."
)
NOT_READY = "the model is not loaded: the predictor's setup() has not run or failed"

# Input descriptions, shown on the model's page and in its OpenAPI schema. The text inputs follow
# Replicate's LLMs, so that clients written for those send the same names.
PROMPT_DESCRIPTION = (
    "Text to continue or answer; the output is the generated text, streamed. Give either this or "
    "ops_batch_json."
)
SYSTEM_PROMPT_DESCRIPTION = "System prompt: a system message of the chat template, if any."
PROMPT_TEMPLATE_DESCRIPTION = (
    "Template for the model's input, with {prompt} and optionally {system_prompt}. Default: the "
    "tokenizer's chat template if the model has one, else the prompt as is."
)
MAX_NEW_TOKENS_DESCRIPTION = "Most tokens to generate (max_length and max_tokens also work)."
MIN_NEW_TOKENS_DESCRIPTION = (
    "Fewest tokens to generate: end-of-sequence is suppressed until then (-1 or 0: no minimum)."
)
TEMPERATURE_DESCRIPTION = "Sampling temperature; 0 is greedy decoding (deterministic)."
TOP_P_DESCRIPTION = "Sample from the most likely tokens that together hold this probability."
TOP_K_DESCRIPTION = "Sample from the k most likely tokens; 0 keeps them all."
REPETITION_PENALTY_DESCRIPTION = (
    "Penalty for tokens already in the prompt or the output, as in transformers; 1 is none."
)
STOP_SEQUENCES_DESCRIPTION = (
    "Comma-separated texts that end the generation, e.g. '<end>,<stop>'; not part of the output."
)
SEED_DESCRIPTION = "Random seed, for reproducible sampling; empty for a random one."
ALIAS_DESCRIPTION = "Another name for max_new_tokens, as older or OpenAI-style clients send it."


class LmtpPredictor(_CogBase):
    """Serves LMTP for the model described by ``settings_path`` (``model_settings.json``)."""

    settings_path: ClassVar[Path | None] = None
    """Set by the generated subclass; :meth:`from_settings` can pass settings directly instead."""

    _settings_source: Mapping[str, Any] | str | os.PathLike[str] | None = None
    _server: LmtpServer | None = None
    _text: TextGenerator | None = None
    settings: ModelSettings | None = None
    model: Any = None
    """The loaded transformers model (after :meth:`setup`)."""
    tokenizer: Any = None
    """The loaded tokenizer (after :meth:`setup`)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """With ``serve.concurrency`` N > 1 in ``settings_path``, give the subclass the async
        twin of ``predict``, declared ``@cog.concurrent(max=N)`` (see the module docstring).

        The Cog CLI reads the declaration when it builds the image; the server itself only
        reads ``COG_MAX_CONCURRENCY``, which ``cog build`` derives from it (and
        ``lmtp_cog.cogserver`` sets when it runs a project locally).
        """
        super().__init_subclass__(**kwargs)
        if cls.settings_path is None or "predict" in cls.__dict__ or _cog_concurrent is None:
            return
        concurrency = read_concurrency(cls.settings_path)
        if concurrency > 1:
            cls.predict = _cog_concurrent(max=concurrency)(_concurrent_twin())

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
            engine = Engine.start(
                loaded.model,
                context_length=window,
                eos_token_ids=eos,
                prefix_cache_mb=settings.prefix_cache_mb,
                prefix_cache_gpu_share=settings.prefix_cache_gpu_share,
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
        scheduler = BatchScheduler(engine, max_batch_size=settings.max_batch_size)
        self._server = LmtpServer(
            scheduler, model_info=info, log_predictions=settings.log_predictions
        )
        self._text = TextGenerator(scheduler, loaded.tokenizer)
        log.info(
            "ready: vocabulary %d, context window %s, end-of-sequence ids %s, batches of up to "
            "%d, up to %d predictions at once",
            engine.vocab_size,
            window,
            list(eos),
            settings.max_batch_size,
            settings.concurrency,
        )

    def predict(
        self,
        prompt: str | None = Input(default=None, description=PROMPT_DESCRIPTION),
        system_prompt: str | None = Input(default=None, description=SYSTEM_PROMPT_DESCRIPTION),
        prompt_template: str | None = Input(
            default=None, description=PROMPT_TEMPLATE_DESCRIPTION
        ),
        max_new_tokens: int = Input(
            default=DEFAULT_MAX_NEW_TOKENS, ge=1, description=MAX_NEW_TOKENS_DESCRIPTION
        ),
        min_new_tokens: int = Input(
            default=DEFAULT_MIN_NEW_TOKENS, ge=-1, description=MIN_NEW_TOKENS_DESCRIPTION
        ),
        temperature: float = Input(
            default=DEFAULT_TEMPERATURE, ge=0.0, description=TEMPERATURE_DESCRIPTION
        ),
        # Cog has no exclusive bounds: top_p = 0 and repetition_penalty = 0 are refused in code.
        top_p: float = Input(default=DEFAULT_TOP_P, ge=0.0, le=1.0, description=TOP_P_DESCRIPTION),
        top_k: int = Input(default=DEFAULT_TOP_K, ge=0, description=TOP_K_DESCRIPTION),
        repetition_penalty: float = Input(
            default=DEFAULT_REPETITION_PENALTY, ge=0.0, description=REPETITION_PENALTY_DESCRIPTION
        ),
        stop_sequences: str | None = Input(default=None, description=STOP_SEQUENCES_DESCRIPTION),
        seed: int | None = Input(default=None, ge=0, description=SEED_DESCRIPTION),
        max_length: int | None = Input(default=None, ge=1, description=ALIAS_DESCRIPTION),
        max_tokens: int | None = Input(default=None, ge=1, description=ALIAS_DESCRIPTION),
        ops_batch_json: str | None = Input(default=None, description=OPS_BATCH_JSON_DESCRIPTION),
    ) -> ConcatenateIterator[str]:
        """Generate text for ``prompt``, or answer ``ops_batch_json``'s LMTP ops (see LMTP.md).

        Raises (text mode only; Cog fails the prediction with the message):
            TextInputError: both or neither of ``prompt`` and ``ops_batch_json``, or a text input
                out of range or inconsistent; the message names the input.
            TextGenerationError: the model could not go on (e.g. NaN logits).
            RuntimeError: ``setup()`` has not run.
        """
        arguments = dict(locals())  # every input, as Cog filled it or as its Input(...) marker
        inputs = {name: _plain(value) for name, value in arguments.items() if name != "self"}
        ops = inputs.pop("ops_batch_json")
        if choose_mode(prompt=inputs["prompt"], ops_batch_json=ops) == "lmtp":
            yield from self._lmtp(ops)
            return
        request = text_request(**inputs)  # checked before the model is needed
        if self._text is None:
            raise RuntimeError(NOT_READY)
        yield from self._text.generate(request)

    def stream(self, **inputs: Any) -> Iterator[str]:
        """:meth:`predict` for Python callers, whichever its shape: the chunks as an iterator.

        Inputs not given take their defaults, as Cog would fill them in.
        """
        return LmtpPredictor.predict(self, **inputs)

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


async def _predict_concurrently(self: LmtpPredictor, **inputs: Any) -> Iterator[str]:
    """The async twin of :meth:`LmtpPredictor.predict`: the same generator, returned to Cog,
    which iterates it in a thread of its own (it awaits nothing)."""
    return _in_context(contextvars.copy_context(), LmtpPredictor.predict(self, **inputs))


def _concurrent_twin() -> Callable[..., Any]:
    """A fresh copy of :func:`_predict_concurrently` (one per subclass, to decorate) that shows
    Cog the inputs of :meth:`LmtpPredictor.predict`: its signature and annotations.

    Cog's inspector reads ``inspect.getfullargspec``, which honours ``__signature__``, and
    ``typing.get_type_hints``, which reads ``__annotations__``. The twin refers to ``predict``
    by name, not through a closure: Cog's inspector unwraps closures over functions.
    """
    template = _predict_concurrently
    twin = types.FunctionType(template.__code__, template.__globals__, "predict")
    twin.__signature__ = inspect.signature(LmtpPredictor.predict)  # type: ignore[attr-defined]
    twin.__annotations__ = dict(LmtpPredictor.predict.__annotations__)
    twin.__doc__ = LmtpPredictor.predict.__doc__
    twin.__qualname__ = "LmtpPredictor.predict"
    return twin


def _in_context(context: contextvars.Context, chunks: Iterator[str]) -> Iterator[str]:
    """``chunks``, each computed inside ``context``: the context of the ``predict`` call.

    Cog attributes log lines to a prediction through context variables it sets around the
    coroutine; the generator runs after the coroutine returned, in Cog's worker thread, where
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


def _plain(value: object) -> object:
    """The value itself, or the default of an unfilled ``Input(...)``.

    Cog fills every input; a direct Python call like ``predictor.stream()`` would otherwise
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
